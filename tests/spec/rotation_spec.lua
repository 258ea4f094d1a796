-- Key rotation without draining the queue: `moontask rotate-key` re-encrypts
-- the payload of every task that may still run (PENDING, FAILED,
-- INTERRUPTED; not RUNNING, not finished) with the first configured key,
-- encrypts plain payloads too, and changes nothing when a payload no key
-- opens is in the way. Afterwards the old key can leave the config.
local moontask = require "moontask"
local support = require "support"

local FIXTURE = support.root .. "/tests/fixtures/crypto_tasks.lua"

local KEY_A, KEY_B, KEY_C = moontask.keygen(), moontask.keygen(), moontask.keygen()
local ENV = { KEY_A = KEY_A, KEY_B = KEY_B, KEY_C = KEY_C }

-- (Re)writes dir's config with the Lua text key_setting (nil: no key).
local function configure(dir, key_setting)
  support.project(dir, string.format([[
return {
  database = "mt.db",
  scripts = { "tasks.lua" },
  log = { stdout = false },
  %s
}
]], key_setting and (key_setting .. ",") or ""))
end

local function project(key_setting)
  local dir = support.tmpdir()
  support.write(dir .. "/tasks.lua", support.read(FIXTURE))
  configure(dir, key_setting)
  return dir
end

local function mt(dir, ...)
  return support.run({ ... }, { cwd = dir, env = ENV })
end

local function add(dir, ...)
  local code, out, err = mt(dir, "add", ...)
  assert.equal(0, code, err)
  return assert(out:match("^(%S+)\n$"))
end

local function sql(dir, text)
  return support.sqlite_value(dir .. "/mt.db", text)
end

local function token_of(dir, id)
  return sql(dir, "SELECT encrypted_payload FROM tasks WHERE id = '" .. id .. "';")
end

-- The plaintext of a token under key, or nil when the key does not open it.
local function open_with(key, token)
  local code, plain = support.pyfernet({ "decrypt", key, "--strict" }, token)
  if code ~= 0 then return nil end
  return plain
end

local function record(dir, id)
  local text = support.read(dir .. "/record-" .. id .. ".lua")
  return text and assert(load(text, "record", "t", {}))()
end

local function assert_same(expected, actual)
  local ok, where = support.same_data(expected, actual)
  assert(ok, where)
end

local function rotated(n)
  return string.format("rotate-key: re-encrypted %d task(s) with the first key\n", n)
end

after_each(function() support.cleanup() end)

describe("moontask rotate-key", function()
  it("re-encrypts pending tasks with the new key, after which the old key can go", function()
    local dir = project('encrypt_args_key = env "KEY_A"')
    local args = {
      { '"card-1111"', "1" },
      { '{"user":42,"token":"tok_2222"}' },
      { "null", '"three"', "[3.5,false]" },
    }
    local expected = {
      { n = 2, "card-1111", 1 },
      { n = 1, { user = 42, token = "tok_2222" } },
      { n = 3, nil, "three", { 3.5, false } },
    }
    local ids, plains, tokens = {}, {}, {}
    for i, a in ipairs(args) do
      ids[i] = add(dir, "record", table.unpack(a))
      tokens[i] = token_of(dir, ids[i])
      plains[i] = assert(open_with(KEY_A, tokens[i]))
    end

    configure(dir, 'encrypt_args_keys = { env "KEY_B", env "KEY_A" }')
    local code, out, err = mt(dir, "rotate-key")
    assert.equal(0, code, err)
    assert.equal(rotated(3), out)
    for i, id in ipairs(ids) do
      local token = token_of(dir, id)
      assert.are_not.equal(tokens[i], token)
      assert.equal(plains[i], open_with(KEY_B, token))
      assert.is_nil(open_with(KEY_A, token))
    end

    configure(dir, 'encrypt_args_key = env "KEY_B"')
    local rcode, _, rerr = mt(dir, "run", "--drain")
    assert.equal(0, rcode, rerr)
    for i, id in ipairs(ids) do assert_same(expected[i], record(dir, id)) end
  end)

  it("includes FAILED and INTERRUPTED tasks, and leaves RUNNING and finished ones alone", function()
    local dir = project('encrypt_args_key = env "KEY_A"')
    local failed = add(dir, "boom", '"failed-args"')
    local done = add(dir, "noop", '"succeeded-args"')
    assert.equal(1, (mt(dir, "run", "--drain")))
    local pending = add(dir, "record", '"pending-args"')
    local interrupted = add(dir, "record", '"interrupted-args"')
    local running = add(dir, "record", '"running-args"')
    -- States a crashed or busy engine leaves behind (4 INTERRUPTED, 1 RUNNING).
    sql(dir, "UPDATE tasks SET status = 4, error = 'interrupted: test' WHERE id = '"
      .. interrupted .. "'; UPDATE tasks SET status = 1, owner = 'elsewhere:1' WHERE id = '"
      .. running .. "';")
    local before = {}
    for _, id in ipairs { failed, done, pending, interrupted, running } do
      before[id] = token_of(dir, id)
    end

    configure(dir, 'encrypt_args_keys = { env "KEY_B", env "KEY_A" }')
    local code, out, err = mt(dir, "rotate-key")
    assert.equal(0, code, err)
    assert.equal(rotated(3), out)
    for _, id in ipairs { failed, pending, interrupted } do
      assert.are_not.equal(before[id], token_of(dir, id))
      assert.truthy(open_with(KEY_B, token_of(dir, id)))
    end
    for _, id in ipairs { done, running } do
      assert.equal(before[id], token_of(dir, id))
      assert.is_nil(open_with(KEY_B, token_of(dir, id)))
    end

    -- With only the new key the rotated tasks still show their arguments.
    configure(dir, 'encrypt_args_key = env "KEY_B"')
    for id, text in pairs { [failed] = "failed-args", [pending] = "pending-args",
      [interrupted] = "interrupted-args" } do
      local scode, shown, serr = mt(dir, "show", id, "--decrypt")
      assert.equal(0, scode, serr)
      assert.truthy(shown:find('["' .. text .. '"]', 1, true))
    end
    assert.equal(1, (mt(dir, "show", running, "--decrypt")))
  end)

  it("skips the task running while it rotates, in an engine that is still working", function()
    local dir = project('encrypt_args_keys = { env "KEY_B", env "KEY_A" }')
    local during
    moontask.task("rotating", function()
      during = table.pack(mt(dir, "rotate-key"))
    end)
    local e = assert(moontask.open { database = dir .. "/mt.db", scripts = { dir .. "/tasks.lua" },
      encrypt_args_key = KEY_A })
    local busy = e:add("rotating")
    local waiting = e:add("record", "waiting-args")
    local busy_token, waiting_token = token_of(dir, busy), token_of(dir, waiting)
    assert.equal(1, (e:run_one()))
    e:close()
    assert.equal(0, during[1], during[3])
    assert.equal(rotated(1), during[2])
    assert.equal(busy_token, token_of(dir, busy))
    assert.are_not.equal(waiting_token, token_of(dir, waiting))

    configure(dir, 'encrypt_args_key = env "KEY_B"')
    local code, _, err = mt(dir, "run", "--drain")
    assert.equal(0, code, err)
    assert_same({ n = 1, "waiting-args" }, record(dir, waiting))
  end)

  it("encrypts plain payloads and leaves no plain copy in the database files", function()
    local dir = project(nil)
    local secret = "plain-secret-" .. support.random_hex(8)
    local ids = { add(dir, "record", string.format("%q", secret), "1"),
      add(dir, "record", string.format('{"nested":[%q]}', secret)) }
    assert.equal("2", sql(dir, "SELECT count(*) FROM tasks WHERE payload IS NOT NULL;"))
    local function files()
      return (support.read(dir .. "/mt.db") or "") .. (support.read(dir .. "/mt.db-wal") or "")
        .. (support.read(dir .. "/mt.db-journal") or "")
    end
    assert.truthy(files():find(secret, 1, true), "the plain payloads are in the file before")

    configure(dir, 'encrypt_args_key = env "KEY_A"')
    local code, out, err = mt(dir, "rotate-key")
    assert.equal(0, code, err)
    assert.equal(rotated(2), out)
    for _, id in ipairs(ids) do
      assert.equal("NULL", sql(dir, "SELECT quote(payload) FROM tasks WHERE id = '" .. id .. "';"))
      assert.truthy(open_with(KEY_A, token_of(dir, id)))
    end
    assert.same({}, support.find_leaks(files(), support.leak_forms(secret)))

    local rcode, _, rerr = mt(dir, "run", "--drain")
    assert.equal(0, rcode, rerr)
    assert_same({ n = 2, secret, 1 }, record(dir, ids[1]))
    assert_same({ n = 1, { nested = { secret } } }, record(dir, ids[2]))
  end)

  it("fails and changes nothing when a payload opens with no configured key", function()
    local dir = project('encrypt_args_key = env "MOONTASK_KEY"')
    local function add_with(key, ...)
      local code, out, err = support.run({ "add", ... }, { cwd = dir, env = { MOONTASK_KEY = key } })
      assert.equal(0, code, err)
      return assert(out:match("^(%S+)\n$"))
    end
    add_with(KEY_A, "record", '"first"')
    local stranger = add_with(KEY_C, "record", '"second"')
    add_with(KEY_A, "record", '"third"')
    local snapshot = "SELECT id, quote(payload), encrypted_payload FROM tasks ORDER BY seq;"
    local before = sql(dir, snapshot)

    configure(dir, 'encrypt_args_keys = { env "KEY_B", env "KEY_A" }')
    local code, out, err = mt(dir, "rotate-key")
    assert.equal(1, code)
    assert.equal("", out)
    assert.truthy(err:find(stranger, 1, true), err)
    assert.matches("nothing was changed", err)
    assert.is_nil(err:find(token_of(dir, stranger):sub(20, 40), 1, true))
    assert.equal(before, sql(dir, snapshot))
  end)

  it("refuses to run without a key (exit 2)", function()
    local dir = project(nil)
    add(dir, "record", "1")
    local code, out, err = mt(dir, "rotate-key")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("rotate%-key needs encrypt_args_keys", err)
  end)

  it("is e:rotate_key() in the Lua module, returning the count", function()
    local dir = support.tmpdir()
    local db = dir .. "/mt.db"
    local got = {}
    moontask.task("collect", function(...) got[#got + 1] = table.pack(...) end)
    local e = assert(moontask.open { database = db, encrypt_args_key = KEY_A })
    assert.equal(0, e:rotate_key())
    e:add("collect", "one")
    e:add("collect", 2)
    e:close()
    e = assert(moontask.open { database = db, encrypt_args_keys = { KEY_B, KEY_A } })
    assert.equal(2, e:rotate_key())
    assert.equal(2, e:count_encrypted())
    e:close()
    e = assert(moontask.open { database = db, encrypt_args_key = KEY_B })
    local summary = assert(e:drain())
    assert.equal(2, summary.succeeded)
    assert_same({ { n = 1, "one" }, { n = 1, 2 } }, got)
    e:close()
    e = assert(moontask.open { database = db })
    local ok, msg = e:rotate_key()
    assert.is_nil(ok)
    assert.matches("no encryption key is configured", msg)
    e:close()
  end)
end)

-- Argument encryption at rest: keys (keygen, malformed keys, key files),
-- the argument round trip through Fernet, payloads no key opens (wrong key,
-- tampered token) and their recovery, what list/show print, redaction of
-- secret arguments in logs, errors and tracebacks, and the refusal to run
-- encrypted tasks without a key.
local moontask = require "moontask"
local support = require "support"

local FIXTURE = support.root .. "/tests/fixtures/crypto_tasks.lua"
local NO_KEY_MATCHES = "cannot decrypt arguments: no configured key matches"
local KEY_FORM = "^[A-Za-z0-9_-]" .. string.rep("[A-Za-z0-9_-]", 42) .. "=$"

-- A project folder with the fixture tasks and a config whose key setting
-- is the Lua text key_setting (nil: no key). Log file mt.log, stdout sink on.
local function project(key_setting)
  local dir = support.tmpdir()
  support.write(dir .. "/tasks.lua", support.read(FIXTURE))
  support.project(dir, string.format([[
return {
  database = "mt.db",
  scripts = { "tasks.lua" },
  log = { file = "mt.log", stdout = true },
  %s
}
]], key_setting and (key_setting .. ",") or ""))
  return dir
end

local ENV_KEY = 'encrypt_args_key = env "MOONTASK_KEY"'

-- Runs moontask in dir with MOONTASK_KEY = key (false: unset).
local function mt(dir, key, ...)
  return support.run({ ... }, { cwd = dir, env = { MOONTASK_KEY = key or false } })
end

-- Enqueues through the CLI; returns the id.
local function add(dir, key, ...)
  local code, out, err = mt(dir, key, "add", ...)
  assert.equal(0, code, err)
  local id = out:match("^(%S+)\n$")
  assert.truthy(id, out)
  return id
end

local function show_json(dir, key, id, ...)
  local code, out, err = mt(dir, key, "show", id, "--json", ...)
  assert.equal(0, code, err)
  return support.json(out)
end

local function token_of(dir, id)
  return support.sqlite_value(dir .. "/mt.db",
    "SELECT encrypted_payload FROM tasks WHERE id = '" .. id .. "';")
end

-- What the record task received, or nil if it never ran.
local function record(dir, id)
  local text = support.read(dir .. "/record-" .. id .. ".lua")
  return text and assert(load(text, "record", "t", {}))()
end

local function assert_same(expected, actual)
  local ok, where = support.same_data(expected, actual)
  assert(ok, where)
end

-- Every substring of `secret` of n bytes that `text` contains (none expected).
local function shared_runs(text, secret, n)
  local found = {}
  for i = 1, #secret - n + 1 do
    local piece = secret:sub(i, i + n - 1)
    if text:find(piece, 1, true) then found[#found + 1] = piece end
  end
  return found
end

after_each(function() support.cleanup() end)

describe("moontask keygen", function()
  it("prints a 32-byte key as 44 characters of base64url ending in '=', new each time", function()
    local dir = support.tmpdir()
    local c1, k1, e1 = support.run({ "keygen" }, { cwd = dir })
    local c2, k2 = support.run({ "keygen" }, { cwd = dir })
    assert.equal(0, c1, e1)
    assert.equal(0, c2)
    assert.matches("\n$", k1)
    k1, k2 = k1:gsub("\n$", ""), k2:gsub("\n$", "")
    assert.equal(44, #k1)
    assert.matches(KEY_FORM, k1)
    assert.matches(KEY_FORM, k2)
    -- 32 bytes leave 2 unused bits in the last character: canonical keys have them zero.
    assert.matches("[AEIMQUYcgkosw048]=$", k1)
    assert.are_not.equal(k1, k2)
  end)

  it("makes keys that Python's cryptography accepts", function()
    local _, key = support.run({ "keygen" })
    key = key:gsub("\n$", "")
    local code, token, err = support.pyfernet({ "encrypt", key }, "hello")
    assert.equal(0, code, err)
    local dcode, plain = support.pyfernet({ "decrypt", key, "--strict" }, token)
    assert.equal(0, dcode)
    assert.equal("hello", plain)
  end)

  it("is moontask.keygen() in Lua, in the same form", function()
    local k1, k2 = moontask.keygen(), moontask.keygen()
    assert.matches(KEY_FORM, k1)
    assert.matches(KEY_FORM, k2)
    assert.are_not.equal(k1, k2)
    assert.is_true(moontask._check_key(k1))
  end)
end)

describe("a malformed key", function()
  local good = moontask.keygen()
  local cases = {
    { "an empty key", "" },
    { "a key one character short", good:sub(1, 42) .. "=" },
    { "a key one character long", good:sub(1, 43) .. "A=" },
    { "a well-formed 16-byte key", support.base64(string.rep("k", 16), true) },
    { "a well-formed 48-byte key", support.base64(string.rep("k", 48), true) },
    { "a key in the standard alphabet ('+')", good:sub(1, 9) .. "+" .. good:sub(11) },
    { "a key in the standard alphabet ('/')", good:sub(1, 9) .. "/" .. good:sub(11) },
    { "a key with a character outside base64", good:sub(1, 9) .. "!" .. good:sub(11) },
    { "a key without its padding", good:sub(1, 43) },
    { "a key with a leading space", " " .. good },
    { "a key with a trailing space", good .. " " },
    { "a key with a trailing newline (outside a key file)", good .. "\n" },
    { "a key with a space inside", good:sub(1, 20) .. " " .. good:sub(21) },
  }
  for _, case in ipairs(cases) do
    local what, bad = case[1], case[2]
    it("is refused at start with exit 2 and without printing it: " .. what, function()
      local dir = project(ENV_KEY)
      for _, args in ipairs { { "add", "record", "1" }, { "run", "--drain" }, { "rotate-key" } } do
        local code, out, err = mt(dir, bad, table.unpack(args))
        assert.equal(2, code, args[1] .. ": " .. err)
        assert.matches("encrypt_args_key", err)
        assert.matches("malformed", err)
        assert.same({}, shared_runs(out .. err, bad, 8))
      end
      assert.is_nil(support.read(dir .. "/mt.db"))
    end)
  end

  it("written literally in the config is refused without being printed", function()
    local bad = good:sub(1, 30) .. "*" .. good:sub(32)
    local dir = project(string.format("encrypt_args_key = %q", bad))
    local code, out, err = mt(dir, nil, "add", "record", "1")
    assert.equal(2, code)
    assert.matches("malformed", err)
    assert.same({}, shared_runs(out .. err, bad, 8))
  end)

  it("anywhere in encrypt_args_keys is refused, naming its place", function()
    local bad = good:sub(1, 43)
    local dir = project(string.format("encrypt_args_keys = { %q, %q }", moontask.keygen(), bad))
    local code, out, err = mt(dir, nil, "run", "--drain")
    assert.equal(2, code)
    assert.matches("encrypt_args_keys%[2%]", err)
    assert.same({}, shared_runs(out .. err, bad, 8))
  end)

  it("through moontask.open raises without the key in the message", function()
    local bad = good .. " "
    local ok, msg = pcall(moontask.open, { encrypt_args_key = bad })
    assert.is_false(ok)
    assert.matches("malformed", msg)
    assert.same({}, shared_runs(msg, bad, 8))
  end)

  it("cannot be combined with a second key setting", function()
    local dir = project(ENV_KEY .. ', encrypt_args_key_file = "key.txt"')
    support.write(dir .. "/key.txt", good)
    local code, _, err = mt(dir, good, "add", "record", "1")
    assert.equal(2, code)
    assert.matches("only one of", err)
  end)
end)

describe("encrypt_args_key_file", function()
  local key = moontask.keygen()

  for _, case in ipairs {
    { "two trailing newlines", key .. "\n\n" },
    { "a trailing space", key .. " " },
    { "a trailing space before the newline", key .. " \n" },
    { "a leading newline", "\n" .. key },
    { "a missing padding character", key:sub(1, 43) .. "\n" },
    { "nothing in it", "" },
  } do
    it("refuses a key file with " .. case[1] .. " (exit 2, key not printed)", function()
      local dir = project('encrypt_args_key_file = "key.txt"')
      support.write(dir .. "/key.txt", case[2])
      local code, out, err = mt(dir, nil, "add", "record", "1")
      assert.equal(2, code)
      assert.matches("encrypt_args_key_file", err)
      assert.same({}, shared_runs(out .. err, key, 8))
      code, out, err = mt(dir, nil, "run", "--drain")
      assert.equal(2, code)
      assert.same({}, shared_runs(out .. err, key, 8))
    end)
  end

  it("is read relative to the config's folder, wherever moontask runs", function()
    local dir = project('encrypt_args_key_file = "key.txt"')
    support.write(dir .. "/key.txt", key .. "\n")
    local elsewhere = support.tmpdir()
    local code, out, err = support.run({ "-c", dir .. "/moontask.lua", "add", "record", '"x"' },
      { cwd = elsewhere })
    assert.equal(0, code, err)
    local id = out:match("^(%S+)\n$")
    assert.truthy(support.pyfernet({ "decrypt", key, "--strict" }, token_of(dir, id)) == 0)
  end)

  it("refuses a key file that does not exist", function()
    local dir = project('encrypt_args_key_file = "missing.txt"')
    local code, _, err = mt(dir, nil, "add", "record", "1")
    assert.equal(2, code)
    assert.matches("missing.txt", err)
  end)

  for _, case in ipairs { { "exactly one trailing newline", key .. "\n" }, { "no newline", key } } do
    it("accepts a key file with " .. case[1] .. " and encrypts with that key", function()
      local dir = project('encrypt_args_key_file = "key.txt"')
      support.write(dir .. "/key.txt", case[2])
      local id = add(dir, nil, "record", '"from a key file"', "7")
      assert.equal("NULL", support.sqlite_value(dir .. "/mt.db",
        "SELECT quote(payload) FROM tasks WHERE id = '" .. id .. "';"))
      local pcode, plain = support.pyfernet({ "decrypt", key, "--strict" }, token_of(dir, id))
      assert.equal(0, pcode)
      assert.truthy(plain:find("from a key file", 1, true))
      local code, _, err = mt(dir, nil, "run", "--drain")
      assert.equal(0, code, err)
      assert_same({ n = 2, "from a key file", 7 }, record(dir, id))
    end)
  end
end)

describe("arguments through encryption (Lua module)", function()
  local e, dir, got

  before_each(function()
    got = nil
    dir = support.tmpdir()
    moontask.task("capture", function(...) got = table.pack(...) end)
    e = assert(moontask.open { database = dir .. "/mt.db", encrypt_args_key = moontask.keygen() })
  end)

  after_each(function() e:close() end)

  -- Enqueues capture(...) encrypted, runs it; returns what the task got.
  local function roundtrip(...)
    local id = e:add("capture", ...)
    local stored = support.sqlite_value(dir .. "/mt.db",
      "SELECT quote(payload) || ' ' || substr(encrypted_payload, 1, 6) FROM tasks WHERE id = '"
      .. id .. "';")
    assert.equal("NULL gAAAAA", stored)
    local row = assert(e:get(id))
    assert.is_true(row.encrypted)
    local summary = assert(e:drain())
    assert.equal(1, summary.succeeded)
    row = assert(e:get(id))
    assert.equal("SUCCESS", row.status, row.error)
    assert.is_true(row.encrypted)
    local expected = table.pack(...)
    assert_same(expected, got)
    assert_same(expected, row.args)
    return got, row
  end

  it("keeps nil holes and trailing nils: select('#') is what was given", function()
    assert.equal(5, roundtrip(nil, "b", nil, 4, nil).n)
    assert.equal(3, roundtrip(nil, nil, nil).n)
  end)

  it("passes no arguments as no arguments", function()
    assert.equal(0, roundtrip().n)
  end)

  it("keeps integers integers and floats floats", function()
    local args = roundtrip(1, 1.0, 0, 0.0, -0.0, -7, 0.1, 2 ^ 53, 9.99,
      math.maxinteger, math.mininteger, 1e308, 5e-324)
    assert.equal("integer", math.type(args[1]))
    assert.equal("float", math.type(args[2]))
    assert.equal(math.mininteger, args[11])
  end)

  it("keeps inf, -inf and nan", function()
    local args = roundtrip(math.huge, -math.huge, 0 / 0)
    assert.equal(math.huge, args[1])
    assert.equal(-math.huge, args[2])
    assert.is_true(args[3] ~= args[3])
  end)

  it("keeps booleans", function()
    roundtrip(true, false, { yes = true, no = false })
  end)

  it("keeps binary strings byte for byte", function()
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    local bytes = table.concat(all)
    roundtrip(bytes, "", "\0", "a\0b", "\255\254", bytes:reverse():rep(300), "ütf-8 ✓")
  end)

  it("keeps nested tables: sequences, maps, sparse lists, data keys", function()
    roundtrip({ 1, 2, { 3, { 4, { "five" } } } },
      { card = { number = "4242424242424242", exp = { 12, 2030 } }, tags = {} },
      { [1] = "a", [3] = "c", [10] = "j" },
      { [1.5] = "float key", [true] = "bool key", [-1] = "negative", ["odd key"] = 1 },
      {})
  end)

  it("encrypts the arguments of a task enqueued by a running task", function()
    local child
    moontask.task("parent", function(s) child = moontask.add("capture", s, { s }) end)
    e:add("parent", "handed-down-secret")
    assert.equal(2, assert(e:drain()).succeeded)
    assert.equal("NULL", support.sqlite_value(dir .. "/mt.db",
      "SELECT quote(payload) FROM tasks WHERE id = '" .. child .. "';"))
    assert.is_true(e:get(child).encrypted)
    assert_same({ n = 2, "handed-down-secret", { "handed-down-secret" } }, got)
  end)

  it("opens the payload for e:get only with a key that matches", function()
    local id = e:add("capture", "only with the key", 1)
    local row = e:get(id)
    assert_same({ n = 2, "only with the key", 1 }, row.args)
    assert.equal('["only with the key",1]', row.args_json)
    local other = assert(moontask.open { database = dir .. "/mt.db",
      encrypt_args_key = moontask.keygen() })
    local plain = assert(moontask.open { database = dir .. "/mt.db" })
    for _, view in ipairs { other, plain } do
      row = view:get(id)
      assert.is_true(row.encrypted)
      assert.is_nil(row.args)
      assert.is_nil(row.args_json)
    end
    other:close()
    plain:close()
  end)
end)

describe("a payload no configured key opens", function()
  local key_a, key_b = moontask.keygen(), moontask.keygen()

  it("fails the task with the exact error, no token bytes, the token intact", function()
    local dir = project(ENV_KEY)
    local id = add(dir, key_a, "record", '"tok_live_51Habc"', "42", "[1.5,true,\"x\"]")
    local token = token_of(dir, id)
    local code, out, err = mt(dir, key_b, "run", "--drain")
    assert.equal(1, code, err)
    local row = show_json(dir, key_b, id)
    assert.equal("FAILED", row.status)
    assert.equal(NO_KEY_MATCHES, row.error)
    local _, shown = mt(dir, key_b, "show", id)
    local _, listed = mt(dir, key_b, "list")
    assert.same({}, shared_runs(table.concat({ out, err, shown, listed,
      support.read(dir .. "/mt.log") or "" }, "\n"), token, 8))
    if row.traceback ~= support.null then
      assert.same({}, shared_runs(row.traceback, token, 8))
    end
    assert.equal(token, token_of(dir, id))
    assert.is_nil(record(dir, id))
  end)

  it("runs with the original arguments once the right key is back and it is retried", function()
    local dir = project(ENV_KEY)
    local id = add(dir, key_a, "record", '"tok_live_51Habc"', "42", "[1.5,true,\"x\"]", "null")
    assert.equal(1, (mt(dir, key_b, "run", "--drain")))
    assert.equal(NO_KEY_MATCHES, show_json(dir, key_b, id).error)
    local code, out, err = mt(dir, key_a, "retry", id)
    assert.equal(0, code, err)
    assert.equal(id .. " PENDING\n", out)
    local rcode, _, rerr = mt(dir, key_a, "run", "--drain")
    assert.equal(0, rcode, rerr)
    assert.equal("SUCCESS", show_json(dir, key_a, id).status)
    assert_same({ n = 4, "tok_live_51Habc", 42, { 1.5, true, "x" } }, record(dir, id))
  end)

  it("fails the same way through the Lua module, with the row's args nil", function()
    local dir = support.tmpdir()
    local got
    moontask.task("capture", function(...) got = table.pack(...) end)
    local a = assert(moontask.open { database = dir .. "/mt.db", encrypt_args_key = key_a })
    local id = a:add("capture", "secret-argument")
    a:close()
    local b = assert(moontask.open { database = dir .. "/mt.db",
      encrypt_args_keys = { key_b, moontask.keygen() } })
    local summary = assert(b:drain())
    assert.equal(1, summary.failed)
    local row = b:get(id)
    assert.equal("FAILED", row.status)
    assert.equal(NO_KEY_MATCHES, row.error)
    assert.is_nil(row.args)
    assert.is_nil(got)
    b:close()
    a = assert(moontask.open { database = dir .. "/mt.db", encrypt_args_keys = { key_b, key_a } })
    assert.is_true(a:retry(id))
    assert.equal(1, assert(a:drain()).succeeded)
    assert_same({ n = 1, "secret-argument" }, got)
    a:close()
  end)

  -- Positions in the token text: version byte, timestamp/IV, ciphertext, HMAC.
  for _, where in ipairs { { "version", 1 }, { "IV", 20 }, { "ciphertext", 80 }, { "HMAC", -6 } } do
    it("fails with the same error when one character of its " .. where[1]
      .. " is changed, and keeps the tampered token", function()
      local dir = project(ENV_KEY)
      local id = add(dir, key_a, "record", '"card-4242-4242"', "{\"amount\":9.99}")
      local token = token_of(dir, id)
      local pos = where[2] > 0 and where[2] or #token + where[2]
      local c = token:sub(pos, pos)
      local tampered = token:sub(1, pos - 1) .. (c == "A" and "B" or "A") .. token:sub(pos + 1)
      assert.are_not.equal(token, tampered)
      support.sqlite_value(dir .. "/mt.db", "UPDATE tasks SET encrypted_payload = '" .. tampered
        .. "' WHERE id = '" .. id .. "';")
      local code, out, err = mt(dir, key_a, "run", "--drain")
      assert.equal(1, code, err)
      local row = show_json(dir, key_a, id)
      assert.equal("FAILED", row.status)
      assert.equal(NO_KEY_MATCHES, row.error)
      assert.same({}, shared_runs(out .. err, tampered, 8))
      assert.equal(tampered, token_of(dir, id))
      assert.is_nil(record(dir, id))
      -- Restoring the untouched token and retrying runs it with its arguments.
      support.sqlite_value(dir .. "/mt.db", "UPDATE tasks SET encrypted_payload = '" .. token
        .. "' WHERE id = '" .. id .. "';")
      assert.equal(0, (mt(dir, key_a, "retry", id)))
      code, _, err = mt(dir, key_a, "run", "--drain")
      assert.equal(0, code, err)
      assert_same({ n = 2, "card-4242-4242", { amount = 9.99 } }, record(dir, id))
    end)
  end
end)

describe("list and show with encrypted arguments", function()
  local key = moontask.keygen()
  local dir, id

  before_each(function()
    dir = project(ENV_KEY)
    id = add(dir, key, "record", '"pan-4111111111111111"', "3")
  end)

  it("list prints <encrypted> in the ARGS column and null args in JSON", function()
    local code, out, err = mt(dir, key, "list")
    assert.equal(0, code, err)
    assert.matches("ARGS", out)
    assert.matches(id:gsub("%-", "%%-") .. "%s+record%s+PENDING.-<encrypted>", out)
    assert.is_nil(out:find("4111111111111111", 1, true))
    code, out = mt(dir, key, "list", "--json")
    assert.equal(0, code)
    local rows = support.json(out)
    assert.equal(1, #rows)
    assert.equal(support.null, rows[1].args)
    assert.is_true(rows[1].encrypted)
  end)

  it("show prints <encrypted>, and null args in JSON, even when it holds the key", function()
    local code, out, err = mt(dir, key, "show", id)
    assert.equal(0, code, err)
    assert.matches("\nargs:%s+<encrypted>\n", out)
    assert.is_nil(out:find("4111111111111111", 1, true))
    local row = show_json(dir, key, id)
    assert.equal(support.null, row.args)
    assert.is_true(row.encrypted)
  end)

  it("show --decrypt prints the arguments with a working key", function()
    local code, out, err = mt(dir, key, "show", id, "--decrypt")
    assert.equal(0, code, err)
    assert.matches('\nargs:%s+%["pan%-4111111111111111",3%]\n', out)
    local row = show_json(dir, key, id, "--decrypt")
    assert.same({ "pan-4111111111111111", 3 }, row.args)
  end)

  it("show --decrypt refuses, printing nothing of them, with a wrong key or none", function()
    local code, out, err = mt(dir, moontask.keygen(), "show", id, "--decrypt")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("no configured key opens", err)
    support.project(dir, 'return { database = "mt.db", scripts = { "tasks.lua" } }')
    code, out, err = mt(dir, nil, "show", id, "--decrypt", "--json")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("no encryption key is configured", err)
    assert.is_nil(err:find("4111111111111111", 1, true))
  end)

  it("shows plain arguments as they are when no key is configured", function()
    local plain = project(nil)
    local pid = add(plain, nil, "record", '"visible"', "3")
    local code, out = mt(plain, nil, "show", pid)
    assert.equal(0, code)
    assert.matches('\nargs:%s+%["visible",3%]\n', out)
    assert.is_false(show_json(plain, nil, pid).encrypted)
  end)
end)

describe("redaction with encryption on", function()
  local key = moontask.keygen()
  local SECRET, NESTED, SHORT = "sk_live_0123456789", "tok_abcdef123", "ab12x"

  -- Runs leak (or leak_noredact) through the CLI; returns dir, id, and the
  -- stdout and stderr of run.
  local function run_leak(task)
    local dir = project(ENV_KEY)
    local id = add(dir, key, task, string.format("%q", SECRET),
      string.format('{"card":{"token":%q}}', NESTED), string.format("%q", SHORT))
    local code, out, err = mt(dir, key, "run", "--drain")
    assert.equal(1, code, err)
    return dir, id, out, err
  end

  it("replaces secret arguments in log messages, extras, print, error and traceback", function()
    local dir, id, out, err = run_leak("leak")
    local _, logs_text = mt(dir, key, "logs", id)
    local _, logs_json = mt(dir, key, "logs", id, "--json")
    local row = show_json(dir, key, id)
    local everything = table.concat({ out, err, logs_text, logs_json, support.read(dir .. "/mt.log"),
      row.error, row.traceback }, "\n")
    for _, s in ipairs { SECRET, NESTED } do
      assert.is_nil(everything:find(s, 1, true), s)
    end
    -- The task logs its string arguments sorted: the short one, then the two secrets.
    local entries = support.json(logs_json)
    assert.equal(3, #entries // 2)
    for i = 3, 5, 2 do
      assert.equal("saw [redacted] in the arguments", entries[i].message)
      assert.equal("[redacted]", entries[i].extras.value)
      assert.same({ deeper = { "[redacted]" } }, entries[i].extras.nested)
    end
    assert.truthy(logs_text:find("printing\t[redacted]", 1, true))
    assert.matches("cannot charge ", row.error)
    assert.truthy(row.error:find("[redacted] / [redacted]", 1, true))
    assert.truthy(row.traceback:find("[redacted]:1: in ", 1, true))
  end)

  it("redacts in the log file and the stdout sink as they are written", function()
    local dir, _, out = run_leak("leak")
    local file = support.read(dir .. "/mt.log")
    for _, text in ipairs { out, file } do
      assert.truthy(text:find("saw [redacted] in the arguments", 1, true))
      assert.truthy(text:find("printing\t[redacted]", 1, true))
      assert.is_nil(text:find(SECRET, 1, true))
      assert.is_nil(text:find(NESTED, 1, true))
    end
  end)

  it("leaves a secret shorter than 6 bytes alone (documented limit)", function()
    local dir, id = run_leak("leak")
    local _, logs = mt(dir, key, "logs", id)
    assert.truthy(logs:find("saw " .. SHORT .. " in the arguments", 1, true))
    assert.truthy(show_json(dir, key, id).error:find(SHORT, 1, true))
  end)

  it("redacts a secret of exactly 6 bytes", function()
    local dir = project(ENV_KEY)
    local id = add(dir, key, "leak", '"6bytes"', '"5byte"')
    mt(dir, key, "run", "--drain")
    local _, logs = mt(dir, key, "logs", id)
    assert.is_nil(logs:find("6bytes", 1, true))
    assert.truthy(logs:find("saw 5byte in", 1, true))
  end)

  it("is turned off by the task option redact = false", function()
    local dir, id, out = run_leak("leak_noredact")
    local _, logs = mt(dir, key, "logs", id)
    local row = show_json(dir, key, id)
    for _, text in ipairs { out, logs, support.read(dir .. "/mt.log"), row.error } do
      assert.truthy(text:find(SECRET, 1, true))
      assert.truthy(text:find(NESTED, 1, true))
    end
  end)

  it("does not apply without encryption: logs stay as the task wrote them", function()
    local dir = project(nil)
    local id = add(dir, nil, "leak", string.format("%q", SECRET))
    mt(dir, nil, "run", "--drain")
    local _, logs = mt(dir, nil, "logs", id)
    assert.truthy(logs:find("saw " .. SECRET, 1, true))
  end)

  describe("through the Lua module", function()
    local dir, e

    before_each(function()
      dir = support.tmpdir()
      support.write(dir .. "/tasks.lua", support.read(FIXTURE))
    end)

    after_each(function() if e then e:close() end end)

    local function open(extra)
      local opts = { database = dir .. "/mt.db", scripts = { dir .. "/tasks.lua" },
        encrypt_args_key = key, log = { file = dir .. "/mt.log", stdout = false } }
      for k, v in pairs(extra or {}) do opts[k] = v end
      e = assert(moontask.open(opts))
      return e
    end

    it("redacts e:logs, the row's error and traceback, and the log file", function()
      open()
      local id = e:add("leak", { deep = { deeper = { SECRET } } }, true)
      assert.equal(1, assert(e:drain()).failed)
      local row = e:get(id)
      local text = { row.error, row.traceback, support.read(dir .. "/mt.log") }
      for _, entry in ipairs(e:logs(id)) do
        text[#text + 1] = entry.message
        text[#text + 1] = entry.extras_json
      end
      text = table.concat(text, "\n")
      assert.is_nil(text:find(SECRET, 1, true))
      assert.truthy(text:find("[redacted]", 1, true))
    end)

    it("redacts a message logged alone, with moontask.log(message)", function()
      open()
      moontask.task("say", function(s) moontask.log("token " .. s) end)
      local id = e:add("say", SECRET)
      e:drain()
      local row = e:get(id)
      assert.equal("SUCCESS", row.status, row.error)
      assert.equal("token [redacted]", e:logs(id)[1].message)
    end)

    it("is turned off per enqueue with redact = false", function()
      open()
      local id = e:enqueue { task = "leak", args = { SECRET }, redact = false }
      e:drain()
      assert.truthy(e:get(id).error:find(SECRET, 1, true))
      assert.truthy(e:logs(id)[1].message:find(SECRET, 1, true))
    end)

    it("is turned off for every task by defaults = { redact = false }", function()
      open { defaults = { redact = false } }
      local id = e:add("leak", SECRET)
      e:drain()
      assert.truthy(e:get(id).error:find(SECRET, 1, true))
    end)

    -- Log extras are stored as JSON text: a secret that JSON escapes (or,
    -- not being UTF-8, rewrites) must still not reach the log.
    for _, case in ipairs {
      { "a double quote", 'pass"word-1' },
      { "a newline", "two\nlines-secret" },
      { "a backslash", "back\\slash-secret" },
      { "a byte that is not UTF-8", "\255tok_binary-secret" },
    } do
      it("redacts a secret argument with " .. case[1] .. " in log extras", function()
        open()
        local id = e:add("leak", case[2])
        e:drain()
        local entry = e:logs(id)[1]
        assert.equal("saw [redacted] in the arguments", entry.message)
        assert.equal('{"nested":{"deeper":["[redacted]"]},"value":"[redacted]"}', entry.extras_json)
        assert.equal("[redacted]", e:get(id).error:match("cannot charge (.*)$"))
        assert.is_nil(support.read(dir .. "/mt.log"):find(case[2]:sub(2), 1, true))
      end)
    end
  end)
end)

describe("starting without a key", function()
  local key = moontask.keygen()

  it("is refused with exit 2 while encrypted payloads wait, and changes nothing", function()
    local dir = project(ENV_KEY)
    local id = add(dir, key, "record", '"waiting"')
    local token = token_of(dir, id)
    support.project(dir, 'return { database = "mt.db", scripts = { "tasks.lua" } }')
    local code, out, err = mt(dir, nil, "run", "--drain")
    assert.equal(2, code)
    assert.matches("1 task%(s%) in .*mt%.db have encrypted arguments but no encryption key is "
      .. "configured", err)
    assert.equal("", out)
    -- The serving engine (no --drain) refuses too, rather than start.
    code, out, err = support.run({ "20", support.bin, "run", "--workers", "2" },
      { bin = "timeout", cwd = dir })
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("have encrypted arguments but no encryption key is configured", err)
    assert.equal("PENDING", show_json(dir, nil, id).status)
    assert.equal(token, token_of(dir, id))
    assert.is_nil(record(dir, id))
  end)

  it("is allowed once every encrypted task has succeeded", function()
    local dir = project(ENV_KEY)
    add(dir, key, "record", '"done"')
    assert.equal(0, (mt(dir, key, "run", "--drain")))
    support.project(dir, 'return { database = "mt.db", scripts = { "tasks.lua" } }')
    local id = add(dir, nil, "record", '"plain"')
    local code, _, err = mt(dir, nil, "run", "--drain")
    assert.equal(0, code, err)
    assert_same({ n = 1, "plain" }, record(dir, id))
  end)

  it("is counted by e:count_encrypted()", function()
    local dir = support.tmpdir()
    local e = assert(moontask.open { database = dir .. "/mt.db", encrypt_args_key = key })
    moontask.task("noop", function() end)
    e:add("noop", 1)
    e:add("noop", 2)
    assert.equal(2, e:count_encrypted())
    e:drain()
    assert.equal(0, e:count_encrypted())
    e:close()
  end)
end)

-- Fernet interoperability with Python's cryptography (through pyfernet.py),
-- both ways: tokens moontask stores decrypt there to exactly the MessagePack
-- bytes the same arguments are stored as without a key, and tokens made
-- there from those bytes, put in the store, run the task with the original
-- arguments. Includes an empty argument list and a 1 MiB binary string.
local moontask = require "moontask"
local support = require "support"

local FIXTURE = support.root .. "/tests/fixtures/crypto_tasks.lua"
local KEY = moontask.keygen()

-- 1 MiB of deterministic pseudo-random bytes (every byte value occurs).
local function mebibyte()
  local parts, x = {}, 20240601
  for i = 1, 1024 do
    local chunk = {}
    for j = 1, 1024 do
      x = (x * 1103515245 + 12345) & 0x7fffffff
      chunk[j] = (x >> 16) & 255
    end
    parts[i] = string.char(table.unpack(chunk))
  end
  return table.concat(parts)
end

local BIG = mebibyte()

local CASES = {
  { "an empty argument list", table.pack() },
  { "mixed data with a nil hole", table.pack("hello", 42, 1.5, true, nil,
    { a = { 1, 2 }, b = "x" }, math.mininteger, 0 / 0, "\0\255") },
  { "a 1 MiB binary string", table.pack(BIG) },
}

local function assert_same(expected, actual)
  local ok, where = support.same_data(expected, actual)
  assert(ok, where)
end

local function column(db, col, id)
  return support.sqlite_value(db, "SELECT " .. col .. " FROM tasks WHERE id = '" .. id .. "';")
end

after_each(function() support.cleanup() end)

describe("Fernet interop with Python's cryptography (Lua module)", function()
  local dir, plain_e, enc_e, got

  before_each(function()
    got = nil
    dir = support.tmpdir()
    moontask.task("capture", function(...) got = table.pack(...) end)
    plain_e = assert(moontask.open { database = dir .. "/plain.db" })
    enc_e = assert(moontask.open { database = dir .. "/enc.db", encrypt_args_key = KEY })
  end)

  after_each(function()
    plain_e:close()
    enc_e:close()
  end)

  -- The MessagePack bytes moontask stores for args without a key.
  local function wire_bytes(args)
    local id = plain_e:add("capture", table.unpack(args, 1, args.n))
    return support.fromhex(column(dir .. "/plain.db", "hex(payload)", id))
  end

  for _, case in ipairs(CASES) do
    local what, args = case[1], case[2]

    it("decrypts moontask's token in Python to the plain MessagePack bytes: " .. what, function()
      local wire = wire_bytes(args)
      local id = enc_e:add("capture", table.unpack(args, 1, args.n))
      assert.equal("NULL", column(dir .. "/enc.db", "quote(payload)", id))
      local token = column(dir .. "/enc.db", "encrypted_payload", id)
      assert.matches("^gAAAAA[A-Za-z0-9_-]+=*$", token)
      local code, plain, err = support.pyfernet({ "decrypt", KEY, "--strict" }, token)
      assert.equal(0, code, err)
      assert.equal(#wire, #plain)
      assert.is_true(wire == plain, "the decrypted bytes differ from the plain payload")
    end)

    it("runs the task with the original arguments from a token Python made: " .. what, function()
      local wire = wire_bytes(args)
      local code, token, err = support.pyfernet({ "encrypt", KEY }, wire)
      assert.equal(0, code, err)
      token = token:gsub("\n$", "")
      local id = enc_e:add("capture", "placeholder")
      support.sqlite_value(dir .. "/enc.db", "UPDATE tasks SET encrypted_payload = '" .. token
        .. "' WHERE id = '" .. id .. "' AND status = 0;")
      assert.is_true(token == column(dir .. "/enc.db", "encrypted_payload", id))
      assert_same(args, assert(enc_e:get(id)).args)
      assert.equal(1, assert(enc_e:drain()).succeeded)
      assert.equal("SUCCESS", enc_e:get(id).status)
      assert_same(args, got)
    end)
  end

  it("stores the empty argument list as the MessagePack empty array", function()
    assert.equal("\x90", wire_bytes(table.pack()))
  end)

  it("writes a new token (fresh IV) for every task, even with equal arguments", function()
    local a = enc_e:add("capture", "same")
    local b = enc_e:add("capture", "same")
    assert.are_not.equal(column(dir .. "/enc.db", "encrypted_payload", a),
      column(dir .. "/enc.db", "encrypted_payload", b))
  end)

  it("opens an old token from Python (no TTL on stored arguments)", function()
    local wire = wire_bytes(table.pack("from 1985"))
    local code, token = support.pyfernet({ "encrypt", KEY, "--now", "1985-10-26T01:20:00-07:00" },
      wire)
    assert.equal(0, code)
    local id = enc_e:add("capture", "placeholder")
    support.sqlite_value(dir .. "/enc.db", "UPDATE tasks SET encrypted_payload = '"
      .. token:gsub("\n$", "") .. "' WHERE id = '" .. id .. "';")
    assert.equal(1, assert(enc_e:drain()).succeeded)
    assert_same(table.pack("from 1985"), got)
  end)

  it("fails a task whose token opens to bytes that are not an argument list", function()
    for _, plain in ipairs { "", "\42", "\129\161k\1", "\144\144", "\145\169s3cr3t-abc\193",
      "\193garbage-secret" } do
      got = nil
      local _, token = support.pyfernet({ "encrypt", KEY }, plain)
      local id = enc_e:add("capture", "placeholder")
      support.sqlite_value(dir .. "/enc.db", "UPDATE tasks SET encrypted_payload = '"
        .. token:gsub("\n$", "") .. "' WHERE id = '" .. id .. "';")
      assert.is_nil(enc_e:get(id).args)
      assert.equal(1, assert(enc_e:drain()).failed)
      local row = enc_e:get(id)
      assert.equal("FAILED", row.status)
      assert.equal("stored arguments are corrupt; the task cannot run", row.error)
      assert.is_nil(got)
    end
  end)

  it("refuses a Python token made with another key, as Python refuses moontask's", function()
    local wire = wire_bytes(table.pack("other key"))
    local other = moontask.keygen()
    local _, token = support.pyfernet({ "encrypt", other }, wire)
    local id = enc_e:add("capture", "placeholder")
    support.sqlite_value(dir .. "/enc.db", "UPDATE tasks SET encrypted_payload = '"
      .. token:gsub("\n$", "") .. "' WHERE id = '" .. id .. "';")
    assert.equal(1, assert(enc_e:drain()).failed)
    assert.equal("cannot decrypt arguments: no configured key matches", enc_e:get(id).error)
    assert.is_nil(got)
    local mine = enc_e:add("capture", "mine")
    local code = support.pyfernet({ "decrypt", other, "--strict" },
      column(dir .. "/enc.db", "encrypted_payload", mine))
    assert.equal(1, code)
  end)
end)

describe("Fernet interop with Python's cryptography (CLI)", function()
  local function project(with_key)
    local dir = support.tmpdir()
    support.write(dir .. "/tasks.lua", support.read(FIXTURE))
    support.project(dir, string.format([[
return { database = "mt.db", scripts = { "tasks.lua" }, log = { stdout = false }, %s }
]], with_key and 'encrypt_args_key = env "MOONTASK_KEY"' or ""))
    return dir
  end

  local function add(dir, ...)
    local code, out, err = support.run({ "add", ... }, { cwd = dir, env = { MOONTASK_KEY = KEY } })
    assert.equal(0, code, err)
    return assert(out:match("^(%S+)\n$"))
  end

  local ARGS = { '"hello"', "[1,2.5,null,{\"k\":\"v\"}]", "-9007199254740993", "{}" }

  it("writes tokens Python decrypts to the bytes `add` stores without a key", function()
    local plain_dir, enc_dir = project(false), project(true)
    local wire = support.fromhex(column(plain_dir .. "/mt.db", "hex(payload)",
      add(plain_dir, "record", table.unpack(ARGS))))
    local token = column(enc_dir .. "/mt.db", "encrypted_payload",
      add(enc_dir, "record", table.unpack(ARGS)))
    local code, plain, err = support.pyfernet({ "decrypt", KEY, "--strict" }, token)
    assert.equal(0, code, err)
    assert.is_true(wire == plain)
  end)

  it("runs a task in `run --drain` from a token Python made", function()
    local plain_dir, enc_dir = project(false), project(true)
    local wire = support.fromhex(column(plain_dir .. "/mt.db", "hex(payload)",
      add(plain_dir, "record", table.unpack(ARGS))))
    local _, token = support.pyfernet({ "encrypt", KEY }, wire)
    local id = add(enc_dir, "record", '"placeholder"')
    support.sqlite_value(enc_dir .. "/mt.db", "UPDATE tasks SET encrypted_payload = '"
      .. token:gsub("\n$", "") .. "' WHERE id = '" .. id .. "';")
    local code, _, err = support.run({ "run", "--drain" },
      { cwd = enc_dir, env = { MOONTASK_KEY = KEY } })
    assert.equal(0, code, err)
    local text = assert(support.read(enc_dir .. "/record-" .. id .. ".lua"))
    assert_same({ n = 4, "hello", { 1, 2.5, [4] = { k = "v" } }, -9007199254740993, {} },
      assert(load(text, "record", "t", {}))())
  end)
end)

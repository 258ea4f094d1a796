-- luacheck: std +busted
-- Task arguments are data: every Lua value that is data survives the trip
-- through the store exactly (count, types, bytes), and anything that is not
-- data is refused at enqueue time with the path of the offending value.
local moontask = require "moontask"
local support = require "support"

local total = support.total

describe("task arguments through the Lua module", function()
  local e, got

  before_each(function()
    got = nil
    moontask.task("echo", function(...) got = table.pack(...) end)
    e = assert(moontask.open { clock = "virtual" })
  end)

  after_each(function()
    e:close()
  end)

  -- Enqueues echo(...), runs it, and returns what the task received and
  -- the stored row.
  local function roundtrip(...)
    local id = e:add("echo", ...)
    assert.equal(1, e:run_one())
    local row = assert(e:get(id))
    assert.equal("SUCCESS", row.status, row.error)
    return got, row
  end

  it("keeps trailing nils: select('#') in the task equals what was given", function()
    local args = roundtrip(1, nil, nil)
    assert.equal(3, args.n)
    assert.equal(1, args[1])
  end)

  it("keeps embedded nils in their places", function()
    local args = roundtrip(nil, "b", nil, 4, nil)
    assert.equal(5, args.n)
    assert.is_nil(args[1])
    assert.equal("b", args[2])
    assert.is_nil(args[3])
    assert.equal(4, args[4])
  end)

  it("passes only nils as that many nils", function()
    assert.equal(3, roundtrip(nil, nil, nil).n)
  end)

  it("passes no arguments as no arguments", function()
    assert.equal(0, roundtrip().n)
  end)

  it("keeps integers integers and floats floats, 1.0 included", function()
    local args = roundtrip(1, 1.0, 0, 0.0, -7, 0.1, 2 ^ 53, 9.99)
    local kinds = {}
    for i = 1, args.n do kinds[i] = math.type(args[i]) end
    assert.same({ "integer", "float", "integer", "float", "integer", "float", "float", "float" },
      kinds)
    assert.equal(0.1, args[6])
    assert.equal(2 ^ 53, args[7])
    assert.equal(9.99, args[8])
  end)

  it("keeps the extreme 64-bit integers exact", function()
    local args = roundtrip(math.maxinteger, math.mininteger, math.maxinteger - 1, -1)
    assert.equal(math.maxinteger, args[1])
    assert.equal(math.mininteger, args[2])
    assert.equal(math.maxinteger - 1, args[3])
    assert.equal(-1, args[4])
    for i = 1, 4 do assert.equal("integer", math.type(args[i])) end
  end)

  it("keeps inf, -inf, nan and -0.0 as floats", function()
    local args = roundtrip(math.huge, -math.huge, 0 / 0, -0.0)
    assert.equal(math.huge, args[1])
    assert.equal(-math.huge, args[2])
    assert.is_true(args[3] ~= args[3], "nan")
    assert.equal("float", math.type(args[3]))
    assert.equal(-math.huge, 1 / args[4], "the sign of -0.0")
  end)

  it("keeps binary strings byte for byte", function()
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    all = table.concat(all)
    local big = ("\0\255x"):rep(40000)
    local args = roundtrip("a\0b\255", "", all, big, "\0")
    assert.equal("a\0b\255", args[1])
    assert.equal("", args[2])
    assert.equal(all, args[3])
    assert.equal(big, args[4])
    assert.equal("\0", args[5])
  end)

  it("keeps booleans", function()
    local args = roundtrip(true, false)
    assert.equal(2, args.n)
    assert.is_true(args[1])
    assert.is_false(args[2])
  end)

  it("keeps nested sequences and maps", function()
    local value = {
      user = { id = 42, name = "ada", tags = { "a", "b", { deep = { 1.5, { true } } } } },
      list = { 1, 2, 3, { 4, 5 } },
      empty = {},
    }
    local args = roundtrip(value, { { { {} } } })
    assert.same(value, args[1])
    assert.same({ { { {} } } }, args[2])
    assert.equal("integer", math.type(args[1].user.id))
    assert.equal("float", math.type(args[1].user.tags[3].deep[1]))
  end)

  it("keeps an empty table a table", function()
    local args = roundtrip({})
    assert.equal("table", type(args[1]))
    assert.is_nil(next(args[1]))
  end)

  it("keeps integer, float and boolean keys apart from string keys", function()
    local value = {
      [1] = "int", ["1"] = "str", [2.5] = "float", [true] = "yes", [false] = "no",
      [-3] = "negative", [math.maxinteger] = "max", [0] = "zero",
    }
    local t = roundtrip(value)[1]
    assert.same(value, t)
    local kinds = {}
    for k in pairs(t) do kinds[#kinds + 1] = (math.type(k) or type(k)) .. " " .. tostring(k) end
    table.sort(kinds)
    assert.same({
      "boolean false", "boolean true", "float 2.5", "integer -3", "integer 0", "integer 1",
      "integer " .. math.maxinteger, "string 1",
    }, kinds)
  end)

  it("keeps sequences with holes", function()
    local t = roundtrip({ 1, nil, 3, nil, 5 })[1]
    assert.equal(1, t[1])
    assert.is_nil(t[2])
    assert.equal(3, t[3])
    assert.equal(5, t[5])
  end)

  it("accepts a table that appears twice (shared, not cyclic)", function()
    local shared = { 1, 2 }
    local args = roundtrip(shared, { a = shared, b = { shared } })
    assert.same({ 1, 2 }, args[1])
    assert.same({ a = { 1, 2 }, b = { { 1, 2 } } }, args[2])
  end)

  it("shows the stored arguments in get() with their count", function()
    local _, row = roundtrip(1, nil, "x", nil)
    assert.equal(4, row.args.n)
    assert.equal(1, row.args[1])
    assert.equal("x", row.args[3])
    assert.equal('[1,null,"x",null]', row.args_json)
  end)

  it("passes enqueue{args=} with n, keeping trailing nils", function()
    local id = e:enqueue { task = "echo", args = { "a", nil, nil, n = 3 } }
    assert.equal(1, e:run_one())
    assert.equal("SUCCESS", e:get(id).status)
    assert.equal(3, got.n)
    assert.equal("a", got[1])
  end)

  it("passes enqueue{args=} without n as a sequence", function()
    e:enqueue { task = "echo", args = { 1, 2.0, "three" } }
    assert.equal(1, e:run_one())
    assert.equal(3, got.n)
    assert.equal("float", math.type(got[2]))
  end)

  it("passes moontask.add arguments to the current engine's task", function()
    local id = moontask.add("echo", 7, nil)
    assert.equal(1, e:run_one())
    assert.equal("SUCCESS", e:get(id).status)
    assert.equal(2, got.n)
    assert.equal(7, got[1])
  end)

  describe("refuses what is not data", function()
    local function refused(pattern, ...)
      local ok, msg = pcall(e.add, e, "echo", ...)
      assert.is_false(ok, "the enqueue should have raised")
      assert.matches(pattern, tostring(msg))
      assert.equal(0, total(e:counts()), "nothing was enqueued")
      assert.equal(0, #e:tasks())
    end

    it("names the path of a function inside a table", function()
      local ok, msg = pcall(e.add, e, "echo", 1, { card = { cb = print } })
      assert.is_false(ok)
      assert.equal("argument 2: field 'card.cb' is a function", msg)
      assert.equal(0, total(e:counts()))
    end)

    it("refuses a function argument", function()
      refused("argument 1.*function", function() end)
    end)

    it("refuses userdata such as io.stdout", function()
      refused("argument 2.*userdata", "ok", io.stdout)
    end)

    it("refuses userdata nested in a table, naming the field", function()
      refused("argument 1: field 'out' is a userdata", { out = io.stdout })
    end)

    it("refuses a coroutine", function()
      refused("argument 1.*[ct][ho][rr][eo]", coroutine.create(print))
    end)

    it("refuses a cyclic table, naming where the cycle closes", function()
      local t = { child = {} }
      t.child.parent = t
      refused("argument 1: field 'child.parent'.*cycl", t)
    end)

    it("refuses a function inside a list, naming its index", function()
      refused("argument 2: field 'a.b%[2%]' is a function", 1, { a = { b = { 1, print } } })
    end)

    it("refuses a function used as a table key", function()
      refused("argument 1.*function", { [print] = 1 })
    end)

    it("refuses tables nested past the depth limit without crashing", function()
      local deep = {}
      local cur = deep
      for _ = 1, 10000 do
        cur[1] = {}
        cur = cur[1]
      end
      refused("argument 1.*deep", deep)
    end)

    it("refuses through enqueue{args=} and moontask.add too", function()
      local ok, msg = pcall(e.enqueue, e, { task = "echo", args = { 1, print, n = 2 } })
      assert.is_false(ok)
      assert.matches("argument 2.*function", msg)
      ok, msg = pcall(moontask.add, "echo", { f = print })
      assert.is_false(ok)
      assert.matches("argument 1: field 'f' is a function", msg)
      assert.equal(0, total(e:counts()))
    end)
  end)
end)

describe("task arguments through the CLI", function()
  local dir, cfg, out

  before_each(function()
    dir = support.tmpdir()
    out = dir .. "/echo.out"
    cfg = support.project(dir, ([[
return {
  database = "q.db",
  scripts = { %q },
  log = { stdout = false },
}
]]):format(support.root .. "/tests/fixtures/echo_tasks.lua"))
  end)

  after_each(support.cleanup)

  local function received()
    local code, _, err = support.run({ "-c", cfg, "run", "--drain" }, { env = { MT_ECHO_OUT = out } })
    assert.equal(0, code, err)
    local text = assert(support.read(out), "the task did not run")
    return assert(load(text))()
  end

  it("turns each JSON argument into the matching Lua value", function()
    local code, id, err = support.run({ "-c", cfg, "add", "echo", "42", '"tok_abc"', "9.99", "true",
      '[1,2,"x"]', '{"a":{"b":1},"c":[]}', "1.0", "-7" })
    assert.equal(0, code, err)
    assert.matches(support.UUID4, id:gsub("\n$", ""))
    local args = received()
    assert.equal(8, args.n)
    assert.equal(42, args[1])
    assert.equal("integer", math.type(args[1]))
    assert.equal("tok_abc", args[2])
    assert.equal(9.99, args[3])
    assert.equal("float", math.type(args[3]))
    assert.is_true(args[4])
    assert.same({ 1, 2, "x" }, args[5])
    assert.same({ a = { b = 1 }, c = {} }, args[6])
    assert.equal("float", math.type(args[7]))
    assert.equal(-7, args[8])
  end)

  it("keeps JSON nulls as nils, trailing ones counted", function()
    assert.equal(0, (support.run({ "-c", cfg, "add", "echo", "null", "1", "null", "null" })))
    local args = received()
    assert.equal(4, args.n)
    assert.is_nil(args[1])
    assert.equal(1, args[2])
  end)

  it("keeps the extreme 64-bit integers exact", function()
    assert.equal(0, (support.run({ "-c", cfg, "add", "echo", tostring(math.maxinteger),
      tostring(math.mininteger) })))
    local args = received()
    assert.equal(math.maxinteger, args[1])
    assert.equal(math.mininteger, args[2])
  end)

  it("passes no arguments as none", function()
    assert.equal(0, (support.run({ "-c", cfg, "add", "echo" })))
    assert.equal(0, received().n)
  end)

  it("decodes JSON string escapes, NUL included", function()
    assert.equal(0, (support.run({ "-c", cfg, "add", "echo", '"a\\u0000b\\n\\u00e9"' })))
    assert.equal("a\0b\n\195\169", received()[1])
  end)

  it("stores the arguments as a plain MessagePack array that any language can read", function()
    local code, id = support.run({ "-c", cfg, "add", "echo", "1", '"a"', "null", "true", "1.0",
      "-1", "[]" })
    assert.equal(0, code)
    id = id:gsub("\n$", "")
    local py = [[
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
payload, token = c.execute(
    "select payload, encrypted_payload from tasks where id = ?", (sys.argv[2],)).fetchone()
print(payload.hex(), token is None)
]]
    local pcode, hex, err = support.run({ "-c", py, dir .. "/q.db", id }, { bin = "python3" })
    assert.equal(0, pcode, err)
    -- fixarray(7): 1, "a", nil, true, float64 1.0, -1, fixarray(0)
    assert.equal("97" .. "01" .. "a161" .. "c0" .. "c3" .. "cb3ff0000000000000" .. "ff" .. "90"
      .. " True\n", hex)
  end)

  it("refuses an integer that does not fit in 64 bits, with exit code 2", function()
    local code, stdout, err = support.run({ "-c", cfg, "add", "echo", "9223372036854775808" })
    assert.equal(2, code)
    assert.equal("", stdout)
    assert.matches("argument 1", err)
  end)
end)

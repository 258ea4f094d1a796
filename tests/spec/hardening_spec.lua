-- luacheck: std +busted
-- Bad input found by trying to break moontask as a new user: each case
-- gets a clear error and the right exit code, and never leaks a secret,
-- changes a foreign file or loses a task.
local moontask = require "moontask"
local support = require "support"

describe("moontask with hostile input", function()
  local dir

  local function mt(...)
    return support.run({ "-c", dir .. "/moontask.lua", ... }, { cwd = dir })
  end

  local function config(text)
    support.write(dir .. "/moontask.lua", text)
  end

  before_each(function()
    dir = support.tmpdir()
    support.write(dir .. "/tasks.lua", [[
local moontask = require "moontask"
moontask.task("ok", function() end)
moontask.task("ansi", function() error("\27[31mred\27[0m alert", 0) end)
]])
    config('return { database = "q.db", scripts = { "tasks.lua" }, log = { stdout = false } }')
  end)

  after_each(support.cleanup)

  it("does not print an inline key when the config has a syntax error", function()
    local key = moontask.keygen()
    config('return { database = "q.db", encrypt_args_key = "' .. key .. ' }')
    local code, out, err = mt("list")
    assert.equal(2, code)
    assert.matches("moontask.lua:1:", err, 1, true)
    assert.is_nil((out .. err):find(key:sub(1, 12), 1, true))
  end)

  it("does not quote an odd map key of the arguments in an error", function()
    local e = assert(moontask.open { scripts = { dir .. "/tasks.lua" } })
    local ok, msg = pcall(e.add, e, "ok", { ["hunter2-SECRET-xyz"] = { cb = print } })
    e:close()
    assert.is_false(ok)
    assert.equal("argument 1: field '[<string key>].cb' is a function", msg)
  end)

  it("refuses a foreign SQLite database without changing a byte of it", function()
    local db = dir .. "/other.db"
    local code = support.sqlite(db, "CREATE TABLE users(id); INSERT INTO users VALUES (1);")
    assert.equal(0, code)
    local before = support.read(db)
    config('return { database = "other.db", scripts = { "tasks.lua" } }')
    local rc, _, err = mt("list")
    assert.equal(2, rc)
    assert.matches("is not a moontask database", err, 1, true)
    assert.equal(before, support.read(db))
  end)

  it("refuses an empty, missing-folder or folder database path with exit 2", function()
    for _, db in ipairs { '""', '"no/such/folder/q.db"', '"."' } do
      config("return { database = " .. db .. ", scripts = { 'tasks.lua' } }")
      local code, _, err = mt("add", "ok")
      assert.equal(2, code, db .. ": " .. err)
      assert.matches("database", err, 1, true)
    end
  end)

  it("refuses os.exit in a config and in a task script at load time", function()
    config('os.exit(0) return { database = "q.db" }')
    local code, _, err = mt("list")
    assert.equal(2, code)
    assert.matches("os.exit is not allowed", err, 1, true)
    config('return { database = "q.db", scripts = { "exits.lua" } }')
    support.write(dir .. "/exits.lua", "os.exit(5)")
    code, _, err = mt("add", "ok")
    assert.equal(2, code)
    assert.matches("os.exit called while loading a task script", err, 1, true)
  end)

  it("refuses an unknown task name even when the scripts register nothing", function()
    support.write(dir .. "/empty.lua", "-- no tasks yet\n")
    config('return { database = "q.db", scripts = { "empty.lua" } }')
    local code, out, err = mt("add", "whatever")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("unknown task 'whatever'", err, 1, true)
    local _, list = mt("list", "--json")
    assert.same({}, support.json(list))
  end)

  it("runs a script with -c CONFIG lua SCRIPT, and exits 2 for a missing script", function()
    support.write(dir .. "/producer.lua", [[
local moontask = require "moontask"
local e = assert(moontask.open { config = os.getenv("MOONTASK_CONFIG") })
e:add("ok")
e:close()
]])
    local code, _, err = mt("lua", dir .. "/producer.lua")
    assert.equal(0, code, err)
    local _, list = mt("list", "--json")
    assert.equal(1, #support.json(list))
    code = mt("lua", dir .. "/missing.lua")
    assert.equal(2, code)
  end)

  it("escapes terminal control bytes from task errors in text output and the log file", function()
    config('return { database = "q.db", scripts = { "tasks.lua" }, '
      .. 'log = { stdout = true, file = "mt.log" } }')
    local _, idout = mt("add", "ansi")
    local id = idout:match("%S+")
    local _, run_out = mt("run", "--drain")
    local _, list = mt("list")
    local _, show = mt("show", id)
    local _, logs = mt("logs", id)
    for _, text in ipairs { run_out, list, show, logs, support.read(dir .. "/mt.log") } do
      assert.is_nil(text:find("\27", 1, true))
      assert.truthy(text:find("\\x1b[31mred", 1, true))
    end
    local _, json = mt("show", id, "--json")
    assert.equal("\27[31mred\27[0m alert", support.json(json).error)
  end)

  it("refuses a delay or run_at that is not a number of seconds", function()
    local e = assert(moontask.open { scripts = { dir .. "/tasks.lua" } })
    assert.has_error(function() e:enqueue { task = "ok", delay = 0 / 0 } end)
    assert.has_error(function() e:enqueue { task = "ok", delay = -1 } end)
    assert.has_error(function() e:enqueue { task = "ok", run_at = 0 / 0 } end)
    assert.equal(0, #e:tasks())
    e:close()
  end)

  it("names the task whose arguments no key opens when rotate-key stops", function()
    local old, new = moontask.keygen(), moontask.keygen()
    config(string.format(
      'return { database = "q.db", scripts = { "tasks.lua" }, encrypt_args_key = %q }', old))
    local _, idout = mt("add", "ok", "1")
    local id = idout:match("%S+")
    config(string.format('return { database = "q.db", scripts = { "tasks.lua" }, '
      .. 'encrypt_args_keys = { %q } }', new))
    local code, _, err = mt("rotate-key")
    assert.equal(1, code)
    assert.matches("task " .. id .. ": no configured key opens its arguments", err, 1, true)
    assert.is_nil(err:find(old:sub(1, 12), 1, true))
  end)

  it("refuses a :memory: database in a config file (the task would vanish)", function()
    config('return { database = ":memory:", scripts = { "tasks.lua" } }')
    local code, out, err = mt("add", "ok")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches(":memory:", err, 1, true)
  end)

  it("refuses to add plain arguments to a queue holding encrypted ones", function()
    local key = moontask.keygen()
    config(string.format(
      'return { database = "q.db", scripts = { "tasks.lua" }, encrypt_args_key = %q }', key))
    assert.equal(0, (mt("add", "ok", '"secret-value"')))
    config('return { database = "q.db", scripts = { "tasks.lua" } }')
    local code, _, err = mt("add", "ok", '"another-secret"')
    assert.equal(2, code)
    assert.matches("encrypted arguments but this config has no encryption key", err, 1, true)
    assert.equal("0", support.sqlite_value(dir .. "/q.db",
      "SELECT count(*) FROM tasks WHERE payload IS NOT NULL"))
  end)

  it("refuses task names with control characters", function()
    local e = assert(moontask.open {})
    assert.has_error(function() e:add("evil\27]0;pwned\7") end)
    assert.has_error(function() moontask.task("bad\nname", function() end) end)
    assert.equal(0, #e:tasks())
    e:close()
  end)

  it("keeps working when its stdout pipe closes (SIGPIPE)", function()
    config('return { database = "q.db", scripts = { "tasks.lua" }, log = { stdout = true } }')
    local e = assert(moontask.open { config = dir .. "/moontask.lua", log = { stdout = false } })
    for _ = 1, 200 do e:add("ok") end
    e:close()
    local ok, _, code = os.execute("cd " .. support.quote(dir) .. " && bash -c 'set -o pipefail; "
      .. support.quote(support.bin):gsub("'", "'\\''") .. " run --drain | head -c 1 >/dev/null'")
    assert.is_true(ok, "exit " .. tostring(code))
    local _, json = mt("list", "--json", "--status", "SUCCESS")
    assert.equal(200, #support.json(json))
  end)

  it("times out a task whose xpcall message handler loops, and keeps xpcall working", function()
    local e = assert(moontask.open {})
    local seen = {}
    moontask.task("xp_loop", { timeout = 0.2 }, function()
      xpcall(function() while true do end end, function() while true do end end)
    end)
    moontask.task("xp_normal", function(a)
      local ok, msg = xpcall(function(x) error("boom " .. x, 0) end,
        function(m) return "handled: " .. m end, a)
      seen.failure = { ok, msg }
      seen.success = table.pack(xpcall(function(x, y) return x + y, "two" end, print, 1, 2))
      local co = coroutine.wrap(function()
        return xpcall(function() return coroutine.yield("paused") end, print)
      end)
      seen.yield = { co(), select(2, co("resumed")) }
    end)
    local slow = e:add("xp_loop")
    local normal = e:add("xp_normal", "x")
    e:drain()
    assert.equal("FAILED", e:get(slow).status)
    assert.matches("timed out", e:get(slow).error, 1, true)
    assert.equal("SUCCESS", e:get(normal).status, e:get(normal).error)
    assert.same({ false, "handled: boom x" }, seen.failure)
    assert.same({ true, 3, "two", n = 3 }, seen.success)
    assert.same({ "paused", "resumed" }, seen.yield)
    e:close()
  end)
end)


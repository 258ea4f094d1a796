-- luacheck: std +busted
-- The config file: where it is found, what it can say, and the clear error
-- (naming the file and the line or key, exit code 2) for each mistake.
local moontask = require "moontask"
local support = require "support"

local TASKS = [[
local moontask = require "moontask"
moontask.task("ok", function() end)
moontask.task("fails", function() error("no") end)
]]

describe("the config file", function()
  local dir

  before_each(function()
    dir = support.tmpdir()
    support.write(dir .. "/tasks.lua", TASKS)
  end)

  after_each(support.cleanup)

  -- Writes dir/NAME with text and runs `moontask -c dir/NAME ARGS...`.
  local function with_config(name, text, ...)
    local path = support.write(dir .. "/" .. name, text)
    local code, out, err = support.run({ "-c", path, ... })
    return code, out, err, path
  end

  describe("is found", function()
    it("as ./moontask.lua by default", function()
      support.project(dir, 'return { database = "default.db", scripts = { "tasks.lua" } }')
      local code, out, err = support.run({ "add", "ok" }, { cwd = dir, env = { MOONTASK_CONFIG = false } })
      assert.equal(0, code, err)
      assert.matches(support.UUID4, (out:gsub("\n$", "")))
      assert.truthy(support.read(dir .. "/default.db"), "the database is next to the config")
    end)

    it("through MOONTASK_CONFIG", function()
      support.write(dir .. "/other.lua", 'return { database = "env.db", scripts = { "tasks.lua" } }')
      local code, _, err = support.run({ "add", "ok" },
        { cwd = "/", env = { MOONTASK_CONFIG = dir .. "/other.lua" } })
      assert.equal(0, code, err)
      assert.truthy(support.read(dir .. "/env.db"))
    end)

    it("through -c, which wins over MOONTASK_CONFIG", function()
      support.write(dir .. "/c.lua", 'return { database = "c.db", scripts = { "tasks.lua" } }')
      support.write(dir .. "/env.lua", 'return { database = "env.db", scripts = { "tasks.lua" } }')
      local code, _, err = support.run({ "-c", dir .. "/c.lua", "add", "ok" },
        { cwd = "/", env = { MOONTASK_CONFIG = dir .. "/env.lua" } })
      assert.equal(0, code, err)
      assert.truthy(support.read(dir .. "/c.db"))
      assert.is_nil(support.read(dir .. "/env.db"))
    end)
  end)

  describe("resolves paths", function()
    it("of scripts and database relative to the config's folder, not the working one", function()
      os.execute("mkdir -p " .. support.quote(dir .. "/sub"))
      local cfg = support.write(dir .. "/rel.lua",
        'return { database = "sub/q.db", scripts = { "tasks.lua" } }')
      local code, out, err = support.run({ "-c", cfg, "add", "ok" }, { cwd = "/" })
      assert.equal(0, code, err)
      assert.matches(support.UUID4, (out:gsub("\n$", "")))
      assert.truthy(support.read(dir .. "/sub/q.db"))
    end)

    it("of glob patterns in scripts", function()
      os.execute("mkdir -p " .. support.quote(dir .. "/tasks.d"))
      support.write(dir .. "/tasks.d/a.lua", 'require("moontask").task("from_a", function() end)')
      support.write(dir .. "/tasks.d/b.lua", 'require("moontask").task("from_b", function() end)')
      local cfg = support.write(dir .. "/glob.lua",
        'return { database = "q.db", scripts = { "tasks.d/*.lua" }, log = { stdout = false } }')
      assert.equal(0, (support.run({ "-c", cfg, "add", "from_a" }, { cwd = "/" })))
      assert.equal(0, (support.run({ "-c", cfg, "add", "from_b" }, { cwd = "/" })))
      local code, _, err = support.run({ "-c", cfg, "run", "--drain" }, { cwd = "/" })
      assert.equal(0, code, err)
    end)
  end)

  describe("values", function()
    it("reads an environment variable with env", function()
      support.write(dir .. "/e.lua", 'return { database = env "MT_SPEC_DB", scripts = { "tasks.lua" } }')
      local code, _, err = support.run({ "-c", dir .. "/e.lua", "add", "ok" },
        { env = { MT_SPEC_DB = dir .. "/from-env.db" } })
      assert.equal(0, code, err)
      assert.truthy(support.read(dir .. "/from-env.db"))
    end)

    it("applies defaults to tasks that set no options of their own", function()
      local cfg = support.write(dir .. "/d.lua", [[
return { database = "q.db", scripts = { "tasks.lua" }, log = { stdout = false },
         defaults = { retries = 2, delay = 0 } }
]])
      local _, id = support.run({ "-c", cfg, "add", "fails" })
      id = id:gsub("\n$", "")
      assert.equal(1, (support.run({ "-c", cfg, "run", "--drain" })))
      local _, out = support.run({ "-c", cfg, "show", id, "--json" })
      local row = support.json(out)
      assert.equal("FAILED", row.status)
      assert.equal(3, row.attempts)
    end)

    it("is read by moontask.open{config=}", function()
      local cfg = support.write(dir .. "/open.lua", [[
return { database = "open.db", scripts = { "tasks.lua" }, log = { stdout = false },
         defaults = { retries = 4 } }
]])
      local e = assert(moontask.open { config = cfg, clock = "virtual" })
      local id = e:add("fails")
      e:run_one()
      assert.equal(4, e:get(id).retries)
      e:close()
      assert.truthy(support.read(dir .. "/open.db"))
    end)

    it("lets moontask.open options win over the file's", function()
      local cfg = support.write(dir .. "/open2.lua",
        'return { database = "file.db", scripts = { "tasks.lua" }, log = { stdout = false } }')
      local e = assert(moontask.open { config = cfg, database = dir .. "/explicit.db" })
      e:add("ok")
      e:close()
      assert.truthy(support.read(dir .. "/explicit.db"))
      assert.is_nil(support.read(dir .. "/file.db"))
    end)
  end)

  describe("errors, each with exit code 2", function()
    it("names an unknown key and suggests the right one", function()
      local code, out, err, path = with_config("c.lua",
        'return { databse = "q.db", scripts = { "tasks.lua" } }', "list")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches(path, err, 1, true)
      assert.matches("databse", err)
      assert.matches("did you mean 'database'", err)
    end)

    it("names an unknown nested key with its parent", function()
      local code, _, err = with_config("c.lua", 'return { log = { levle = "info" } }', "list")
      assert.equal(2, code)
      assert.matches("log%.levle", err)
      assert.matches("level", err)
    end)

    it("names a key of the wrong type and what it should be", function()
      local code, _, err, path = with_config("c.lua", 'return { workers = "4" }', "list")
      assert.equal(2, code)
      assert.matches(path, err, 1, true)
      assert.matches("'workers'", err)
      assert.matches("whole number", err)
    end)

    it("refuses an out-of-range value", function()
      assert.equal(2, (with_config("c.lua", "return { workers = 0 }", "list")))
      assert.equal(2, (with_config("c.lua", "return { defaults = { jitter = 1.5 } }", "list")))
      assert.equal(2, (with_config("c.lua", "return { defaults = { retries = -1 } }", "list")))
      assert.equal(2, (with_config("c.lua", "return { poll_interval = 0 }", "list")))
      assert.equal(2, (with_config("c.lua", 'return { log = { level = "loud" } }', "list")))
    end)

    it("names a wrong type inside defaults", function()
      local code, _, err = with_config("c.lua", "return { defaults = { retries = 1.5 } }", "list")
      assert.equal(2, code)
      assert.matches("defaults%.retries", err)
    end)

    it("gives the line of a syntax error", function()
      local code, _, err = with_config("c.lua", 'return {\n  database = "q.db",\n  workers = = 2,\n}\n',
        "list")
      assert.equal(2, code)
      assert.matches("c%.lua:3:", err)
    end)

    it("gives the line of a runtime error in the config", function()
      local code, _, err = with_config("c.lua", "local x\n\nreturn { database = x.path }\n", "list")
      assert.equal(2, code)
      assert.matches("c%.lua:3:", err)
    end)

    it("refuses a config that does not return a table", function()
      local code, _, err = with_config("c.lua", "return 42", "list")
      assert.equal(2, code)
      assert.matches("table", err)
    end)

    it("names a missing config file", function()
      local missing = dir .. "/nope.lua"
      local code, out, err = support.run({ "-c", missing, "list" })
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches(missing, err, 1, true)
    end)

    it("names the missing default ./moontask.lua", function()
      local code, _, err = support.run({ "list" }, { cwd = dir, env = { MOONTASK_CONFIG = false } })
      assert.equal(2, code)
      assert.matches("moontask.lua", err, 1, true)
    end)

    it("names a missing script file", function()
      local code, _, err = with_config("c.lua", 'return { scripts = { "tasks.lua", "gone.lua" } }',
        "list")
      assert.equal(2, code)
      assert.matches("gone.lua", err, 1, true)
      assert.matches("scripts%[2%]", err)
    end)

    it("names a glob pattern that matches nothing", function()
      local code, _, err = with_config("c.lua", 'return { scripts = { "none/*.lua" } }', "list")
      assert.equal(2, code)
      assert.matches("none/%*%.lua", err)
    end)

    it("names an unset environment variable read with env, and the line", function()
      local code, out, err = support.run(
        { "-c", support.write(dir .. "/c.lua", 'return {\n  database = env "MT_SPEC_UNSET_VAR",\n}\n'),
          "list" }, { env = { MT_SPEC_UNSET_VAR = false } })
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("MT_SPEC_UNSET_VAR", err)
      assert.matches("c%.lua:2:", err)
    end)

    it("names a task script that errors at load time, for add and run", function()
      support.write(dir .. "/broken.lua", "local x = 1\nerror('script exploded')\n")
      local path = support.write(dir .. "/c.lua",
        'return { database = "q.db", scripts = { "broken.lua" }, log = { stdout = false } }')
      local code, out, err = support.run({ "-c", path, "add", "ok" })
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("broken.lua:2:", err, 1, true)
      assert.matches("script exploded", err)
      code, out, err = support.run({ "-c", path, "run", "--drain" })
      assert.equal(2, code)
      assert.not_matches("finished", out)
      assert.matches("broken.lua:2:", err, 1, true)
    end)

    it("names a task script with a syntax error", function()
      support.write(dir .. "/broken.lua", "local moontask = require 'moontask'\nmoontask.task(\n")
      local path = support.write(dir .. "/c.lua",
        'return { database = "q.db", scripts = { "broken.lua" }, log = { stdout = false } }')
      local code, _, err = support.run({ "-c", path, "run", "--drain" })
      assert.equal(2, code)
      assert.matches("broken.lua", err, 1, true)
    end)

    it("raises from moontask.open{config=} with the same message", function()
      local path = support.write(dir .. "/c.lua", 'return { databse = "q.db" }')
      local ok, msg = pcall(moontask.open, { config = path })
      assert.is_false(ok)
      assert.matches("did you mean 'database'", msg)
    end)

    it("raises from moontask.open for an unknown option", function()
      local ok, msg = pcall(moontask.open, { databse = ":memory:" })
      assert.is_false(ok)
      assert.matches("databse", msg)
    end)
  end)
end)

-- luacheck: std +busted
-- The `moontask` command line as a subprocess: what it prints on stdout,
-- the JSON shapes of list/show/logs, and its exit codes
-- (0 ok, 1 a task or engine failure, 2 usage or config error).
local support = require "support"

local TASKS = [[
local moontask = require "moontask"
moontask.task("hello", function(name, n)
  print("hello", name, n)
  moontask.log("structured", { level = "warning", order = 7, who = name })
end)
moontask.task("bad", function() error("bad on purpose") end)
moontask.task("ok", function() end)
moontask.task("twice", { retries = 2, delay = 0.01 }, function() error("still failing") end)
moontask.task("flaky_file", { retries = 1 }, function(path)
  local f = io.open(path)
  if not f then
    io.open(path, "w"):close()
    error("first attempt fails")
  end
  f:close()
end)
]]

local STATUSES = { PENDING = true, RUNNING = true, SUCCESS = true, FAILED = true, INTERRUPTED = true }

describe("the moontask command", function()
  local dir, cfg

  -- Runs moontask with the spec's config; returns code, stdout, stderr.
  local function mt(...) return support.mt(cfg, ...) end

  -- Enqueues a task and returns its id (asserting the add succeeded).
  local function add(...) return support.add(cfg, ...) end

  local function show(id) return support.show(cfg, id) end

  before_each(function()
    dir = support.tmpdir()
    cfg = support.project(dir, [[
return {
  database = "q.db",
  scripts = { "tasks.lua" },
  log = { stdout = false },
  poll_interval = 0.01,
}
]], { ["tasks.lua"] = TASKS })
  end)

  after_each(support.cleanup)

  describe("add", function()
    it("prints the new task's id, a UUID v4, and nothing else on stdout", function()
      local code, out, err = mt("add", "hello", '"ada"', "3")
      assert.equal(0, code, err)
      assert.matches("^[^\n]*\n$", out, "exactly one line")
      assert.matches(support.UUID4, (out:gsub("\n$", "")))
      assert.equal("", err)
    end)

    it("stores the task as PENDING with its arguments", function()
      local id = add("hello", '"ada"', "3")
      local row = show(id)
      assert.equal(id, row.id)
      assert.equal("hello", row.task)
      assert.equal("PENDING", row.status)
      assert.equal(0, row.attempts)
      assert.same({ "ada", 3 }, row.args)
    end)

    it("rejects an unknown task with exit code 2 and enqueues nothing", function()
      local code, out, err = mt("add", "no_such_task")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("unknown task 'no_such_task'", err)
      local _, list = mt("list", "--json")
      assert.same({}, support.json(list))
    end)

    it("rejects an argument that is not JSON with exit code 2, without echoing it", function()
      local code, out, err = mt("add", "hello", "secret_tok_123")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("argument 1", err)
      assert.not_matches("secret_tok_123", err)
      local _, list = mt("list", "--json")
      assert.same({}, support.json(list))
    end)

    it("needs a task name", function()
      local code, out = mt("add")
      assert.equal(2, code)
      assert.equal("", out)
    end)
  end)

  describe("run --drain", function()
    it("exits 0 when every task succeeded", function()
      local a = add("hello", '"ada"', "1")
      local b = add("ok")
      local code, _, err = mt("run", "--drain")
      assert.equal(0, code, err)
      assert.equal("SUCCESS", show(a).status)
      assert.equal("SUCCESS", show(b).status)
    end)

    it("exits 1 when any task failed, and still runs the others", function()
      local a = add("bad")
      local b = add("ok")
      local code = mt("run", "--drain")
      assert.equal(1, code)
      local row = show(a)
      assert.equal("FAILED", row.status)
      assert.matches("bad on purpose", row.error)
      assert.equal("SUCCESS", show(b).status)
    end)

    it("exits 0 with nothing to do", function()
      assert.equal(0, (mt("run", "--drain")))
    end)

    it("waits for retries that are due later, then reports the final outcome", function()
      local id = add("twice")
      local code = mt("run", "--drain")
      assert.equal(1, code)
      local row = show(id)
      assert.equal("FAILED", row.status)
      assert.equal(3, row.attempts)
    end)

    it("exits 0 when a task succeeded after a retry", function()
      local id = add("flaky_file", '"' .. dir .. '/marker"')
      local code, _, err = mt("run", "--drain")
      assert.equal(0, code, err)
      local row = show(id)
      assert.equal("SUCCESS", row.status)
      assert.equal(2, row.attempts)
    end)

    it("does not wait for a task whose first run is scheduled later", function()
      local moontask = require "moontask"
      local e = assert(moontask.open { config = cfg })
      local later = e:enqueue { task = "ok", delay = 3600 }
      local now = e:add("ok")
      e:close()
      -- Bounded by timeout(1): the failure mode is waiting for an hour.
      local code = support.run({ "3", support.bin, "-c", cfg, "run", "--drain" }, { bin = "timeout" })
      assert.equal(0, code, "exit code " .. tostring(code) .. " (124: still waiting)")
      assert.equal("SUCCESS", show(now).status)
      assert.equal("PENDING", show(later).status)
    end)

    it("fails a stored task whose script is no longer loaded, naming the task", function()
      local id = add("ok")
      support.write(dir .. "/tasks.lua", TASKS:gsub('moontask.task%("ok", function%(%) end%)\n', ""))
      assert.equal(1, (mt("run", "--drain")))
      local row = show(id)
      assert.equal("FAILED", row.status)
      assert.matches("unknown task 'ok'", row.error)
    end)

    it("lets task scripts require Debian-packaged Lua modules, with no LUA_PATH set", function()
      support.write(dir .. "/tasks.lua", TASKS .. [[
local json = require "dkjson"     -- pure Lua (lua-dkjson)
local system = require "system"   -- C module (lua-system)
moontask.task("libs", function()
  assert(json.encode({ 1 }) == "[1]")
  assert(type(system.gettime()) == "number")
end)
]])
      local env = { LUA_PATH = false, LUA_CPATH = false }
      local code, out, err = support.run({ "-c", cfg, "add", "libs" }, { env = env })
      assert.equal(0, code, err)
      local id = out:gsub("\n$", "")
      local rcode, _, rerr = support.run({ "-c", cfg, "run", "--drain" }, { env = env })
      assert.equal(0, rcode, rerr)
      assert.equal("SUCCESS", show(id).status)
    end)

    it("runs with several workers", function()
      local ids = {}
      for i = 1, 6 do ids[i] = add("ok") end
      local code, _, err = mt("run", "--drain", "--workers", "3")
      assert.equal(0, code, err)
      for _, id in ipairs(ids) do assert.equal("SUCCESS", show(id).status) end
    end)

    it("rejects a bad --workers value with exit code 2", function()
      assert.equal(2, (mt("run", "--drain", "--workers", "0")))
      assert.equal(2, (mt("run", "--drain", "--workers", "many")))
      assert.equal(2, (mt("run", "--drain", "--workers")))
    end)

    it("keeps print() of a task off stdout when log.stdout is false", function()
      add("hello", '"ada"', "1")
      local code, out = mt("run", "--drain")
      assert.equal(0, code)
      assert.not_matches("hello\tada", out)
    end)

    it("writes task log entries to the log file, one line each, with the task id", function()
      cfg = support.write(dir .. "/filelog.lua", [[
return {
  database = "q.db",
  scripts = { "tasks.lua" },
  log = { stdout = false, file = "tasks.log" },
}
]])
      local id = add("hello", '"ada"', "1")
      assert.equal(0, (mt("run", "--drain")))
      local text = assert(support.read(dir .. "/tasks.log"), "no log file next to the config")
      local lines = {}
      for line in text:gmatch("[^\n]+") do
        if line:find(id, 1, true) then lines[#lines + 1] = line end
      end
      assert.equal(2, #lines, text)
      assert.matches("structured", lines[2])
      assert.matches("order", lines[2])
    end)

    it("writes task log entries to stdout when log.stdout is true", function()
      cfg = support.write(dir .. "/outlog.lua", [[
return { database = "q.db", scripts = { "tasks.lua" }, log = { stdout = true } }
]])
      local id = add("hello", '"ada"', "1")
      local code, out = mt("run", "--drain")
      assert.equal(0, code)
      assert.matches(id, out, 1, true)
      assert.matches("structured", out)
    end)

    it("drops entries below log.level from the sinks but keeps them in the store", function()
      support.write(dir .. "/tasks.lua", TASKS .. [[
moontask.task("quiet", function() moontask.log("debug-detail", { level = "debug" }) end)
]])
      cfg = support.write(dir .. "/lvl.lua", [[
return { database = "q.db", scripts = { "tasks.lua" },
         log = { stdout = true, level = "warning" } }
]])
      local id = add("quiet")
      local code, out = mt("run", "--drain")
      assert.equal(0, code)
      assert.not_matches("debug%-detail", out)
      local _, logs = mt("logs", id, "--json")
      assert.equal("debug-detail", support.json(logs)[1].message)
    end)
  end)

  describe("list", function()
    it("prints an aligned table with a header and one row per task", function()
      local a = add("ok")
      local b = add("bad")
      mt("run", "--drain")
      local code, out = mt("list")
      assert.equal(0, code)
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.matches("^ID%s+TASK%s+STATUS", lines[1])
      local col = lines[1]:find("STATUS", 1, true)
      local found = 0
      for _, line in ipairs(lines) do
        if line:find(a, 1, true) then
          found = found + 1
          assert.equal(col, line:find("SUCCESS", 1, true), "aligned: " .. line)
        elseif line:find(b, 1, true) then
          found = found + 1
          assert.equal(col, line:find("FAILED", 1, true), "aligned: " .. line)
        end
      end
      assert.equal(2, found)
    end)

    it("prints a JSON array of tasks with the documented fields and no traceback", function()
      local a = add("hello", '"ada"', "1")
      local b = add("bad")
      mt("run", "--drain")
      local code, out = mt("list", "--json")
      assert.equal(0, code)
      local rows = support.json(out)
      assert.equal(2, #rows)
      local by = {}
      for _, row in ipairs(rows) do
        by[row.id] = row
        for _, k in ipairs { "id", "task", "status", "attempts", "created_at", "run_at", "error",
          "args" } do
          assert.is_not_nil(row[k], "field " .. k)
        end
        assert.is_nil(row.traceback)
        assert.is_true(STATUSES[row.status])
        assert.equal("number", type(row.created_at))
        assert.equal("number", type(row.run_at))
      end
      assert.equal("SUCCESS", by[a].status)
      assert.equal(support.null, by[a].error)
      assert.same({ "ada", 1 }, by[a].args)
      assert.equal("FAILED", by[b].status)
      assert.matches("bad on purpose", by[b].error)
      assert.same({}, by[b].args)
    end)

    it("filters by --status and --task", function()
      local a = add("ok")
      local b = add("bad")
      local c = add("hello", '"x"', "1")
      mt("run", "--drain")
      local _, out = mt("list", "--json", "--status", "FAILED")
      local rows = support.json(out)
      assert.equal(1, #rows)
      assert.equal(b, rows[1].id)
      _, out = mt("list", "--json", "--task", "ok")
      rows = support.json(out)
      assert.equal(1, #rows)
      assert.equal(a, rows[1].id)
      _, out = mt("list", "--json", "--status", "SUCCESS", "--task", "hello")
      rows = support.json(out)
      assert.equal(1, #rows)
      assert.equal(c, rows[1].id)
    end)

    it("prints an empty JSON array when nothing matches", function()
      local code, out = mt("list", "--json", "--task", "nothing")
      assert.equal(0, code)
      assert.equal("[]\n", out)
    end)

    it("rejects an unknown status with exit code 2 and a clean message", function()
      local code, out, err = mt("list", "--status", "DONE")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("DONE", err)
      assert.not_matches("%.lua:%d+:", err, "no Lua source position in a usage error")
    end)

    it("rejects an unknown option with exit code 2", function()
      assert.equal(2, (mt("list", "--colour")))
    end)
  end)

  describe("show", function()
    it("prints one JSON object with the documented fields", function()
      local id = add("bad")
      mt("run", "--drain")
      local row = show(id)
      assert.equal(id, row.id)
      assert.equal("bad", row.task)
      assert.equal("FAILED", row.status)
      assert.equal(1, row.attempts)
      assert.equal("number", type(row.created_at))
      assert.equal("number", type(row.run_at))
      assert.matches("bad on purpose", row.error)
      assert.matches("stack traceback", row.traceback)
      assert.same({}, row.args)
    end)

    it("shows null error and traceback for a task that has not failed", function()
      local id = add("ok")
      local row = show(id)
      assert.equal(support.null, row.error)
      assert.equal(support.null, row.traceback)
    end)

    it("shows times as Unix seconds", function()
      local before = os.time()
      local id = add("ok")
      local row = show(id)
      assert.is_true(math.abs(row.created_at - before) < 3600, tostring(row.created_at))
      assert.is_true(row.run_at >= row.created_at)
    end)

    it("prints status, attempts, times, error, traceback and arguments as text", function()
      local id = add("bad")
      mt("run", "--drain")
      local code, out = mt("show", id)
      assert.equal(0, code)
      assert.matches(id, out, 1, true)
      assert.matches("FAILED", out)
      assert.matches("attempts:%s+1", out)
      assert.matches("bad on purpose", out)
      assert.matches("stack traceback", out)
      assert.matches("created_at", out)
    end)

    it("exits 1 for an unknown id", function()
      local code, out, err = mt("show", "00000000-0000-4000-8000-000000000000")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("no task", err)
    end)

    it("exits 2 without an id", function()
      assert.equal(2, (mt("show")))
    end)
  end)

  describe("logs", function()
    it("prints a JSON array of entries with attempt, time, level, message and extras", function()
      local id = add("hello", '"ada"', "5")
      mt("run", "--drain")
      local code, out = mt("logs", id, "--json")
      assert.equal(0, code)
      local entries = support.json(out)
      assert.equal(2, #entries)
      for _, e in ipairs(entries) do
        assert.equal(1, e.attempt)
        assert.equal("number", type(e.time))
        assert.equal("table", type(e.extras))
      end
      assert.equal("info", entries[1].level)
      assert.equal("hello\tada\t5", entries[1].message)
      assert.equal("warning", entries[2].level)
      assert.equal("structured", entries[2].message)
      assert.same({ order = 7, who = "ada" }, entries[2].extras)
    end)

    it("renders empty extras as a JSON object", function()
      support.write(dir .. "/tasks.lua", TASKS .. [[
moontask.task("lv", function()
  moontask.log("with level only", { level = "error" })
  print("printed")
end)
]])
      local id = add("lv")
      mt("run", "--drain")
      local _, out = mt("logs", id, "--json")
      assert.not_matches('"extras":%[%]', out)
      assert.matches('"extras":{}', out)
    end)

    it("prints one text line per entry with level and attempt", function()
      local id = add("hello", '"ada"', "5")
      mt("run", "--drain")
      local code, out = mt("logs", id)
      assert.equal(0, code)
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(2, #lines)
      assert.matches("INFO", lines[1])
      assert.matches("hello", lines[1])
      assert.matches("WARNING", lines[2])
      assert.matches("#1", lines[2])
    end)

    it("exits 1 for an unknown id", function()
      local code, out, err = mt("logs", "00000000-0000-4000-8000-000000000000", "--json")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("no task", err)
    end)

    it("prints an empty array for a task without entries", function()
      local id = add("ok")
      local code, out = mt("logs", id, "--json")
      assert.equal(0, code)
      assert.equal("[]\n", out)
    end)
  end)

  describe("retry", function()
    it("moves a FAILED task back to PENDING, and it runs again", function()
      local id = add("bad")
      mt("run", "--drain")
      assert.equal("FAILED", show(id).status)
      local code, _, err = mt("retry", id)
      assert.equal(0, code, err)
      assert.equal("PENDING", show(id).status)
      assert.equal(1, (mt("run", "--drain")))
      assert.equal(2, show(id).attempts)
    end)

    it("refuses to retry a task that succeeded, with exit code 1", function()
      local id = add("ok")
      mt("run", "--drain")
      local code, _, err = mt("retry", id)
      assert.equal(1, code)
      assert.matches("SUCCESS", err)
      assert.equal("SUCCESS", show(id).status)
    end)

    it("exits 1 for an unknown id", function()
      assert.equal(1, (mt("retry", "00000000-0000-4000-8000-000000000000")))
    end)
  end)

  describe("usage", function()
    it("exits 2 for an unknown command", function()
      local code, out, err = mt("frobnicate")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("frobnicate", err)
    end)

    it("exits 2 with usage when no command is given", function()
      local code, out, err = support.run({})
      assert.equal(2, code)
      assert.matches("usage", out .. err)
    end)

    it("exits 0 for help", function()
      local code, out = support.run({ "help" })
      assert.equal(0, code)
      assert.matches("usage", out)
    end)

    it("exits 2 when -c has no file", function()
      assert.equal(2, (support.run({ "-c" })))
    end)

    it("prints a new key with keygen", function()
      local code, out = support.run({ "keygen" })
      assert.equal(0, code)
      assert.matches("^[%w_%-]+=*\n$", out)
    end)
  end)
end)

-- luacheck: std +busted
-- The durable queue through the Lua module: registering and enqueueing,
-- statuses after each kind of outcome, the retry schedule (read from the
-- store, with a virtual clock: nothing here sleeps), captured logs and the
-- task context.
local moontask = require "moontask"
local support = require "support"

local total = support.total

describe("the queue", function()
  local e

  before_each(function()
    moontask.task("ok", function() end)
    moontask.task("boom", function() error("boom") end)
    e = assert(moontask.open { clock = "virtual" })
  end)

  after_each(function()
    e:close()
    support.cleanup()
  end)

  describe("enqueueing", function()
    it("returns a UUID v4 and stores the task as PENDING", function()
      local id = e:add("ok")
      assert.matches(support.UUID4, id)
      local row = assert(e:get(id))
      assert.equal(id, row.id)
      assert.equal("ok", row.task)
      assert.equal("PENDING", row.status)
      assert.equal(0, row.attempts)
      assert.equal(e:now(), row.created_at)
      assert.equal(e:now(), row.run_at)
    end)

    it("gives every task its own id", function()
      local seen = {}
      for _ = 1, 200 do
        local id = e:add("ok")
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end)

    it("rejects an unknown task name and enqueues nothing", function()
      local ok, msg = pcall(e.add, e, "no_such_task", 1)
      assert.is_false(ok)
      assert.matches("unknown task 'no_such_task'", msg)
      assert.equal(0, total(e:counts()))
    end)

    it("rejects an unknown task name in enqueue{} too", function()
      local ok, msg = pcall(e.enqueue, e, { task = "nope" })
      assert.is_false(ok)
      assert.matches("unknown task 'nope'", msg)
      assert.equal(0, total(e:counts()))
    end)

    it("rejects an unknown enqueue option", function()
      local ok, msg = pcall(e.enqueue, e, { task = "ok", retires = 3 })
      assert.is_false(ok)
      assert.matches("retires", msg)
      assert.equal(0, total(e:counts()))
    end)

    it("writes the task to the database file before add returns", function()
      local dir = support.tmpdir()
      local db = dir .. "/q.db"
      local a = assert(moontask.open { database = db, clock = "virtual" })
      local id = a:add("ok", "payload")
      -- A second connection, as another process would see it.
      local b = assert(moontask.open { database = db })
      local row = assert(b:get(id))
      assert.equal("PENDING", row.status)
      assert.equal("payload", row.args[1])
      b:close()
      a:close()
    end)

    it("keeps the database file in WAL mode", function()
      local dir = support.tmpdir()
      local a = assert(moontask.open { database = dir .. "/wal.db" })
      a:add("ok")
      a:close()
      local header = assert(support.read(dir .. "/wal.db")):sub(19, 20)
      assert.equal("\2\2", header, "SQLite header bytes 18-19 are 2 in WAL mode")
    end)

    it("waits `delay` seconds before the first run", function()
      local id = e:enqueue { task = "ok", delay = 30 }
      assert.equal(e:now() + 30, e:get(id).run_at)
      assert.equal(0, e:run_one())
      e:advance(29)
      assert.equal(0, e:run_one())
      e:advance(1)
      assert.equal(1, e:run_one())
      assert.equal("SUCCESS", e:get(id).status)
    end)

    it("runs at `run_at`, a Unix time", function()
      local at = e:now() + 100
      local id = e:enqueue { task = "ok", run_at = at }
      assert.equal(at, e:get(id).run_at)
      e:advance(99.5)
      assert.equal(0, e:run_one())
      e:advance(0.5)
      assert.equal(1, e:run_one())
      assert.equal("SUCCESS", e:get(id).status)
    end)

    it("runs tasks in the order they are due", function()
      local order = {}
      moontask.task("rec", function(x) order[#order + 1] = x end)
      e:enqueue { task = "rec", args = { "late" }, delay = 20 }
      e:enqueue { task = "rec", args = { "first" } }
      e:enqueue { task = "rec", args = { "middle" }, delay = 10 }
      e:enqueue { task = "rec", args = { "second" } }
      e:advance(30)
      assert.equal(4, e:drain().ran)
      assert.same({ "first", "second", "middle", "late" }, order)
    end)

    it("lets a running task enqueue another task", function()
      local child_ran = false
      moontask.task("child", function() child_ran = true end)
      moontask.task("parent", function()
        assert(moontask.add("child"))
      end)
      local id = e:add("parent")
      local r = e:drain()
      assert.equal("SUCCESS", e:get(id).status)
      assert.equal(2, r.ran)
      assert.is_true(child_ran)
    end)

    it("uses the newest registration of a task name", function()
      local which
      moontask.task("twice", function() which = "old" end)
      moontask.task("twice", function() which = "new" end)
      e:add("twice")
      e:run_one()
      assert.equal("new", which)
    end)
  end)

  describe("statuses", function()
    it("marks a task that returns SUCCESS, with its times", function()
      local id = e:add("ok")
      assert.equal(1, e:run_one())
      local row = e:get(id)
      assert.equal("SUCCESS", row.status)
      assert.equal(1, row.attempts)
      assert.is_nil(row.error)
      assert.equal(e:now(), row.started_at)
      assert.equal(e:now(), row.finished_at)
      assert.same({ SUCCESS = 1, PENDING = 0, RUNNING = 0, FAILED = 0, INTERRUPTED = 0 },
        e:counts())
    end)

    it("marks a task that raises FAILED, with the error and a traceback", function()
      local id = e:add("boom")
      assert.equal(1, e:run_one())
      local row = e:get(id)
      assert.equal("FAILED", row.status)
      assert.equal(1, row.attempts)
      assert.matches("boom$", row.error)
      assert.matches("queue_spec.lua:%d+: boom", row.error)
      assert.matches("stack traceback", row.traceback)
      assert.matches("queue_spec.lua:%d+", row.traceback)
    end)

    it("records a table raised as an error in a readable way", function()
      moontask.task("tbl", function() error({ code = 42 }) end)
      local id = e:add("tbl")
      e:run_one()
      local row = e:get(id)
      assert.equal("FAILED", row.status)
      assert.matches("table", row.error)
    end)

    it("uses __tostring of an error object", function()
      moontask.task("obj", function()
        error(setmetatable({}, { __tostring = function() return "custom failure" end }))
      end)
      local id = e:add("obj")
      e:run_one()
      assert.equal("custom failure", e:get(id).error)
    end)

    it("fails a task that calls os.exit, and the process lives on", function()
      moontask.task("quit", function() os.exit(3) end)
      local id = e:add("quit")
      local after = e:add("ok")
      assert.equal(2, e:drain().ran)
      local row = e:get(id)
      assert.equal("FAILED", row.status)
      assert.matches("os.exit", row.error)
      assert.equal("SUCCESS", e:get(after).status)
      assert.equal("function", type(os.exit), "os.exit is restored after the task")
    end)

    it("restores print and os.exit after a task that failed", function()
      local p, x = print, os.exit
      e:add("boom")
      e:run_one()
      assert.equal(p, print)
      assert.equal(x, os.exit)
    end)

    it("fails a task that runs past its timeout, even inside pcall, and runs the next", function()
      moontask.task("stuck", { timeout = 0.2 }, function()
        while true do pcall(function() while true do end end) end
      end)
      local id = e:add("stuck")
      local after = e:add("ok")
      local r = e:drain()
      assert.equal(2, r.ran)
      local row = e:get(id)
      assert.equal("FAILED", row.status)
      assert.matches("timed out", row.error)
      assert.equal("SUCCESS", e:get(after).status)
    end)

    it("counts by status", function()
      e:add("ok")
      e:add("ok")
      e:add("boom")
      e:enqueue { task = "ok", delay = 10 }
      e:drain()
      local c = e:counts()
      assert.equal(2, c.SUCCESS)
      assert.equal(1, c.FAILED)
      assert.equal(1, c.PENDING)
      assert.equal(0, c.RUNNING)
    end)

    it("lists tasks by status and by task name", function()
      local a = e:add("ok")
      local b = e:add("boom")
      e:drain()
      local c = e:add("ok")
      local failed = e:tasks { status = "FAILED" }
      assert.equal(1, #failed)
      assert.equal(b, failed[1].id)
      local oks = e:tasks { task = "ok" }
      local ids = {}
      for _, row in ipairs(oks) do ids[#ids + 1] = row.id end
      table.sort(ids)
      local want = { a, c }
      table.sort(want)
      assert.same(want, ids)
      assert.equal(1, #e:tasks { limit = 1 })
    end)

    it("rejects an unknown status in tasks{}", function()
      assert.has_error(function() e:tasks { status = "DONE" } end)
    end)

    it("returns nil and a message for an unknown id", function()
      local row, msg = e:get("00000000-0000-4000-8000-000000000000")
      assert.is_nil(row)
      assert.matches("no task", msg)
    end)

    it("drain reports what it ran", function()
      e:add("ok")
      e:add("ok")
      e:add("boom")
      local r = e:drain()
      assert.same({ 3, 2, 1, 0 }, { r.ran, r.succeeded, r.failed, r.retried })
      r = e:drain()
      assert.same({ 0, 0, 0, 0 }, { r.ran, r.succeeded, r.failed, r.retried })
    end)
  end)

  describe("retries", function()
    local calls

    before_each(function()
      calls = 0
      moontask.task("flaky", { retries = 3, delay = 10, backoff = 2 }, function()
        calls = calls + 1
        error("attempt " .. calls .. " failed")
      end)
    end)

    -- Runs the due attempt of id and returns its row and the delay until
    -- its next run_at (measured from the moment it finished).
    local function attempt(id)
      assert.equal(1, e:run_one())
      local row = e:get(id)
      return row, row.run_at - e:now()
    end

    it("schedules each retry at now + delay * backoff^(n-1)", function()
      local id = e:add("flaky")
      local row, wait = attempt(id)
      assert.equal("PENDING", row.status)
      assert.equal(1, row.attempts)
      assert.equal(10, wait)
      assert.equal(0, e:run_one(), "nothing runs before run_at")
      e:advance(wait)
      row, wait = attempt(id)
      assert.equal(2, row.attempts)
      assert.equal(20, wait)
      e:advance(wait)
      row, wait = attempt(id)
      assert.equal(3, row.attempts)
      assert.equal(40, wait)
      e:advance(wait)
      row = attempt(id)
      assert.equal("FAILED", row.status)
      assert.equal(4, row.attempts)
      assert.equal(4, calls)
      e:advance(1000)
      assert.equal(0, e:run_one(), "a FAILED task is not retried again")
    end)

    it("records the last error and a traceback on each failed attempt", function()
      local id = e:add("flaky")
      local row = attempt(id)
      assert.matches("attempt 1 failed", row.error)
      assert.matches("stack traceback", row.traceback)
      e:advance(10)
      row = attempt(id)
      assert.matches("attempt 2 failed", row.error)
    end)

    it("caps the delay at max_delay", function()
      moontask.task("capped", { retries = 4, delay = 10, backoff = 2, max_delay = 25 }, function()
        error("no")
      end)
      local id = e:add("capped")
      local waits = {}
      for i = 1, 4 do
        local _, wait = attempt(id)
        waits[i] = wait
        e:advance(wait)
      end
      assert.same({ 10, 20, 25, 25 }, waits)
      assert.equal("FAILED", attempt(id).status)
    end)

    it("retries at once with the default delay of 0", function()
      moontask.task("quick", { retries = 2 }, function() error("no") end)
      local id = e:add("quick")
      local r = e:drain()
      assert.equal(3, r.ran)
      assert.equal(2, r.retried)
      assert.equal(1, r.failed)
      assert.equal("FAILED", e:get(id).status)
      assert.equal(3, e:get(id).attempts)
    end)

    it("does not retry by default", function()
      local id = e:add("boom")
      assert.equal(1, e:drain().ran)
      assert.equal("FAILED", e:get(id).status)
      assert.equal(0, e:get(id).retries)
    end)

    it("succeeds on a later attempt and keeps the attempt count", function()
      local n = 0
      moontask.task("second_time", { retries = 2, delay = 5 }, function()
        n = n + 1
        if n == 1 then error("first try fails") end
      end)
      local id = e:add("second_time")
      e:drain()
      assert.equal("PENDING", e:get(id).status)
      e:advance(5)
      e:drain()
      local row = e:get(id)
      assert.equal("SUCCESS", row.status)
      assert.equal(2, row.attempts)
    end)

    it("gives an exactly reproducible schedule with jitter 0", function()
      moontask.task("exact", { retries = 1, delay = 7.25, jitter = 0 }, function() error("x") end)
      for _ = 1, 5 do
        local id = e:add("exact")
        local _, wait = attempt(id)
        assert.equal(7.25, wait)
      end
    end)

    it("keeps a jittered delay within delay * (1 +- jitter)", function()
      moontask.task("jittery", { retries = 1, delay = 100, jitter = 0.5 }, function()
        error("x")
      end)
      local distinct = {}
      for _ = 1, 20 do
        local _, wait = attempt(e:add("jittery"))
        assert.is_true(wait >= 50 and wait <= 150, "delay " .. wait)
        distinct[wait] = true
      end
      local n = 0
      for _ in pairs(distinct) do n = n + 1 end
      assert.is_true(n > 1, "jitter should vary the delay")
    end)

    it("lets enqueue{} override the task's retry options", function()
      local id = e:enqueue { task = "flaky", retries = 1, retry_delay = 3, backoff = 1 }
      local row, wait = attempt(id)
      assert.equal(3, wait)
      assert.equal(1, row.retries)
      e:advance(wait)
      assert.equal("FAILED", attempt(id).status)
    end)

    it("applies the engine's defaults where the task sets none", function()
      local d = assert(moontask.open { clock = "virtual", defaults = { retries = 2, delay = 4 } })
      moontask.task("plain", function() error("no") end)
      local id = d:add("plain")
      d:run_one()
      local row = d:get(id)
      assert.equal("PENDING", row.status)
      assert.equal(2, row.retries)
      assert.equal(4, row.run_at - d:now())
      d:close()
    end)

    it("lets the task's own options win over the defaults", function()
      local d = assert(moontask.open { clock = "virtual", defaults = { retries = 5, delay = 4 } })
      local id = d:add("flaky")
      d:run_one()
      local row = d:get(id)
      assert.equal(3, row.retries)
      assert.equal(10, row.run_at - d:now())
      d:close()
    end)

    it("rejects bad task options when the task is registered", function()
      assert.has_error(function() moontask.task("bad", { retries = -1 }, print) end)
      assert.has_error(function() moontask.task("bad", { retries = 1.5 }, print) end)
      assert.has_error(function() moontask.task("bad", { delay = "10" }, print) end)
      assert.has_error(function() moontask.task("bad", { jitter = 2 }, print) end)
      assert.has_error(function() moontask.task("bad", { retires = 1 }, print) end)
      assert.has_error(function() moontask.task("bad", { timeout = math.huge }, print) end)
    end)

    it("puts a FAILED task back to PENDING with retry()", function()
      local id = e:add("boom")
      e:run_one()
      assert.equal("FAILED", e:get(id).status)
      assert.is_true(e:retry(id))
      local row = e:get(id)
      assert.equal("PENDING", row.status)
      assert.equal(1, e:run_one())
      assert.equal(2, e:get(id).attempts)
    end)

    it("refuses to retry a task that succeeded or is still pending", function()
      local done = e:add("ok")
      e:run_one()
      local waiting = e:add("ok")
      local ok, msg = e:retry(done)
      assert.is_nil(ok)
      assert.matches("SUCCESS", msg)
      ok = e:retry(waiting)
      assert.is_nil(ok)
      assert.equal("SUCCESS", e:get(done).status)
    end)

    it("grants a retried task its full retries again", function()
      local id = e:add("flaky")
      for _ = 1, 4 do
        e:run_one()
        e:advance(100)
      end
      assert.equal("FAILED", e:get(id).status)
      e:retry(id)
      e:run_one()
      local row = e:get(id)
      assert.equal("PENDING", row.status, "the first attempt after retry() may be retried")
      assert.equal(5, row.attempts)
      assert.equal(10, row.run_at - e:now())
    end)
  end)

  describe("logs", function()
    it("captures print() inside a task as an info entry", function()
      moontask.task("talk", function(name) print("hello", name, 3, nil) end)
      local id = e:add("talk", "ada")
      e:run_one()
      local logs = e:logs(id)
      assert.equal(1, #logs)
      assert.equal("info", logs[1].level)
      assert.equal("hello\tada\t3\tnil", logs[1].message)
      assert.equal(1, logs[1].attempt)
      assert.equal(e:now(), logs[1].time)
    end)

    it("logs a message given without fields at level info", function()
      moontask.task("plain_log", function() moontask.log("just a message") end)
      local id = e:add("plain_log")
      e:run_one()
      local row = e:get(id)
      assert.equal("SUCCESS", row.status, row.error)
      local logs = e:logs(id)
      assert.equal(1, #logs)
      assert.equal("info", logs[1].level)
      assert.equal("just a message", logs[1].message)
    end)

    it("keeps levels and structured extras of moontask.log", function()
      moontask.task("levels", function()
        moontask.log("d", { level = "debug" })
        moontask.log("i")
        moontask.log("w", { level = "warning", order = 17, who = "ada" })
        moontask.task_log("e", { level = "error", nested = { 1, 2 } })
      end)
      local id = e:add("levels")
      e:run_one()
      local logs = e:logs(id)
      local seen = {}
      for i, l in ipairs(logs) do
        seen[i] = { l.level, l.message, support.json(l.extras_json) }
      end
      assert.same({
        { "debug", "d", {} },
        { "info", "i", {} },
        { "warning", "w", { order = 17, who = "ada" } },
        { "error", "e", { nested = { 1, 2 } } },
      }, seen)
    end)

    it("numbers log entries by attempt", function()
      moontask.task("twice", { retries = 1 }, function()
        moontask.log("attempt " .. moontask.context().attempt)
        error("again")
      end)
      local id = e:add("twice")
      e:drain()
      -- The engine may add entries of its own about the failures.
      local mine = {}
      for _, l in ipairs(e:logs(id)) do
        if l.message:match("^attempt %d$") then mine[#mine + 1] = { l.attempt, l.message } end
      end
      assert.same({ { 1, "attempt 1" }, { 2, "attempt 2" } }, mine)
    end)

    it("keeps the logs of a failed attempt", function()
      moontask.task("noisy_fail", function()
        print("before the failure")
        error("x")
      end)
      local id = e:add("noisy_fail")
      e:run_one()
      local found = 0
      for _, l in ipairs(e:logs(id)) do
        if l.message == "before the failure" then
          found = found + 1
          assert.equal("info", l.level)
          assert.equal(1, l.attempt)
        end
      end
      assert.equal(1, found)
    end)

    it("keeps newlines and tabs of a log message intact", function()
      moontask.task("bin", function() moontask.log("line1\nline2\ttab", { level = "info" }) end)
      local id = e:add("bin")
      e:run_one()
      local logs = e:logs(id)
      assert.equal(1, #logs)
      assert.equal("line1\nline2\ttab", logs[1].message)
    end)

    it("raises on a bad level", function()
      moontask.task("badlevel", function() moontask.log("x", { level = "loud" }) end)
      local id = e:add("badlevel")
      e:run_one()
      local row = e:get(id)
      assert.equal("FAILED", row.status)
      assert.matches("level", row.error)
      assert.has_error(function() moontask.log("x", { level = "loud" }) end)
    end)

    it("does not send print() inside a task to stdout", function()
      local dir = support.tmpdir()
      local script = support.write(dir .. "/p.lua", [[
local moontask = require "moontask"
moontask.task("talk", function() print("captured-text") end)
local e = assert(moontask.open{})
local id = e:add("talk")
e:run_one()
io.write("logs=", #e:logs(id), "\n")
print("after-task")
]])
      local code, out, err = support.run({ "lua", script })
      assert.equal(0, code, err)
      assert.not_matches("captured%-text", out)
      assert.matches("logs=1", out)
      assert.matches("after%-task", out, "print is restored after the task")
    end)

    it("returns an empty list for a task with no entries", function()
      local id = e:add("ok")
      e:run_one()
      assert.same({}, e:logs(id))
    end)
  end)

  describe("context", function()
    it("describes the running task inside it", function()
      local ctx
      moontask.task("ctx", { retries = 1 }, function()
        ctx = moontask.context()
        if ctx.attempt == 1 then error("again") end
      end)
      local id = e:add("ctx")
      e:run_one()
      e:run_one()
      assert.same({ task_id = id, task = "ctx", attempt = 2 }, ctx)
    end)

    it("is nil outside a task", function()
      assert.is_nil(moontask.context())
      e:add("ok")
      e:run_one()
      assert.is_nil(moontask.context(), "and again after a task ran")
    end)
  end)

  describe("the engine object", function()
    it("raises on use after close", function()
      local d = assert(moontask.open {})
      d:close()
      assert.has_error(function() d:add("ok") end)
      assert.has_error(function() d:run_one() end)
    end)

    it("keeps working when it was opened inside a coroutine that has ended", function()
      -- Run in a subprocess: the failure mode is a crash.
      local dir = support.tmpdir()
      local script = support.write(dir .. "/co.lua", [[
local moontask = require "moontask"
local ran = false
moontask.task("t", function() ran = true end)
local e
coroutine.wrap(function() e = assert(moontask.open{}) end)()
collectgarbage() collectgarbage()
local junk = {}
for i = 1, 20000 do junk[i] = { i } end
junk = nil
collectgarbage()
e:add("t")
assert(e:run_one() == 1)
assert(ran)
e:close()
io.write("ok\n")
]])
      local code, out, err = support.run({ "lua", script })
      assert.equal(0, code, "exit code " .. tostring(code) .. ": " .. err)
      assert.equal("ok\n", out)
    end)
  end)
end)

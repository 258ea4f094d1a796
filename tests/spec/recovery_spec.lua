-- luacheck: std +busted
-- `moontask run` as a real process: a SIGKILL at any moment loses no task,
-- SIGTERM/SIGINT let running tasks finish, several engines on one database
-- run each task exactly once, and a serving engine picks up new tasks.
-- Waiting is done by polling the store with a bound, never by timing.
local moontask = require "moontask"
local support = require "support"

local TASKS = [[
local moontask = require "moontask"

-- Waits (in a shell sleep, so it is not a busy loop) until the file exists.
local function wait_for(path)
  while true do
    local f = io.open(path)
    if f then f:close() return end
    os.execute("sleep 0.02")
  end
end

moontask.task("gated", function(path) wait_for(path) end)
moontask.task("gated_requeue", { requeue_on_interrupt = true }, function(path) wait_for(path) end)
moontask.task("forever", function() while true do end end)
moontask.task("forever_requeue", { requeue_on_interrupt = true }, function()
  while true do end
end)
moontask.task("ok", function() end)
moontask.task("mark", function(path)
  -- A little work, so that two engines overlap.
  local t = os.clock()
  while os.clock() - t < 0.002 do end
  local f = assert(io.open(path, "a"))
  f:write(moontask.context().task_id, "\n")
  f:close()
end)
]]

describe("moontask run", function()
  local dir, go, procs

  local function config(extra)
    return support.write(dir .. "/moontask.lua", ([[
return {
  database = "q.db",
  scripts = { "tasks.lua" },
  log = { stdout = false },
  poll_interval = 0.02,
  %s
}
]]):format(extra or ""))
  end

  local function mt(...) return support.mt(dir .. "/moontask.lua", ...) end

  local function add(...) return support.add(dir .. "/moontask.lua", ...) end

  local function show(id) return support.show(dir .. "/moontask.lua", id) end

  local function status(id) return show(id).status end

  local function counts() return support.counts(dir .. "/moontask.lua") end

  local function spawn(...)
    local h = support.spawn({ "-c", dir .. "/moontask.lua", ... }, { dir = dir, cwd = dir })
    procs[#procs + 1] = h
    return h
  end

  local function wait_status(id, want, limit)
    return support.wait_until(function() return status(id) == want end, limit or 10)
  end

  before_each(function()
    dir = support.tmpdir()
    go = dir .. "/go"
    procs = {}
    support.write(dir .. "/tasks.lua", TASKS)
  end)

  after_each(function()
    support.write(go, "")
    for _, h in ipairs(procs) do h.stop() end
    support.cleanup()
  end)

  describe("after a SIGKILL", function()
    it("marks the dead engine's running tasks INTERRUPTED or requeues them, losing none", function()
      config("workers = 2,")
      local plain = add("gated", '"' .. go .. '"')
      local requeue = add("gated_requeue", '"' .. go .. '"')
      local others = {}
      for i = 1, 3 do others[i] = add("ok") end
      local h = spawn("run")
      assert.truthy(wait_status(plain, "RUNNING"), "the task never started")
      assert.truthy(wait_status(requeue, "RUNNING"), "the task was never claimed")
      h:signal("KILL")
      assert.equal(128 + 9, h:wait())
      -- The store still says RUNNING: nobody has noticed the death yet.
      assert.equal("RUNNING", status(plain))

      support.write(go, "")
      local code, _, err = mt("run", "--drain")
      assert.is_true(code == 0 or code == 1, err)
      local row = show(plain)
      assert.equal("INTERRUPTED", row.status)
      assert.matches("interrupt", row.error)
      row = show(requeue)
      assert.equal("SUCCESS", row.status)
      assert.equal(2, row.attempts)

      local c, n = counts()
      assert.equal(5, n, "every enqueued task is still there")
      assert.is_nil(c.RUNNING)
      assert.is_nil(c.PENDING)
      assert.equal(5, (c.SUCCESS or 0) + (c.INTERRUPTED or 0))
      for _, id in ipairs(others) do
        local s = status(id)
        assert.is_true(s == "SUCCESS" or s == "INTERRUPTED", s)
      end
    end)

    it("lets an INTERRUPTED task be retried to success", function()
      config()
      local id = add("gated", '"' .. go .. '"')
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("KILL")
      h:wait()
      assert.equal(0, (mt("run", "--drain")))
      assert.equal("INTERRUPTED", status(id))
      support.write(go, "")
      assert.equal(0, (mt("retry", id)))
      assert.equal("PENDING", status(id))
      assert.equal(0, (mt("run", "--drain")))
      assert.equal("SUCCESS", status(id))
    end)

    it("keeps the outcome of tasks that finished before the kill", function()
      config("workers = 1,")
      local quick = { add("ok"), add("ok") }
      local slow = add("gated", '"' .. go .. '"')
      local h = spawn("run")
      assert.truthy(wait_status(slow, "RUNNING"), "the slow task never started")
      -- The quick tasks were due first; once the slow one runs they are done,
      -- and their outcome must already be in the store.
      local recorded = support.wait_until(function()
        return status(quick[1]) == "SUCCESS" and status(quick[2]) == "SUCCESS"
      end, 2)
      h:signal("KILL")
      h:wait()
      mt("run", "--drain")
      assert.truthy(recorded, "finished tasks were still RUNNING in the store while another ran")
      assert.equal("SUCCESS", status(quick[1]))
      assert.equal("SUCCESS", status(quick[2]))
    end)
  end)

  describe("on SIGTERM", function()
    it("lets the running task finish, claims nothing new, and exits 0", function()
      config("shutdown_grace = 30,")
      local id = add("gated", '"' .. go .. '"')
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("TERM")
      support.sleep(0.2) -- let the engine see the signal before more work appears
      local late = add("ok")
      assert.is_nil(h.exited(), "the engine waits for its running task")
      support.write(go, "")
      assert.equal(0, h:wait())
      assert.equal("SUCCESS", status(id))
      assert.equal("PENDING", status(late), "no task is claimed after the signal")
    end)

    it("marks a task still running after shutdown_grace INTERRUPTED and exits 0", function()
      config("shutdown_grace = 0.2,")
      local id = add("forever")
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("TERM")
      assert.equal(0, h:wait())
      local row = show(id)
      assert.equal("INTERRUPTED", row.status)
      assert.matches("interrupt", row.error)
    end)

    it("leaves queued tasks that never started PENDING, with no attempt used", function()
      config("shutdown_grace = 0.2, workers = 1,")
      local id = add("forever")
      local queued = { add("ok"), add("ok") }
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("TERM")
      assert.equal(0, h:wait())
      assert.equal("INTERRUPTED", status(id))
      for _, q in ipairs(queued) do
        local row = show(q)
        assert.equal("PENDING", row.status)
        assert.equal(0, row.attempts, "an attempt that never ran was counted")
      end
    end)

    it("puts a task with requeue_on_interrupt back to PENDING instead", function()
      config("shutdown_grace = 0.2,")
      local id = add("forever_requeue")
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("TERM")
      assert.equal(0, h:wait())
      assert.equal("PENDING", status(id))
    end)
  end)

  describe("on SIGINT", function()
    it("stops like SIGTERM and exits 0", function()
      config("shutdown_grace = 0.2,")
      local id = add("forever")
      local h = spawn("run")
      assert.truthy(wait_status(id, "RUNNING"))
      h:signal("INT")
      assert.equal(0, h:wait())
      assert.equal("INTERRUPTED", status(id))
    end)
  end)

  describe("serving", function()
    it("picks up a task added by another process", function()
      config()
      local h = spawn("run")
      local id = add("ok")
      assert.truthy(wait_status(id, "SUCCESS"), "the serving engine never ran the task")
      h:signal("TERM")
      assert.equal(0, h:wait())
    end)

    it("does not hold a quick task behind a slow one when another worker is free", function()
      config("workers = 2,")
      local slow = add("gated", '"' .. go .. '"')
      local quick = add("ok")
      local h = spawn("run")
      assert.truthy(wait_status(slow, "RUNNING"))
      local done = wait_status(quick, "SUCCESS", 2)
      support.write(go, "")
      h:signal("TERM")
      h:wait()
      assert.truthy(done, "the quick task waited for the slow one although a worker was idle")
    end)
  end)

  describe("with two engines on one database", function()
    it("runs every task exactly once", function()
      local cfg = config("workers = 2,")
      local marks = dir .. "/marks.txt"
      local N = 300
      local ids = {}
      local e = assert(moontask.open { config = cfg })
      for i = 1, N do ids[i] = e:add("mark", marks) end
      e:close()

      local a = spawn("run", "--drain")
      local b = spawn("run", "--drain")
      assert.equal(0, a:wait(30), a.err())
      assert.equal(0, b:wait(30), b.err())

      local seen, lines = {}, 0
      for id in (support.read(marks) or ""):gmatch("[^\n]+") do
        lines = lines + 1
        assert.is_nil(seen[id], "task " .. id .. " ran twice")
        seen[id] = true
      end
      assert.equal(N, lines)
      for _, id in ipairs(ids) do assert.is_true(seen[id], "task " .. id .. " never ran") end
      local c, n = counts()
      assert.equal(N, n)
      assert.equal(N, c.SUCCESS)
    end)
  end)
end)

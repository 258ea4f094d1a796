-- luacheck: std +busted
-- The group-commit engine at small N, counting instead of timing: with
-- producers adding while the engine runs, every task runs exactly once;
-- after a SIGKILL in the middle of a burn-down no task is lost, and only the
-- few whose start or result was not yet committed run again (at-least-once,
-- bounded by one group commit). (Throughput figures live in bench/.)
local support = require "support"

local TASKS = [[
local moontask = require "moontask"
moontask.task("mark", function(path)
  local f = assert(io.open(path, "a"))
  f:write(moontask.context().task_id, "\n")
  f:close()
end)
]]

local PRODUCER = [[
local moontask = require "moontask"
local cfg, n, marks, out = ...
local e = assert(moontask.open { config = cfg })
local f = assert(io.open(out, "w"))
for _ = 1, tonumber(n) do f:write(e:add("mark", marks), "\n") end
f:close()
e:close()
]]

describe("the dispatcher's group commit", function()
  local dir, procs

  local function spawn(...)
    local h = support.spawn({ ... }, { dir = dir, cwd = dir })
    procs[#procs + 1] = h
    return h
  end

  local function lines(path)
    local t = {}
    for line in (support.read(path) or ""):gmatch("[^\n]+") do t[#t + 1] = line end
    return t
  end

  local function counts() return support.counts(dir .. "/moontask.lua") end

  before_each(function()
    dir = support.tmpdir()
    procs = {}
    support.write(dir .. "/tasks.lua", TASKS)
    support.write(dir .. "/producer.lua", PRODUCER)
    support.write(dir .. "/moontask.lua", [[
      return { database = "q.db", scripts = { "tasks.lua" }, workers = 2, batch = 32,
               poll_interval = 0.01, log = { stdout = false } }
    ]])
  end)

  after_each(function()
    for _, h in ipairs(procs) do h.stop() end
    support.cleanup()
  end)

  it("runs every task exactly once while producers add concurrently", function()
    local marks = dir .. "/marks.txt"
    local engine = spawn("run")
    local p1 = spawn("lua", dir .. "/producer.lua", dir .. "/moontask.lua", "800", marks,
      dir .. "/ids1.txt")
    local p2 = spawn("lua", dir .. "/producer.lua", dir .. "/moontask.lua", "800", marks,
      dir .. "/ids2.txt")
    assert.equal(0, p1:wait(60), p1.err())
    assert.equal(0, p2:wait(60), p2.err())
    assert.truthy(support.wait_until(function()
      return (counts().SUCCESS or 0) == 1600
    end, 60), "not every task finished")
    engine:signal("TERM")
    assert.equal(0, engine:wait(30), engine.err())

    local added = {}
    for _, f in ipairs { "/ids1.txt", "/ids2.txt" } do
      for _, id in ipairs(lines(dir .. f)) do added[id] = 0 end
    end
    local ran = lines(marks)
    assert.equal(1600, #ran)
    for _, id in ipairs(ran) do
      assert.is_not_nil(added[id], "unknown task id ran: " .. id)
      added[id] = added[id] + 1
    end
    for id, n in pairs(added) do
      assert.equal(1, n, "task " .. id .. " ran " .. n .. " times")
    end
  end)

  it("loses nothing when killed in the middle of a burn-down; re-runs at most a round", function()
    local marks = dir .. "/marks.txt"
    local p = spawn("lua", dir .. "/producer.lua", dir .. "/moontask.lua", "3000", marks,
      dir .. "/ids.txt")
    assert.equal(0, p:wait(60), p.err())
    local engine = spawn("run")
    assert.truthy(support.wait_until(function() return #lines(marks) >= 300 end, 30))
    engine:signal("KILL")
    engine:wait(10)
    local code, _, err = support.run({ "-c", dir .. "/moontask.lua", "run", "--drain" },
      { cwd = dir })
    assert.is_true(code == 0 or code == 1, err)

    local c, n = counts()
    assert.equal(3000, n)
    assert.equal(3000, (c.SUCCESS or 0) + (c.INTERRUPTED or 0))
    local runs, twice = {}, 0
    for _, id in ipairs(lines(marks)) do
      runs[id] = (runs[id] or 0) + 1
      assert.is_true(runs[id] <= 2, "task " .. id .. " ran " .. runs[id] .. " times")
      if runs[id] == 2 then twice = twice + 1 end
    end
    -- Only work not yet committed when the engine died runs again: what the
    -- ready queue (batch = 32) and the two workers held across at most two
    -- rounds (one committing, one gathering), far below the 3000 tasks.
    assert.is_true(twice <= 100, twice .. " tasks ran twice")
    local _, out = support.run({ "-c", dir .. "/moontask.lua", "list", "--json" })
    for _, row in ipairs(support.json(out)) do
      if row.status == "SUCCESS" then
        assert.is_truthy(runs[row.id], "task " .. row.id .. " is SUCCESS but never ran")
      else
        -- INTERRUPTED: it had started (it may have been killed before its mark).
        assert.is_true((runs[row.id] or 0) <= 1, "INTERRUPTED task " .. row.id .. " ran again")
      end
    end
  end)
end)

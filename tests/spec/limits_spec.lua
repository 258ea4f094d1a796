-- luacheck: std +busted
-- Limits on a task: a timeout that even a pcall loop cannot escape, a
-- memory cap, and os.exit; in each case the task fails clearly and the
-- engine (and its worker) carries on with the next task.
local moontask = require "moontask"
local support = require "support"

describe("task limits in the Lua module", function()
  local e

  before_each(function()
    moontask.task("ok", function() end)
    e = assert(moontask.open { clock = "virtual" })
  end)

  after_each(function()
    e:close()
    support.cleanup()
  end)

  -- Enqueues the task, then an `ok` task; runs both; returns the first row.
  local function run_then_ok(name)
    local id = e:add(name)
    local after = e:add("ok")
    assert.equal(2, e:drain().ran)
    assert.equal("SUCCESS", e:get(after).status, "the engine runs the next task")
    return e:get(id)
  end

  it("fails a busy loop with a timeout error", function()
    moontask.task("spin", { timeout = 0.2 }, function() while true do end end)
    local row = run_then_ok("spin")
    assert.equal("FAILED", row.status)
    assert.matches("timed out", row.error)
  end)

  it("fails a loop that keeps catching the timeout with pcall", function()
    moontask.task("stubborn", { timeout = 0.2 }, function()
      while true do pcall(function() while true do end end) end
    end)
    local row = run_then_ok("stubborn")
    assert.equal("FAILED", row.status)
    assert.matches("timed out", row.error)
  end)

  it("fails a loop that catches the timeout with xpcall and a handler that loops", function()
    moontask.task("handler_loop", { timeout = 0.2 }, function()
      while true do
        xpcall(function() while true do end end, function() for _ = 1, 1e6 do end end)
      end
    end)
    local row = run_then_ok("handler_loop")
    assert.equal("FAILED", row.status)
    assert.matches("timed out", row.error)
  end)

  it("fails a busy loop inside a coroutine the task created", function()
    moontask.task("co_spin", { timeout = 0.2 }, function()
      coroutine.wrap(function() while true do end end)()
    end)
    local row = run_then_ok("co_spin")
    assert.equal("FAILED", row.status)
    assert.matches("timed out", row.error)
  end)

  it("fails a busy loop inside a coroutine created before the task started", function()
    -- In a subprocess, bounded by timeout(1): the failure mode is a hang.
    local dir = support.tmpdir()
    local script = support.write(dir .. "/co.lua", [[
local moontask = require "moontask"
local gen = coroutine.wrap(function() while true do end end)
moontask.task("spin", { timeout = 0.2 }, function() gen() end)
local e = assert(moontask.open{})
local id = e:add("spin")
e:run_one()
io.write(e:get(id).status, " ", tostring(e:get(id).error), "\n")
]])
    local code, out = support.run({ "3", support.bin, "lua", script }, { bin = "timeout" })
    assert.equal(0, code, "exit code " .. tostring(code) .. " (124: the task never timed out)")
    assert.matches("^FAILED .*timed out", out)
  end)

  it("does not time out a task that finishes in time", function()
    moontask.task("brief", { timeout = 30 }, function() for _ = 1, 1000 do end end)
    assert.equal("SUCCESS", run_then_ok("brief").status)
  end)

  it("does not carry a timeout over to the next task", function()
    moontask.task("spin", { timeout = 0.2 }, function() while true do end end)
    moontask.task("untimed", function() for _ = 1, 1e6 do end end)
    local a = e:add("spin")
    local b = e:add("untimed")
    e:drain()
    assert.equal("FAILED", e:get(a).status)
    assert.equal("SUCCESS", e:get(b).status)
  end)

  it("retries a timed-out task when it has retries", function()
    moontask.task("spin_retry", { timeout = 0.1, retries = 1, delay = 5 }, function()
      while true do end
    end)
    local id = e:add("spin_retry")
    e:run_one()
    local row = e:get(id)
    assert.equal("PENDING", row.status)
    assert.equal(5, row.run_at - e:now())
    assert.matches("timed out", row.error)
  end)

  it("fails a task that calls os.exit with a clear error", function()
    moontask.task("quit", function() os.exit(0) end)
    local row = run_then_ok("quit")
    assert.equal("FAILED", row.status)
    assert.matches("os%.exit", row.error)
  end)
end)

describe("task limits in `moontask run`", function()
  local dir, cfg

  before_each(function()
    dir = support.tmpdir()
    cfg = support.project(dir, [[
return {
  database = "q.db",
  scripts = { "tasks.lua" },
  log = { stdout = false },
  memory_limit = 32,
  workers = 1,
}
]], { ["tasks.lua"] = [[
local moontask = require "moontask"
moontask.task("hog", function()
  local t = {}
  for i = 1, 1e9 do t[i] = ("x"):rep(64) .. i end
end)
moontask.task("stuck", { timeout = 0.2 }, function()
  while true do pcall(function() while true do end end) end
end)
moontask.task("quit", function() os.exit(0) end)
moontask.task("ok", function() local t = {} for i = 1, 1000 do t[i] = i end end)
]] })
  end)

  after_each(support.cleanup)

  local function add(name)
    local code, out, err = support.run({ "-c", cfg, "add", name })
    assert.equal(0, code, err)
    return (out:gsub("\n$", ""))
  end

  local function show(id)
    local _, out = support.run({ "-c", cfg, "show", id, "--json" })
    return support.json(out)
  end

  it("fails a task over memory_limit and the worker runs the next task", function()
    local hog = add("hog")
    local ok = add("ok")
    local code = support.run({ "-c", cfg, "run", "--drain" })
    assert.equal(1, code)
    local row = show(hog)
    assert.equal("FAILED", row.status)
    assert.matches("memory", row.error)
    assert.equal("SUCCESS", show(ok).status)
  end)

  it("fails a task stuck past its timeout and the worker runs the next task", function()
    local stuck = add("stuck")
    local ok = add("ok")
    assert.equal(1, (support.run({ "-c", cfg, "run", "--drain" })))
    assert.matches("timed out", show(stuck).error)
    assert.equal("SUCCESS", show(ok).status)
  end)

  it("fails a task that calls os.exit and the engine keeps going", function()
    local quit = add("quit")
    local ok = add("ok")
    assert.equal(1, (support.run({ "-c", cfg, "run", "--drain" })))
    local row = show(quit)
    assert.equal("FAILED", row.status)
    assert.matches("os%.exit", row.error)
    assert.equal("SUCCESS", show(ok).status)
  end)
end)

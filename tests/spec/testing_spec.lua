-- The test kit (moontask.testing) itself: virtual time, inspection,
-- assertions and their messages, injection, spies, and cleanup.
local mt = require "moontask.testing"
local moontask = require "moontask"
local support = require "support"

local TASKS = [[
local moontask = require "moontask"
moontask.task("flaky", { retries = 3, delay = 10, backoff = 2 }, function(x)
  local gateway = require "fake_gateway"
  moontask.log("charging", { level = "info", amount = x })
  gateway.charge(x)
end)
moontask.task("ok", function(...)
  moontask.log("ok ran", { level = "debug", n = select("#", ...) })
  return true
end)
]]

describe("moontask.testing", function()
  local dir, tasks_path

  before_each(function()
    dir = support.tmpdir()
    tasks_path = support.write(dir .. "/tasks.lua", TASKS)
  end)

  after_each(function()
    mt.cleanup()
    support.cleanup()
  end)

  it("reaches FAILED after advancing through 10+20+40 seconds and not before", function()
    local calls = 0
    local e = mt.engine { scripts = { tasks_path } }
    e:inject("fake_gateway", { charge = function() calls = calls + 1; error("gateway timeout") end })
    local t0 = e:now()
    local id = e:add("flaky", 5)
    e:drain()
    assert.are.equal(1, calls)
    assert.are.equal(t0 + 10, e:get(id).run_at)
    for _, step in ipairs { { 9.5, 1 }, { 0.5, 2 }, { 19.9, 2 }, { 0.1, 3 }, { 39, 3 } } do
      e:advance(step[1])
      e:drain()
      assert.are.equal(step[2], calls)
      assert.are.equal("PENDING", e:get(id).status)
    end
    e:advance(1)
    e:drain()
    assert.are.equal(4, calls)
    assert.task_failed(e, id, "gateway timeout")
    assert.task_retried(e, id, 3)
    assert.are.equal(t0 + 70, e:now())
  end)

  it("settles a task's retries without sleeping", function()
    local e = mt.engine { scripts = { tasks_path } }
    local n = 0
    e:inject("fake_gateway", {
      charge = function()
        n = n + 1
        if n < 3 then error("busy") end
      end,
    })
    local id = e:add("flaky", 1)
    local summary = e:settle()
    assert.task_succeeded(e, id)
    assert.task_retried(e, id, 2)
    assert.are.equal(3, summary.ran)
  end)

  it("runs tasks in the spec's own Lua state, so spies and upvalues work", function()
    local seen = {}
    local e = mt.engine {}
    local spy_fn = spy.new(function(a, b) seen[#seen + 1] = a + b end)
    moontask.task("sum", function(a, b) spy_fn(a, b) end)
    local id = e:add("sum", 2, 3)
    local row = e:run_one()
    assert.are.equal(id, row.id)
    assert.spy(spy_fn).was.called_with(2, 3)
    assert.are.same({ 5 }, seen)
    assert.is_nil(e:run_one())
  end)

  it("injects a module only while the engine's tasks run", function()
    local e = mt.engine { scripts = { tasks_path } }
    local charged = {}
    e:inject("fake_gateway", { charge = function(x) charged[#charged + 1] = x end })
    local id = e:add("flaky", 42)
    e:drain()
    assert.task_succeeded(e, id)
    assert.are.same({ 42 }, charged)
    assert.is_nil(package.loaded["fake_gateway"])
  end)

  it("returns logs with level, message, decoded extras and attempt", function()
    local e = mt.engine { scripts = { tasks_path } }
    local id = e:add("ok", 1, nil, 3)
    e:drain()
    local logs = e:logs(id)
    assert.are.equal(1, #logs)
    assert.are.equal("debug", logs[1].level)
    assert.are.equal("ok ran", logs[1].message)
    assert.are.equal(3, logs[1].extras.n)
    assert.are.equal(1, logs[1].attempt)
    assert.logged(e, id, "ok ran", "debug")
    assert.has_error(function() assert.logged(e, id, "ok ran", "error") end)
  end)

  it("lists tasks by status", function()
    local e = mt.engine { scripts = { tasks_path } }
    e:inject("fake_gateway", { charge = function() error("no") end })
    local a = e:add("ok")
    local b = e:add("flaky", 1)
    e:drain()
    local pending = e:tasks { status = "PENDING" }
    assert.are.equal(1, #pending)
    assert.are.equal(b, pending[1].id)
    assert.are.equal(a, e:tasks { status = "SUCCESS" }[1].id)
  end)

  it("loads a config file's scripts as moontask run does, on a temporary database", function()
    support.write(dir .. "/moontask.lua", [[
      return { database = "real.db", scripts = { "*.lua" }, defaults = { retries = 1 } }
    ]])
    -- the glob also matches moontask.lua itself; keep tasks in a subfolder
    os.execute("mkdir -p " .. support.quote(dir .. "/t"))
    support.write(dir .. "/t/tasks.lua", TASKS)
    support.write(dir .. "/moontask.lua", [[
      return { database = "real.db", scripts = { "t/*.lua" }, defaults = { retries = 1 } }
    ]])
    local e = mt.engine { config = dir .. "/moontask.lua" }
    local id = e:add("ok", "x")
    e:drain()
    assert.task_succeeded(e, id)
    assert.are.equal(1, e:get(id).retries)
    assert.is_nil(support.read(dir .. "/real.db"))
    local db = e:database()
    assert.is_not_nil(support.read(db))
    e:close()
    assert.is_nil(support.read(db))
  end)

  it("explains a failed assertion with the task's status, error and logs", function()
    local e = mt.engine { scripts = { tasks_path } }
    e:inject("fake_gateway", { charge = function() error("card declined") end })
    local id = e:add("flaky", 7)
    e:drain()
    local ok, err = pcall(function() assert.task_succeeded(e, id) end)
    assert.is_false(ok)
    err = tostring(err)
    assert.matches("is PENDING after 1 attempt", err, 1, true)
    assert.matches("card declined", err, 1, true)
    assert.matches("#1 info charging", err, 1, true)
  end)

  it("makes a failing spec fail with a readable message and removes its database", function()
    local spec = support.write(dir .. "/failing_spec.lua", string.format([[
      local mt = require "moontask.testing"
      describe("a deliberately failing spec", function()
        it("expects a failing task to succeed", function()
          local e = mt.engine { scripts = { %q } }
          e:inject("fake_gateway", { charge = function() error("declined by bank") end })
          local f = io.open(%q, "w"); f:write(e:database()); f:close()
          local id = e:add("flaky", 1)
          e:drain()
          assert.task_succeeded(e, id)
        end)
      end)
    ]], tasks_path, dir .. "/dbpath"))
    local code, out, err = support.busted(spec, { cwd = dir })
    assert.are_not.equal(0, code)
    local text = out .. err
    assert.matches("1 failure", text, 1, true)
    assert.matches("declined by bank", text, 1, true)
    assert.matches("Expected the task to succeed", text, 1, true)
    local db = support.read(dir .. "/dbpath")
    assert.is_truthy(db and #db > 0)
    assert.is_nil(support.read(db))
  end)

  it("refuses an unknown task name and bad arguments at add time", function()
    local e = mt.engine { scripts = { tasks_path } }
    assert.has_error(function() e:add("nope") end,
      "unknown task 'nope': no loaded task script registers it "
      .. "(check the task name and the config's scripts)")
    assert.has_error(function() e:add("ok", { cb = print }) end,
      "argument 1: field 'cb' is a function")
    assert.are.equal(0, #e:tasks())
  end)
end)

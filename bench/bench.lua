-- bench.lua: the moontask scenarios of moontask_bench (see bench.c). Each
-- scenario function gets opts {n=, workers=, producers=, dir=, db=,
-- encrypt=, full=} and returns its figures; bench_lua.c runs it in a fresh
-- process and lua_State. Everything goes through the public Lua API:
-- moontask.open and Engine:add/enqueue for producers, moontask._run (what
-- `moontask run` calls) for the engine, Engine:counts/tasks to check that
-- every task ran. Processes:
--   * producers are forked children, so their memory is not the engine's;
--   * the engine runs in a forked child too, forked while this process is
--     still small, so its peak RSS (from wait4) is the engine's own; it
--     drains (burn-down, retries) or is stopped with SIGTERM (concurrent,
--     idle);
--   * this process forks before it opens any database, so no SQLite
--     connection ever crosses a fork.
local B = ...  -- primitives from bench_lua.c: now, wall, sleep, fork, exit, wait, kill, maxrss, rss
local moontask = require "moontask"
local config = require "moontask.config"

local M = {}

local TASKS = [[
local moontask = require "moontask"
moontask.task("noop", {}, function() end)
moontask.task("flaky", { retries = 1, delay = 0 }, function()
  if moontask.context().attempt == 1 then error("fails once, by design", 0) end
end)
]]

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  assert(f:write(text))
  assert(f:close())
end

-- The raw option table for both moontask.open and config.normalize.
local function options(o, key, with_key)
  return {
    database = o.db,
    scripts = { o.dir .. "/bench_tasks.lua" },
    workers = o.workers,
    encrypt_args_key = with_key and key or nil,
    durability = o.full and "full" or "normal",
    log = { stdout = false },
  }
end

local function open(o, key, with_key)
  return assert(moontask.open(options(o, key, with_key)))
end

-- Settings as `moontask run` builds them from a config file.
local function settings(o, key)
  local s, err = config.protect(config.normalize, options(o, key, true), "bench", "/")
  if not s then error(err, 2) end
  return s
end

-- Fresh database with its schema, so forked processes never race to make it.
local function prepare(o)
  write_file(o.dir .. "/bench_tasks.lua", TASKS)
  for _, suffix in ipairs { "", "-wal", "-shm" } do os.remove(o.db .. suffix) end
  open(o, nil, false):close()
  return o.encrypt and moontask.keygen() or nil
end

-- Runs fn() in a forked child, which exits with fn's result (0 if none).
local function spawn(fn)
  local pid = B.fork()
  if pid == 0 then
    local ok, res = xpcall(fn, debug.traceback)
    if not ok then io.stderr:write("moontask_bench: ", tostring(res), "\n") end
    B.exit(ok and (math.tointeger(res) or 0) or 1)
  end
  return pid
end

local function wait_ok(pid, what)
  local code, rss, why = B.wait(pid)
  if code ~= 0 then
    error(string.format("%s process failed (%s)", what, why or ("exit code " .. tostring(code))), 2)
  end
  return rss
end

local function percentile(sorted, p)
  if #sorted == 0 then return nil end
  return sorted[math.max(1, math.ceil(p * #sorted))]
end

-- A producer: adds count tasks (each its own committed add) and writes
-- its first-add wall time, last-add-return wall time and every add's
-- latency to a file for the parent.
local function produce(o, key, i, count, task, delay)
  local e = open(o, key, true)
  local lat = {}
  local now = B.now
  local first = B.wall()
  if o.add_batch then
    -- Group commit on the producer side: one transaction per add_many call;
    -- a latency sample is one whole call.
    local k = 0
    while k < count do
      local chunk = {}
      for j = 1, math.min(o.add_batch, count - k) do chunk[j] = {} end
      local t0 = now()
      local ids, msg = e:add_many(task, chunk)
      lat[#lat + 1] = now() - t0
      if not ids then error("add_many failed: " .. tostring(msg)) end
      k = k + #chunk
    end
  else
    for k = 1, count do
      local t0 = now()
      local id, msg
      if delay then
        id, msg = e:enqueue { task = task, delay = delay }
      else
        id, msg = e:add(task)
      end
      lat[k] = now() - t0
      if not id then error("add failed: " .. tostring(msg)) end
    end
  end
  local last = B.wall()
  e:close()
  local parts = { string.pack("<ddj", first, last, #lat) }
  for k = 1, #lat do parts[k + 1] = string.pack("<d", lat[k]) end
  write_file(string.format("%s/producer-%d.bin", o.dir, i), table.concat(parts))
end

-- Starts the producers, o.n tasks split among them; returns their pids.
local function start_producers(o, key, nprod, task, delay)
  local pids = {}
  for i = 1, nprod do
    local count = o.n // nprod + (i <= o.n % nprod and 1 or 0)
    pids[i] = spawn(function() produce(o, key, i, count, task, delay) end)
  end
  return pids
end

local function wait_all(pids, what)
  for _, pid in ipairs(pids) do wait_ok(pid, what) end
end

-- Reads what the producers wrote: {first=, last=, lat=sorted latencies}.
-- Called only after any engine child is forked, so the engine's memory
-- does not include these tables.
local function read_producers(o, nprod)
  local res = { lat = {} }
  for i = 1, nprod do
    local path = string.format("%s/producer-%d.bin", o.dir, i)
    local f = assert(io.open(path, "rb"))
    local data = f:read("a")
    f:close()
    os.remove(path)
    local first, last, count, pos = string.unpack("<ddj", data)
    res.first = math.min(res.first or first, first)
    res.last = math.max(res.last or last, last)
    for _ = 1, count do
      res.lat[#res.lat + 1], pos = string.unpack("<d", data, pos)
    end
  end
  table.sort(res.lat)
  return res
end

local function check_all_succeeded(o, e)
  local c = assert(e:counts())
  if c.SUCCESS ~= o.n then
    error(string.format("expected %d SUCCESS, found %d (PENDING %d, RUNNING %d, FAILED %d, "
      .. "INTERRUPTED %d)", o.n, c.SUCCESS, c.PENDING, c.RUNNING, c.FAILED, c.INTERRUPTED))
  end
end

local function start_engine(o, key, drain)
  local s = settings(o, key)
  return spawn(function()
    local code, msg = moontask._run(s, s.scripts, { drain = drain, workers = o.workers })
    if msg then io.stderr:write("moontask_bench: engine: ", msg, "\n") end
    return code
  end)
end

-- Queues o.n tasks with one producer, then times a fresh engine (forked,
-- so its peak RSS is its own) draining them.
local function queue_then_drain(o, task)
  local key = prepare(o)
  wait_all(start_producers(o, key, 1, task), "producer")
  local t0 = B.now()
  local rss = wait_ok(start_engine(o, key, true), "engine")
  local run_s = B.now() - t0
  local prod = read_producers(o, 1)
  local enqueue_s = prod.last - prod.first
  return {
    tasks = o.n, enqueue_s = enqueue_s, run_s = run_s, total_s = enqueue_s + run_s,
    add_p50_us = percentile(prod.lat, 0.5) * 1e6, add_p99_us = percentile(prod.lat, 0.99) * 1e6,
    rss_kib = rss,
  }
end

-- 1: n no-op tasks already queued (one producer, engine not running), then
-- the time until the queue is empty with a fresh engine (start-up and the
-- drain check included).
function M.burn_down(o)
  local r = queue_then_drain(o, "noop")
  local e = open(o, nil, false)
  check_all_succeeded(o, e)
  e:close()
  return r
end

-- 4: like burn-down, but every task fails on its first attempt and
-- succeeds on its retry (retries = 1, delay = 0).
function M.retries(o)
  local r = queue_then_drain(o, "flaky")
  local e = open(o, nil, false)
  check_all_succeeded(o, e)
  local attempts = 0
  for _, t in ipairs(assert(e:tasks {})) do attempts = attempts + t.attempts end
  e:close()
  r.attempts = attempts
  r.note = string.format("%d attempts, %.0f attempts/s", attempts, attempts / r.run_s)
  return r
end

-- 2 and 3: o.producers processes add n tasks while an engine runs them;
-- tasks/s from the first add to the last completion.
function M.concurrent(o)
  local key = prepare(o)
  local engine = start_engine(o, key, false)
  wait_all(start_producers(o, key, o.producers, "noop"), "producer")
  -- Inspection needs no key: it never decrypts.
  local e = open(o, key, false)
  while true do
    if e:next_run_at() == nil and assert(e:counts()).RUNNING == 0 then break end
    B.sleep(0.02)
  end
  B.kill(engine, "TERM")
  local rss = wait_ok(engine, "engine")
  check_all_succeeded(o, e)
  local prod = read_producers(o, o.producers)
  local done, last = {}, 0
  for i, t in ipairs(assert(e:tasks {})) do
    done[i] = t.finished_at - t.created_at
    if t.finished_at > last then last = t.finished_at end
  end
  e:close()
  table.sort(done)
  return {
    tasks = o.n, enqueue_s = prod.last - prod.first, total_s = last - prod.first,
    add_p50_us = percentile(prod.lat, 0.5) * 1e6, add_p99_us = percentile(prod.lat, 0.99) * 1e6,
    done_p50_ms = percentile(done, 0.5) * 1e3, done_p99_ms = percentile(done, 0.99) * 1e3,
    rss_kib = rss,
    note = string.format("%d producer(s)", o.producers),
  }
end

-- 2b: as 2, but producers add through Engine:add_many, 100 tasks per
-- committed transaction (add latency columns: one whole call).
function M.concurrent_batch(o)
  o.add_batch = 100
  local r = M.concurrent(o)
  r.note = string.format("%d producer(s), add_many x100", o.producers)
  return r
end

-- 6: an engine started, then n tasks queued that are not due for a day;
-- the engine's RSS after two more idle seconds, and its peak.
function M.idle(o)
  local key = prepare(o)
  local engine = start_engine(o, key, false)
  wait_all(start_producers(o, key, 1, "noop", 86400), "producer")
  B.sleep(2)
  local idle = B.rss(engine)
  B.kill(engine, "TERM")
  local rss = wait_ok(engine, "engine")
  local prod = read_producers(o, 1)
  return {
    tasks = o.n, enqueue_s = prod.last - prod.first, rss_kib = rss, idle_rss_kib = idle,
    add_p50_us = percentile(prod.lat, 0.5) * 1e6, add_p99_us = percentile(prod.lat, 0.99) * 1e6,
  }
end

return M

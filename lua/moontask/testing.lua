-- moontask.testing: a test kit for busted specs of Lua tasks.
--
--   local mt = require "moontask.testing"
--   local e = mt.engine{ config = "moontask.lua" }      -- or scripts = {...}
--   local id = e:add("charge_payment", 42, "tok_abc", 9.99)
--   e:drain()
--   assert.task_succeeded(e, id)
--
-- Each engine works on a fresh temporary SQLite database (removed by
-- e:close(), by garbage collection, or when busted closes the Lua state at
-- exit, failed specs included), with a virtual clock: e:advance(seconds)
-- makes delayed retries due without sleeping. Tasks run inside the spec's
-- own Lua state, so spies, stubs and upvalues work inside task bodies.
-- The C module. In a project folder, `require "moontask"` through the
-- default "./?.lua" path entry would find the project's own config file
-- (moontask.lua) first, so look the module up on package.cpath explicitly
-- and make it what every later `require "moontask"` (task scripts, specs)
-- returns.
local function load_module()
  local loaded = package.loaded.moontask
  if type(loaded) == "table" and type(loaded.task) == "function" then return loaded end
  local preload = package.preload.moontask  -- the `moontask lua` binary has it built in
  local mod
  if preload then
    mod = preload("moontask")
  else
    local path, err = package.searchpath("moontask", package.cpath)
    if not path then error("moontask.testing: cannot find the moontask C module:" .. err, 3) end
    local open = assert(package.loadlib(path, "luaopen_moontask"))
    mod = open("moontask", path)
  end
  package.loaded.moontask = mod
  return mod
end

local moontask = load_module()

local M = {}

local Engine = {}
Engine.__index = Engine

local open_engines = setmetatable({}, { __mode = "k" })

local function remove_db(path)
  for _, suffix in ipairs { "", "-wal", "-shm", "-journal" } do
    os.remove(path .. suffix)
  end
end

-- Copies options for moontask.open, replacing the database with a fresh one.
local function open_options(opts, path)
  local o = {}
  for k, v in pairs(opts) do
    if k ~= "inject" then o[k] = v end
  end
  o.database = path
  o.clock = "virtual"
  if o.log == nil then o.log = { stdout = false } end
  return o
end

-- Runs fn with the engine's injected modules in package.loaded.
local function with_injected(self, fn, ...)
  local saved = {}
  for name, value in pairs(self._inject) do
    saved[name] = package.loaded[name]
    package.loaded[name] = value
  end
  local res = table.pack(pcall(fn, ...))
  for name in pairs(self._inject) do
    package.loaded[name] = saved[name]
  end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- mt.engine{config=, scripts=, encrypt_args_key=, defaults=, inject={name=value}, ...}
function M.engine(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("moontask.testing.engine: expected a table", 2) end
  local path = os.tmpname()  -- an empty file is a valid empty SQLite database
  local self = setmetatable({ _path = path, _inject = {} }, Engine)
  for name, value in pairs(opts.inject or {}) do self._inject[name] = value end
  local ok, e, msg = pcall(with_injected, self, moontask.open, open_options(opts, path))
  if not ok or not e then
    remove_db(path)
    error(ok and msg or e, 2)
  end
  self.raw = e
  -- Tables with __gc are finalised when busted closes the state at exit.
  setmetatable(self, {
    __index = Engine,
    __gc = function(t) t:close() end,
    __tostring = function() return "moontask.testing engine (" .. path .. ")" end,
  })
  open_engines[self] = true
  return self
end

-- Closes every engine the kit opened and removes their databases.
function M.cleanup()
  for e in pairs(open_engines) do e:close() end
end

function Engine:close()
  if self.raw then
    self.raw:close()
    self.raw = nil
    remove_db(self._path)
    open_engines[self] = nil
  end
end

function Engine:database() return self._path end

function Engine:add(...) return self.raw:add(...) end

function Engine:enqueue(t) return self.raw:enqueue(t) end

function Engine:add_many(task, list) return self.raw:add_many(task, list) end

function Engine:now() return self.raw:now() end

function Engine:advance(seconds)
  if type(seconds) ~= "number" or seconds < 0 then
    error("advance: expected a number of seconds >= 0", 2)
  end
  return self.raw:advance(seconds)
end

-- Runs every task runnable now (including tasks they enqueue and retries
-- due now). Returns {ran=, succeeded=, failed=, retried=, ids={...}}.
function Engine:drain(opts)
  local max = opts and opts.max or 100000
  local summary = { ran = 0, succeeded = 0, failed = 0, retried = 0, ids = {} }
  local before = self.raw:stats()
  while summary.ran < max do
    local n, ids = with_injected(self, self.raw.run_batch, self.raw, 1)
    if not n then error("drain: " .. tostring(ids), 2) end
    if n == 0 then break end
    summary.ran = summary.ran + n
    for _, id in ipairs(ids) do summary.ids[#summary.ids + 1] = id end
  end
  local after = self.raw:stats()
  summary.succeeded = after.succeeded - before.succeeded
  summary.failed = after.failed - before.failed
  summary.retried = after.retried - before.retried
  return summary
end

-- Runs the next runnable task; returns its row (see get), or nil.
function Engine:run_one()
  local n, ids = with_injected(self, self.raw.run_batch, self.raw, 1)
  if not n then error("run_one: " .. tostring(ids), 2) end
  if n == 0 then return nil end
  return self:get(ids[1])
end

-- Advances the clock to the next pending run_at (if any is in the future)
-- and drains; repeats until nothing is pending. Returns the total summary.
function Engine:settle(opts)
  local total = { ran = 0, succeeded = 0, failed = 0, retried = 0, ids = {} }
  local limit = opts and opts.max_steps or 1000
  for _ = 1, limit do
    local s = self:drain()
    for k in pairs { ran = 1, succeeded = 1, failed = 1, retried = 1 } do
      total[k] = total[k] + s[k]
    end
    for _, id in ipairs(s.ids) do total.ids[#total.ids + 1] = id end
    local at = self.raw:next_run_at()
    if not at then return total end
    if at > self:now() then self:advance(at - self:now()) end
  end
  error(string.format("settle: tasks still pending after %d steps (raise max_steps?)", limit), 2)
end

function Engine:get(id)
  return self.raw:get(id)
end

function Engine:tasks(filter)
  return assert(self.raw:tasks(filter))
end

function Engine:counts() return assert(self.raw:counts()) end

-- Log entries of a task with extras decoded: {attempt, time, level, message, extras}.
function Engine:logs(id)
  local entries, msg = self.raw:logs(id)
  if not entries then return nil, msg end
  for _, entry in ipairs(entries) do
    local ok, extras = moontask._json_decode(entry.extras_json or "{}")
    entry.extras = ok and extras or {}
  end
  return entries
end

function Engine:retry(id) return self.raw:retry(id) end

-- Later require(name) calls in this engine's task bodies get value.
function Engine:inject(name, value)
  if type(name) ~= "string" then error("inject: expected a module name", 2) end
  self._inject[name] = value
  return self
end

-- luassert assertions --------------------------------------------------

local function describe_task(e, id)
  local row = e:get(id)
  if not row then return "task " .. tostring(id) .. " does not exist" end
  local parts = {
    string.format("task %s (%s) is %s after %d attempt(s)", row.id, row.task, row.status,
      row.attempts),
  }
  if row.error then parts[#parts + 1] = "last error: " .. row.error end
  local logs = e:logs(id) or {}
  if #logs > 0 then
    parts[#parts + 1] = "logs:"
    for _, l in ipairs(logs) do
      parts[#parts + 1] = string.format("  #%d %s %s", l.attempt, l.level, l.message)
    end
  end
  return table.concat(parts, "\n")
end

local function check_engine(e, name)
  if getmetatable(e) == nil or type(e.get) ~= "function" then
    error(name .. ": first argument must be an engine from moontask.testing", 3)
  end
end

local function register(luassert, say)
  local function define(name, positive, negative, fn)
    say:set("assertion." .. name .. ".positive", positive)
    say:set("assertion." .. name .. ".negative", negative)
    luassert:register("assertion", name, function(state, args)
      check_engine(args[1], name)
      local ok, detail = fn(args[1], args[2], args[3], args[4])
      state.failure_message = detail
      return ok
    end, "assertion." .. name .. ".positive", "assertion." .. name .. ".negative")
  end

  define("task_succeeded", "Expected the task to succeed.", "Expected the task not to succeed.",
    function(e, id)
      local row = e:get(id)
      return row ~= nil and row.status == "SUCCESS", describe_task(e, id)
    end)

  define("task_failed", "Expected the task to have failed (status FAILED) with an error matching the pattern.",
    "Expected the task not to have failed that way.",
    function(e, id, pattern)
      local row = e:get(id)
      local ok = row ~= nil and row.status == "FAILED"
      if ok and pattern ~= nil then ok = row.error ~= nil and row.error:find(pattern) ~= nil end
      local why = describe_task(e, id)
      if pattern ~= nil then why = why .. "\nexpected error pattern: " .. pattern end
      return ok, why
    end)

  define("task_retried", "Expected the task to have been retried exactly that many times.",
    "Expected the task not to have been retried that many times.",
    function(e, id, n)
      local row = e:get(id)
      local retried = row and row.attempts - 1 or -1
      return retried == n, describe_task(e, id) .. string.format(
        "\nexpected %s retries, found %d", tostring(n), retried)
    end)

  define("logged", "Expected a log entry of the task matching the pattern.",
    "Expected no log entry of the task matching the pattern.",
    function(e, id, pattern, level)
      for _, l in ipairs(e:logs(id) or {}) do
        if l.message:find(pattern) and (level == nil or l.level == level) then
          return true, string.format("found: #%d %s %s", l.attempt, l.level, l.message)
        end
      end
      return false, describe_task(e, id) .. "\nexpected a "
        .. (level and (level .. " ") or "") .. "entry matching: " .. tostring(pattern)
    end)
end

local has_luassert, luassert = pcall(require, "luassert")
if has_luassert then
  register(luassert, require "say")
end

return M

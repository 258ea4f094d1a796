-- support: shared helpers for the project's busted specs: temporary
-- folders, files, and running the `moontask` binary as a subprocess.
local M = {}

M.bin = assert(os.getenv("MOONTASK_BIN"), "MOONTASK_BIN not set")
M.root = assert(os.getenv("MOONTASK_ROOT"), "MOONTASK_ROOT not set")
M.vectors = os.getenv("MOONTASK_VECTORS") or (M.root .. "/../shared/fernet-vectors")

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = q

local dirs = {}

-- A new empty folder, removed by M.cleanup() (call it in after_each/teardown).
function M.tmpdir()
  local p = io.popen("mktemp -d /tmp/moontask-spec-XXXXXX")
  local d = p:read("l")
  p:close()
  dirs[#dirs + 1] = d
  return d
end

function M.cleanup()
  for _, d in ipairs(dirs) do os.execute("rm -rf " .. q(d)) end
  dirs = {}
end

function M.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs `moontask ARGS...` (args: list of strings, quoted for the shell).
-- opts: cwd, env (table name -> value), stdin (text). Returns code, stdout, stderr.
function M.run(args, opts)
  opts = opts or {}
  local tmp = os.tmpname()
  local cmd = {}
  if opts.cwd then cmd[#cmd + 1] = "cd " .. q(opts.cwd) .. " &&" end
  cmd[#cmd + 1] = "env"
  for k, v in pairs(opts.env or {}) do
    if v == false then
      cmd[#cmd + 1] = "-u " .. k
    else
      cmd[#cmd + 1] = k .. "=" .. q(v)
    end
  end
  cmd[#cmd + 1] = q(opts.bin or M.bin)
  for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
  if opts.stdin then
    M.write(tmp .. ".in", opts.stdin)
    cmd[#cmd + 1] = "<" .. q(tmp .. ".in")
  else
    cmd[#cmd + 1] = "</dev/null"
  end
  cmd[#cmd + 1] = ">" .. q(tmp .. ".out") .. " 2>" .. q(tmp .. ".err")
  local _, _, code = os.execute(table.concat(cmd, " "))
  local out, err = M.read(tmp .. ".out") or "", M.read(tmp .. ".err") or ""
  os.remove(tmp)
  os.remove(tmp .. ".out")
  os.remove(tmp .. ".err")
  os.remove(tmp .. ".in")
  return code, out, err
end

-- Writes a config and task script into dir; returns the config path.
function M.project(dir, config_text, scripts)
  for name, text in pairs(scripts or {}) do M.write(dir .. "/" .. name, text) end
  return M.write(dir .. "/moontask.lua", config_text)
end

-- The Lua interpreter the specs run under ("lua5.4", or the sanitized
-- `moontask lua`), for running busted as a subprocess.
M.lua = os.getenv("MOONTASK_LUA") or "lua5.4"

-- Runs busted on a spec file as a subprocess; returns code, stdout, stderr.
function M.busted(spec, opts)
  opts = opts or {}
  local runner = {}
  for word in M.lua:gmatch("%S+") do runner[#runner + 1] = word end
  local bin = table.remove(runner, 1)
  local args = {}
  for _, w in ipairs(runner) do args[#args + 1] = w end
  args[#args + 1] = "/usr/bin/busted"
  args[#args + 1] = "-o"
  args[#args + 1] = "plainTerminal"
  args[#args + 1] = spec
  return M.run(args, { bin = bin, cwd = opts.cwd, env = opts.env })
end

-- ---------------------------------------------------------------------
-- Background processes, polling and JSON, for the CLI and recovery specs.

-- JSON text -> Lua value; JSON null becomes M.null (so a key set to null
-- can be told from a missing key).
local dkjson = require "dkjson"
M.null = dkjson.null
function M.json(text)
  local v, _, err = dkjson.decode(text, 1, dkjson.null)
  assert(v ~= nil, "not JSON (" .. tostring(err) .. "): " .. tostring(text))
  return v
end

-- A UUID v4 in its canonical text form.
M.UUID4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

function M.sleep(s)
  os.execute("sleep " .. string.format("%.3f", s))
end

-- Calls fn until it returns a true value (returned) or `limit` seconds
-- pass (returns nil). Polls; never used to measure time.
function M.wait_until(fn, limit)
  limit = limit or 10
  local waited = 0
  while waited < limit do
    local v = fn()
    if v then return v end
    M.sleep(0.02)
    waited = waited + 0.02
  end
  return fn()
end

-- Starts `moontask ARGS...` in the background, its output in files under
-- dir. Returns a handle: h.pid, h:exited() -> exit code or nil,
-- h:wait(limit) -> exit code or nil, h:signal(name), h:out(), h:err().
-- The exit code of a process killed by signal N is 128 + N.
local spawned = 0
function M.spawn(args, opts)
  opts = opts or {}
  local dir = opts.dir or M.tmpdir()
  spawned = spawned + 1
  local tag = opts.tag or tostring(spawned)
  local base = dir .. "/bg-" .. tag
  local cmd = { "cd", q(opts.cwd or dir), "&&", "env" }
  for k, v in pairs(opts.env or {}) do
    cmd[#cmd + 1] = v == false and ("-u " .. k) or (k .. "=" .. q(v))
  end
  cmd[#cmd + 1] = q(M.bin)
  for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
  local inner = table.concat(cmd, " ") .. " </dev/null >" .. q(base .. ".out")
    .. " 2>" .. q(base .. ".err")
  -- The subshell waits for the child (so it is reaped at once) and keeps
  -- its exit code; the outer shell returns immediately.
  local script = "( " .. inner .. " & echo $! > " .. q(base .. ".pid.tmp")
    .. "; mv " .. q(base .. ".pid.tmp") .. " " .. q(base .. ".pid")
    .. "; wait $!; echo $? > " .. q(base .. ".rc.tmp")
    .. "; mv " .. q(base .. ".rc.tmp") .. " " .. q(base .. ".rc") .. " ) >/dev/null 2>&1 &"
  assert(os.execute(script))
  local pid = M.wait_until(function()
    local t = M.read(base .. ".pid")
    return t and tonumber(t:match("%d+"))
  end, 10)
  assert(pid, "background moontask did not start")
  local h = { pid = pid }
  function h.exited()
    local t = M.read(base .. ".rc")
    return t and tonumber(t:match("%d+"))
  end
  function h.wait(_, limit) return M.wait_until(h.exited, limit or 20) end
  function h.signal(_, sig) os.execute("kill -" .. sig .. " " .. pid .. " 2>/dev/null") end
  function h.out() return M.read(base .. ".out") or "" end
  function h.err() return M.read(base .. ".err") or "" end
  -- Never leave a process behind, whatever the spec's outcome.
  function h.stop()
    if not h.exited() then
      h:signal("KILL")
      h:wait(10)
    end
  end
  return h
end

return M

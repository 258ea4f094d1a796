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

return M

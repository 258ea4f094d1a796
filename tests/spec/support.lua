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

-- Sum of a counts table ({PENDING = n, ...}).
function M.total(counts)
  local n = 0
  for _, c in pairs(counts) do n = n + c end
  return n
end

-- `moontask -c cfg ...`: returns code, stdout, stderr.
function M.mt(cfg, ...)
  return M.run({ "-c", cfg, ... })
end

-- `moontask add` that must succeed; returns the new id.
function M.add(cfg, ...)
  local code, out, err = M.mt(cfg, "add", ...)
  assert(code == 0, "add failed (" .. tostring(code) .. "): " .. err)
  return (out:gsub("\n$", ""))
end

-- `moontask show ID --json` that must succeed, decoded.
function M.show(cfg, id)
  local code, out, err = M.mt(cfg, "show", id, "--json")
  assert(code == 0, "show failed (" .. tostring(code) .. "): " .. err)
  return M.json(out)
end

-- Tasks by status from `moontask list --json`, and their total.
function M.counts(cfg)
  local _, out = M.mt(cfg, "list", "--json")
  local c, n = {}, 0
  for _, row in ipairs(M.json(out)) do
    c[row.status] = (c[row.status] or 0) + 1
    n = n + 1
  end
  return c, n
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
  local deadline = os.time() + math.ceil(limit or 10)
  repeat
    local v = fn()
    if v then return v end
    M.sleep(0.02)
  until os.time() > deadline
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

-- ---------------------------------------------------------------------
-- SQLite CLI, bytes, pyfernet and exact value comparison, for the
-- encryption specs (crypto, leak, rotation, interop).

-- Runs the sqlite3 CLI on db with the SQL text on stdin; returns code,
-- stdout, stderr.
function M.sqlite(db, sql)
  local tmp = os.tmpname()
  M.write(tmp .. ".sql", sql)
  local _, _, code = os.execute("sqlite3 -batch " .. q(db) .. " <" .. q(tmp .. ".sql")
    .. " >" .. q(tmp .. ".out") .. " 2>" .. q(tmp .. ".err"))
  local out, err = M.read(tmp .. ".out") or "", M.read(tmp .. ".err") or ""
  for _, s in ipairs { "", ".sql", ".out", ".err" } do os.remove(tmp .. s) end
  return code, out, err
end

-- The single value a query prints (one trailing newline dropped); raises
-- when sqlite3 fails.
function M.sqlite_value(db, sql)
  local code, out, err = M.sqlite(db, sql)
  assert(code == 0, "sqlite3 failed: " .. err)
  return (out:gsub("\n$", ""))
end

function M.tohex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function M.fromhex(h)
  assert(#h % 2 == 0 and not h:find("[^%x]"), "not hex text")
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Base64 of s (standard alphabet, or base64url when urlsafe), with padding.
function M.base64(s, urlsafe)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chunk = {}
    for k = 1, 4 do
      local v = (n >> (6 * (4 - k))) & 63
      chunk[k] = B64:sub(v + 1, v + 1)
    end
    if not b then chunk[3], chunk[4] = "=", "=" elseif not c then chunk[4] = "=" end
    out[#out + 1] = table.concat(chunk)
  end
  local text = table.concat(out)
  if urlsafe then text = text:gsub("[+/]", { ["+"] = "-", ["/"] = "_" }) end
  return text
end

-- n random bytes as 2n hex digits, from the OS.
function M.random_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(n)
  f:close()
  return M.tohex(bytes)
end

-- The forms a leaked secret can take: itself, its hex (lower and upper
-- case), and for each of the 3 alignments of the secret inside a longer
-- byte string the base64 and base64url characters that depend on the secret
-- alone. Returns a list of {name=, text=}.
function M.leak_forms(secret)
  local forms = {
    { name = "plain", text = secret },
    { name = "hex", text = M.tohex(secret) },
    { name = "HEX", text = M.tohex(secret):upper() },
  }
  for skip = 0, 2 do
    local part = secret:sub(skip + 1)
    part = part:sub(1, #part - #part % 3)  -- whole 3-byte groups: no padding
    forms[#forms + 1] = { name = "base64@" .. skip, text = M.base64(part) }
    forms[#forms + 1] = { name = "base64url@" .. skip, text = M.base64(part, true) }
  end
  return forms
end

-- The names of the forms (from M.leak_forms) found in blob, as a list.
function M.find_leaks(blob, forms)
  local found = {}
  for _, f in ipairs(forms) do
    if blob:find(f.text, 1, true) then found[#found + 1] = f.name end
  end
  return found
end

-- Runs /usr/bin/python3 pyfernet.py ARGS with stdin bytes (via files).
-- Returns code, stdout bytes, stderr.
function M.pyfernet(args, stdin)
  local tmp = os.tmpname()
  M.write(tmp .. ".in", stdin or "")
  local cmd = { "/usr/bin/python3", q(M.vectors .. "/pyfernet.py") }
  for i, a in ipairs(args) do
    -- A base64url key may start with '-', which argparse would take for an
    -- option: hand such a key over as @FILE.
    if i == 2 and a:sub(1, 1) == "-" then
      M.write(tmp .. ".key", a)
      a = "@" .. tmp .. ".key"
    end
    cmd[#cmd + 1] = q(a)
  end
  local _, _, code = os.execute(table.concat(cmd, " ") .. " <" .. q(tmp .. ".in")
    .. " >" .. q(tmp .. ".out") .. " 2>" .. q(tmp .. ".err"))
  local out, err = M.read(tmp .. ".out") or "", M.read(tmp .. ".err") or ""
  for _, s in ipairs { "", ".in", ".out", ".err", ".key" } do os.remove(tmp .. s) end
  return code, out, err
end

-- Exact equality of Lua data: integer versus float, NaN equals NaN, -0.0
-- versus 0.0, strings byte for byte, tables key by key. Returns true, or
-- false and the path of the first difference.
function M.same_data(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then
    return false, path .. ": " .. type(a) .. " versus " .. type(b)
  end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then
      return false, path .. ": " .. math.type(a) .. " versus " .. math.type(b)
    end
    if a ~= a and b ~= b then return true end
    if a ~= b or (a == 0 and 1 / a ~= 1 / b) then
      return false, path .. ": " .. string.format("%q versus %q", a, b)
    end
    return true
  end
  if type(a) ~= "table" then
    if a ~= b then return false, path .. ": " .. string.format("%q versus %q", a, b) end
    return true
  end
  for k, v in pairs(a) do
    local ok, where = M.same_data(v, b[k], path .. "[" .. string.format("%q", k) .. "]")
    if not ok then return false, where end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "[" .. string.format("%q", k) .. "]: extra" end
  end
  return true
end

return M

-- moontask.cli: the `moontask` command line. Parses arguments, loads the
-- config, and formats results; the engine work is in C.
-- Exit codes: 0 ok, 1 a task or engine failure, 2 usage or config error.
local moontask = require "moontask"
local config = require "moontask.config"
local out = require "moontask.output"

local M = {}

local USAGE = [[
usage: moontask [-c CONFIG] COMMAND [OPTIONS]

commands:
  run [--drain] [--workers N]    work the queue (until signalled, or until drained)
  add TASK [ARG ...]             enqueue TASK; each ARG is a JSON value; prints the id
  list [--status S] [--task NAME] [--limit N] [--json]
  show ID [--json] [--decrypt]   one task: status, attempts, times, error, arguments
  logs ID [--json]               the captured log entries of a task
  retry ID                       put a FAILED or INTERRUPTED task back in the queue
  rotate-key                     re-encrypt waiting tasks' arguments with the first key
  keygen                         print a new encryption key
  lua FILE [ARG ...]             run a Lua script with the moontask module built in
  help, version

The config is -c FILE, else $MOONTASK_CONFIG, else ./moontask.lua.
]]

local function err(code, fmt, ...)
  io.stderr:write("moontask: ", string.format(fmt, ...), "\n")
  return code
end

-- Splits argv into command, positionals and flags; flags take a value
-- where `spec[flag]` is "value".
local function parse(args, spec)
  local pos, flags = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do pos[#pos + 1] = args[j] end
      break
    elseif a:match("^%-%-?%a") and spec[a] ~= nil then
      if spec[a] == "value" then
        if args[i + 1] == nil then return nil, "option " .. a .. " needs a value" end
        flags[a] = args[i + 1]
        i = i + 1
      else
        flags[a] = true
      end
    elseif a:match("^%-%-%a") or a:match("^%-%a$") then
      return nil, "unknown option " .. a
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return pos, flags
end

local function load_settings(path)
  local settings, msg = config.load(path)
  if not settings then return nil, msg end
  return settings
end

-- Exit code for an engine that cannot open: a file that is not a moontask
-- database is a configuration mistake (2); I/O, locks and the like are 1.
local function open_code(code)
  return (code == "ECORRUPT" or code == "EINVAL") and 2 or 1
end

local function open_engine(settings, with_keys, load_scripts)
  local s = {}
  for k, v in pairs(settings) do s[k] = v end
  if not with_keys then s.keys = {} end
  s.log = { stdout = false }
  local e, msg, code = moontask._open(s)
  if not e then return nil, msg, open_code(code) end
  if load_scripts then
    for _, path in ipairs(settings.scripts) do
      local ok, lerr = pcall(moontask._load_script, path)
      if not ok then
        e:close()
        return nil, tostring(lerr), 2
      end
    end
    e:_strict()  -- the registry is loaded: unknown task names are refused
  end
  return e
end

local commands = {}

function commands.keygen(args)
  if #args > 0 then return err(2, "keygen takes no arguments") end
  local key, msg = moontask.keygen()
  if not key then return err(1, "%s", msg) end
  io.write(key, "\n")
  return 0
end

function commands.version()
  io.write("moontask ", moontask.version, "\n")
  return 0
end

function commands.help()
  io.write(USAGE)
  return 0
end

function commands.run(args, cfgpath)
  local _, flags = parse(args, { ["--drain"] = "flag", ["--workers"] = "value" })
  if not _ then return err(2, "%s", flags) end
  local workers
  if flags["--workers"] then
    workers = math.tointeger(tonumber(flags["--workers"]))
    if not workers or workers < 1 or workers > 256 then
      return err(2, "--workers must be a whole number from 1 to 256")
    end
  end
  if #_ > 0 then return err(2, "run takes no positional arguments (got %s)", _[1]) end
  local settings, msg = load_settings(cfgpath)
  if not settings then return err(2, "%s", msg) end
  local code, rmsg = moontask._run(settings, settings.scripts,
    { drain = flags["--drain"] == true, workers = workers })
  if rmsg then err(code, "%s", rmsg) end
  return code
end

function commands.add(args, cfgpath)
  local pos, flags = parse(args, {})
  if not pos then return err(2, "%s", flags) end
  if #pos < 1 then return err(2, "usage: moontask add TASK [ARG ...] (each ARG a JSON value)") end
  local values = { n = #pos - 1 }
  for i = 2, #pos do
    local ok, v = moontask._json_decode(pos[i])
    if not ok then
      -- Never echo the argument: it may be a secret.
      return err(2, "argument %d is not valid JSON (%s); quote strings as JSON, e.g. '\"text\"'",
        i - 1, v)
    end
    values[i - 1] = v
  end
  local settings, msg = load_settings(cfgpath)
  if not settings then return err(2, "%s", msg) end
  local e, emsg, ecode = open_engine(settings, true, true)
  if not e then return err(ecode, "%s", emsg) end
  if #settings.keys == 0 and (e:count_encrypted() or 0) > 0 then
    e:close()
    return err(2, "%s holds tasks with encrypted arguments but this config has no encryption "
      .. "key; set encrypt_args_key so that new arguments are encrypted too", settings.database)
  end
  local ok, id, amsg = pcall(e.add, e, pos[1], table.unpack(values, 1, values.n))
  e:close()
  if not ok then return err(2, "%s", tostring(id)) end
  if not id then return err(1, "%s", amsg) end
  io.write(id, "\n")
  return 0
end

local function with_engine(cfgpath, with_keys, fn)
  local settings, msg = load_settings(cfgpath)
  if not settings then return err(2, "%s", msg) end
  local e, emsg, ecode = open_engine(settings, with_keys, false)
  if not e then return err(ecode, "%s", emsg) end
  local ok, code = pcall(fn, e, settings)
  e:close()
  if not ok then return err(2, "%s", tostring(code)) end
  return code
end

function commands.list(args, cfgpath)
  local pos, flags = parse(args, {
    ["--status"] = "value", ["--task"] = "value", ["--json"] = "flag", ["--limit"] = "value",
  })
  if not pos then return err(2, "%s", flags) end
  if #pos > 0 then return err(2, "list takes no positional arguments") end
  local limit = flags["--limit"] and math.tointeger(tonumber(flags["--limit"]))
  if flags["--limit"] and (not limit or limit < 1) then
    return err(2, "--limit must be a whole number >= 1")
  end
  local status = flags["--status"]
  if status then
    status = status:upper()
    local known = { PENDING = 1, RUNNING = 1, SUCCESS = 1, FAILED = 1, INTERRUPTED = 1 }
    if not known[status] then
      return err(2, "unknown status '%s' for --status (use PENDING, RUNNING, SUCCESS, FAILED or "
        .. "INTERRUPTED)", flags["--status"])
    end
  end
  return with_engine(cfgpath, false, function(e)
    local rows, msg = e:tasks { status = status, task = flags["--task"], limit = limit }
    if not rows then return err(1, "%s", msg) end
    if flags["--json"] then
      io.write(out.tasks_json(rows), "\n")
    else
      io.write(out.tasks_table(rows))
    end
    return 0
  end)
end

function commands.show(args, cfgpath)
  local pos, flags = parse(args, { ["--json"] = "flag", ["--decrypt"] = "flag" })
  if not pos then return err(2, "%s", flags) end
  if #pos ~= 1 then return err(2, "usage: moontask show ID [--json] [--decrypt]") end
  return with_engine(cfgpath, flags["--decrypt"], function(e, settings)
    local row, msg = e:get(pos[1])
    if not row then return err(1, "%s", msg) end
    if flags["--decrypt"] and row.encrypted and row.args_json == nil then
      return err(1, "--decrypt: %s",
        #settings.keys == 0 and "no encryption key is configured"
        or "no configured key opens this task's arguments")
    end
    if flags["--json"] then
      io.write(out.task_json(row, true), "\n")
    else
      io.write(out.task_text(row))
    end
    return 0
  end)
end

function commands.logs(args, cfgpath)
  local pos, flags = parse(args, { ["--json"] = "flag" })
  if not pos then return err(2, "%s", flags) end
  if #pos ~= 1 then return err(2, "usage: moontask logs ID [--json]") end
  return with_engine(cfgpath, false, function(e)
    local entries, msg = e:logs(pos[1])
    if not entries then return err(1, "%s", msg) end
    if flags["--json"] then
      io.write(out.logs_json(entries), "\n")
    else
      io.write(out.logs_text(entries))
    end
    return 0
  end)
end

function commands.retry(args, cfgpath)
  local pos, flags = parse(args, {})
  if not pos then return err(2, "%s", flags) end
  if #pos ~= 1 then return err(2, "usage: moontask retry ID") end
  return with_engine(cfgpath, false, function(e)
    local ok, msg = e:retry(pos[1])
    if not ok then return err(1, "%s", msg) end
    io.write(pos[1], " PENDING\n")
    return 0
  end)
end

commands["rotate-key"] = function(args, cfgpath)
  if #args > 0 then return err(2, "rotate-key takes no arguments") end
  local settings, msg = load_settings(cfgpath)
  if not settings then return err(2, "%s", msg) end
  if #settings.keys == 0 then
    return err(2, "rotate-key needs encrypt_args_keys (new key first) or encrypt_args_key "
      .. "in %s", cfgpath)
  end
  local e, emsg, ecode = open_engine(settings, true, false)
  if not e then return err(ecode, "%s", emsg) end
  local n, rmsg = e:rotate_key()
  local running = n and (e:counts() or {}).RUNNING or 0
  e:close()
  if not n then return err(1, "rotate-key: %s", rmsg) end
  io.write(string.format("rotate-key: re-encrypted %d task(s) with the first key\n", n))
  if running > 0 then
    io.stderr:write(string.format("rotate-key: %d RUNNING task(s) keep their old token; run "
      .. "rotate-key again once they have finished, before you remove the old key\n", running))
  end
  return 0
end

function M.main(argv)
  local cfgpath = os.getenv("MOONTASK_CONFIG")
  local rest = {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-c" or a == "--config" then
      if not argv[i + 1] then return err(2, "-c needs a config file path") end
      cfgpath = argv[i + 1]
      i = i + 1
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  if cfgpath == nil or cfgpath == "" then cfgpath = "moontask.lua" end
  local name = table.remove(rest, 1)
  if name == nil or name == "-h" or name == "--help" then
    io.write(USAGE)
    return name == nil and 2 or 0
  end
  if name == "--version" then name = "version" end
  local cmd = commands[name]
  if not cmd then
    return err(2, "unknown command '%s' (see `moontask help`)", name)
  end
  return cmd(rest, cfgpath)
end

return M

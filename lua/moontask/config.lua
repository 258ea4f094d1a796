-- moontask.config: loads a config file (a Lua chunk returning a table) and
-- checks every key, so that a mistake is reported with the file and the key
-- before anything runs. Also normalises the options of moontask.open.
--
-- Failures return nil, message (the CLI exits 2 with it); they never echo
-- a key's value.
local M = {}

local moontask = require "moontask"

local TOP_KEYS = {
  database = true, scripts = true, workers = true, defaults = true, log = true,
  poll_interval = true, shutdown_grace = true, encrypt_args_key = true,
  encrypt_args_keys = true, encrypt_args_key_file = true, durability = true,
  memory_limit = true, busy_timeout = true, batch = true,
}

local POLICY_KEYS = {
  retries = "count", delay = "seconds", backoff = "number", max_delay = "seconds",
  jitter = "fraction", timeout = "seconds", requeue_on_interrupt = "boolean",
  redact = "boolean",
}

local LOG_KEYS = { file = "string", stdout = "boolean", level = "level" }

local LEVELS = { debug = true, info = true, warning = true, error = true }

-- Levenshtein distance, for "did you mean" hints.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function suggest(key, known)
  local best, best_d
  for k in pairs(known) do
    local d = distance(key, k)
    if d <= 2 and (not best_d or d < best_d or (d == best_d and k < best)) then
      best, best_d = k, d
    end
  end
  return best and (" (did you mean '" .. best .. "'?)") or ""
end

local function is_abs(path) return path:sub(1, 1) == "/" end

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  return d == "" and "/" or d
end

local function resolve(base, path)
  if path == ":memory:" or is_abs(path) then return path end
  if base == "." then return path end
  return base .. "/" .. path
end

local function fail(where, fmt, ...)
  error({ moontask_config = true, msg = where .. ": " .. string.format(fmt, ...) }, 0)
end

local function check_type(where, key, value, kind)
  local ok
  if kind == "count" then
    ok = math.type(value) == "integer" and value >= 0
  elseif kind == "positive_int" then
    ok = math.type(value) == "integer" and value >= 1
  elseif kind == "seconds" or kind == "mib" or kind == "ms" then
    ok = type(value) == "number" and value >= 0 and value < math.huge
  elseif kind == "positive" then
    ok = type(value) == "number" and value > 0 and value < math.huge
  elseif kind == "number" then
    ok = type(value) == "number" and value >= 0 and value < math.huge
  elseif kind == "fraction" then
    ok = type(value) == "number" and value >= 0 and value <= 1
  elseif kind == "level" then
    ok = type(value) == "string" and LEVELS[value:lower()] ~= nil
  else
    ok = type(value) == kind
  end
  if not ok then
    local wants = {
      count = "a whole number >= 0", positive_int = "a whole number >= 1",
      seconds = "a number of seconds >= 0", positive = "a number > 0",
      mib = "a number of MiB >= 0", ms = "a number of milliseconds >= 0",
      number = "a number >= 0", fraction = "a number from 0 to 1",
      level = "one of debug, info, warning, error",
    }
    local got = type(value)
    if type(value) ~= "string" and type(value) ~= "table" then got = got .. " " .. tostring(value) end
    fail(where, "key '%s' must be %s (got %s)", key, wants[kind] or ("a " .. kind), got)
  end
end

local function check_table(where, name, t, known)
  if type(t) ~= "table" then
    fail(where, "key '%s' must be a table (got %s)", name, type(t))
  end
  for k, v in pairs(t) do
    if type(k) ~= "string" or not known[k] then
      fail(where, "unknown key '%s.%s'%s", name, tostring(k), suggest(tostring(k), known))
    end
    check_type(where, name .. "." .. k, v, known[k])
  end
end

local function read_key_file(where, path)
  local f, err = io.open(path, "rb")
  if not f then
    fail(where, "encrypt_args_key_file: cannot read %s (%s)", path, err)
  end
  local text = f:read("a")
  f:close()
  if text == nil then
    fail(where, "encrypt_args_key_file: %s is not a readable file", path)
  end
  -- Exactly one trailing newline is allowed; anything else stays and is refused.
  text = text:gsub("\r?\n$", "", 1)
  return text
end

local function check_key(where, label, text)
  local ok, msg = moontask._check_key(text)
  if not ok then
    if text:find("%s") then
      msg = msg .. " (it contains whitespace or a line break: the key must be one line of 44 "
        .. "characters; a key file may end with one newline)"
    end
    fail(where, "%s: %s", label, msg)
  end
  return text
end

-- Keys from encrypt_args_key / encrypt_args_keys / encrypt_args_key_file.
local function collect_keys(where, t, base)
  local sources = 0
  for _, k in ipairs { "encrypt_args_key", "encrypt_args_keys", "encrypt_args_key_file" } do
    if t[k] ~= nil then sources = sources + 1 end
  end
  if sources > 1 then
    fail(where, "set only one of encrypt_args_key, encrypt_args_keys and encrypt_args_key_file")
  end
  if t.encrypt_args_key ~= nil then
    if type(t.encrypt_args_key) ~= "string" then
      fail(where, "key 'encrypt_args_key' must be a string (got %s)", type(t.encrypt_args_key))
    end
    return { check_key(where, "encrypt_args_key", t.encrypt_args_key) }
  elseif t.encrypt_args_keys ~= nil then
    local list = t.encrypt_args_keys
    if type(list) ~= "table" or #list == 0 then
      fail(where, "key 'encrypt_args_keys' must be a non-empty list of keys, newest first")
    end
    for k in pairs(list) do
      if math.type(k) ~= "integer" or k < 1 or k > #list then
        fail(where, "key 'encrypt_args_keys' must be a list without holes or named entries "
          .. "(entry %s)", tostring(k))
      end
    end
    local keys = {}
    for i, k in ipairs(list) do
      if type(k) ~= "string" then
        fail(where, "encrypt_args_keys[%d] must be a string (got %s)", i, type(k))
      end
      keys[i] = check_key(where, "encrypt_args_keys[" .. i .. "]", k)
    end
    return keys
  elseif t.encrypt_args_key_file ~= nil then
    if type(t.encrypt_args_key_file) ~= "string" then
      fail(where, "key 'encrypt_args_key_file' must be a path (got %s)",
        type(t.encrypt_args_key_file))
    end
    local path = resolve(base, t.encrypt_args_key_file)
    return { check_key(where, "encrypt_args_key_file " .. path, read_key_file(where, path)) }
  end
  return {}
end

local function expand_scripts(where, scripts, base)
  if type(scripts) == "string" then scripts = { scripts } end
  if type(scripts) ~= "table" then
    fail(where, "key 'scripts' must be a list of paths or glob patterns (got %s)", type(scripts))
  end
  local out, seen = {}, {}
  for i, pat in ipairs(scripts) do
    if type(pat) ~= "string" then
      fail(where, "scripts[%d] must be a string (got %s)", i, type(pat))
    end
    local full = resolve(base, pat)
    local matches
    if full:find("[%*%?%[]") then
      matches = moontask._glob(full)
      if #matches == 0 then
        fail(where, "scripts[%d]: pattern %s matches no file", i, full)
      end
    else
      local f = io.open(full, "r")
      if not f then fail(where, "scripts[%d]: task script %s does not exist", i, full) end
      f:close()
      matches = { full }
    end
    for _, m in ipairs(matches) do
      if not seen[m] then
        seen[m] = true
        out[#out + 1] = m
      end
    end
  end
  return out
end

-- Checks a raw config table t (from the file at `where`, or from
-- moontask.open) and returns the settings table the C side reads.
function M.normalize(t, where, base, extra_keys)
  for k in pairs(t) do
    if type(k) ~= "string" or not (TOP_KEYS[k] or (extra_keys and extra_keys[k])) then
      fail(where, "unknown key '%s'%s", tostring(k), suggest(tostring(k), TOP_KEYS))
    end
  end
  local s = { where = where }
  local db = t.database
  if db ~= nil and (type(db) ~= "string" or db == "") then
    fail(where, "key 'database' must be a file path or \":memory:\" (got %s)",
      type(db) == "string" and "an empty string" or type(db))
  end
  s.database = resolve(base, db or "moontask.db")
  if s.database == ":memory:" and where ~= "moontask.open" then
    fail(where, "database: \":memory:\" would vanish when the command exits; use a file path")
  end
  if s.database ~= ":memory:" then
    local parent = dirname(s.database)
    local d = io.open(parent, "r")
    if not d then fail(where, "database: folder %s does not exist", parent) end
    d:close()
    local f = io.open(s.database, "r")
    if f then
      local _, rerr, code = f:read(0)
      f:close()
      if code == 21 or (rerr and rerr:find("Is a directory")) then
        fail(where, "database: %s is a folder, not a database file", s.database)
      end
    end
  end
  s.scripts = expand_scripts(where, t.scripts or {}, base)
  for key, spec in pairs {
    workers = { "positive_int", 256 }, poll_interval = { "positive", 3600 },
    shutdown_grace = { "seconds", 86400 }, memory_limit = { "mib", 1048576 },
    busy_timeout = { "ms", 3600000 }, batch = { "positive_int", 65536 },
  } do
    local v = t[key]
    if v ~= nil then
      check_type(where, key, v, spec[1])
      if v > spec[2] then fail(where, "key '%s' must be at most %s (got %s)", key, spec[2], v) end
      s[key] = v
    end
  end
  if t.defaults ~= nil then
    check_table(where, "defaults", t.defaults, POLICY_KEYS)
    s.defaults = t.defaults
  end
  s.log = { stdout = true, level = "info" }
  if t.log ~= nil then
    check_table(where, "log", t.log, LOG_KEYS)
    for k, v in pairs(t.log) do s.log[k] = v end
    if s.log.file then
      s.log.file = resolve(base, s.log.file)
      local f, ferr = io.open(s.log.file, "a")
      if not f then fail(where, "log.file: cannot open %s for appending (%s)", s.log.file, ferr) end
      f:close()
    end
    s.log.level = s.log.level:lower()
  end
  if t.durability ~= nil and t.durability ~= "normal" and t.durability ~= "full" then
    fail(where, "key 'durability' must be \"normal\" or \"full\"")
  end
  s.durability = t.durability or "normal"
  s.keys = collect_keys(where, t, base)
  return s
end

-- `env "NAME"` inside a config: the value, or an error at the config's line.
local function env(name)
  if type(name) ~= "string" then error("env: expected a variable name", 2) end
  local v = os.getenv(name)
  if v == nil then
    error("environment variable " .. name .. " is not set; export it before starting moontask", 2)
  end
  return v
end
M.env = env

local function protect(f, ...)
  local ok, res = pcall(f, ...)
  if ok then return res end
  if type(res) == "table" and res.moontask_config then return nil, res.msg end
  return nil, tostring(res)
end

-- Loads the config file at path. Returns settings, or nil and a message
-- naming the file (and line or key).
function M.load(path)
  return protect(function()
    local f = io.open(path, "r")
    if not f then
      fail(path, "config file not found (pass -c FILE or set MOONTASK_CONFIG)")
    end
    f:close()
    local cenv = setmetatable({ env = env }, { __index = _G })
    local chunk, err = loadfile(path, "t", cenv)
    if not chunk then
      -- Lua quotes the offending source text ("near '...'"), which can be an
      -- inline key: keep the file, line and kind of error only.
      err = tostring(err):gsub("%s+near%s.*$", "")
      error({ moontask_config = true, msg = err .. " (syntax error)" }, 0)
    end
    -- os.exit in a config would end the command with the config's choice of
    -- exit code; make it an error that names the file instead.
    local real_exit = os.exit
    os.exit = function() error("os.exit is not allowed in a moontask config", 2) end -- luacheck: ignore 122
    local ok, t = pcall(chunk)
    os.exit = real_exit -- luacheck: ignore 122
    if not ok then
      if type(t) ~= "string" then
        t = path .. ": the config raised a non-string error (a " .. type(t) .. ")"
      end
      error({ moontask_config = true, msg = t }, 0)
    end
    if type(t) ~= "table" then
      fail(path, "the config must return a table (got %s)", type(t))
    end
    return M.normalize(t, path, dirname(path))
  end)
end

M.protect = protect

return M

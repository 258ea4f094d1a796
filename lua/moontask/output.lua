-- moontask.output: text and JSON renderings of tasks and logs for the CLI.
-- The JSON shapes are a stable interface, documented in README.md.
local moontask = require "moontask"

local M = {}

local RAW = {}  -- marks a pre-rendered JSON text

local function raw(text) return setmetatable({ text = text }, RAW) end

local function encode(v)
  local t = type(v)
  if v == nil then
    return "null"
  elseif getmetatable(v) == RAW then
    return v.text
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return string.format("%.6f", v)
  elseif t == "string" then
    return moontask._json_encode(v)
  elseif t == "table" then
    if v[1] ~= nil or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = encode(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      parts[#parts + 1] = moontask._json_encode(k) .. ":" .. encode(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot render a " .. t .. " as JSON")
end
M.encode = encode

-- A JSON null that still occupies a key (encode skips nil values).
local NULL = raw("null")

local function or_null(v) if v == nil then return NULL end return v end

local function task_object(row, with_traceback)
  local o = {
    id = row.id,
    task = row.task,
    status = row.status,
    attempts = row.attempts,
    retries = row.retries,
    created_at = row.created_at + 0.0,
    run_at = row.run_at + 0.0,
    started_at = or_null(row.started_at and row.started_at + 0.0),
    finished_at = or_null(row.finished_at and row.finished_at + 0.0),
    error = or_null(row.error),
    encrypted = row.encrypted,
    args = row.args_json and raw(row.args_json) or NULL,
  }
  if with_traceback then o.traceback = or_null(row.traceback) end
  return o
end

function M.task_json(row, with_traceback)
  return encode(task_object(row, with_traceback))
end

function M.tasks_json(rows)
  local parts = {}
  for i, row in ipairs(rows) do parts[i] = encode(task_object(row, false)) end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- Task-supplied text shown on a terminal: control bytes (escape sequences
-- included) become \xNN; line breaks are kept only where multi_line.
local function safe(s, multi_line)
  s = tostring(s or "")
  return (s:gsub("[%c\127]", function(c)
    if c == "\t" or (multi_line and c == "\n") then return c end
    if c == "\n" then return "\\n" end
    return string.format("\\x%02x", c:byte())
  end))
end

local function iso(t)
  if not t then return "-" end
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%03dZ",
    math.floor((t - math.floor(t)) * 1000))
end

local function args_text(row)
  if row.args_json then return row.args_json end
  if row.encrypted then return "<encrypted>" end
  return "<unreadable>"
end

local function clip(s, n)
  s = safe(s)
  if #s > n then return s:sub(1, n - 3) .. "..." end
  return s
end

function M.tasks_table(rows)
  local lines = {}
  local header = { "ID", "TASK", "STATUS", "ATTEMPTS", "CREATED", "ARGS", "ERROR" }
  local cells = { header }
  for _, r in ipairs(rows) do
    cells[#cells + 1] = {
      r.id, safe(r.task), r.status, tostring(r.attempts), iso(r.created_at), clip(args_text(r), 40),
      clip(r.error, 60),
    }
  end
  local widths = {}
  for _, row in ipairs(cells) do
    for i, c in ipairs(row) do widths[i] = math.max(widths[i] or 0, #c) end
  end
  for _, row in ipairs(cells) do
    local parts = {}
    for i, c in ipairs(row) do
      parts[i] = i < #row and c .. string.rep(" ", widths[i] - #c) or c
    end
    lines[#lines + 1] = table.concat(parts, "  ")
  end
  lines[#lines + 1] = string.format("(%d task%s)", #rows, #rows == 1 and "" or "s")
  return table.concat(lines, "\n") .. "\n"
end

function M.task_text(row)
  local lines = {
    "id:          " .. row.id,
    "task:        " .. safe(row.task),
    "status:      " .. row.status,
    "attempts:    " .. row.attempts .. " (retries allowed: " .. row.retries .. ")",
    "created_at:  " .. iso(row.created_at),
    "run_at:      " .. iso(row.run_at),
    "started_at:  " .. iso(row.started_at),
    "finished_at: " .. iso(row.finished_at),
    "args:        " .. safe(args_text(row)),
  }
  if row.error then lines[#lines + 1] = "error:       " .. safe(row.error, true) end
  if row.traceback then lines[#lines + 1] = "traceback:\n" .. safe(row.traceback, true) end
  return table.concat(lines, "\n") .. "\n"
end

function M.logs_json(entries)
  local parts = {}
  for i, e in ipairs(entries) do
    parts[i] = encode {
      attempt = e.attempt, time = e.time + 0.0, level = e.level, message = e.message,
      extras = raw(e.extras_json or "{}"),
    }
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

function M.logs_text(entries)
  local lines = {}
  for _, e in ipairs(entries) do
    local extras = e.extras_json ~= "{}" and (" " .. e.extras_json) or ""
    lines[#lines + 1] = string.format("%s %-7s #%d %s%s", iso(e.time), e.level:upper(), e.attempt,
      safe(e.message), safe(extras))
  end
  if #lines == 0 then return "(no log entries)\n" end
  return table.concat(lines, "\n") .. "\n"
end

return M

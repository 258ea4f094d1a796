-- Enqueues one hash_file task per regular file under a folder.
-- Usage: moontask lua scripts/filehash/enqueue.lua CONFIG DIR
-- Prints the number of tasks added. File names are read NUL-separated
-- from find(1), so spaces, quotes and newlines in names are safe.
local moontask = require "moontask"

local config_path, dir = ...
if not config_path or not dir then
  io.stderr:write("usage: moontask lua enqueue.lua CONFIG DIR\n")
  os.exit(2)
end

-- Single-quotes s for /bin/sh: the only character to escape is ' itself.
local function shell_quote(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

local function list_files(root)
  local p = assert(io.popen("find " .. shell_quote(root) .. " -type f -print0", "r"))
  local data = p:read("a")
  local ok, how, code = p:close()
  local files = {}
  for name in data:gmatch("([^%z]+)%z") do files[#files + 1] = name end
  if not ok then
    -- find lists what it can and fails on unreadable folders: go on with
    -- what it listed, unless it listed nothing.
    if #files == 0 then
      error(string.format("find %s failed (%s %s)", root, how, tostring(code)), 0)
    end
    io.stderr:write("filehash: find reported errors (above); enqueuing the files it listed\n")
  end
  table.sort(files)
  return files
end

local files = list_files(dir)
local e = moontask.open { config = config_path }
local added = 0
for _, path in ipairs(files) do
  local id, msg = e:add("hash_file", path)
  if not id then
    e:close()
    error("enqueue failed after " .. added .. " task(s): " .. msg, 0)
  end
  added = added + 1
end
e:close()
print(string.format("enqueued %d hash_file task(s) from %s", added, dir))

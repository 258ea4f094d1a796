-- Config for the filehash example: one task per file, each recording the
-- file's SHA-256 and size. The work folder (database and log file) comes
-- from the environment so that every run can start fresh; run.sh sets it.
-- luacheck: read globals env
local work = env "FILEHASH_WORK"

return {
  database = work .. "/moontask.db",
  scripts = { "tasks.lua" },
  workers = 2,
  -- Thousands of "hashed" lines go to the file, not the terminal.
  log = { file = work .. "/moontask.log", stdout = false, level = "info" },
  poll_interval = 0.1,
}

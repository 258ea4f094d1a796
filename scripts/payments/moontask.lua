-- Config for the payments example. Card tokens are arguments, so they are
-- encrypted at rest with the key in $MOONTASK_KEY (`moontask keygen` makes
-- one). The work folder comes from the environment; run.sh sets it.
-- luacheck: read globals env
local work = env "PAYMENTS_WORK"

return {
  database = work .. "/moontask.db",
  scripts = { "tasks.lua" },
  workers = 2,
  encrypt_args_key = env "MOONTASK_KEY",
  log = { file = work .. "/moontask.log", stdout = true, level = "info" },
  poll_interval = 0.1,
}

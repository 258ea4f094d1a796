-- Prints the id of the task with the most attempts (ties: the first made).
-- Usage: moontask lua scripts/payments/most_retried.lua CONFIG
local moontask = require "moontask"

local e = moontask.open { config = (...) }
local best
for _, t in ipairs(assert(e:tasks {})) do
  if not best or t.attempts > best.attempts then best = t end
end
e:close()
if best then print(best.id) end

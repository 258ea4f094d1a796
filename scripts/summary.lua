-- Prints the end-of-run summary of an example: tasks by status, how many
-- needed more than one attempt, the first few failures, and throughput.
-- Usage: moontask lua scripts/summary.lua CONFIG T0 T1 T2
-- where T0, T1, T2 are Unix times (`date +%s.%N`) at the start of enqueue,
-- the start of the run and its end.
local moontask = require "moontask"

local config_path, t0, t1, t2 = ...
t0, t1, t2 = tonumber(t0), tonumber(t1), tonumber(t2)
if not config_path or not t0 or not t1 or not t2 then
  io.stderr:write("usage: moontask lua summary.lua CONFIG T0 T1 T2\n")
  os.exit(2)
end
local enqueue_s, run_s = t1 - t0, t2 - t1

local STATUSES = { "PENDING", "RUNNING", "SUCCESS", "FAILED", "INTERRUPTED" }

local e = moontask.open { config = config_path }
local counts = assert(e:counts())
local rows = assert(e:tasks {})
local failed = assert(e:tasks { status = "FAILED", limit = 5 })
e:close()

local total, parts = 0, {}
for _, s in ipairs(STATUSES) do
  local n = counts[s] or 0
  total = total + n
  parts[#parts + 1] = string.format("%s %d", s, n)
end
local retried, attempts = 0, 0
for _, t in ipairs(rows) do
  attempts = attempts + t.attempts
  if t.attempts > 1 then retried = retried + 1 end
end

local function rate(n, secs)
  return secs > 0 and string.format("%.0f", n / secs) or "-"
end

print("== summary")
print(string.format("tasks:    %d (%s)", total, table.concat(parts, ", ")))
print(string.format("attempts: %d; %d task(s) needed a retry", attempts, retried))
print(string.format("enqueue:  %.2f s, %s tasks/s", enqueue_s, rate(total, enqueue_s)))
print(string.format("run:      %.2f s, %s tasks/s", run_s, rate(total, run_s)))
print(string.format("total:    %.2f s, %s tasks/s", enqueue_s + run_s, rate(total, enqueue_s + run_s)))
if #failed > 0 then
  print(string.format("failed:   %d task(s)%s", counts.FAILED or 0,
    (counts.FAILED or 0) > #failed and string.format(", the first %d:", #failed) or ":"))
end
for _, t in ipairs(failed) do
  print(string.format("  %s %s: %s", t.id, t.task, t.error or "?"))
end

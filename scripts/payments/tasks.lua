-- Tasks of the payments example. charge_payment(user_id, card_token,
-- amount) charges through the fake gateway; a gateway timeout is retried
-- with exponential backoff (0.5 s, 1 s, 2 s, 4 s, capped at 5 s). Each
-- outcome is logged; the card token never is: it is encrypted at rest
-- (encrypt_args_key in moontask.lua) and must not leak through the logs.
local moontask = require "moontask"

-- Task scripts load by path: make `require "payments.gateway"` find
-- gateway.lua next to this file. The task body requires it at call time, so
-- a spec can replace it with e:inject("payments.gateway", fake).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
if not package.path:find(here .. "../?.lua;", 1, true) then
  package.path = here .. "../?.lua;" .. package.path
end

moontask.task("charge_payment", { retries = 4, delay = 0.5, backoff = 2, max_delay = 5 },
  function(user_id, card_token, amount)
    local gateway = require "payments.gateway"
    local attempt = moontask.context().attempt
    local ok, res = pcall(gateway.charge, user_id, card_token, amount, attempt)
    if not ok then
      moontask.log("charge failed", {
        level = "warning", user_id = user_id, amount = amount, attempt = attempt, reason = res,
      })
      error(res, 0)
    end
    moontask.log("charged", { user_id = user_id, amount = amount, attempt = attempt, charge = res })
    return res
  end)

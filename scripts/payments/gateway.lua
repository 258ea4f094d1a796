-- A fake, local payment gateway for the payments example. It fails
-- transiently in a reproducible way: the charge for a user times out on
-- its first (user_id % 4) attempts and goes through after that, so with
-- retries = 4 every payment ends up charged and the backoff schedule shows
-- in the logs. It never puts the card token in an error or a result.
local M = {}

-- Attempts that time out before the gateway accepts this user's charge.
function M.failures_for(user_id)
  return user_id % 4
end

-- Charges amount to the card behind token for user_id on the given attempt
-- (1 for the first try). Returns a charge id, or raises "gateway timeout".
function M.charge(user_id, token, amount, attempt)
  if math.type(user_id) ~= "integer" or user_id < 0 then
    error("gateway: user_id must be a whole number >= 0", 2)
  end
  if type(token) ~= "string" or not token:match("^tok_[%w_]+$") then
    error("gateway: card_token is not a card token", 2)  -- the value is not echoed
  end
  if type(amount) ~= "number" or amount <= 0 then
    error("gateway: amount must be a positive number", 2)
  end
  if attempt <= M.failures_for(user_id) then
    error(string.format("gateway timeout (user %d, attempt %d)", user_id, attempt), 0)
  end
  return string.format("ch_%06d_%d", user_id, math.floor(amount * 100 + 0.5))
end

return M

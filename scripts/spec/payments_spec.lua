-- Specs of the payments example, written with moontask's test kit.
-- Run from scripts/:  busted
local mt = require "moontask.testing"
local moontask = require "moontask"

describe("charge_payment", function()
  local e

  before_each(function()
    e = mt.engine { scripts = { "payments/tasks.lua" }, encrypt_args_key = moontask.keygen() }
  end)

  after_each(function()
    e:close()
  end)

  it("charges once the gateway stops timing out, backing off 0.5, 1 and 2 seconds", function()
    local id = e:add("charge_payment", 43, "tok_visa_4242", 19.99) -- user 43: 3 timeouts
    local start = e:now()
    e:drain()
    assert.are.equal(start + 0.5, e:get(id).run_at)
    e:advance(0.5)
    e:drain()
    assert.are.equal(start + 0.5 + 1, e:get(id).run_at)
    e:advance(1)
    e:drain()
    e:advance(1.9)
    e:drain()
    assert.are.equal("PENDING", e:get(id).status) -- 2 s after the third failure, not before
    e:advance(0.1)
    e:drain()
    assert.task_succeeded(e, id)
    assert.task_retried(e, id, 3)
    assert.logged(e, id, "charge failed", "warning")
    assert.logged(e, id, "charged", "info")
  end)

  it("never writes the card token to the task's logs", function()
    local id = e:add("charge_payment", 42, "tok_mastercard_5555", 5.00)
    e:settle()
    assert.task_succeeded(e, id)
    for _, entry in ipairs(e:logs(id)) do
      assert.is_nil(entry.message:find("tok_mastercard_5555", 1, true))
      for _, v in pairs(entry.extras) do
        assert.are_not.equal("tok_mastercard_5555", v)
      end
    end
  end)

  it("fails for good when the gateway keeps timing out", function()
    e:inject("payments.gateway", {
      charge = function() error("gateway timeout", 0) end,
    })
    local id = e:add("charge_payment", 7, "tok_amex_0005", 12.50)
    e:settle()
    assert.task_failed(e, id, "gateway timeout")
    assert.task_retried(e, id, 4)
  end)

  it("passes the arguments through unchanged, encrypted at rest", function()
    local fake = { charge = spy.new(function() return "ch_test" end) }
    e:inject("payments.gateway", fake)
    local id = e:add("charge_payment", 42, "tok_visa_4242", 9.99)
    assert.is_true(e:get(id).encrypted)
    e:drain()
    assert.task_succeeded(e, id)
    assert.spy(fake.charge).was.called_with(42, "tok_visa_4242", 9.99, 1)
  end)
end)

-- Specs of the filehash example (the main job), written with the test kit.
-- Run from scripts/:  busted
local mt = require "moontask.testing"

local function tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

describe("hash_file", function()
  local e

  before_each(function()
    e = mt.engine { scripts = { "filehash/tasks.lua" } }
  end)

  after_each(function()
    e:close()
  end)

  it("records the SHA-256 and size of a file", function()
    local path = tmpfile("abc")
    local id = e:add("hash_file", path)
    e:drain()
    os.remove(path)
    assert.task_succeeded(e, id)
    local entry = e:logs(id)[1]
    assert.are.equal("hashed", entry.message)
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      entry.extras.sha256)
    assert.are.equal(3, entry.extras.size)
  end)

  it("retries a vanished file twice, then fails naming it", function()
    local path = tmpfile("gone soon")
    os.remove(path)
    local id = e:add("hash_file", path)
    e:drain()
    assert.are.equal("PENDING", e:get(id).status)
    e:advance(0.1)
    e:drain()
    e:advance(0.2)
    e:drain()
    assert.task_failed(e, id, "cannot open file: " .. path:gsub("%p", "%%%0"))
    assert.task_retried(e, id, 2)
  end)

  it("refuses a path that is not a string", function()
    local id = e:add("hash_file", 42)
    e:settle()
    assert.task_failed(e, id, "expected a file path, got number")
  end)
end)

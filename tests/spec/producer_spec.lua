-- luacheck: std +busted
-- e:add_many: a producer's group commit, many tasks in one transaction.
local moontask = require "moontask"

describe("Engine:add_many", function()
  local e, seen

  before_each(function()
    seen = {}
    moontask.task("collect", function(...)
      seen[#seen + 1] = table.pack(...)
    end)
  end)

  after_each(function()
    if e then e:close() end
    e = nil
  end)

  it("adds every task in order, with their arguments, in one call", function()
    e = assert(moontask.open {})
    local ids = e:add_many("collect", { { 1, "a" }, { n = 3, 2, nil, nil }, {} })
    assert.equal(3, #ids)
    local rows = e:tasks()
    assert.same(ids, { rows[1].id, rows[2].id, rows[3].id })
    e:drain()
    assert.same({ { 1, "a", n = 2 }, { 2, nil, nil, n = 3 }, { n = 0 } }, seen)
  end)

  it("encrypts every payload when a key is set", function()
    e = assert(moontask.open { encrypt_args_key = moontask.keygen() })
    local ids = e:add_many("collect", { { "secret-one" }, { "secret-two" } })
    for _, id in ipairs(ids) do assert.is_true(e:get(id).encrypted) end
    e:drain()
    assert.same({ { "secret-one", n = 1 }, { "secret-two", n = 1 } }, seen)
  end)

  it("adds nothing when one task's arguments are not data, and says which", function()
    e = assert(moontask.open {})
    assert.has_error(function()
      e:add_many("collect", { { 1 }, { { cb = print } }, { 3 } })
    end, "task 2: argument 1: field 'cb' is a function")
    assert.equal(0, #e:tasks())
  end)

  it("refuses an unknown task name and a list entry that is not a table", function()
    e = assert(moontask.open {})
    assert.has_error(function() e:add_many("nope", { {} }) end)
    assert.has_error(function() e:add_many("collect", { 42 }) end,
      "task 1: expected a table of arguments")
    assert.equal(0, #e:tasks())
  end)

  it("refuses an n out of range", function()
    e = assert(moontask.open {})
    assert.has_error(function() e:add_many("collect", { { n = -1 } }) end,
      "task 1: args.n must be from 0 to 10000")
    assert.equal(0, #e:tasks())
  end)

  it("leaves no plaintext argument in the database or its WAL (and the scan can find one)",
    function()
      local support = require "support"
      local dir = support.tmpdir()
      local secret = "add-many-secret-" .. support.random_hex(8)
      local function bytes_on_disk(with_key)
        local db = dir .. (with_key and "/enc.db" or "/plain.db")
        local x = assert(moontask.open {
          database = db, encrypt_args_key = with_key and moontask.keygen() or nil,
        })
        x:add_many("collect", { { secret }, { { nested = secret } } })
        local blob = (support.read(db) or "") .. (support.read(db .. "-wal") or "")
        x:close()
        return blob
      end
      assert.is_nil(bytes_on_disk(true):find(secret, 1, true))
      assert.truthy(bytes_on_disk(false):find(secret, 1, true))
      support.cleanup()
    end)
end)


-- luacheck: std +busted
-- Task scripts require Debian-packaged Lua modules (C ones too) the way
-- plain lua5.4 does, both under `moontask run` and through the Lua module.
local moontask = require "moontask"
local support = require "support"

local TASKS = [[
local moontask = require "moontask"
local cjson = require "cjson"          -- lua-cjson, a C module
local socket = require "socket"        -- lua-socket, C and Lua parts
moontask.task("modules", function(doc)
  local t = cjson.decode(doc)
  moontask.log("decoded", { answer = t.answer, has_gettime = type(socket.gettime) == "function" })
end)
]]

describe("Debian-packaged Lua modules in task scripts", function()
  local dir

  before_each(function()
    dir = support.tmpdir()
    support.write(dir .. "/tasks.lua", TASKS)
    support.write(dir .. "/moontask.lua",
      'return { database = "q.db", scripts = { "tasks.lua" }, log = { stdout = false } }')
  end)

  after_each(support.cleanup)

  it("load under moontask run with no LUA_PATH or LUA_CPATH set", function()
    local env = { LUA_PATH = false, LUA_CPATH = false, LUA_PATH_5_4 = false, LUA_CPATH_5_4 = false }
    local code, out, err = support.run({ "add", "modules", '"{\\"answer\\": 42}"' },
      { cwd = dir, env = env })
    assert.equal(0, code, err)
    local id = out:match("%S+")
    local rcode, _, rerr = support.run({ "run", "--drain" }, { cwd = dir, env = env })
    assert.equal(0, rcode, rerr)
    local _, logs = support.run({ "logs", id, "--json" }, { cwd = dir, env = env })
    local entry = support.json(logs)[1]
    assert.equal("decoded", entry.message)
    assert.equal(42, entry.extras.answer)
    assert.is_true(entry.extras.has_gettime)
  end)

  it("load in a spec's own Lua state through moontask.open", function()
    local e = assert(moontask.open { scripts = { dir .. "/tasks.lua" } })
    local id = e:add("modules", '{"answer": 7}')
    e:drain()
    assert.equal("SUCCESS", e:get(id).status)
    e:close()
  end)
end)

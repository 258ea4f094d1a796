-- The leak test: tasks whose arguments hold a unique secret are enqueued
-- (through the CLI and the Lua module) and run; they log it, print it and
-- raise with it. Afterwards every byte of the database, its -wal and -shm,
-- the log file and the output of every command is searched for the secret,
-- its hex and its base64 forms: with a key none may be found. Without a key
-- the same scenario must find it, which proves the search works.
local moontask = require "moontask"
local support = require "support"

local FIXTURE = support.root .. "/tests/fixtures/crypto_tasks.lua"

after_each(function() support.cleanup() end)

describe("the leak scanner", function()
  it("encodes base64 and base64url as RFC 4648 does", function()
    local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
      fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
    for plain, b64 in pairs(vectors) do assert.equal(b64, support.base64(plain)) end
    assert.equal("-_-_", support.base64("\251\255\191", true))
    assert.equal("+/+/", support.base64("\251\255\191"))
  end)

  it("finds the secret, its hex and its base64 forms at any alignment", function()
    local secret = "s3cr3t-" .. support.random_hex(12)
    local forms = support.leak_forms(secret)
    local function names(blob) return table.concat(support.find_leaks(blob, forms), " ") end
    assert.equal("", names("nothing to see here " .. support.random_hex(64)))
    assert.matches("plain", names("xx" .. secret .. "yy"))
    assert.matches("hex", names("\0" .. support.tohex("abc" .. secret .. "z") .. "\0"))
    assert.matches("HEX", names(support.tohex("ab" .. secret):upper()))
    for pad = 0, 2 do
      local wrapped = string.rep("\0", pad) .. secret .. "tail"
      assert.matches("base64@", names("..." .. support.base64(wrapped) .. "..."))
      assert.matches("base64url@", names(support.base64(wrapped, true)))
    end
  end)
end)

-- Runs the whole scenario; returns the secret and what to search:
-- a list of {name=, text=} for files and command outputs.
local function scenario(key)
  local secret = "s3cr3t-" .. support.random_hex(12)
  local dir = support.tmpdir()
  support.write(dir .. "/tasks.lua", support.read(FIXTURE))
  support.project(dir, string.format([[
return {
  database = "mt.db",
  scripts = { "tasks.lua" },
  log = { file = "mt.log", stdout = true, level = "debug" },
  %s
}
]], key and 'encrypt_args_key = env "MOONTASK_KEY",' or ""))
  local env = { MOONTASK_KEY = key or false }
  local found = {}  -- name -> text
  local order = {}
  local function keep(name, text)
    if found[name] == nil then order[#order + 1] = name end
    found[name] = (found[name] or "") .. text
  end
  local function mt(name, ...)
    local code, out, err = support.run({ ... }, { cwd = dir, env = env })
    keep(name .. " (stdout)", out)
    keep(name .. " (stderr)", err)
    return code, out
  end
  local function id_of(code, out)
    assert.equal(0, code)
    return assert(out:match("^(%S+)\n$"))
  end

  -- Through the Lua module, run in this process. The engine stays open
  -- while the CLI works, so the database keeps its -wal until we scan it.
  local e = assert(moontask.open { database = dir .. "/mt.db", scripts = { dir .. "/tasks.lua" },
    encrypt_args_key = key, log = { file = dir .. "/mt.log", stdout = false } })
  local ids = {
    e:add("leak", secret, { card = { token = secret, cvc = 123 } }, "Bearer " .. secret),
    e:enqueue { task = "leak", args = { nil, { deep = { deeper = { secret } } }, n = 2 }, retries = 1,
      retry_delay = 0 },
    e:add("noop", secret, { secret }),
  }
  assert.equal(4, assert(e:drain()).ran)

  -- Through the CLI.
  local js = string.format("%q", secret)
  ids[#ids + 1] = id_of(mt("add", "add", "leak", js, '{"card":{"token":' .. js .. '}}'))
  ids[#ids + 1] = id_of(mt("add", "add", "noop", "[" .. js .. "," .. js .. "]"))
  ids[#ids + 1] = id_of(mt("add", "add", "boom", js))
  -- Refused input must not be echoed either.
  assert.equal(2, (mt("add refused", "add", "leak", "{\"card\": " .. secret .. "}")))
  assert.equal(2, (mt("add refused", "add", "leak", secret)))
  assert.equal(2, (mt("add refused", "add", "no_such_task", js)))
  assert.equal(1, (mt("run", "run", "--drain")))
  -- A Lua script run by `moontask lua` (after the CLI run, so that its drain
  -- runs only its own task), its engine's stdout sink captured.
  support.write(dir .. "/enqueue.lua", [[
local moontask = require "moontask"
local secret = ...
local e = assert(moontask.open { config = "moontask.lua" })
local id = e:add("leak", secret, { card = { token = secret } })
e:drain()
io.write(id, "\n")
e:close()
]])
  local lcode, lout = mt("moontask lua", "lua", "enqueue.lua", secret)
  assert.equal(0, lcode, found["moontask lua (stderr)"])
  ids[#ids + 1] = assert(lout:match("(%S+)\n$"))
  mt("list", "list")
  mt("list --json", "list", "--json")
  for _, id in ipairs(ids) do
    mt("show", "show", id)
    mt("show --json", "show", id, "--json")
    mt("logs", "logs", id)
    mt("logs --json", "logs", id, "--json")
  end

  -- The tasks did run and log (so an empty log cannot pass as clean).
  assert.equal(3, #e:logs(ids[1]) // 2)
  assert.equal("FAILED", e:get(ids[4]).status)

  local function files(state)
    local p = io.popen("ls -A " .. support.quote(dir))
    for name in p:lines() do
      if name ~= "tasks.lua" and name ~= "moontask.lua" then
        keep(name .. " (" .. state .. ")", support.read(dir .. "/" .. name) or "")
      end
    end
    p:close()
  end
  local wal = support.read(dir .. "/mt.db-wal")
  assert.truthy(wal and #wal > 0, "the -wal should exist while the engine is open")
  files("engine open")
  e:close()
  files("engine closed")

  local list = {}
  for _, name in ipairs(order) do list[#list + 1] = { name = name, text = found[name] } end
  return secret, list
end

describe("the leak test", function()
  it("finds no form of a secret argument anywhere when a key is configured", function()
    local secret, places = scenario(moontask.keygen())
    local forms = support.leak_forms(secret)
    local leaks = {}
    for _, place in ipairs(places) do
      local hits = support.find_leaks(place.text, forms)
      if #hits > 0 then leaks[#leaks + 1] = place.name .. ": " .. table.concat(hits, ", ") end
    end
    assert.same({}, leaks)
    -- The scan covered the database, its -wal and the log file.
    local names = {}
    for _, place in ipairs(places) do names[place.name] = #place.text end
    assert.truthy(names["mt.db (engine open)"] > 0)
    assert.truthy(names["mt.db-wal (engine open)"] > 0)
    assert.truthy(names["mt.db (engine closed)"] > 0)
    assert.truthy(names["mt.log (engine closed)"] > 0)
  end)

  it("finds the secret in the same places without a key (the scan works)", function()
    local secret, places = scenario(nil)
    local where = {}
    for _, place in ipairs(places) do
      if place.text:find(secret, 1, true) then where[place.name] = true end
    end
    assert.truthy(where["mt.db (engine open)"] or where["mt.db-wal (engine open)"])
    assert.truthy(where["mt.db (engine closed)"])
    assert.truthy(where["mt.log (engine open)"])
    for _, name in ipairs { "run (stdout)", "moontask lua (stdout)", "show (stdout)", "show --json (stdout)",
      "logs (stdout)", "logs --json (stdout)", "list (stdout)" } do
      assert.truthy(where[name], name)
    end
  end)
end)

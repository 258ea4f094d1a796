-- Tasks of the filehash example. hash_file(path) reads a file in chunks,
-- computes its SHA-256 with OpenSSL (Debian's lua-luaossl) and logs the
-- digest and size. A file that is unreadable or gone raises an error that
-- names it, and the engine retries it per the options below.
local moontask = require "moontask"
local digest = require "openssl.digest"

local CHUNK = 64 * 1024

local function hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Returns the hex SHA-256 and the size of the file at path, or raises.
local function sha256_file(path)
  local f, msg = io.open(path, "rb")
  if not f then error("cannot open file: " .. msg, 0) end
  local d = digest.new("sha256")
  local size = 0
  while true do
    local chunk, rerr = f:read(CHUNK)
    if chunk == nil then
      if rerr then
        f:close()
        error("cannot read " .. path .. ": " .. rerr, 0)
      end
      break
    end
    size = size + #chunk
    d:update(chunk)
  end
  f:close()
  return hex(d:final()), size
end

moontask.task("hash_file", { retries = 2, delay = 0.1, backoff = 2 }, function(path)
  if type(path) ~= "string" then
    error("hash_file: expected a file path, got " .. type(path), 0)
  end
  local sum, size = sha256_file(path)
  moontask.log("hashed", { sha256 = sum, size = size, path = path })
  return sum
end)

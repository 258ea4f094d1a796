-- moontask.engine: the Lua half of the `moontask` module. Adds
-- moontask.open (options or a config file -> Engine with scripts loaded)
-- and Engine:drain to the C module table it is given.
return function(M)
  local Engine = M._Engine

  local OPEN_EXTRA = { config = true, clock = true, log = true }

  -- moontask.open{database=, scripts=, config=, encrypt_args_key=, clock="virtual", ...}
  -- Returns an Engine, or nil, message, code. Config and option mistakes raise.
  function M.open(opts)
    opts = opts or {}
    if type(opts) ~= "table" then error("moontask.open: expected a table of options", 2) end
    local config = require "moontask.config"
    local settings, err
    if opts.config ~= nil then
      settings, err = config.load(opts.config)
      if not settings then error(err, 2) end
      -- Explicit options win over the file's.
      local rest = {}
      for k, v in pairs(opts) do
        if k ~= "config" and k ~= "clock" then rest[k] = v end
      end
      if next(rest) then
        local over
        over, err = config.protect(config.normalize, rest, "moontask.open", ".", OPEN_EXTRA)
        if not over then error(err, 2) end
        for k in pairs(rest) do
          local key = (k == "encrypt_args_key" or k == "encrypt_args_keys"
            or k == "encrypt_args_key_file") and "keys" or k
          settings[key] = over[key]
        end
      end
    else
      local t = {}
      for k, v in pairs(opts) do
        if k ~= "clock" then t[k] = v end
      end
      if t.database == nil then t.database = ":memory:" end
      if t.log == nil then t.log = { stdout = false } end
      settings, err = config.protect(config.normalize, t, "moontask.open", ".", OPEN_EXTRA)
      if not settings then error(err, 2) end
    end
    if opts.clock ~= nil and opts.clock ~= "virtual" and opts.clock ~= "real" then
      error("moontask.open: clock must be \"virtual\" or \"real\"", 2)
    end
    settings.virtual_clock = opts.clock == "virtual"
    local e, msg, code = M._open(settings)
    if not e then return nil, msg, code end
    for _, path in ipairs(settings.scripts) do
      local ok, lerr = pcall(M._load_script, path)
      if not ok then
        e:close()
        error(lerr, 2)
      end
    end
    if opts.config ~= nil or opts.scripts ~= nil then
      e:_strict()  -- its task registry is loaded: unknown task names are refused
    end
    return e
  end

  -- e:drain{max=} runs everything runnable now, one task at a time, and
  -- returns {ran=, succeeded=, failed=, retried=}; tasks waiting for a
  -- later run_at stay PENDING.
  function Engine:drain(opts)
    local max = opts and opts.max or 1000000
    local before = self:stats()
    local ran = 0
    while ran < max do
      local n, msg, code = self:run_batch(1)
      if not n then return nil, msg, code end
      if n == 0 then break end
      ran = ran + n
    end
    local after = self:stats()
    return {
      ran = ran,
      succeeded = after.succeeded - before.succeeded,
      failed = after.failed - before.failed,
      retried = after.retried - before.retried,
    }
  end
end

-- Prepended to every script (redis.py): the time in microseconds, `arg` when the caller passes one (the contract
-- tests' FakeClock), else Redis TIME (production: every gateway shares one clock).
local function now_us(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return tonumber(arg)
end


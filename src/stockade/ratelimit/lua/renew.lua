-- Extend the leases of one request's concurrency slots while it is still in flight.
-- KEYS: the request's concurrency counters (one hash tag, as in limits.lua).
-- ARGV[1]: now in microseconds, or '' for the Redis clock. ARGV[2]: the request's token.
-- ARGV[2 + i]: the lease of KEYS[i] in microseconds.
-- ZADD XX only updates a member that is there: a slot already released (or expired) is never added back.
local now = now_us(ARGV[1])  -- clock.lua
local token = ARGV[2]
for i, key in ipairs(KEYS) do
  local lease = tonumber(ARGV[2 + i])
  if redis.call('ZADD', key, 'XX', 'CH', string.format('%.0f', now + lease), token) == 1 then
    redis.call('PEXPIRE', key, math.ceil(lease / 1000))
  end
end
return 1

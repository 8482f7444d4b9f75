-- Decide every limit of one request atomically: all admit it and all count it, or none counts it.
-- KEYS: one counter per limit, all with the same hash tag (one Redis Cluster slot).
-- ARGV[1]: now in microseconds, or '' for the Redis clock (production: every gateway shares one clock).
-- ARGV[2 + 4(i-1) ..]: algorithm, p1, p2, cost for KEYS[i] (see stockade/ratelimit/backend.py).
-- ARGV[2 + 4n]: the request's token (a concurrency slot's member).
-- Returns {ok, then per key: allowed, remaining, reset_us, retry_us}. Mirrors memory.py operation by operation.
local now = now_us(ARGV[1])  -- clock.lua

local function fmt(x) return string.format('%.0f', x) end

local function idiv(a, b) -- floor(a / b) for integers, exact where a double division could round up
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function ceil(x) return math.ceil(x) end

local function window_retry(w, limit, cost, cur, prev, elapsed)
  if cur + cost <= limit then
    return ceil(w - elapsed - (limit - cur - cost) * w / prev)
  end
  return w - elapsed + math.max(0, ceil(w - (limit - cost) * w / cur))
end

local n = #KEYS
local token = ARGV[2 + 4 * n]
local ok = 1
local out = {0}
local writes = {}
for i = 1, n do
  local key = KEYS[i]
  local base = 2 + (i - 1) * 4
  local kind = ARGV[base]
  local p1 = tonumber(ARGV[base + 1])
  local p2 = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local allowed, remaining, reset, retry = 1, 0, 0, 0
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + p1 * cost
    local allow_at = new_tat - p2
    if allow_at <= now then
      remaining, reset = idiv(now - allow_at, p1), new_tat - now
      writes[#writes + 1] = {'g', key, new_tat}
    else
      allowed, remaining, reset, retry = 0, math.max(0, idiv(now - tat + p2, p1)), tat - now, allow_at - now
    end
  elseif kind == 'w' then
    local idx = idiv(now, p1)
    local st = redis.call('HMGET', key, 'w', 'c', 'p')
    local w = tonumber(st[1])
    local cur, prev = 0, 0
    if w == idx then
      cur, prev = tonumber(st[2]), tonumber(st[3])
    elseif w == idx - 1 then
      prev = tonumber(st[2])
    end
    local elapsed = now - idx * p1
    local est = prev * (p1 - elapsed) / p1 + cur
    reset = 2 * p1 - elapsed
    if est + cost <= p2 then
      remaining = math.max(0, math.floor(p2 - est - cost))
      writes[#writes + 1] = {'w', key, idx, cur + cost, prev, p1}
    else
      allowed, remaining = 0, math.max(0, math.floor(p2 - est))
      retry = window_retry(p1, p2, cost, cur, prev, elapsed)
    end
  elseif kind == 'q' then
    local used = tonumber(redis.call('GET', key)) or 0
    reset = math.max(0, p1 - now) -- the period end comes from the gateway's clock: never report it as past
    if used + cost <= p2 then
      remaining = p2 - used - cost
      writes[#writes + 1] = {'q', key, cost, reset}
    else
      allowed, remaining, retry = 0, math.max(0, p2 - used), reset
    end
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now)) -- leases of requests never released
    local inflight = redis.call('ZCARD', key)
    if inflight < p2 then
      remaining = p2 - inflight - 1
      writes[#writes + 1] = {'c', key, now + p1, p1}
    else
      allowed, retry = 0, 1000000
    end
  else
    return redis.error_reply('unknown limit algorithm ' .. tostring(kind))
  end
  if allowed == 0 then ok = 0 end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end

if ok == 1 then
  for _, w in ipairs(writes) do
    local kind, key = w[1], w[2]
    if kind == 'g' then
      redis.call('SET', key, fmt(w[3]), 'PX', math.max(1, ceil((w[3] - now) / 1000)))
    elseif kind == 'w' then
      redis.call('HSET', key, 'w', fmt(w[3]), 'c', fmt(w[4]), 'p', fmt(w[5]))
      redis.call('PEXPIRE', key, ceil(2 * w[6] / 1000))
    elseif kind == 'q' then
      redis.call('INCRBY', key, fmt(w[3]))
      redis.call('PEXPIRE', key, ceil(w[4] / 1000) + 60000) -- a minute past the period end
    else
      redis.call('ZADD', key, fmt(w[3]), token)
      redis.call('PEXPIRE', key, ceil(w[4] / 1000))
    end
  end
end
out[1] = ok
return out

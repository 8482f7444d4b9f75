-- Brute-force lockout records: a hash per subject {f = failures, u = until, l = locked 0/1, e = forget at}
-- (times in microseconds). A record whose `e` has passed counts as absent; its TTL removes it soon after.
-- ARGV[1]: 'check' | 'fail' | 'ok'; ARGV[2]: now in microseconds, or '' for Redis TIME.
-- check: per key {wait_us, locked, failures}.  fail: ARGV[3 + 6(i-1) ..] = free, lockout_after,
-- backoff_base_us, backoff_max_us, lockout_us, window_us; per key {failures, wait_us, locked}.
-- ok: forget an unlocked subject's failures. Mirrors memory.py (MemoryBackend and backoff()).
local now = now_us(ARGV[2])  -- clock.lua
local function fmt(x) return string.format('%.0f', x) end
local function live(key) -- the record's fields, or nil if there is none (or it is already forgotten)
  local st = redis.call('HMGET', key, 'f', 'u', 'l', 'e')
  local e = tonumber(st[4])
  if e == nil or e <= now then return nil end
  return tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0
end
local op = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  if op == 'check' then
    local f, u, l = live(key)
    if f == nil then
      f, u, l = 0, 0, 0
    end
    if u > now then
      out[#out + 1] = u - now
      out[#out + 1] = l
    else
      out[#out + 1] = 0
      out[#out + 1] = 0
    end
    out[#out + 1] = f
  elseif op == 'fail' then
    local base = 3 + (i - 1) * 6
    local free, lock_after = tonumber(ARGV[base]), tonumber(ARGV[base + 1])
    local b0, bmax = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local lockout, window = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
    local f = live(key) or 0
    f = f + 1
    local u, l = now, 0
    if f >= lock_after then
      u, l = now + lockout, 1
    elseif f > free then
      u = now + math.min(b0 * 2 ^ (f - free - 1), bmax)
    end
    local e = u
    if l == 0 and now + window > e then e = now + window end
    redis.call('HSET', key, 'f', f, 'u', fmt(u), 'l', l, 'e', fmt(e))
    redis.call('PEXPIRE', key, math.max(1, math.ceil((e - now) / 1000)))
    out[#out + 1] = f
    out[#out + 1] = u - now
    out[#out + 1] = l
  elseif op == 'ok' then
    local f, u, l = live(key)
    if f ~= nil and l ~= 1 then
      redis.call('DEL', key) -- success forgets failures, but never lifts a lockout
    end
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return out

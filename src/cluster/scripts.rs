//! The Lua scripts Redis runs for plan counters. Each runs atomically on the server, so the
//! check and the count of one request (or the exchange of one sync) can never interleave with
//! another node's.

use std::sync::LazyLock;

/// One request: the rate (when Redis keeps it) and every quota are checked, and counted only
/// if all allow it.
///
/// KEYS[1] the rate's arrival time (microseconds, Redis's clock); KEYS[2..] the quota counters
/// (hashes: `n` the count including every unused lease, `l:{node}` each node's lease).
/// ARGV[1] the rate's interval in microseconds (0: the rate stays on the node), ARGV[2] its
/// burst; then per quota its limit and the seconds its counter must live.
/// Returns {accepted, rate allowed, microseconds to the arrival time, counts...}.
pub static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local ok = 1
local rate_ok = 1
local base, nxt = now, now
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  base = math.max(tat, now)
  nxt = base + interval
  if nxt - now > interval * burst then
    ok = 0
    rate_ok = 0
  end
end
local counts = {}
for i = 2, #KEYS do
  local c = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  counts[i - 1] = c
  if c + 1 > tonumber(ARGV[1 + (i - 1) * 2]) then
    ok = 0
  end
end
local level = base - now
if ok == 1 then
  if interval > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
    level = nxt - now
  end
  for i = 2, #KEYS do
    counts[i - 1] = redis.call('HINCRBY', KEYS[i], 'n', 1)
    redis.call('EXPIRE', KEYS[i], ARGV[2 + (i - 1) * 2])
  end
end
local out = {ok, rate_ok, level}
for i = 1, #counts do
  out[3 + i] = counts[i]
end
return out
",
    )
});

/// One sync of many counters: each gives back its unused lease, pushes the counts made while
/// Redis was unreachable, and asks for a new lease. A lease is granted only from the room left
/// under the limit, and at most that room divided by the node count, so leases can never
/// add up to more than the quota. What a node gives back is capped by the lease Redis has on
/// record for it (`l:{node}`): after a reset or a Redis restart the record is gone and a stale
/// lease takes nothing off the new count.
///
/// KEYS the counters; ARGV[1] the node count, ARGV[2] this node's id, then per counter:
/// returned, pushed, wanted, limit, seconds to live. Returns per counter {total, granted}.
pub static SYNC: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local nodes = tonumber(ARGV[1])
local field = 'l:' .. ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  local b = 2 + (i - 1) * 5
  local returned = tonumber(ARGV[b + 1])
  local pushed = tonumber(ARGV[b + 2])
  local wanted = tonumber(ARGV[b + 3])
  local limit = tonumber(ARGV[b + 4])
  local ttl = tonumber(ARGV[b + 5])
  local held = tonumber(redis.call('HGET', key, field) or '0')
  local c = tonumber(redis.call('HGET', key, 'n') or '0') - math.min(returned, held) + pushed
  if c < 0 then
    c = 0
  end
  local grant = 0
  local room = limit - c
  if room > 0 and wanted > 0 then
    grant = math.min(wanted, math.floor(room / nodes))
  end
  c = c + grant
  redis.call('HSET', key, 'n', string.format('%.0f', c))
  if grant > 0 then
    redis.call('HSET', key, field, string.format('%.0f', grant))
  else
    redis.call('HDEL', key, field)
  end
  redis.call('EXPIRE', key, ttl)
  out[i] = {c, grant}
end
return out
",
    )
});

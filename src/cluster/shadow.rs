//! The fleet's shadow endpoints in Redis (with `[store] redis_url`): every node adds its shapes
//! into one hash per UTC day, `{prefix}shadow:{day}`, field `host US method US shape`, value a
//! small JSON object (`f` first seen, `l` last seen, `n` requests, `c` the callers with most
//! requests, at most 16), merged on the server by the `ADD` script. Beside the day hashes:
//! - `{prefix}shadow:shapes`, a sorted set of the tracked shapes scored by their requests (the
//!   fraction orders equal counts by last day seen, older first): past `[catalog]
//!   shadow_shapes`, the lowest are evicted;
//! - `{prefix}shadow:last`, the last day each shape was seen: a shape whose last day is past
//!   `shadow_retention` no longer holds a place and is dropped;
//! - `{prefix}shadow:days` (the days each shape has a field in, so an eviction deletes only
//!   those), `{prefix}shadow:first` (first seen) and `{prefix}shadow:evicted` (a counter).
//!
//! Day hashes expire `shadow_retention` after their day. Every script call is bounded: at most
//! `CHUNK` shapes added, `MAX_EVICT` shapes evicted and as many aged out, so a flood of new
//! shapes never makes Redis run one long script.

use super::{CallError, Cluster};
use crate::store::shadow::{ShadowDelta, ShadowShape};
use std::collections::HashMap;
use std::sync::LazyLock;

const SEP: char = '\u{1f}';
const DAY: i64 = 86_400;
/// Callers kept per shape and day (as in the store).
const KEPT_CALLERS: usize = 16;
/// Shapes added per script call.
const CHUNK: usize = 100;
/// Shapes evicted (and aged out) per script call at most; a cap lowered by a reload is reached
/// over the next calls.
const MAX_EVICT: usize = 500;

/// ARGV[1] the key prefix (`...shadow:`), ARGV[2] the cap, ARGV[3] the oldest day kept
/// (seconds, UTC midnight), ARGV[4] the most shapes to evict or age out, ARGV[5] the retention
/// (seconds); then per delta: its day, its field, its JSON. Returns the number of shapes
/// evicted.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local oldest = tonumber(ARGV[3])
local most = tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local shapes = prefix .. 'shapes'
local last = prefix .. 'last'
local days = prefix .. 'days'
local first = prefix .. 'first'
local function forget(f)
  redis.call('ZREM', shapes, f)
  redis.call('ZREM', last, f)
  redis.call('HDEL', first, f)
  redis.call('HDEL', days, f)
end
local aged = redis.call('ZRANGEBYSCORE', last, '-inf', '(' .. oldest, 'LIMIT', 0, most)
for _, f in ipairs(aged) do forget(f) end
for i = 6, #ARGV, 3 do
  local day = tonumber(ARGV[i])
  local field = ARGV[i + 1]
  local d = cjson.decode(ARGV[i + 2])
  local added = d.n
  local key = prefix .. ARGV[i]
  local old = redis.call('HGET', key, field)
  if old then
    local o = cjson.decode(old)
    d.f = math.min(d.f, o.f)
    d.l = math.max(d.l, o.l)
    d.n = d.n + o.n
    local by = {}
    if type(o.c) == 'table' then
      for _, c in ipairs(o.c) do by[c[1]] = c[2] end
    end
    for _, c in ipairs(d.c) do by[c[1]] = (by[c[1]] or 0) + c[2] end
    local list = {}
    for k, v in pairs(by) do list[#list + 1] = {k, v} end
    table.sort(list, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    while #list > 16 do table.remove(list) end
    d.c = list
  else
    local kept = {}
    local seen = redis.call('HGET', days, field)
    if seen then
      for s in string.gmatch(seen, '[^,]+') do
        if tonumber(s) >= oldest then kept[#kept + 1] = s end
      end
    end
    kept[#kept + 1] = ARGV[i]
    redis.call('HSET', days, field, table.concat(kept, ','))
  end
  redis.call('HSET', key, field, cjson.encode(d))
  redis.call('EXPIREAT', key, day + retention)
  local f0 = tonumber(redis.call('HGET', first, field) or d.f)
  redis.call('HSET', first, field, math.min(f0, d.f))
  local l0 = tonumber(redis.call('ZSCORE', last, field) or day)
  local lastday = math.max(l0, day)
  redis.call('ZADD', last, lastday, field)
  local n0 = math.floor(tonumber(redis.call('ZSCORE', shapes, field) or 0))
  redis.call('ZADD', shapes, n0 + added + (lastday / 86400) / 1000000, field)
end
local excess = redis.call('ZCARD', shapes) - cap
if excess > most then excess = most end
local evicted = 0
if excess > 0 then
  local gone = redis.call('ZRANGE', shapes, 0, excess - 1)
  for _, f in ipairs(gone) do
    local seen = redis.call('HGET', days, f)
    if seen then
      for s in string.gmatch(seen, '[^,]+') do redis.call('HDEL', prefix .. s, f) end
    end
    forget(f)
  end
  evicted = #gone
  redis.call('INCRBY', prefix .. 'evicted', evicted)
end
return evicted
",
    )
});

fn prefix(c: &Cluster) -> String {
    c.key(&["shadow", ""])
}

fn field(host: &str, method: &str, shape: &str) -> String {
    format!("{host}{SEP}{method}{SEP}{shape}")
}

/// The oldest day whose hash may still exist (as `list` reads them).
fn oldest_day(retention: i64, now: i64) -> i64 {
    let today = now - now.rem_euclid(DAY);
    today - retention - DAY
}

/// Adds a flush's shapes, `CHUNK` per script call, and counts `evicted_on_node` (shapes the
/// node's own table evicted before they reached Redis) in the fleet's evictions; how many shapes
/// the fleet evicted. On an error the calls before it have been applied and the rest are not
/// (the caller drops them).
pub fn add(
    c: &Cluster,
    deltas: &[ShadowDelta],
    evicted_on_node: u64,
    cap: usize,
    retention: i64,
    now: i64,
) -> Result<u64, CallError> {
    let prefix = prefix(c);
    if evicted_on_node > 0 {
        let key = format!("{prefix}evicted");
        c.with_conn("fleet shadow write", |conn| {
            redis::cmd("INCRBY")
                .arg(&key)
                .arg(evicted_on_node)
                .query::<()>(conn)
        })?;
    }
    let mut evicted = 0;
    for chunk in deltas.chunks(CHUNK) {
        let mut inv = ADD.prepare_invoke();
        inv.arg(&prefix)
            .arg(cap.max(1))
            .arg(oldest_day(retention, now))
            .arg(MAX_EVICT)
            .arg(retention);
        for d in chunk {
            let value = serde_json::json!({
                "f": d.first_seen, "l": d.last_seen, "n": d.requests,
                "c": d.callers.iter().map(|(w, n)| serde_json::json!([w, n])).collect::<Vec<_>>(),
            });
            inv.arg(d.day)
                .arg(field(&d.host, &d.method, &d.shape))
                .arg(value.to_string());
        }
        let n = c.with_conn("fleet shadow write", |conn| inv.invoke::<i64>(conn))?;
        evicted += u64::try_from(n).unwrap_or(0);
    }
    Ok(evicted)
}

/// The fleet's shapes with requests on days from `from_day` on, most requests first (at most
/// `limit`), optionally of one host; first seen over every retained day.
pub fn list(
    c: &Cluster,
    from_day: i64,
    host: Option<&str>,
    limit: usize,
    retention: i64,
    now: i64,
) -> Result<Vec<ShadowShape>, CallError> {
    let today = now - now.rem_euclid(DAY);
    let days: Vec<i64> = (0..)
        .map(|i| from_day.max(oldest_day(retention, now)) + i * DAY)
        .take_while(|d| *d <= today)
        .collect();
    let prefix = prefix(c);
    let mut pipe = redis::pipe();
    for d in &days {
        pipe.cmd("HGETALL").arg(format!("{prefix}{d}"));
    }
    let maps: Vec<Vec<(String, String)>> =
        c.with_conn("fleet shadow read", |conn| pipe.query(conn))?;
    let mut shapes: HashMap<String, ShadowShape> = HashMap::new();
    for fields in maps {
        for (name, value) in fields {
            let mut parts = name.splitn(3, SEP);
            let (Some(h), Some(m), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if host.is_some_and(|want| want != h) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&value) else {
                continue;
            };
            let first = v["f"].as_i64().unwrap_or(0);
            let last = v["l"].as_i64().unwrap_or(0);
            let e = shapes.entry(name.clone()).or_insert_with(|| ShadowShape {
                host: h.to_string(),
                method: m.to_string(),
                shape: s.to_string(),
                first_seen: first,
                last_seen: last,
                requests: 0,
                top: Vec::new(),
            });
            e.first_seen = e.first_seen.min(first);
            e.last_seen = e.last_seen.max(last);
            e.requests += v["n"].as_u64().unwrap_or(0);
            let callers: Vec<(String, u64)> = v["c"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| Some((c[0].as_str()?.to_string(), c[1].as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            crate::store::shadow::merge_callers(&mut e.top, &callers, KEPT_CALLERS);
        }
    }
    let mut ranked = crate::store::shadow::ranked(shapes.into_values().collect(), limit);
    // First seen over every retained day, from the shapes' own record.
    if !ranked.is_empty() {
        let names: Vec<String> = ranked
            .iter()
            .map(|s| field(&s.host, &s.method, &s.shape))
            .collect();
        let first: Vec<Option<i64>> = c.with_conn("fleet shadow read", |conn| {
            redis::cmd("HMGET")
                .arg(format!("{prefix}first"))
                .arg(&names)
                .query(conn)
        })?;
        for (s, f) in ranked.iter_mut().zip(first) {
            if let Some(f) = f {
                s.first_seen = s.first_seen.min(f);
            }
        }
    }
    Ok(ranked)
}

/// How many shapes the fleet tracks, and how many it has evicted.
pub fn count(c: &Cluster) -> Result<(u64, u64), CallError> {
    let prefix = prefix(c);
    c.with_conn("fleet shadow count", |conn| {
        redis::pipe()
            .cmd("ZCARD")
            .arg(format!("{prefix}shapes"))
            .cmd("GET")
            .arg(format!("{prefix}evicted"))
            .query::<(u64, Option<u64>)>(conn)
            .map(|(n, e)| (n, e.unwrap_or(0)))
    })
}

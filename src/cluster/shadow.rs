//! The fleet's shadow endpoints in Redis (with `[store] redis_url`): every node adds its shapes
//! into one hash per UTC day, `{prefix}shadow:{day}`, field `host US method US shape`, value a
//! small JSON object (`f` first seen, `l` last seen, `n` requests, `c` the callers with most
//! requests, at most 16), merged on the server by the `ADD` script. A sorted set,
//! `{prefix}shadow:shapes`, scores each shape by its requests: past `[catalog] shadow_shapes`
//! the least-seen shapes are evicted from it and from every retained day. Day hashes expire
//! `shadow_retention` after their day.

use super::{CallError, Cluster};
use crate::store::shadow::{ShadowDelta, ShadowShape};
use std::collections::HashMap;
use std::sync::LazyLock;

const SEP: char = '\u{1f}';
const DAY: i64 = 86_400;
/// Callers kept per shape and day (as in the store).
const KEPT_CALLERS: usize = 16;

/// ARGV[1] the key prefix (`...shadow:`), ARGV[2] the cap, ARGV[3] the retention in seconds,
/// ARGV[4] today (seconds, UTC midnight); then per delta: its day, its field, its JSON.
/// Returns the number of shapes evicted.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local today = tonumber(ARGV[4])
local shapes = prefix .. 'shapes'
for i = 5, #ARGV, 3 do
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
  end
  redis.call('HSET', key, field, cjson.encode(d))
  redis.call('EXPIREAT', key, day + retention)
  redis.call('ZINCRBY', shapes, added, field)
end
local evicted = 0
local excess = redis.call('ZCARD', shapes) - cap
if excess > 0 then
  local gone = redis.call('ZRANGE', shapes, 0, excess - 1)
  for _, f in ipairs(gone) do
    redis.call('ZREM', shapes, f)
    for d = today - retention - 86400, today, 86400 do
      redis.call('HDEL', prefix .. d, f)
    end
  end
  evicted = #gone
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

/// Adds a flush's shapes; how many shapes the fleet evicted.
pub fn add(
    c: &Cluster,
    deltas: &[ShadowDelta],
    cap: usize,
    retention: i64,
    now: i64,
) -> Result<u64, CallError> {
    let mut inv = ADD.prepare_invoke();
    inv.arg(prefix(c))
        .arg(cap.max(1))
        .arg(retention)
        .arg(now - now.rem_euclid(DAY));
    for d in deltas {
        let value = serde_json::json!({
            "f": d.first_seen, "l": d.last_seen, "n": d.requests,
            "c": d.callers.iter().map(|(w, n)| serde_json::json!([w, n])).collect::<Vec<_>>(),
        });
        inv.arg(d.day)
            .arg(field(&d.host, &d.method, &d.shape))
            .arg(value.to_string());
    }
    let n = c.with_conn("fleet shadow write", |conn| inv.invoke::<i64>(conn))?;
    Ok(u64::try_from(n).unwrap_or(0))
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
        .map(|i| today - retention - DAY + i * DAY)
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
    for (day, fields) in days.iter().zip(maps) {
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
            if *day >= from_day {
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
    }
    Ok(crate::store::shadow::ranked(
        shapes.into_values().collect(),
        limit,
    ))
}

/// How many shapes the fleet tracks.
pub fn count(c: &Cluster) -> Result<u64, CallError> {
    let key = format!("{}shapes", prefix(c));
    c.with_conn("fleet shadow count", |conn| {
        redis::cmd("ZCARD").arg(&key).query::<u64>(conn)
    })
}

//! The fleet's usage rollups in Redis: every node adds its minute deltas into shared minute,
//! hour and day buckets, so reports see the whole fleet.
//!
//! One Redis hash per bucket, `{prefix}usage:{granularity}:{start}`, with one field per row
//! (`api US version US consumer US class`, US = 0x1F) whose value is the row's totals: four
//! varints (requests, errors, bytes in, bytes out) and the latency sketch in its own encoding
//! (`Sketch::to_bytes`). The `ADD` script merges a delta into a row on the server (counts and
//! sketch buckets add up), so two nodes writing the same row never lose each other's counts and
//! sketches merge exactly as they do in the store. Each bucket expires its retention after its
//! start (EXPIREAT). A set per minute, `{prefix}usage:rows:{start}`, holds the minute's rows: past
//! `max_series_per_minute`, a new row's consumer is folded into `(other)` and counted. The set is
//! kept an hour at most (rows of a minute arrive within seconds, or when an outage ends): it is
//! most of the memory a minute takes after the bucket itself.

use super::{CallError, Cluster};
use crate::analytics::sketch::{read_varint, varint, Sketch};
use crate::store::usage::{Filter, UsageKey, UsageRow, UsageTotals};
use std::sync::LazyLock;

/// The consumer rows past the series cap are folded into.
pub const OTHER: &str = "(other)";
const SEP: char = '\u{1f}';
/// Rows per script call (a long script would hold Redis up).
const BATCH: usize = 1_000;
/// Buckets read per pipeline.
const READ_BATCH: usize = 500;

/// Retentions (seconds) and the series cap.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub minutes: i64,
    pub hours: i64,
    pub days: i64,
    pub max_series: u64,
}

/// Merges deltas into the buckets.
///
/// ARGV[1] the key prefix (`...usage:`), ARGV[2] the series cap, ARGV[3..5] the minute, hour and
/// day retentions in seconds, ARGV[6] the batch's key (a batch sent again after a failure that
/// left it unknown whether it ran is not added twice); then per delta: its minute, its row
/// field, its encoded totals. Returns the number of deltas folded into `(other)`, or -1 for a
/// batch already added.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local function read(s, pos)
  local v, mul = 0, 1
  while true do
    local b = string.byte(s, pos)
    pos = pos + 1
    if b < 128 then return v + b * mul, pos end
    v = v + (b - 128) * mul
    mul = mul * 128
  end
end
local function write(out, v)
  while v >= 128 do
    local low = v % 128
    out[#out + 1] = string.char(low + 128)
    v = (v - low) / 128
  end
  out[#out + 1] = string.char(v)
end
local function decode(s)
  local t = {0, 0, 0, 0}
  local buckets = {}
  if not s then return t, buckets end
  local pos = 1
  for i = 1, 4 do t[i], pos = read(s, pos) end
  local index = 0
  while pos <= #s do
    local d, n
    d, pos = read(s, pos)
    n, pos = read(s, pos)
    index = index + d
    buckets[index] = (buckets[index] or 0) + n
  end
  return t, buckets
end
local function merge(old, delta)
  local t1, b1 = decode(old)
  local t2, b2 = decode(delta)
  for i = 1, 4 do t1[i] = t1[i] + t2[i] end
  for i, n in pairs(b2) do b1[i] = (b1[i] or 0) + n end
  local out = {}
  for i = 1, 4 do write(out, t1[i]) end
  local idx = {}
  for i in pairs(b1) do idx[#idx + 1] = i end
  table.sort(idx)
  local last = 0
  for _, i in ipairs(idx) do
    write(out, i - last)
    write(out, b1[i])
    last = i
  end
  return table.concat(out)
end
if not redis.call('SET', ARGV[6], 1, 'NX', 'EX', 86400) then
  return -1
end
local prefix = ARGV[1]
local cap = tonumber(ARGV[2])
local ttl = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local sizes = {60, 3600, 86400}
local folded = 0
for i = 7, #ARGV, 3 do
  local minute = tonumber(ARGV[i])
  local row = ARGV[i + 1]
  local rows = prefix .. 'rows:' .. ARGV[i]
  if redis.call('SISMEMBER', rows, row) == 0 then
    if redis.call('SCARD', rows) >= cap then
      local a, v, c, k = string.match(row, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
      row = a .. '\31' .. v .. '\31(other)\31' .. k
      folded = folded + 1
    end
    redis.call('SADD', rows, row)
    redis.call('EXPIREAT', rows, minute + math.min(ttl[1], 3600))
  end
  for g = 1, 3 do
    local start = minute - minute % sizes[g]
    local key = prefix .. sizes[g] .. ':' .. start
    local merged = merge(redis.call('HGET', key, row), ARGV[i + 2])
    redis.call('HSET', key, row, merged)
    redis.call('EXPIREAT', key, start + ttl[g])
  end
end
return folded
",
    )
});

/// A row's field name.
pub fn field(k: &UsageKey) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}",
        k.api, k.version, k.consumer, k.status_class
    )
}

fn parse_field(f: &str) -> Option<UsageKey> {
    let mut parts = f.split(SEP);
    let key = UsageKey {
        api: parts.next()?.to_string(),
        version: parts.next()?.to_string(),
        consumer: parts.next()?.to_string(),
        status_class: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(key)
}

/// A row's totals as stored.
pub fn encode(t: &UsageTotals) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for v in [t.requests, t.errors, t.bytes_in, t.bytes_out] {
        varint(&mut out, v);
    }
    out.extend_from_slice(&t.latency.to_bytes());
    out
}

/// Reads `encode`'s output; `None` for anything malformed.
pub fn decode(mut b: &[u8]) -> Option<UsageTotals> {
    let requests = read_varint(&mut b)?;
    let errors = read_varint(&mut b)?;
    let bytes_in = read_varint(&mut b)?;
    let bytes_out = read_varint(&mut b)?;
    Some(UsageTotals {
        requests,
        errors,
        bytes_in,
        bytes_out,
        latency: Sketch::from_bytes(b)?,
    })
}

fn prefix(c: &Cluster) -> String {
    c.key(&["usage", ""])
}

/// Minute deltas, as the rollups hand them over.
pub type Deltas = Vec<(i64, UsageKey, UsageTotals)>;

/// Deltas waiting for Redis, in batches that keep their id until written.
#[derive(Debug, Default)]
pub struct Pending {
    batches: std::collections::VecDeque<(u64, Deltas)>,
    next: u64,
    rows: usize,
}

impl Pending {
    /// Adds deltas (as new batches).
    pub fn push(&mut self, deltas: Deltas) {
        let mut deltas = deltas;
        while !deltas.is_empty() {
            let rest = deltas.split_off(deltas.len().min(BATCH));
            self.rows += deltas.len();
            self.batches.push_back((self.next, deltas));
            self.next += 1;
            deltas = rest;
        }
    }

    /// Keeps at most `cap` waiting rows (after a write failed): the oldest batches past it are
    /// dropped; how many rows were.
    pub fn trim(&mut self, cap: usize) -> usize {
        let mut dropped = 0;
        while self.rows > cap {
            match self.batches.pop_front() {
                Some((_, b)) => {
                    self.rows -= b.len();
                    dropped += b.len();
                }
                None => break,
            }
        }
        dropped
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Writes the waiting batches, oldest first, until one fails (it and the later ones wait for
/// the next flush); how many rows were folded into `(other)`.
pub fn write(c: &Cluster, pending: &mut Pending, limits: Limits) -> Result<u64, CallError> {
    let prefix = prefix(c);
    let mut folded = 0;
    while let Some((id, batch)) = pending.batches.front() {
        let mut inv = ADD.prepare_invoke();
        inv.arg(&prefix)
            .arg(limits.max_series)
            .arg(limits.minutes)
            .arg(limits.hours)
            .arg(limits.days)
            .arg(c.key(&["usage", "batch", &c.node_id, &id.to_string()]));
        for (minute, key, totals) in batch {
            inv.arg(*minute).arg(field(key)).arg(encode(totals));
        }
        let n = c.with_conn("fleet usage write", |conn| inv.invoke::<i64>(conn))?;
        folded += u64::try_from(n).unwrap_or(0);
        if let Some((_, b)) = pending.batches.pop_front() {
            pending.rows -= b.len();
        }
    }
    Ok(folded)
}

/// The fleet's rows of `f` (at most `limit`), ordered like the store's (start, API, version,
/// consumer, class).
pub fn query(c: &Cluster, f: &Filter, limit: usize) -> Result<Vec<UsageRow>, CallError> {
    let g = f.granularity;
    let from = f.from - f.from.rem_euclid(g);
    let starts: Vec<i64> = (0..)
        .map(|i| from + i * g)
        .take_while(|s| *s < f.to)
        .collect();
    let prefix = prefix(c);
    let mut out = Vec::new();
    for chunk in starts.chunks(READ_BATCH) {
        let mut pipe = redis::pipe();
        for s in chunk {
            pipe.cmd("HGETALL").arg(format!("{prefix}{g}:{s}"));
        }
        let maps: Vec<Vec<(String, Vec<u8>)>> =
            c.with_conn("fleet usage read", |conn| pipe.query(conn))?;
        for (start, fields) in chunk.iter().zip(maps) {
            let mut rows: Vec<UsageRow> = fields
                .into_iter()
                .filter_map(|(name, value)| {
                    let key = parse_field(&name)?;
                    let wanted = f.api.as_ref().is_none_or(|a| *a == key.api)
                        && f.consumer.as_ref().is_none_or(|x| *x == key.consumer);
                    Some(UsageRow {
                        granularity: g,
                        start: *start,
                        totals: decode(&value).filter(|_| wanted)?,
                        key,
                    })
                })
                .collect();
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(rows);
            if out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_fields_read_back() {
        let mut t = UsageTotals {
            requests: 300,
            errors: 2,
            bytes_in: 1 << 40,
            bytes_out: 7,
            ..Default::default()
        };
        for us in [90, 1_500, 1_500, 250_000] {
            t.latency.add(us);
        }
        assert_eq!(decode(&encode(&t)), Some(t));
        assert_eq!(decode(&[0x80]), None);
        let k = UsageKey {
            api: "orders".into(),
            version: "v1".into(),
            consumer: "acme".into(),
            status_class: 2,
        };
        assert_eq!(parse_field(&field(&k)), Some(k));
        assert_eq!(parse_field("a\u{1f}b"), None);
    }
}

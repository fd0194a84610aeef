//! Usage rollups in the embedded store: one row per (granularity, period start, API, version,
//! consumer, status class) with requests, errors, body bytes and a latency sketch. Rows are
//! written additively (counts add, sketches merge), so flushes from two processes (a binary
//! upgrade) or after a restart never overwrite each other. Minute rows are kept for the
//! retention, hour rows for the hour retention, day rows until deleted by hand.

use super::Result;
use crate::analytics::sketch::Sketch;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 86_400;

/// What a row is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub api: String,
    pub version: String,
    /// `""` for anonymous requests.
    pub consumer: String,
    /// `1`..`5`, or `0` when no answer was sent.
    pub status_class: u8,
}

/// What a row counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Sketch,
}

impl UsageTotals {
    pub fn merge(&mut self, o: &UsageTotals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.latency.merge(&o.latency);
    }
}

/// One stored row.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub granularity: i64,
    pub start: i64,
    pub key: UsageKey,
    pub totals: UsageTotals,
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds minute deltas (`start` is the minute) into the minute, hour and day rows.
pub fn add(tx: &Transaction<'_>, deltas: &[(i64, UsageKey, UsageTotals)]) -> Result<()> {
    let mut select = tx.prepare_cached(
        "SELECT requests, errors, bytes_in, bytes_out, latency FROM usage_rollups
         WHERE granularity = ?1 AND start = ?2 AND api = ?3 AND version = ?4 AND consumer = ?5
         AND status_class = ?6",
    )?;
    let mut write = tx.prepare_cached(
        "INSERT OR REPLACE INTO usage_rollups (granularity, start, api, version, consumer,
         status_class, requests, errors, bytes_in, bytes_out, latency)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for (minute, key, delta) in deltas {
        for g in [MINUTE, HOUR, DAY] {
            let start = minute - minute.rem_euclid(g);
            let k = (&key.api, &key.version, &key.consumer, key.status_class);
            let old = select
                .query_row(params![g, start, k.0, k.1, k.2, k.3], |r| {
                    Ok(UsageTotals {
                        requests: r.get::<_, i64>(0)?.max(0) as u64,
                        errors: r.get::<_, i64>(1)?.max(0) as u64,
                        bytes_in: r.get::<_, i64>(2)?.max(0) as u64,
                        bytes_out: r.get::<_, i64>(3)?.max(0) as u64,
                        latency: Sketch::from_bytes(&r.get::<_, Vec<u8>>(4)?).unwrap_or_default(),
                    })
                })
                .optional()?;
            let mut total = old.unwrap_or_default();
            total.merge(delta);
            write.execute(params![
                g,
                start,
                k.0,
                k.1,
                k.2,
                k.3,
                sql_i64(total.requests),
                sql_i64(total.errors),
                sql_i64(total.bytes_in),
                sql_i64(total.bytes_out),
                total.latency.to_bytes()
            ])?;
        }
    }
    Ok(())
}

/// Deletes minute rows older than `minutes_before` and hour rows older than `hours_before`.
pub fn prune(tx: &Transaction<'_>, minutes_before: i64, hours_before: i64) -> Result<usize> {
    let a = tx.execute(
        "DELETE FROM usage_rollups WHERE granularity = ?1 AND start < ?2",
        params![MINUTE, minutes_before],
    )?;
    let b = tx.execute(
        "DELETE FROM usage_rollups WHERE granularity = ?1 AND start < ?2",
        params![HOUR, hours_before],
    )?;
    Ok(a + b)
}

/// Which rows a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub granularity: i64,
    /// `[from, to)`, in seconds since the epoch.
    pub from: i64,
    pub to: i64,
    pub api: Option<String>,
    pub consumer: Option<String>,
}

/// The rows of `f` (at most `limit`), ordered by start, API, version, consumer and class.
pub fn query(conn: &Connection, f: &Filter, limit: usize) -> Result<Vec<UsageRow>> {
    let from = f.from - f.from.rem_euclid(f.granularity);
    // With a consumer, its index answers (an `?5 IS NULL OR` form would keep SQLite from it).
    let by_consumer = if f.consumer.is_some() {
        "consumer = ?5"
    } else {
        "?5 IS NULL"
    };
    let sql = format!(
        "SELECT start, api, version, consumer, status_class, requests, errors, bytes_in,
         bytes_out, latency FROM usage_rollups
         WHERE granularity = ?1 AND start >= ?2 AND start < ?3
         AND (?4 IS NULL OR api = ?4) AND {by_consumer}
         ORDER BY start, api, version, consumer, status_class LIMIT ?6"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(
        params![f.granularity, from, f.to, f.api, f.consumer, limit],
        |r| {
            Ok(UsageRow {
                granularity: f.granularity,
                start: r.get(0)?,
                key: UsageKey {
                    api: r.get(1)?,
                    version: r.get(2)?,
                    consumer: r.get(3)?,
                    status_class: r.get::<_, i64>(4)?.clamp(0, 9) as u8,
                },
                totals: UsageTotals {
                    requests: r.get::<_, i64>(5)?.max(0) as u64,
                    errors: r.get::<_, i64>(6)?.max(0) as u64,
                    bytes_in: r.get::<_, i64>(7)?.max(0) as u64,
                    bytes_out: r.get::<_, i64>(8)?.max(0) as u64,
                    latency: Sketch::from_bytes(&r.get::<_, Vec<u8>>(9)?).unwrap_or_default(),
                },
            })
        },
    )?;
    Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// One consumer's calls to one API version in the rows of one granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerRow {
    /// `""` for anonymous requests.
    pub consumer: String,
    pub requests: u64,
    pub errors: u64,
    /// The start of the latest period of this granularity with a request.
    pub last: i64,
}

/// Per consumer, the requests to `api` `version` in the `granularity` rows starting in
/// `[from, to)`: identified consumers by most requests first, anonymous requests last.
pub fn callers(
    conn: &Connection,
    granularity: i64,
    from: i64,
    to: i64,
    api: &str,
    version: &str,
) -> Result<Vec<CallerRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT consumer, SUM(requests), SUM(errors), MAX(start) FROM usage_rollups
         WHERE granularity = ?1 AND start >= ?2 AND start < ?3 AND api = ?4 AND version = ?5
         AND requests > 0
         GROUP BY consumer ORDER BY consumer = '', SUM(requests) DESC, consumer",
    )?;
    let rows = stmt.query_map(params![granularity, from, to, api, version], |r| {
        Ok(CallerRow {
            consumer: r.get(0)?,
            requests: r.get::<_, i64>(1)?.max(0) as u64,
            errors: r.get::<_, i64>(2)?.max(0) as u64,
            last: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// `callers` over rows already read (the fleet's): per consumer of `version`, in the same
/// order.
pub fn callers_of(rows: &[UsageRow], version: &str) -> Vec<CallerRow> {
    let mut by: std::collections::BTreeMap<&str, CallerRow> = std::collections::BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.key.version == version && r.totals.requests > 0)
    {
        let c = by.entry(&r.key.consumer).or_insert_with(|| CallerRow {
            consumer: r.key.consumer.clone(),
            requests: 0,
            errors: 0,
            last: r.start,
        });
        c.requests += r.totals.requests;
        c.errors += r.totals.errors;
        c.last = c.last.max(r.start);
    }
    let mut out: Vec<CallerRow> = by.into_values().collect();
    out.sort_by(|a, b| {
        (
            a.consumer.is_empty(),
            std::cmp::Reverse(a.requests),
            &a.consumer,
        )
            .cmp(&(
                b.consumer.is_empty(),
                std::cmp::Reverse(b.requests),
                &b.consumer,
            ))
    });
    out
}

/// The totals of `api` `version` over the `granularity` rows starting in `[from, to)`, every
/// consumer and status class together (sketches merged), read row by row.
pub fn api_totals(
    conn: &Connection,
    granularity: i64,
    from: i64,
    to: i64,
    api: &str,
    version: &str,
) -> Result<UsageTotals> {
    let mut stmt = conn.prepare_cached(
        "SELECT requests, errors, bytes_in, bytes_out, latency FROM usage_rollups
         WHERE granularity = ?1 AND start >= ?2 AND start < ?3 AND api = ?4 AND version = ?5",
    )?;
    let mut rows = stmt.query(params![granularity, from, to, api, version])?;
    let mut total = UsageTotals::default();
    while let Some(r) = rows.next()? {
        total.merge(&UsageTotals {
            requests: r.get::<_, i64>(0)?.max(0) as u64,
            errors: r.get::<_, i64>(1)?.max(0) as u64,
            bytes_in: r.get::<_, i64>(2)?.max(0) as u64,
            bytes_out: r.get::<_, i64>(3)?.max(0) as u64,
            latency: Sketch::from_bytes(&r.get::<_, Vec<u8>>(4)?).unwrap_or_default(),
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_in_minutes_hours_and_days_and_old_minutes_go() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::Store::open(&dir.path().join("t.db")).expect("open");
        let key = UsageKey {
            api: "a".into(),
            version: "v1".into(),
            consumer: "acme".into(),
            status_class: 2,
        };
        let mut d = UsageTotals {
            requests: 3,
            errors: 1,
            bytes_in: 10,
            bytes_out: 20,
            ..Default::default()
        };
        d.latency.add(1000);
        let day = 1_795_000_000 - 1_795_000_000 % DAY;
        let deltas = vec![
            (day + 60, key.clone(), d.clone()),
            (day + 120, key.clone(), d.clone()),
            (day + 60, key.clone(), d.clone()),
        ];
        store.write(|tx| add(tx, &deltas)).expect("add");
        let rows = |g, consumer: Option<&str>| {
            let f = Filter {
                granularity: g,
                from: day,
                to: day + DAY,
                api: None,
                consumer: consumer.map(str::to_string),
            };
            store.read(|c| query(c, &f, 1000)).expect("query")
        };
        let minutes = rows(MINUTE, Some("acme"));
        assert_eq!(minutes.len(), 2);
        assert_eq!(minutes[0].totals.requests, 6);
        assert_eq!(minutes[0].totals.latency.count(), 2);
        assert_eq!(rows(HOUR, None)[0].totals.requests, 9);
        assert_eq!(rows(DAY, None)[0].totals.bytes_out, 60);
        assert!(rows(DAY, Some("globex")).is_empty());
        let gone = store.write(|tx| prune(tx, day + 100, day)).expect("prune");
        assert_eq!(gone, 1);
        assert_eq!(rows(MINUTE, None).len(), 1);
    }
}

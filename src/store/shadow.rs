//! Shadow endpoints in the embedded store: one row per (host, method, path shape, UTC day) with
//! first and last seen, the request count and the callers who sent most (a JSON list of
//! `[label, requests]`). Rows are written additively like the usage rollups. The table is
//! bounded: after each write, days past the retention are deleted and, past `cap` distinct
//! shapes, the least-seen shapes (fewest requests, then oldest) with all their days.

use super::Result;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::HashMap;

/// Callers kept per row.
const KEPT_CALLERS: usize = 16;

/// Hits of one shape on one day, to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDelta {
    pub day: i64,
    pub host: String,
    pub method: String,
    pub shape: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub requests: u64,
    pub callers: Vec<(String, u64)>,
}

/// A shape over a window, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowShape {
    pub host: String,
    pub method: String,
    pub shape: String,
    /// The first time it was ever seen (still in the store), and the last.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Requests in the window.
    pub requests: u64,
    /// The callers with most requests in the window, most first (at most five).
    pub top: Vec<(String, u64)>,
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Merges caller list `b` into `a`, keeping the `keep` with most requests.
pub fn merge_callers(a: &mut Vec<(String, u64)>, b: &[(String, u64)], keep: usize) {
    for (who, n) in b {
        match a.iter_mut().find(|(w, _)| w == who) {
            Some(x) => x.1 += n,
            None => a.push((who.clone(), *n)),
        }
    }
    a.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    a.truncate(keep);
}

fn parse_callers(text: &str) -> Vec<(String, u64)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Adds `deltas`, deletes days before `keep_from`, and evicts the least-seen shapes past
/// `cap`; how many shapes were evicted.
pub fn add(
    tx: &Transaction<'_>,
    deltas: &[ShadowDelta],
    cap: usize,
    keep_from: i64,
) -> Result<u64> {
    let mut select = tx.prepare_cached(
        "SELECT first_seen, last_seen, requests, callers FROM shadow_endpoints
         WHERE host = ?1 AND method = ?2 AND shape = ?3 AND day = ?4",
    )?;
    let mut write = tx.prepare_cached(
        "INSERT OR REPLACE INTO shadow_endpoints (host, method, shape, day, first_seen,
         last_seen, requests, callers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for d in deltas {
        let old = select
            .query_row(params![d.host, d.method, d.shape, d.day], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?.max(0) as u64,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let (first, last, requests, mut callers) = match old {
            Some((f, l, n, c)) => (
                f.min(d.first_seen),
                l.max(d.last_seen),
                n + d.requests,
                parse_callers(&c),
            ),
            None => (d.first_seen, d.last_seen, d.requests, Vec::new()),
        };
        merge_callers(&mut callers, &d.callers, KEPT_CALLERS);
        let callers = serde_json::to_string(&callers).unwrap_or_else(|_| "[]".into());
        write.execute(params![
            d.host,
            d.method,
            d.shape,
            d.day,
            first,
            last,
            sql_i64(requests),
            callers
        ])?;
    }
    tx.execute(
        "DELETE FROM shadow_endpoints WHERE day < ?1",
        params![keep_from - keep_from.rem_euclid(super::usage::DAY)],
    )?;
    let shapes: i64 = tx.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM shadow_endpoints GROUP BY host, method, shape)",
        [],
        |r| r.get(0),
    )?;
    let excess = shapes - i64::try_from(cap.max(1)).unwrap_or(i64::MAX);
    if excess <= 0 {
        return Ok(0);
    }
    tx.execute(
        "DELETE FROM shadow_endpoints WHERE (host, method, shape) IN (
            SELECT host, method, shape FROM shadow_endpoints GROUP BY host, method, shape
            ORDER BY SUM(requests), MAX(last_seen) LIMIT ?1)",
        params![excess],
    )?;
    Ok(excess as u64)
}

/// The shapes with requests on days from `from_day` on, most requests first (at most `limit`),
/// optionally of one host.
pub fn list(
    conn: &Connection,
    from_day: i64,
    host: Option<&str>,
    limit: usize,
) -> Result<Vec<ShadowShape>> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, method, shape, day, first_seen, last_seen, requests, callers
         FROM shadow_endpoints WHERE (?1 IS NULL OR host = ?1)",
    )?;
    let mut rows = stmt.query(params![host])?;
    let mut shapes: HashMap<(String, String, String), ShadowShape> = HashMap::new();
    while let Some(r) = rows.next()? {
        let key: (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let day: i64 = r.get(3)?;
        let (first, last) = (r.get::<_, i64>(4)?, r.get::<_, i64>(5)?);
        let s = shapes.entry(key.clone()).or_insert_with(|| ShadowShape {
            host: key.0,
            method: key.1,
            shape: key.2,
            first_seen: first,
            last_seen: last,
            requests: 0,
            top: Vec::new(),
        });
        s.first_seen = s.first_seen.min(first);
        s.last_seen = s.last_seen.max(last);
        if day >= from_day {
            s.requests += r.get::<_, i64>(6)?.max(0) as u64;
            merge_callers(
                &mut s.top,
                &parse_callers(&r.get::<_, String>(7)?),
                KEPT_CALLERS,
            );
        }
    }
    Ok(ranked(shapes.into_values().collect(), limit))
}

/// The shapes with requests in the window, most requests first, at most `limit`, each with its
/// five top callers.
pub fn ranked(shapes: Vec<ShadowShape>, limit: usize) -> Vec<ShadowShape> {
    let mut out: Vec<ShadowShape> = shapes.into_iter().filter(|s| s.requests > 0).collect();
    out.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| (&a.host, &a.method, &a.shape).cmp(&(&b.host, &b.method, &b.shape)))
    });
    out.truncate(limit);
    for s in &mut out {
        s.top.truncate(5);
    }
    out
}

/// How many distinct shapes the store holds.
pub fn count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM shadow_endpoints GROUP BY host, method, shape)",
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::usage::DAY;

    fn delta(shape: &str, day: i64, requests: u64, who: &str) -> ShadowDelta {
        ShadowDelta {
            day,
            host: "h".into(),
            method: "GET".into(),
            shape: shape.into(),
            first_seen: day + 5,
            last_seen: day + 50,
            requests,
            callers: vec![(who.into(), requests)],
        }
    }

    #[test]
    fn rows_add_up_over_flushes_and_days_and_the_cap_evicts_the_least_seen() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::Store::open(&dir.path().join("t.db")).expect("open");
        let d0 = 1_795_000_000 - 1_795_000_000 % DAY;
        let d1 = d0 + DAY;
        let write = |deltas: Vec<ShadowDelta>, cap: usize| {
            store.write(|tx| add(tx, &deltas, cap, d0)).expect("write")
        };
        assert_eq!(write(vec![delta("/a/{id}", d0, 3, "ip:10.0.0.1")], 10), 0);
        assert_eq!(
            write(
                vec![
                    delta("/a/{id}", d0, 2, "consumer:acme"),
                    delta("/a/{id}", d1, 4, "ip:10.0.0.1"),
                    delta("/b", d1, 1, "ip:10.0.0.2"),
                ],
                10
            ),
            0
        );
        let all = store.read(|c| list(c, d0, None, 10)).expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].shape, "/a/{id}");
        assert_eq!(all[0].requests, 9);
        assert_eq!((all[0].first_seen, all[0].last_seen), (d0 + 5, d1 + 50));
        assert_eq!(
            all[0].top,
            [
                ("ip:10.0.0.1".to_string(), 7),
                ("consumer:acme".to_string(), 2)
            ]
        );
        // A window from the second day counts that day only, first seen stays.
        let recent = store.read(|c| list(c, d1, None, 10)).expect("list");
        assert_eq!(recent[0].requests, 4);
        assert_eq!(recent[0].first_seen, d0 + 5);
        // One more shape over a cap of two: the least seen ("/b", 1 request) goes.
        assert_eq!(write(vec![delta("/c", d1, 2, "ip:10.0.0.3")], 2), 1);
        let kept: Vec<String> = store
            .read(|c| list(c, d0, None, 10))
            .expect("list")
            .into_iter()
            .map(|s| s.shape)
            .collect();
        assert_eq!(kept, ["/a/{id}", "/c"]);
        assert_eq!(store.read(count).expect("count"), 2);
        // Retention: days before the second are deleted.
        store.write(|tx| add(tx, &[], 10, d1)).expect("prune");
        let left = store.read(|c| list(c, d0, None, 10)).expect("list");
        assert_eq!(left[0].requests, 4);
        assert_eq!(left[0].first_seen, d1 + 5);
    }
}

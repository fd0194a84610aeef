//! Quota counters in the store: each process adds its increments (never overwrites), reads the
//! totals back, and loads the current windows at start. A counter row holds one window; a newer
//! window replaces it, increments for an older one are dropped.

use super::{Result, Store};
use crate::limits::limiter::CounterRecord;
use crate::limits::spec::Period;
use rusqlite::params;

fn period_of(name: &str) -> Option<Period> {
    Period::parse(name)
}

impl Store {
    /// Adds `increments` to the stored counters in one transaction and returns the totals.
    pub fn add_counts(&self, increments: &[CounterRecord]) -> Result<Vec<CounterRecord>> {
        self.write(|tx| {
            let mut totals = Vec::with_capacity(increments.len());
            for r in increments {
                tx.execute(
                    "INSERT INTO quota_counters (key, period, window_start, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key, period) DO UPDATE SET
                       used = CASE
                         WHEN window_start = excluded.window_start THEN used + excluded.used
                         WHEN window_start < excluded.window_start THEN excluded.used
                         ELSE used END,
                       window_start = max(window_start, excluded.window_start)",
                    params![r.key, r.period.name(), r.window, r.count as i64],
                )?;
                let (window, used): (i64, i64) = tx.query_row(
                    "SELECT window_start, used FROM quota_counters WHERE key = ?1 AND period = ?2",
                    params![r.key, r.period.name()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                totals.push(CounterRecord {
                    key: r.key.clone(),
                    period: r.period,
                    window,
                    count: used.max(0) as u64,
                });
            }
            Ok(totals)
        })
    }

    /// Every stored counter (the caller keeps those of current windows).
    pub fn load_counts(&self) -> Result<Vec<CounterRecord>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT key, period, window_start, used FROM quota_counters")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key, period, window, used) = row?;
                if let Some(period) = period_of(&period) {
                    out.push(CounterRecord {
                        key,
                        period,
                        window,
                        count: used.max(0) as u64,
                    });
                }
            }
            Ok(out)
        })
    }

    /// Deletes the counters of a consumer (all its keys), recording the reset in the audit log.
    pub fn reset_counts(&self, actor: &str, consumer: &str) -> Result<usize> {
        self.change(actor, |tx| {
            let n = tx.execute(
                "DELETE FROM quota_counters WHERE key = ?1 OR substr(key, 1, length(?1) + 1) = ?1 || char(10)",
                [consumer],
            )?;
            let change = super::Change {
                action: "usage.reset",
                target: format!("consumer/{consumer}/usage"),
                before: Some(serde_json::json!({ "counters": n })),
                after: None,
            };
            Ok((n, change))
        })
    }
}

//! Per-minute usage deltas between flushes. The aggregator adds every record; `flush` (every few
//! seconds, before every usage query, and at shutdown) adds the deltas into the store's minute,
//! hour and day rows and prunes expired ones. The number of keys waiting is bounded: past
//! `MAX_KEYS`, further consumers of a minute are counted under `OVERFLOW`.

use super::names::Labels;
use super::record::Record;
use crate::store::usage::{self, UsageKey, UsageTotals};
use crate::store::Store;
use foldhash::HashMap;
use std::sync::Arc;

/// Keys (minute × API × version × consumer × class) held between two flushes.
pub const MAX_KEYS: usize = 200_000;
/// The consumer name used once `MAX_KEYS` is reached.
pub const OVERFLOW: &str = "(overflow)";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    minute: i64,
    api: Arc<str>,
    version: Arc<str>,
    consumer: Arc<str>,
    class: u8,
}

pub struct Rollups {
    pending: HashMap<Key, UsageTotals>,
    overflow: Arc<str>,
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups {
            pending: HashMap::default(),
            overflow: Arc::from(OVERFLOW),
        }
    }
}

impl Rollups {
    /// Adds a record with its interned labels.
    pub fn add(&mut self, r: &Record, l: &Labels) {
        let secs = (r.time_ms / 1000) as i64;
        let mut key = Key {
            minute: secs - secs.rem_euclid(usage::MINUTE),
            api: l.api.clone(),
            version: l.version.clone(),
            consumer: l.consumer.clone(),
            class: r.status_class(),
        };
        if self.pending.len() >= MAX_KEYS && !self.pending.contains_key(&key) {
            key.consumer = self.overflow.clone();
        }
        let t = self.pending.entry(key).or_default();
        t.requests += 1;
        t.errors += u64::from(r.is_error());
        t.bytes_in += r.bytes_in;
        t.bytes_out += r.bytes_out;
        t.latency.add(r.duration_us);
    }

    /// Takes the deltas, in the store's terms.
    pub fn take(&mut self) -> Vec<(i64, UsageKey, UsageTotals)> {
        self.pending
            .drain()
            .map(|(k, t)| {
                let key = UsageKey {
                    api: k.api.to_string(),
                    version: k.version.to_string(),
                    consumer: k.consumer.to_string(),
                    status_class: k.class,
                };
                (k.minute, key, t)
            })
            .collect()
    }

    /// Puts deltas back after a failed write (they are added to whatever came since). The
    /// cap holds here too: past it, consumers are folded into `OVERFLOW`, and past twice the
    /// cap (a store that stays unwritable for a long time) the oldest deltas are dropped.
    pub fn restore(&mut self, mut deltas: Vec<(i64, UsageKey, UsageTotals)>) -> usize {
        deltas.sort_by_key(|d| std::cmp::Reverse(d.0));
        let mut dropped = 0;
        for (minute, k, t) in deltas {
            let mut key = Key {
                minute,
                api: Arc::from(k.api),
                version: Arc::from(k.version),
                consumer: Arc::from(k.consumer),
                class: k.status_class,
            };
            if self.pending.len() >= MAX_KEYS && !self.pending.contains_key(&key) {
                key.consumer = self.overflow.clone();
                if self.pending.len() >= 2 * MAX_KEYS && !self.pending.contains_key(&key) {
                    dropped += 1;
                    continue;
                }
            }
            self.pending.entry(key).or_default().merge(&t);
        }
        dropped
    }
}

/// Writes `rollups`' deltas into the store and prunes rows past their retention. On a store
/// error the deltas stay for the next attempt. `taken` sees every delta once, when it is in the
/// store (for the fleet's copy: deltas put back after a failed write are not handed on twice).
pub fn flush(
    rollups: &std::sync::Mutex<Rollups>,
    store: &Store,
    retention_secs: i64,
    hour_retention_secs: i64,
    taken: impl FnOnce(&[(i64, UsageKey, UsageTotals)]),
) -> Result<usize, crate::store::StoreError> {
    let deltas = rollups.lock().unwrap_or_else(|e| e.into_inner()).take();
    if deltas.is_empty() {
        return Ok(0);
    }
    let n = deltas.len();
    let now = crate::clock::now();
    let result = store.write(|tx| {
        usage::add(tx, &deltas)?;
        usage::prune(tx, now - retention_secs, now - hour_retention_secs)
    });
    match result {
        Ok(_) => {
            taken(&deltas);
            Ok(n)
        }
        Err(e) => {
            let dropped = rollups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(deltas);
            if dropped > 0 {
                log::error!("usage rollups: {dropped} old minute rows dropped while the store cannot be written");
            }
            Err(e)
        }
    }
}

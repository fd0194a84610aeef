//! The per-consumer limiter: a GCRA rate with burst, and exact calendar quotas.
//!
//! Each limited key (a consumer, or a consumer and an API) has one state behind one mutex:
//! the rate's theoretical arrival time and one counter per quota period. A request is checked
//! against the rate and every quota and, only if all allow it, counted in all of them, under
//! that one lock: a quota is never overshot, whatever the concurrency, and a request denied by
//! one limit uses none of the others.
//!
//! Quota counters are `base + local`: `base` is the total last read from the store (what every
//! process sharing it has counted), `local` what this process counted since its last flush. The
//! persister moves `local` into the store every second and reads the total back into `base`.

use super::spec::{Period, QuotaSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;

/// A compiled plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    /// (nanoseconds between requests at the sustained rate, burst).
    pub rate: Option<(u64, u64)>,
    /// At most one quota per period, ordered by period.
    pub quotas: Vec<QuotaSpec>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    Rate {
        retry_after_secs: u64,
    },
    Quota {
        period: Period,
        limit: u64,
        retry_after_secs: u64,
    },
}

/// The state of one policy for the `RateLimit` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyState {
    /// `rate`, or the quota's period name.
    pub name: &'static str,
    /// `q`: requests allowed in the policy's window.
    pub quota: u64,
    /// `w`: the window in seconds.
    pub window_secs: u64,
    /// `r`: requests left.
    pub remaining: u64,
    /// `t`: seconds until the window resets (quota) or the burst is full again (rate).
    pub reset_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub denied: Option<Denial>,
    pub policies: Vec<PolicyState>,
}

/// One rate check, before it is decided.
struct RateStep {
    interval: u64,
    burst: u64,
    tolerance: u64,
    /// The arrival time under the current numbers.
    tat: u64,
    base: u64,
    next: u64,
    allowed: bool,
}

#[derive(Debug, Clone)]
struct Counter {
    period: Period,
    window: i64,
    base: u64,
    local: u64,
}

#[derive(Debug, Default)]
struct KeyState {
    tat_ns: u64,
    /// The (interval, burst) `tat_ns` was computed with: a reload may change them.
    rate_params: Option<(u64, u64)>,
    counters: Vec<Counter>,
    dirty: bool,
}

impl KeyState {
    /// The counter of `period` in the window holding `secs` (rolled over if the window moved).
    fn counter(&mut self, period: Period, secs: i64) -> &mut Counter {
        let window = period.window(secs).0;
        let i = match self.counters.iter().position(|c| c.period == period) {
            Some(i) => i,
            None => {
                self.counters.push(Counter {
                    period,
                    window,
                    base: 0,
                    local: 0,
                });
                self.counters.len() - 1
            }
        };
        let c = &mut self.counters[i];
        if c.window < window {
            *c = Counter {
                period,
                window,
                base: 0,
                local: 0,
            };
        }
        c
    }
}

/// One counter's unflushed increments, or a total read back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRecord {
    pub key: String,
    pub period: Period,
    pub window: i64,
    pub count: u64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[derive(Default)]
pub struct Limiter {
    shards: Vec<Mutex<HashMap<String, Arc<Mutex<KeyState>>>>>,
    /// Held by a flush and by a reset, so that a flush in flight cannot bring reset counts back.
    /// Holds the store's (connection, data version) the counters were last read at.
    persist: Mutex<Option<(u64, i64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            persist: Mutex::new(None),
        }
    }

    fn state(&self, key: &str) -> Arc<Mutex<KeyState>> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        let mut shard = lock(&self.shards[(h % SHARDS as u64) as usize]);
        if let Some(s) = shard.get(key) {
            return s.clone();
        }
        shard.entry(key.to_string()).or_default().clone()
    }

    /// Checks one request of `key` under `plan` at `now_ns` (Unix nanoseconds) and counts it
    /// if every limit allows it.
    pub fn check(&self, key: &str, plan: &Plan, now_ns: u64) -> Verdict {
        self.evaluate(key, plan, now_ns, true)
    }

    /// The current state of `key` under `plan`, without counting anything.
    pub fn peek(&self, key: &str, plan: &Plan, now_ns: u64) -> Vec<PolicyState> {
        self.evaluate(key, plan, now_ns, false).policies
    }

    fn evaluate(&self, key: &str, plan: &Plan, now_ns: u64, count: bool) -> Verdict {
        let state = self.state(key);
        let mut st = lock(&state);
        let secs = (now_ns / 1_000_000_000) as i64;

        // The rate under this plan's numbers. New numbers (a reload) keep the share of the burst
        // in use, not the raw time; computed on a copy, so that a peek writes nothing.
        let rate = plan.rate.map(|(interval, burst)| {
            let tolerance = interval.saturating_mul(burst);
            let tat = match st.rate_params {
                Some((old_interval, old_burst))
                    if (old_interval, old_burst) != (interval, burst) =>
                {
                    let old_tolerance = old_interval.saturating_mul(old_burst).max(1);
                    let debt = st.tat_ns.saturating_sub(now_ns).min(old_tolerance);
                    let scaled =
                        u128::from(debt) * u128::from(tolerance) / u128::from(old_tolerance);
                    now_ns.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
                }
                _ => st.tat_ns,
            };
            let base = tat.max(now_ns);
            let next = base.saturating_add(interval);
            RateStep {
                interval,
                burst,
                tolerance,
                tat,
                base,
                next,
                allowed: next - now_ns <= tolerance,
            }
        });

        // Quotas: (spec, used, window end).
        let quotas: Vec<(QuotaSpec, u64, i64)> = plan
            .quotas
            .iter()
            .map(|q| {
                let end = q.period.window(secs).1;
                let c = st.counter(q.period, secs);
                (*q, c.base + c.local, end)
            })
            .collect();

        // Refused if any limit refuses; a used-up quota is the answer over the rate, and the
        // wait is the longest of the limits that refuse.
        let rate_wait = rate
            .as_ref()
            .filter(|r| !r.allowed)
            .map(|r| ceil_secs(r.next - now_ns - r.tolerance).max(1));
        let exhausted = quotas
            .iter()
            .filter(|(q, used, _)| *used >= q.limit)
            .max_by_key(|(_, _, end)| *end);
        let denied = match (exhausted, rate_wait) {
            (Some((q, _, end)), wait) => Some(Denial::Quota {
                period: q.period,
                limit: q.limit,
                retry_after_secs: ((end - secs).max(1) as u64).max(wait.unwrap_or(0)),
            }),
            (None, Some(wait)) => Some(Denial::Rate {
                retry_after_secs: wait,
            }),
            (None, None) => None,
        };
        let accepted = count && denied.is_none();
        if count {
            if let Some(r) = &rate {
                st.tat_ns = if accepted { r.next } else { r.tat };
                st.rate_params = Some((r.interval, r.burst));
            }
        }
        if accepted {
            for q in &plan.quotas {
                st.counter(q.period, secs).local += 1;
            }
            st.dirty |= !plan.quotas.is_empty();
        }

        let mut policies = Vec::with_capacity(quotas.len() + 1);
        if let Some(r) = &rate {
            let level = if accepted { r.next } else { r.base };
            policies.push(PolicyState {
                name: "rate",
                quota: r.burst,
                window_secs: ceil_secs(r.tolerance).max(1),
                remaining: (r.tolerance - (level - now_ns).min(r.tolerance)) / r.interval,
                reset_secs: ceil_secs(level - now_ns),
            });
        }
        for (q, used, end) in &quotas {
            policies.push(PolicyState {
                name: q.period.name(),
                quota: q.limit,
                window_secs: q.period.nominal_secs(),
                remaining: q.limit.saturating_sub(used + u64::from(accepted)),
                reset_secs: (end - secs).max(0) as u64,
            });
        }
        Verdict { denied, policies }
    }

    /// Serialises flushes and resets of the stored counters; the guarded value is the store
    /// version the counters were last read at.
    pub fn persist_lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, i64)>> {
        lock(&self.persist)
    }

    /// Takes every counter's unflushed increments, moving them into `base` (the store is
    /// about to hold them).
    pub fn take_dirty(&self) -> Vec<CounterRecord> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let states: Vec<(String, Arc<Mutex<KeyState>>)> = lock(shard)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, state) in states {
                let mut st = lock(&state);
                if !std::mem::take(&mut st.dirty) {
                    continue;
                }
                for c in st.counters.iter_mut().filter(|c| c.local > 0) {
                    out.push(CounterRecord {
                        key: key.clone(),
                        period: c.period,
                        window: c.window,
                        count: c.local,
                    });
                    c.base += c.local;
                    c.local = 0;
                }
            }
        }
        out
    }

    /// Puts back increments whose flush failed, so that the next flush carries them.
    pub fn restore(&self, records: &[CounterRecord]) {
        for r in records {
            let state = self.state(&r.key);
            let mut st = lock(&state);
            if let Some(c) = st
                .counters
                .iter_mut()
                .find(|c| c.period == r.period && c.window == r.window)
            {
                c.base = c.base.saturating_sub(r.count);
                c.local += r.count;
                st.dirty = true;
            }
        }
    }

    /// Sets a counter's base to the store's total for its window (read back after a flush, or
    /// loaded at start). Totals of other windows are ignored.
    pub fn set_total(&self, r: &CounterRecord, now_secs: i64) {
        let (current, _) = r.period.window(now_secs);
        if r.window != current {
            return;
        }
        let state = self.state(&r.key);
        let mut st = lock(&state);
        let c = st.counter(r.period, now_secs);
        c.base = r.count;
    }

    /// Forgets the quota counts of a consumer (every key of it: `id` and `id\n<api>`).
    pub fn reset(&self, consumer: &str) {
        let api_prefix = format!("{consumer}\n");
        for shard in &self.shards {
            for (key, state) in lock(shard).iter() {
                if key == consumer || key.starts_with(&api_prefix) {
                    let mut st = lock(state);
                    st.counters.clear();
                    st.dirty = false;
                }
            }
        }
    }
}

/// The limiter key of a consumer, per API when the API counts separately.
pub fn limit_key<'a>(consumer: &'a str, api: Option<&str>) -> std::borrow::Cow<'a, str> {
    match api {
        Some(api) => format!("{consumer}\n{api}").into(),
        None => consumer.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::spec::parse_quota;

    const S: u64 = 1_000_000_000;

    fn plan(rate: Option<(u64, u64)>, quotas: &[&str]) -> Plan {
        Plan {
            name: "t".into(),
            rate,
            quotas: quotas
                .iter()
                .map(|q| parse_quota(q).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        }
    }

    #[test]
    fn burst_then_sustained_rate() {
        // 5/s with a burst of 10.
        let l = Limiter::new();
        let p = plan(Some((S / 5, 10)), &[]);
        let t0 = 1_800_000_000 * S;
        let accepted = (0..20)
            .filter(|_| l.check("a", &p, t0).denied.is_none())
            .count();
        assert_eq!(accepted, 10, "a burst of 10 at one instant");
        let v = l.check("a", &p, t0);
        assert_eq!(
            v.denied,
            Some(Denial::Rate {
                retry_after_secs: 1
            })
        );
        assert_eq!(v.policies[0].remaining, 0);
        // Then one every 200 ms.
        assert!(l.check("a", &p, t0 + S / 5).denied.is_none());
        assert!(l.check("a", &p, t0 + S / 5).denied.is_some());
        assert!(l.check("a", &p, t0 + 2 * S / 5).denied.is_none());
        // Over 10 s at 5/s sustained, about 50 more get in.
        let mut ok = 0;
        for i in 0..1000u64 {
            if l.check("a", &p, t0 + S + i * S / 100).denied.is_none() {
                ok += 1;
            }
        }
        assert!((49..=52).contains(&ok), "{ok}");
        // Another key is independent.
        assert!(l.check("b", &p, t0).denied.is_none());
    }

    #[test]
    fn the_longest_wait_wins_and_peeking_changes_nothing() {
        let l = Limiter::new();
        let p = plan(Some((S, 1)), &["1/minute", "1/hour"]);
        let t = crate::clock::parse_rfc3339("2026-11-21T13:30:30Z").unwrap_or_default() as u64 * S;
        assert!(l.check("a", &p, t).denied.is_none());
        // Rate, minute and hour all refuse: the hour's 29.5 minutes is the answer.
        match l.check("a", &p, t).denied {
            Some(Denial::Quota {
                period: Period::Hour,
                retry_after_secs,
                ..
            }) => assert_eq!(retry_after_secs, 1770),
            other => panic!("{other:?}"),
        }
        // A refused check leaves the rate's remaining as it was (nothing used).
        assert_eq!(l.check("a", &p, t).policies[0].remaining, 0);
        // Peeking under other numbers does not rescale the stored state.
        let other = plan(Some((S / 1000, 1000)), &["1/minute", "1/hour"]);
        let _ = l.peek("a", &other, t);
        assert!(l.check("a", &plan(Some((S, 1)), &[]), t).denied.is_some());
    }

    #[test]
    fn new_rate_numbers_keep_the_share_of_the_burst_in_use() {
        let l = Limiter::new();
        let t0 = 1_800_000_000 * S;
        let slow = plan(Some((S / 2, 4)), &[]);
        for _ in 0..2 {
            assert!(l.check("a", &slow, t0).denied.is_none());
        }
        // Half of the burst is used; under 100/s with a burst of 100, 50 remain.
        let fast = plan(Some((S / 100, 100)), &[]);
        assert_eq!(l.peek("a", &fast, t0)[0].remaining, 50);
    }

    #[test]
    fn quotas_are_exact_and_reset_at_the_calendar_boundary() {
        let l = Limiter::new();
        let p = plan(None, &["3/minute", "5/hour"]);
        // 13:59:58 UTC: two seconds before both windows end.
        let t = crate::clock::parse_rfc3339("2026-11-21T13:59:58Z").unwrap_or_default() as u64 * S;
        for _ in 0..3 {
            assert!(l.check("a", &p, t).denied.is_none());
        }
        let v = l.check("a", &p, t);
        assert_eq!(
            v.denied,
            Some(Denial::Quota {
                period: Period::Minute,
                limit: 3,
                retry_after_secs: 2
            })
        );
        assert_eq!(v.policies[0].remaining, 0);
        assert_eq!(
            v.policies[1].remaining, 2,
            "the denied request used nothing"
        );
        // The minute rolls over at 14:00:00, and so does the hour.
        let next = t + 2 * S;
        for _ in 0..3 {
            assert!(l.check("a", &p, next).denied.is_none());
        }
        assert!(l.check("a", &p, next).denied.is_some());
        assert_eq!(
            l.peek("a", &p, next)[1].remaining,
            2,
            "hour counter restarted"
        );
    }

    #[test]
    fn concurrent_checks_never_overshoot() {
        let l = Arc::new(Limiter::new());
        let p = Arc::new(plan(None, &["1000/hour"]));
        let t = 1_800_000_000 * S;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, p) = (l.clone(), p.clone());
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| l.check("k", &p, t).denied.is_none())
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn flushing_keeps_counts_and_totals_from_elsewhere_add_up() {
        let l = Limiter::new();
        let p = plan(None, &["10/hour"]);
        let t = 1_800_000_000 * S;
        for _ in 0..4 {
            l.check("a", &p, t);
        }
        let dirty = l.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].count, 4);
        assert!(l.take_dirty().is_empty());
        // A failed flush puts them back.
        l.restore(&dirty);
        assert_eq!(l.take_dirty()[0].count, 4);
        // The store says 7 (3 from another process): 3 left.
        let mut total = dirty[0].clone();
        total.count = 7;
        l.set_total(&total, (t / S) as i64);
        assert_eq!(l.peek("a", &p, t)[0].remaining, 3);
        l.reset("a");
        assert_eq!(l.peek("a", &p, t)[0].remaining, 10);
    }
}

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
use crate::config::file::OnStoreError;
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
    /// With Redis: every request asks Redis (exact across the fleet).
    pub strict: bool,
    /// With Redis: what to do while it cannot be reached.
    pub on_error: OnStoreError,
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

/// How checks are decided: in this process against the embedded store's counts, or with Redis
/// (`up`: whether Redis answered lately).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Embedded,
    Cluster { nodes: u64, up: bool },
}

/// The outcome of a check made in this process.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Done(Verdict),
    /// Redis must decide (a strict plan, or a quota without a lease): nothing was counted.
    Ask(Ask),
    /// Redis cannot be reached and the plan says `on_store_error = "deny"`.
    Unavailable,
}

/// What to ask Redis for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The plan's (interval ns, burst) when Redis keeps the rate (strict plans).
    pub rate: Option<(u64, u64)>,
    /// Each quota with its current window (start, end).
    pub quotas: Vec<(QuotaSpec, i64, i64)>,
}

/// Redis's answer to an `Ask`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub accepted: bool,
    pub rate_allowed: bool,
    /// Nanoseconds from now to the rate's arrival time (after this request if accepted).
    pub rate_level_ns: u64,
    /// Each quota's count after the request (including it if accepted).
    pub counts: Vec<u64>,
}

/// How each quota is decided on this call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// Exact counts in this process (embedded store).
    Exact,
    /// Redis up: leases first, Redis when none is left.
    Leased,
    /// Redis down, `deny`: leases only.
    LeaseOnly,
    /// Redis down, `local`: leases, then this node's share of what was left.
    Share,
    /// Redis down, `allow`: everything, counted for later.
    Open,
}

/// The rate at one instant.
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

impl RateStep {
    fn at(interval: u64, burst: u64, tat: u64, now_ns: u64) -> RateStep {
        let tolerance = interval.saturating_mul(burst);
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
    }

    /// Nanoseconds from now to the arrival time after the decision.
    fn level(&self, accepted: bool, now_ns: u64) -> u64 {
        if accepted {
            self.next - now_ns
        } else {
            self.base - now_ns
        }
    }
}

/// One quota as a decision and the headers see it.
struct QuotaView {
    spec: QuotaSpec,
    /// Requests counted in the window before this one.
    used: u64,
    end: i64,
    blocked: bool,
}

#[derive(Debug, Clone)]
struct Counter {
    period: Period,
    window: i64,
    /// The store's total as last seen. With Redis it includes every node's unused leases.
    base: u64,
    /// Accepted here and not yet in the store's total (write-behind, or counted while Redis
    /// was unreachable).
    local: u64,
    /// With Redis: requests this node may still accept without asking (already in `base`).
    lease: u64,
    /// With Redis: accepted since the last sync (sizes the next lease).
    used: u64,
    /// The quota's limit when last checked.
    limit: u64,
    /// Checked since the last sync (its total is worth reading back).
    touched: bool,
    /// Counted by a strict plan: Redis decides every request, so no lease is wanted.
    strict: bool,
}

impl Counter {
    fn new(period: Period, window: i64) -> Counter {
        Counter {
            period,
            window,
            base: 0,
            local: 0,
            lease: 0,
            used: 0,
            limit: 0,
            touched: false,
            strict: false,
        }
    }

    /// Requests counted in the window, as far as this node knows.
    fn seen(&self) -> u64 {
        (self.base + self.local).saturating_sub(self.lease)
    }
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
                self.counters.push(Counter::new(period, window));
                self.counters.len() - 1
            }
        };
        let c = &mut self.counters[i];
        if c.window < window {
            *c = Counter::new(period, window);
        }
        c
    }

    /// The rate under (interval, burst) at `now_ns`. New numbers (a reload, or a change of
    /// mode) keep the share of the burst in use, not the raw time; computed on a copy, so that
    /// a peek writes nothing.
    fn rate(&self, (interval, burst): (u64, u64), now_ns: u64) -> RateStep {
        let tolerance = interval.saturating_mul(burst);
        let tat = match self.rate_params {
            Some((old_interval, old_burst)) if (old_interval, old_burst) != (interval, burst) => {
                let old_tolerance = old_interval.saturating_mul(old_burst).max(1);
                let debt = self.tat_ns.saturating_sub(now_ns).min(old_tolerance);
                let scaled = u128::from(debt) * u128::from(tolerance) / u128::from(old_tolerance);
                now_ns.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
            }
            _ => self.tat_ns,
        };
        RateStep::at(interval, burst, tat, now_ns)
    }

    fn charge(&mut self, r: &RateStep, accepted: bool) {
        self.tat_ns = if accepted { r.next } else { r.tat };
        self.rate_params = Some((r.interval, r.burst));
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

/// How a sync call ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncOutcome<'a> {
    /// Redis ran it: (total, granted lease) per item.
    Applied(&'a [(u64, u64)]),
    /// Nothing reached Redis.
    NotSent,
    /// Sent, and no answer: it may have run.
    Unclear,
}

/// One counter's exchange with Redis at a sync: the unused lease it gives back, the counts
/// it pushes, the lease it would like, and (filled in by Redis) the total and the new lease.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncItem {
    pub key: String,
    pub period: Period,
    pub window: i64,
    pub limit: u64,
    pub returned: u64,
    pub pushed: u64,
    pub used: u64,
    pub wanted: u64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// A plan's rate shared by `nodes`: each node allows 1/nodes of it (at least a burst of 1).
fn shared_rate((interval, burst): (u64, u64), nodes: u64) -> (u64, u64) {
    (
        interval.saturating_mul(nodes.max(1)),
        burst.div_ceil(nodes.max(1)).max(1),
    )
}

/// The refusal, if any: a used-up quota is the answer over the rate, and the wait is the
/// longest of the limits that refuse.
fn denial(rate: Option<&RateStep>, quotas: &[QuotaView], secs: i64, now_ns: u64) -> Option<Denial> {
    let rate_wait = rate
        .filter(|r| !r.allowed)
        .map(|r| ceil_secs(r.next.saturating_sub(now_ns + r.tolerance)).max(1));
    let exhausted = quotas.iter().filter(|q| q.blocked).max_by_key(|q| q.end);
    match (exhausted, rate_wait) {
        (Some(q), wait) => Some(Denial::Quota {
            period: q.spec.period,
            limit: q.spec.limit,
            retry_after_secs: ((q.end - secs).max(1) as u64).max(wait.unwrap_or(0)),
        }),
        (None, Some(wait)) => Some(Denial::Rate {
            retry_after_secs: wait,
        }),
        (None, None) => None,
    }
}

/// The state of every policy after the decision.
fn policies(
    rate: Option<&RateStep>,
    quotas: &[QuotaView],
    accepted: bool,
    secs: i64,
    now_ns: u64,
) -> Vec<PolicyState> {
    let mut out = Vec::with_capacity(quotas.len() + 1);
    if let Some(r) = rate {
        let level = r.level(accepted, now_ns);
        out.push(PolicyState {
            name: "rate",
            quota: r.burst,
            window_secs: ceil_secs(r.tolerance).max(1),
            remaining: (r.tolerance - level.min(r.tolerance)) / r.interval.max(1),
            reset_secs: ceil_secs(level),
        });
    }
    for q in quotas {
        out.push(PolicyState {
            name: q.spec.period.name(),
            quota: q.spec.limit,
            window_secs: q.spec.period.nominal_secs(),
            remaining: q.spec.limit.saturating_sub(q.used + u64::from(accepted)),
            reset_secs: (q.end - secs).max(0) as u64,
        });
    }
    out
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

    /// Checks one request of `key` under `plan` at `now_ns` (Unix nanoseconds) against the
    /// embedded store's counts, and counts it if every limit allows it.
    pub fn check(&self, key: &str, plan: &Plan, now_ns: u64) -> Verdict {
        match self.decide(key, plan, now_ns, Mode::Embedded) {
            Check::Done(v) => v,
            // The embedded mode decides everything here.
            Check::Ask(_) | Check::Unavailable => Verdict {
                denied: None,
                policies: Vec::new(),
            },
        }
    }

    /// Checks one request in `mode`; counts it when decided here and allowed.
    pub fn decide(&self, key: &str, plan: &Plan, now_ns: u64, mode: Mode) -> Check {
        let path = match mode {
            Mode::Embedded => Path::Exact,
            Mode::Cluster { up: true, .. } if plan.strict => {
                return Check::Ask(self.ask(plan, now_ns, true));
            }
            Mode::Cluster { up: true, .. } => Path::Leased,
            Mode::Cluster { up: false, .. } => match plan.on_error {
                OnStoreError::Deny => Path::LeaseOnly,
                OnStoreError::Allow => Path::Open,
                OnStoreError::Local => Path::Share,
            },
        };
        let nodes = match mode {
            Mode::Cluster { nodes, .. } => nodes.max(1),
            Mode::Embedded => 1,
        };
        let state = self.state(key);
        let mut st = lock(&state);
        let secs = (now_ns / 1_000_000_000) as i64;
        let rate = match (path, plan.rate) {
            (Path::Open, _) | (_, None) => None,
            (Path::Exact, Some(r)) => Some(st.rate(r, now_ns)),
            (_, Some(r)) => Some(st.rate(shared_rate(r, nodes), now_ns)),
        };
        let mut ask = false;
        let mut unavailable = false;
        let mut quotas = Vec::with_capacity(plan.quotas.len());
        for q in &plan.quotas {
            let end = q.period.window(secs).1;
            let c = st.counter(q.period, secs);
            c.limit = q.limit;
            c.touched = true;
            c.strict = plan.strict;
            let blocked = match path {
                Path::Exact => c.base + c.local >= q.limit,
                Path::Open => false,
                _ if c.lease > 0 => false,
                Path::Leased => {
                    ask |= c.seen() < q.limit;
                    c.seen() >= q.limit
                }
                Path::LeaseOnly => {
                    unavailable = true;
                    false
                }
                Path::Share => c.base + nodes.saturating_mul(c.local) >= q.limit,
            };
            quotas.push(QuotaView {
                spec: *q,
                used: c.seen(),
                end,
                blocked,
            });
        }
        let denied = denial(rate.as_ref(), &quotas, secs, now_ns);
        if denied.is_none() && ask {
            // The node's rate takes the request now (concurrent asks must not all pass it);
            // `answered` gives it back if Redis refuses.
            if let Some(r) = &rate {
                st.charge(r, true);
            }
            return Check::Ask(self.ask(plan, now_ns, false));
        }
        if denied.is_none() && unavailable {
            return Check::Unavailable;
        }
        let accepted = denied.is_none();
        if let Some(r) = &rate {
            st.charge(r, accepted);
        }
        if accepted {
            for q in &plan.quotas {
                let c = st.counter(q.period, secs);
                if path != Path::Exact && c.lease > 0 {
                    c.lease -= 1;
                } else {
                    c.local += 1;
                }
                c.used += 1;
            }
            st.dirty |= !plan.quotas.is_empty();
        }
        Check::Done(Verdict {
            policies: policies(rate.as_ref(), &quotas, accepted, secs, now_ns),
            denied,
        })
    }

    fn ask(&self, plan: &Plan, now_ns: u64, strict: bool) -> Ask {
        let secs = (now_ns / 1_000_000_000) as i64;
        Ask {
            rate: plan.rate.filter(|_| strict),
            quotas: plan
                .quotas
                .iter()
                .map(|q| {
                    let (start, end) = q.period.window(secs);
                    (*q, start, end)
                })
                .collect(),
        }
    }

    /// Records Redis's answer to an `Ask` and gives the verdict. Without a strict rate, the
    /// rate stays on this node (charged here when Redis accepted).
    pub fn answered(&self, key: &str, plan: &Plan, now_ns: u64, nodes: u64, a: &Answer) -> Verdict {
        let state = self.state(key);
        let mut st = lock(&state);
        let secs = (now_ns / 1_000_000_000) as i64;
        let rate = match plan.rate {
            None => None,
            Some((interval, burst)) if plan.strict => {
                // Rebuilt from Redis's arrival time.
                let level_before = if a.accepted {
                    a.rate_level_ns.saturating_sub(interval)
                } else {
                    a.rate_level_ns
                };
                let mut r = RateStep::at(interval, burst, now_ns + level_before, now_ns);
                r.allowed = a.rate_allowed;
                Some(r)
            }
            Some(r) => {
                // Charged when the ask was made; a refusal gives it back.
                let (interval, burst) = shared_rate(r, nodes);
                if !a.accepted {
                    st.tat_ns = st.tat_ns.saturating_sub(interval);
                }
                let mut step = st.rate((interval, burst), now_ns);
                step.allowed = true;
                if a.accepted {
                    // Show the state with this request in it.
                    step.next = step.base;
                    step.base = step.base.saturating_sub(interval).max(now_ns);
                }
                Some(step)
            }
        };
        let mut quotas = Vec::with_capacity(plan.quotas.len());
        for (q, count) in plan.quotas.iter().zip(a.counts.iter().copied()) {
            let (start, end) = q.period.window(secs);
            let c = st.counter(q.period, secs);
            if c.window != start {
                // Another request rolled the counter into the next window meanwhile: this
                // answer is about the last one and must not land in the new count.
                continue;
            }
            c.limit = q.limit;
            c.touched = true;
            c.strict = plan.strict;
            c.base = count;
            if a.accepted {
                c.used += 1;
            }
            let before = count.saturating_sub(u64::from(a.accepted));
            quotas.push(QuotaView {
                spec: *q,
                used: (before + c.local).saturating_sub(c.lease),
                end,
                blocked: !a.accepted && count >= q.limit,
            });
        }
        let mut rate_view = rate;
        if let Some(r) = rate_view.as_mut() {
            r.allowed = r.allowed || a.accepted;
        }
        let denied = if a.accepted {
            None
        } else {
            // Refused by Redis: if neither the rate nor a count explains it (a count moved
            // between the answer and now), it is the quota nearest its limit.
            denial(rate_view.as_ref(), &quotas, secs, now_ns).or_else(|| {
                quotas.iter().max_by_key(|q| q.used).map(|q| Denial::Quota {
                    period: q.spec.period,
                    limit: q.spec.limit,
                    retry_after_secs: (q.end - secs).max(1) as u64,
                })
            })
        };
        Verdict {
            policies: policies(rate_view.as_ref(), &quotas, a.accepted, secs, now_ns),
            denied,
        }
    }

    /// The current state of `key` under `plan`, without counting anything.
    pub fn peek(&self, key: &str, plan: &Plan, now_ns: u64) -> Vec<PolicyState> {
        let state = self.state(key);
        let mut st = lock(&state);
        let secs = (now_ns / 1_000_000_000) as i64;
        let rate = plan.rate.map(|r| st.rate(r, now_ns));
        let quotas: Vec<QuotaView> = plan
            .quotas
            .iter()
            .map(|q| {
                let end = q.period.window(secs).1;
                let c = st.counter(q.period, secs);
                QuotaView {
                    spec: *q,
                    used: c.seen(),
                    end,
                    blocked: false,
                }
            })
            .collect();
        policies(rate.as_ref(), &quotas, false, secs, now_ns)
    }

    /// Serialises flushes and resets of the stored counters; the guarded value is the store
    /// version the counters were last read at.
    pub fn persist_lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, i64)>> {
        lock(&self.persist)
    }

    fn each_state(&self, mut f: impl FnMut(&str, &mut KeyState)) {
        for shard in &self.shards {
            let states: Vec<(String, Arc<Mutex<KeyState>>)> = lock(shard)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, state) in states {
                f(&key, &mut lock(&state));
            }
        }
    }

    /// Takes every counter's unflushed increments, moving them into `base` (the store is
    /// about to hold them).
    pub fn take_dirty(&self) -> Vec<CounterRecord> {
        let mut out = Vec::new();
        self.each_state(|key, st| {
            if !std::mem::take(&mut st.dirty) {
                return;
            }
            for c in st.counters.iter_mut().filter(|c| c.local > 0) {
                out.push(CounterRecord {
                    key: key.to_string(),
                    period: c.period,
                    window: c.window,
                    count: c.local,
                });
                c.base += c.local;
                c.local = 0;
            }
        });
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

    /// With Redis: takes what every counter of a current window has to exchange (unused
    /// leases, counts made while Redis was unreachable, the demand since the last sync).
    /// Counters of past windows are dropped: their leases and counts no longer matter.
    pub fn take_sync(&self, now_secs: i64, last: bool) -> Vec<SyncItem> {
        let mut out = Vec::new();
        self.each_state(|key, st| {
            st.counters
                .retain(|c| c.window == c.period.window(now_secs).0);
            for c in st.counters.iter_mut() {
                if !(c.touched || c.lease > 0 || c.local > 0 || c.used > 0) {
                    continue;
                }
                out.push(SyncItem {
                    key: key.to_string(),
                    period: c.period,
                    window: c.window,
                    limit: c.limit,
                    returned: c.lease,
                    pushed: c.local,
                    used: c.used,
                    // Enough for twice the last interval's traffic; nothing for an idle key
                    // or a strict plan.
                    wanted: if c.strict || last {
                        0
                    } else {
                        c.used.saturating_mul(2).min(c.limit)
                    },
                });
                c.base = c.base.saturating_sub(c.lease);
                c.lease = 0;
                c.local = 0;
                c.used = 0;
                c.touched = false;
            }
            st.dirty = false;
        });
        out
    }

    /// With Redis: applies a sync's results (total, granted lease), or puts back what the
    /// next try needs. A sync that was sent and failed may have run: its lease is then taken
    /// as given back (if Redis did not get it, it stays counted there: fewer requests accepted,
    /// never more), and its pushed counts are pushed again (counted twice at worst).
    pub fn finish_sync(&self, items: &[SyncItem], outcome: SyncOutcome<'_>) {
        for (i, item) in items.iter().enumerate() {
            let state = self.state(&item.key);
            let mut st = lock(&state);
            let Some(c) = st
                .counters
                .iter_mut()
                .find(|c| c.period == item.period && c.window == item.window)
            else {
                continue;
            };
            match outcome {
                SyncOutcome::Applied(results) => {
                    if let Some(&(total, grant)) = results.get(i) {
                        c.base = total;
                        c.lease += grant;
                    }
                }
                SyncOutcome::NotSent | SyncOutcome::Unclear => {
                    if outcome == SyncOutcome::NotSent {
                        c.base += item.returned;
                        c.lease += item.returned;
                    }
                    c.local += item.pushed;
                    c.used += item.used;
                    c.touched = true;
                }
            }
        }
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
            strict: false,
            on_error: OnStoreError::Local,
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

    fn on_error(mut p: Plan, on_error: OnStoreError) -> Plan {
        p.on_error = on_error;
        p
    }

    #[test]
    fn with_redis_leases_are_spent_first_and_redis_decides_the_rest() {
        let l = Limiter::new();
        let p = plan(None, &["10/hour"]);
        let t = 1_800_000_000 * S;
        let now = (t / S) as i64;
        let up = Mode::Cluster { nodes: 2, up: true };
        // No lease yet: Redis must decide, nothing is counted here.
        let Check::Ask(ask) = l.decide("a", &p, t, up) else {
            panic!("expected an ask")
        };
        assert_eq!(ask.quotas.len(), 1);
        assert_eq!(ask.rate, None, "a batched rate stays on the node");
        // Redis accepted it (count 1).
        let v = l.answered(
            "a",
            &p,
            t,
            2,
            &Answer {
                accepted: true,
                rate_allowed: true,
                rate_level_ns: 0,
                counts: vec![1],
            },
        );
        assert_eq!(v.denied, None);
        assert_eq!(v.policies[0].remaining, 9);
        // The sync wants twice the traffic; Redis grants 2 of it (total 3).
        let items = l.take_sync(now, false);
        assert_eq!(
            (items[0].used, items[0].wanted, items[0].returned),
            (1, 2, 0)
        );
        l.finish_sync(&items, SyncOutcome::Applied(&[(3, 2)]));
        for _ in 0..2 {
            assert!(matches!(l.decide("a", &p, t, up), Check::Done(v) if v.denied.is_none()));
        }
        assert!(
            matches!(l.decide("a", &p, t, up), Check::Ask(_)),
            "lease spent"
        );
        // A failed sync puts everything back; the next one returns what is unused.
        let items = l.take_sync(now, false);
        assert_eq!(items[0].returned, 0);
        l.finish_sync(&items, SyncOutcome::NotSent);
        let items = l.take_sync(now, false);
        assert_eq!(items[0].used, 2, "demand survives a failed sync");
        // A count at the limit refuses here without asking.
        l.finish_sync(&items, SyncOutcome::Applied(&[(10, 0)]));
        assert!(matches!(
            l.decide("a", &p, t, up),
            Check::Done(Verdict {
                denied: Some(Denial::Quota { .. }),
                ..
            })
        ));
    }

    #[test]
    fn while_redis_is_down_each_policy_does_what_it_says() {
        let t = 1_800_000_000 * S;
        let now = (t / S) as i64;
        let down = Mode::Cluster {
            nodes: 2,
            up: false,
        };
        let accepted = |l: &Limiter, p: &Plan, n: usize| {
            (0..n)
                .filter(
                    |_| matches!(l.decide("a", p, t, down), Check::Done(v) if v.denied.is_none()),
                )
                .count()
        };
        // local: half of what is left (base 4 of 20: (20 - 4) / 2 = 8).
        let l = Limiter::new();
        let p = on_error(plan(None, &["20/hour"]), OnStoreError::Local);
        let _ = l.decide("a", &p, t, Mode::Cluster { nodes: 2, up: true });
        let items = l.take_sync(now, false);
        l.finish_sync(&items, SyncOutcome::Applied(&[(4, 0)]));
        assert_eq!(accepted(&l, &p, 30), 8);
        // The counts made meanwhile go to Redis at the next sync.
        let items = l.take_sync(now, false);
        assert_eq!(items[0].pushed, 8);
        // deny: the lease, then unavailable.
        let l = Limiter::new();
        let p = on_error(plan(None, &["20/hour"]), OnStoreError::Deny);
        let _ = l.decide("a", &p, t, Mode::Cluster { nodes: 2, up: true });
        let items = l.take_sync(now, false);
        l.finish_sync(&items, SyncOutcome::Applied(&[(3, 3)]));
        assert_eq!(accepted(&l, &p, 10), 3);
        assert_eq!(l.decide("a", &p, t, down), Check::Unavailable);
        // allow: everything, counted for later.
        let l = Limiter::new();
        let p = on_error(plan(Some((S, 1)), &["2/hour"]), OnStoreError::Allow);
        assert_eq!(accepted(&l, &p, 10), 10);
        assert_eq!(l.take_sync(now, false)[0].pushed, 10);
    }

    #[test]
    fn strict_plans_ask_every_time_and_never_want_a_lease() {
        let l = Limiter::new();
        let mut p = plan(Some((S, 5)), &["10/hour"]);
        p.strict = true;
        let t = 1_800_000_000 * S;
        let up = Mode::Cluster { nodes: 2, up: true };
        let Check::Ask(ask) = l.decide("a", &p, t, up) else {
            panic!("expected an ask")
        };
        assert_eq!(ask.rate, Some((S, 5)), "Redis keeps a strict rate");
        let v = l.answered(
            "a",
            &p,
            t,
            2,
            &Answer {
                accepted: false,
                rate_allowed: false,
                rate_level_ns: 5 * S,
                counts: vec![3],
            },
        );
        assert!(
            matches!(
                v.denied,
                Some(Denial::Rate {
                    retry_after_secs: 1
                })
            ),
            "{v:?}"
        );
        assert_eq!(v.policies[0].remaining, 0);
        assert_eq!(v.policies[1].remaining, 7);
        let items = l.take_sync((t / S) as i64, false);
        assert_eq!(items[0].wanted, 0);
    }
}

//! Anomaly detection per API and per consumer. Each window (`[analytics.alerts] window`) counts
//! requests and errors; a baseline of both is an exponentially weighted moving average over past
//! windows. After `warmup_windows`, a window raises:
//! - `spike` when it has at least `min_requests` and more than `factor` × the baseline rate;
//! - `drop` when the baseline is at least `min_requests` and the window has less than
//!   baseline / `factor` (a busy API going silent);
//! - `error_surge` when it has at least `min_errors` errors and an error rate above `factor` ×
//!   the baseline error rate (with a floor of 1 %, so a clean baseline still needs a real surge).
//!
//! Tracked entities are bounded (`MAX_TRACKED`); an entity whose baseline decays to nothing is
//! forgotten.

use super::names::Labels;
use super::record::Record;
use crate::config::analytics::AlertsSection;
use foldhash::HashMap;
use serde::Serialize;
use std::sync::Arc;

/// An API and a consumer (`""` for the API as a whole).
type Entity = (Arc<str>, Arc<str>);

/// At most this many (API, consumer) baselines are kept.
pub const MAX_TRACKED: usize = 10_000;

/// One raised alert.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    /// RFC 3339 time of the end of the window.
    pub time: String,
    pub kind: &'static str,
    pub api: String,
    /// Set for consumer alerts; absent for API alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    pub window_seconds: u64,
    pub requests: u64,
    pub baseline_requests: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub baseline_error_rate: f64,
    pub message: String,
}

#[derive(Debug, Default)]
struct Window {
    requests: u64,
    errors: u64,
}

#[derive(Debug, Default)]
struct Baseline {
    requests: f64,
    error_rate: f64,
    windows: u32,
    /// The kinds anomalous in the last window (bits: spike, drop, error_surge): an alert is
    /// raised when a kind starts, not again for every window it lasts.
    active: u8,
}

pub struct Detector {
    cfg: AlertsSection,
    /// (API, consumer or "" for the API as a whole).
    current: HashMap<Entity, Window>,
    baselines: HashMap<Entity, Baseline>,
    /// The consumer part of the API as a whole's key.
    all: Arc<str>,
}

impl Detector {
    pub fn new(cfg: AlertsSection) -> Detector {
        Detector {
            cfg,
            current: HashMap::default(),
            baselines: HashMap::default(),
            all: Arc::from(""),
        }
    }

    fn count(&mut self, api: &Arc<str>, consumer: &Arc<str>, error: bool) {
        let key = (api.clone(), consumer.clone());
        let known = self.current.contains_key(&key) || self.baselines.contains_key(&key);
        if !known && self.current.len() + self.baselines.len() >= MAX_TRACKED * 2 {
            return;
        }
        let w = self.current.entry(key).or_default();
        w.requests += 1;
        w.errors += u64::from(error);
    }

    /// Counts a routed record for its API and, when identified, its consumer (`l.consumer`
    /// is `""` for anonymous requests, which is also the API as a whole's key).
    pub fn add(&mut self, r: &Record, l: &Labels) {
        if r.api.is_none() {
            return;
        }
        let error = r.is_error();
        let all = self.all.clone();
        self.count(&l.api, &all, error);
        if !l.consumer.is_empty() {
            self.count(&l.api, &l.consumer, error);
        }
    }

    /// Ends a window at `now` (seconds): the alerts it raises, baselines moved.
    pub fn close(&mut self, now: i64) -> Vec<Alert> {
        let cfg = &self.cfg;
        let mut alerts = Vec::new();
        let mut keys: Vec<Entity> = self.baselines.keys().cloned().collect();
        keys.extend(
            self.current
                .keys()
                .filter(|k| !self.baselines.contains_key(*k))
                .cloned(),
        );
        for key in keys {
            let w = self.current.remove(&key).unwrap_or_default();
            let b = self.baselines.entry(key.clone()).or_default();
            let rate = if w.requests > 0 {
                w.errors as f64 / w.requests as f64
            } else {
                0.0
            };
            let (prev, mut active) = (b.active, 0u8);
            if b.windows >= cfg.warmup_windows {
                let mut raise = |kind: &'static str, message: String| {
                    let bit = match kind {
                        "spike" => 1,
                        "drop" => 2,
                        _ => 4,
                    };
                    active |= bit;
                    if prev & bit != 0 {
                        return;
                    }
                    alerts.push(Alert {
                        time: crate::clock::rfc3339(now),
                        kind,
                        api: key.0.to_string(),
                        consumer: (!key.1.is_empty()).then(|| key.1.to_string()),
                        window_seconds: cfg.window.0.as_secs(),
                        requests: w.requests,
                        baseline_requests: (b.requests * 100.0).round() / 100.0,
                        errors: w.errors,
                        error_rate: (rate * 10_000.0).round() / 10_000.0,
                        baseline_error_rate: (b.error_rate * 10_000.0).round() / 10_000.0,
                        message,
                    })
                };
                let who = match key.1.is_empty() {
                    true => format!("API {}", key.0),
                    false => format!("consumer {} on API {}", key.1, key.0),
                };
                let (n, base) = (w.requests as f64, b.requests);
                if w.requests >= cfg.min_requests && n > cfg.factor * base {
                    raise(
                        "spike",
                        format!(
                            "{who}: {} requests in the window, baseline {base:.1}",
                            w.requests
                        ),
                    );
                } else if base >= cfg.min_requests as f64 && n * cfg.factor < base {
                    raise(
                        "drop",
                        format!(
                            "{who}: {} requests in the window, baseline {base:.1}",
                            w.requests
                        ),
                    );
                }
                if w.errors >= cfg.min_errors && rate > cfg.factor * b.error_rate.max(0.01) {
                    raise(
                        "error_surge",
                        format!(
                            "{who}: error rate {:.1} % ({} of {}), baseline {:.1} %",
                            rate * 100.0,
                            w.errors,
                            w.requests,
                            b.error_rate * 100.0
                        ),
                    );
                }
            }
            b.active = active;
            let s = cfg.smoothing;
            if b.windows == 0 {
                b.requests = w.requests as f64;
                b.error_rate = rate;
            } else {
                b.requests = s * w.requests as f64 + (1.0 - s) * b.requests;
                if w.requests > 0 {
                    b.error_rate = s * rate + (1.0 - s) * b.error_rate;
                }
            }
            b.windows = b.windows.saturating_add(1);
        }
        alerts.sort_by(|a, b| (&a.api, &a.consumer, a.kind).cmp(&(&b.api, &b.consumer, b.kind)));
        // Forget what has gone quiet for good.
        self.baselines
            .retain(|_, b| b.requests >= 0.01 || b.windows < cfg.warmup_windows);
        if self.baselines.len() > MAX_TRACKED {
            let mut by_size: Vec<(Entity, f64)> = self
                .baselines
                .iter()
                .map(|(k, b)| (k.clone(), b.requests))
                .collect();
            by_size.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (k, _) in by_size.into_iter().skip(MAX_TRACKED) {
                self.baselines.remove(&k);
            }
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> Detector {
        Detector::new(AlertsSection {
            min_requests: 20,
            min_errors: 5,
            warmup_windows: 3,
            ..AlertsSection::default()
        })
    }

    fn feed(d: &mut Detector, n: u64, errors: u64) -> Vec<Alert> {
        let mut r = super::super::record::sample();
        let l = super::super::names::Names::default().labels(&r);
        for i in 0..n {
            r.status = if i < errors { 502 } else { 200 };
            d.add(&r, &l);
        }
        d.close(1_795_000_000)
    }

    #[test]
    fn steady_traffic_is_quiet_and_spikes_drops_and_surges_are_raised() {
        let mut d = detector();
        for _ in 0..10 {
            assert!(
                feed(&mut d, 50, 0).is_empty(),
                "steady traffic raises nothing"
            );
        }
        for n in [45, 55, 48, 52] {
            assert!(
                feed(&mut d, n, 1).is_empty(),
                "normal variation stays quiet"
            );
        }
        let spike = feed(&mut d, 400, 0);
        let kinds: Vec<(&str, Option<&str>)> = spike
            .iter()
            .map(|a| (a.kind, a.consumer.as_deref()))
            .collect();
        assert_eq!(kinds, vec![("spike", None), ("spike", Some("acme"))]);
        let mut d = detector();
        for _ in 0..5 {
            feed(&mut d, 50, 0);
        }
        let drop = feed(&mut d, 0, 0);
        assert!(drop
            .iter()
            .any(|a| a.kind == "drop" && a.consumer.is_none()));
        assert!(
            feed(&mut d, 0, 0).is_empty(),
            "a lasting drop is raised once"
        );
        let surge = feed(&mut d, 50, 20);
        assert!(surge.iter().any(|a| a.kind == "error_surge"), "{surge:?}");
    }

    #[test]
    fn nothing_is_raised_before_warmup() {
        let mut d = detector();
        assert!(feed(&mut d, 10, 0).is_empty());
        assert!(feed(&mut d, 1000, 500).is_empty());
    }
}

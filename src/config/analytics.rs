//! `[analytics]` and `[analytics.alerts]`: the request records and everything built from them
//! (metrics, the access log, usage rollups, anomaly alerts). The serde mirror and its checks.
//! The whole block is read when the process starts (a reload that changes it is refused).

use super::error::Problem;
use super::units::Dur;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[analytics]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSection {
    /// Records the channel between the request path and the aggregator holds; when it is full
    /// further records are dropped (and counted) rather than slowing requests down.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// JSON lines access log: a file path (relative to the config file's directory) or
    /// `"stdout"`. Absent: no access log.
    pub access_log: Option<PathBuf>,
    /// Fraction of successful requests (status below 400) written to the access log; every
    /// error is written.
    #[serde(default = "default_sample")]
    pub access_log_sample: f64,
    /// At most this many consumers get their own `consumer` label in the metrics (the busiest
    /// ones); the others are counted as `other`.
    #[serde(default = "default_consumer_labels")]
    pub consumer_labels: usize,
    /// How long per-minute usage rollups are kept.
    #[serde(default = "default_retention")]
    pub retention: Dur,
    /// How long hourly rollups are kept (daily ones are kept until deleted by hand).
    #[serde(default = "default_hour_retention")]
    pub hour_retention: Dur,
    #[serde(default)]
    pub alerts: AlertsSection,
    /// With `[store] redis_url`: the fleet's usage rollups in Redis.
    #[serde(default)]
    pub fleet: FleetSection,
}

/// `[analytics.fleet]`: how the fleet's usage rollups live in Redis (used with
/// `[store] redis_url`; each node's store keeps its own rows as well).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    #[serde(default = "default_fleet_minutes")]
    pub minute_retention: Dur,
    #[serde(default = "default_fleet_hours")]
    pub hour_retention: Dur,
    #[serde(default = "default_fleet_days")]
    pub day_retention: Dur,
    /// Distinct rows (API, version, consumer, status class) per minute, fleet-wide; further
    /// consumers of that minute are folded into the consumer `(other)` and counted.
    #[serde(default = "default_max_series")]
    pub max_series_per_minute: u64,
    /// Rows a node holds for Redis while it cannot be written; older ones are dropped past it
    /// (and counted).
    #[serde(default = "default_fleet_buffer")]
    pub buffer_rows: usize,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            minute_retention: default_fleet_minutes(),
            hour_retention: default_fleet_hours(),
            day_retention: default_fleet_days(),
            max_series_per_minute: default_max_series(),
            buffer_rows: default_fleet_buffer(),
        }
    }
}

fn default_fleet_minutes() -> Dur {
    Dur(Duration::from_secs(48 * 3_600))
}
fn default_fleet_hours() -> Dur {
    Dur(Duration::from_secs(90 * 86_400))
}
fn default_fleet_days() -> Dur {
    Dur(Duration::from_secs(400 * 86_400))
}
fn default_max_series() -> u64 {
    50_000
}
fn default_fleet_buffer() -> usize {
    200_000
}

impl Default for AnalyticsSection {
    fn default() -> Self {
        AnalyticsSection {
            buffer: default_buffer(),
            access_log: None,
            access_log_sample: default_sample(),
            consumer_labels: default_consumer_labels(),
            retention: default_retention(),
            hour_retention: default_hour_retention(),
            alerts: AlertsSection::default(),
            fleet: FleetSection::default(),
        }
    }
}

/// `[analytics.alerts]`: traffic spikes, drops and error surges per API and per consumer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The length of one observation window; baselines move once per window.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// A window is anomalous when its rate is this many times the baseline (spike) or the
    /// baseline is this many times the window (drop), or its error rate is this many times the
    /// baseline error rate (surge).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Requests a window (spike) or the baseline (drop) needs before it can raise an alert.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Errors (5xx and gateway failures) a window needs before an error surge is raised.
    #[serde(default = "default_min_errors")]
    pub min_errors: u64,
    /// Windows of history a baseline needs before any alert is raised.
    #[serde(default = "default_warmup")]
    pub warmup_windows: u32,
    /// Weight of the newest window in the baseline (exponentially weighted moving average).
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Alerts are also POSTed as JSON to this URL (retried, never on the request path).
    pub webhook: Option<super::hidden::Hidden>,
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout: Dur,
    #[serde(default = "default_webhook_retries")]
    pub webhook_retries: u32,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            enabled: true,
            window: default_window(),
            factor: default_factor(),
            min_requests: default_min_requests(),
            min_errors: default_min_errors(),
            warmup_windows: default_warmup(),
            smoothing: default_smoothing(),
            webhook: None,
            webhook_timeout: default_webhook_timeout(),
            webhook_retries: default_webhook_retries(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_buffer() -> usize {
    65_536
}
fn default_sample() -> f64 {
    1.0
}
fn default_consumer_labels() -> usize {
    100
}
fn default_retention() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}
fn default_hour_retention() -> Dur {
    Dur(Duration::from_secs(400 * 86_400))
}
fn default_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_factor() -> f64 {
    3.0
}
fn default_min_requests() -> u64 {
    100
}
fn default_min_errors() -> u64 {
    10
}
fn default_warmup() -> u32 {
    5
}
fn default_smoothing() -> f64 {
    0.3
}
fn default_webhook_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_webhook_retries() -> u32 {
    3
}

/// Every problem of the block, with key paths.
pub fn validate(a: &AnalyticsSection) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |key: &str, msg: &str| out.push(Problem::at(format!("analytics.{key}"), msg));
    if !(64..=16_777_216).contains(&a.buffer) {
        add("buffer", "between 64 and 16777216 records");
    }
    if !(a.access_log_sample > 0.0 && a.access_log_sample <= 1.0) {
        add("access_log_sample", "a fraction above 0 and at most 1");
    }
    if a.access_log
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        add("access_log", "a file path or \"stdout\"");
    }
    if !(1..=10_000).contains(&a.consumer_labels) {
        add("consumer_labels", "between 1 and 10000");
    }
    if a.retention.0 < Duration::from_secs(3_600) {
        add("retention", "at least 1h");
    }
    if a.hour_retention.0 < a.retention.0.max(Duration::from_secs(86_400)) {
        add("hour_retention", "at least 1d and at least retention");
    }
    let f = &a.fleet;
    if f.minute_retention.0 < Duration::from_secs(60) {
        add("fleet.minute_retention", "at least 1m");
    }
    if f.hour_retention.0 < Duration::from_secs(3_600) {
        add("fleet.hour_retention", "at least 1h");
    }
    if f.day_retention.0 < Duration::from_secs(86_400) {
        add("fleet.day_retention", "at least 1d");
    }
    if f.max_series_per_minute == 0 {
        add("fleet.max_series_per_minute", "at least 1");
    }
    if f.buffer_rows == 0 {
        add("fleet.buffer_rows", "at least 1");
    }
    let al = &a.alerts;
    if al.window.0 < Duration::from_secs(1) || al.window.0 > Duration::from_secs(86_400) {
        add("alerts.window", "between 1s and 1d");
    }
    if !(al.factor.is_finite() && al.factor > 1.0) {
        add("alerts.factor", "a number above 1");
    }
    if !(al.smoothing > 0.0 && al.smoothing <= 1.0) {
        add("alerts.smoothing", "a fraction above 0 and at most 1");
    }
    if al.min_requests == 0 {
        add("alerts.min_requests", "at least 1");
    }
    if al.min_errors == 0 {
        add("alerts.min_errors", "at least 1");
    }
    if al.warmup_windows == 0 || al.warmup_windows > 10_000 {
        add("alerts.warmup_windows", "between 1 and 10000");
    }
    if let Some(url) = &al.webhook {
        let ok = url.expose().parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            add("alerts.webhook", "an http:// or https:// URL");
        }
    }
    if al.webhook_timeout.0 < Duration::from_millis(100) {
        add("alerts.webhook_timeout", "at least 100ms");
    }
    if al.webhook_retries > 20 {
        add("alerts.webhook_retries", "at most 20");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_keys() {
        assert!(validate(&AnalyticsSection::default()).is_empty());
        let text = r#"
buffer = 1
access_log_sample = 0.0
consumer_labels = 0
retention = "10m"
[alerts]
factor = 1.0
webhook = "ftp://x"
"#;
        let a: AnalyticsSection = toml::from_str(text).expect("parses");
        let keys: Vec<String> = validate(&a).into_iter().map(|p| p.key_path).collect();
        for k in [
            "analytics.buffer",
            "analytics.access_log_sample",
            "analytics.consumer_labels",
            "analytics.retention",
            "analytics.alerts.factor",
            "analytics.alerts.webhook",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(toml::from_str::<AnalyticsSection>("nope = 1").is_err());
    }
}

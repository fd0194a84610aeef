//! The Prometheus metrics of the process, in a registry of its own (no globals). Request
//! metrics are fed by the aggregator from records, off the request path; state metrics
//! (config generation, upstream targets, the store) are read when `/metrics` is scraped.

use super::names::Labels;
use super::record::Record;
use super::requests::RequestCounts;
use crate::state::Shared;
use foldhash::HashMap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// Latency buckets in seconds, from 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: Arc<RequestCounts>,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    limited: IntCounterVec,
    refusals: IntCounterVec,
    deprecated: IntCounterVec,
    violations: IntCounterVec,
    cache: IntCounterVec,
    pub dropped: IntCounter,
    pub records: IntCounter,
    pub anomalies: IntCounterVec,
    pub access_log_errors: IntCounter,
    pub webhook_failures: IntCounter,
    pub shadow_requests: IntCounter,
    pub shadow_evicted: IntCounter,
    pub notices: IntCounterVec,
    pub fleet_folded: IntCounter,
    pub fleet_dropped: IntCounter,
    pub fleet_waiting: IntGauge,
    pub telemetry: crate::telemetry::export::Counters,
    generation: IntGauge,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    target_up: IntGaugeVec,
    store_up: IntGaugeVec,
}

/// The histograms of one API route, looked up once per (API, route).
pub struct RouteHistograms {
    duration: Histogram,
    upstream: Histogram,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    pub fn new(consumer_labels: usize) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &["api", "route"],
            )
        };
        let m = Metrics {
            requests: Arc::new(RequestCounts::new(consumer_labels)?),
            duration: hist(
                "turnpike_request_duration_seconds",
                "Time from the request head to the end of the answer",
            )?,
            upstream_duration: hist(
                "turnpike_upstream_duration_seconds",
                "Time from the first upstream attempt to the upstream's response head",
            )?,
            limited: counter_vec(
                "turnpike_limited_total",
                "Requests refused by a limit (rate, quota_<period>, per_ip, auth_failures)",
                &["api", "plan", "policy"],
            )?,
            refusals: counter_vec(
                "turnpike_policy_refusals_total",
                "Requests refused by a policy, by API, policy name and kind",
                &["api", "policy", "kind"],
            )?,
            deprecated: counter_vec(
                "turnpike_deprecated_requests_total",
                "Requests to deprecated or retired APIs, by API, version and consumer (capped like turnpike_requests_total)",
                &["api", "version", "consumer"],
            )?,
            violations: counter_vec(
                "turnpike_contract_violations_total",
                "Requests (in = response: answers) that broke the API's OpenAPI contract under validation in report mode, by API, route and place",
                &["api", "route", "in"],
            )?,
            cache: counter_vec(
                "turnpike_cache_requests_total",
                "Requests to cached APIs by X-Cache-Status",
                &["api", "status"],
            )?,
            dropped: IntCounter::new(
                "turnpike_analytics_dropped_total",
                "Request records dropped because the analytics channel was full",
            )?,
            records: IntCounter::new(
                "turnpike_analytics_records_total",
                "Request records the aggregator processed",
            )?,
            anomalies: counter_vec(
                "turnpike_anomalies_total",
                "Anomaly alerts raised (spike, drop, error_surge)",
                &["kind", "api"],
            )?,
            access_log_errors: IntCounter::new(
                "turnpike_access_log_errors_total",
                "Access log lines that could not be written",
            )?,
            webhook_failures: IntCounter::new(
                "turnpike_alert_webhook_failures_total",
                "Alert webhook deliveries that failed after every retry",
            )?,
            shadow_requests: IntCounter::new(
                "turnpike_shadow_requests_total",
                "Requests that matched no route (counted by shape in GET /catalog/shadow)",
            )?,
            shadow_evicted: IntCounter::new(
                "turnpike_shadow_shapes_evicted_total",
                "Shadow endpoint shapes evicted (least seen) past [catalog] shadow_shapes",
            )?,
            notices: counter_vec(
                "turnpike_catalog_notices_total",
                "Lifecycle notices to [catalog] notify_webhook, by event and outcome (sent, failed)",
                &["event", "outcome"],
            )?,
            fleet_folded: IntCounter::new(
                "turnpike_fleet_usage_folded_total",
                "Usage rows folded into the consumer (other) past [analytics.fleet] max_series_per_minute",
            )?,
            fleet_dropped: IntCounter::new(
                "turnpike_fleet_usage_dropped_total",
                "Usage rows dropped because Redis could not be written for longer than [analytics.fleet] buffer_rows allows",
            )?,
            fleet_waiting: IntGauge::new(
                "turnpike_fleet_usage_waiting_rows",
                "Usage rows waiting to be added to the fleet's Redis",
            )?,
            telemetry: crate::telemetry::export::Counters {
                exported: IntCounterVec::new(
                    Opts::new(
                        "turnpike_telemetry_exported_total",
                        "Spans and log records exported to the OpenTelemetry collector, by signal",
                    ),
                    &["signal"],
                )?,
                dropped: IntCounterVec::new(
                    Opts::new(
                        "turnpike_telemetry_dropped_total",
                        "Spans and log records not exported, by signal and reason (queue_full, export_failed, export_stopped)",
                    ),
                    &["signal", "reason"],
                )?,
            },
            generation: IntGauge::new(
                "turnpike_config_generation",
                "Generation of the config in use (1 at start, +1 per successful reload)",
            )?,
            connections_open: IntGauge::new(
                "turnpike_connections_open",
                "Client connections the proxy listeners hold now",
            )?,
            connections_refused: IntCounter::new(
                "turnpike_connections_refused_total",
                "Client connections closed at once because server.limits.max_connections was reached",
            )?,
            target_up: IntGaugeVec::new(
                Opts::new(
                    "turnpike_upstream_target_up",
                    "1 when the upstream target receives traffic (healthy and not ejected)",
                ),
                &["upstream", "target"],
            )?,
            store_up: IntGaugeVec::new(
                Opts::new(
                    "turnpike_store_up",
                    "1 when the shared store answers (redis), 0 while plans fall back",
                ),
                &["store"],
            )?,
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "turnpike_build_info",
                "Build of the running binary (always 1)",
            ),
            &["version", "pingora"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "0.9.1"])
            .set(1);
        let r = &m.registry;
        r.register(Box::new(RequestsCollector(m.requests.clone())))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.upstream_duration.clone()))?;
        r.register(Box::new(m.limited.clone()))?;
        r.register(Box::new(m.refusals.clone()))?;
        r.register(Box::new(m.violations.clone()))?;
        r.register(Box::new(m.deprecated.clone()))?;
        r.register(Box::new(m.cache.clone()))?;
        r.register(Box::new(m.dropped.clone()))?;
        r.register(Box::new(m.records.clone()))?;
        r.register(Box::new(m.anomalies.clone()))?;
        r.register(Box::new(m.access_log_errors.clone()))?;
        r.register(Box::new(m.webhook_failures.clone()))?;
        r.register(Box::new(m.shadow_requests.clone()))?;
        r.register(Box::new(m.shadow_evicted.clone()))?;
        r.register(Box::new(m.notices.clone()))?;
        r.register(Box::new(m.fleet_folded.clone()))?;
        r.register(Box::new(m.fleet_dropped.clone()))?;
        r.register(Box::new(m.fleet_waiting.clone()))?;
        r.register(Box::new(m.telemetry.exported.clone()))?;
        r.register(Box::new(m.telemetry.dropped.clone()))?;
        r.register(Box::new(m.generation.clone()))?;
        r.register(Box::new(m.connections_open.clone()))?;
        r.register(Box::new(m.connections_refused.clone()))?;
        r.register(Box::new(m.target_up.clone()))?;
        r.register(Box::new(m.store_up.clone()))?;
        r.register(Box::new(build))?;
        Ok(m)
    }

    /// The histograms for a record's API and route.
    pub fn route_histograms(&self, api: &str, route: &str) -> RouteHistograms {
        RouteHistograms {
            duration: self.duration.with_label_values(&[api, route]),
            upstream: self.upstream_duration.with_label_values(&[api, route]),
        }
    }

    /// Counts one record with its interned labels. `hists` caches the histograms per
    /// (API, route). `records` is not counted here: the aggregator counts a record once every
    /// part of it (metrics, log, rollups, detector) is done.
    pub fn observe(&self, r: &Record, l: &Labels, hists: &mut HistogramCache) {
        let h = hists.get(self, &l.api, &l.route);
        h.duration.observe(r.duration_us as f64 / 1e6);
        if let Some(u) = r.upstream_us {
            h.upstream.observe(u as f64 / 1e6);
        }
        let consumer = self
            .requests
            .add(l, known_method(&r.method), r.status_class());
        if r.deprecated {
            self.deprecated
                .with_label_values(&[&l.api, &l.version, &consumer])
                .inc();
        }
        if let Some(policy) = r.limited {
            self.limited
                .with_label_values(&[r.api_name(), r.plan().unwrap_or(""), policy])
                .inc();
        }
        if let Some((policy, kind)) = &r.policy {
            self.refusals
                .with_label_values(&[r.api_name(), policy, kind])
                .inc();
        }
        if let Some(status) = r.cache {
            self.cache.with_label_values(&[r.api_name(), status]).inc();
        }
        if r.violations != 0 {
            for (i, place) in super::record::VIOLATION_PLACES.iter().enumerate() {
                if r.violations & (1 << i) != 0 {
                    self.violations
                        .with_label_values(&[&l.api, &l.route, place])
                        .inc();
                }
            }
        }
    }

    /// The text exposition, with the state metrics brought up to date.
    pub fn render(&self, shared: &Shared) -> Vec<u8> {
        let snapshot = shared.snapshot();
        self.generation
            .set(i64::try_from(snapshot.generation).unwrap_or(i64::MAX));
        let conns = &shared.connections;
        self.connections_open
            .set(i64::try_from(conns.open()).unwrap_or(i64::MAX));
        self.connections_refused.inc_by(
            conns
                .refused()
                .saturating_sub(self.connections_refused.get()),
        );
        self.target_up.reset();
        let now = Instant::now();
        for pool in snapshot.pools.values() {
            for t in &pool.targets {
                let up = t.active_healthy() && t.ejected_for(now).is_none();
                self.target_up
                    .with_label_values(&[&pool.name, &t.label])
                    .set(i64::from(up));
            }
        }
        if let Some(c) = &shared.cluster {
            self.store_up
                .with_label_values(&["redis"])
                .set(i64::from(c.is_up()));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("metrics could not be encoded: {e}");
        }
        out
    }
}

/// Standard methods keep their name; anything else is `OTHER` (bounded label values).
fn known_method(m: &http::Method) -> http::Method {
    use http::Method as M;
    match *m {
        M::GET
        | M::HEAD
        | M::POST
        | M::PUT
        | M::DELETE
        | M::PATCH
        | M::OPTIONS
        | M::CONNECT
        | M::TRACE => m.clone(),
        _ => M::from_bytes(b"OTHER").unwrap_or(M::GET),
    }
}

/// The aggregator's cache of route histograms (bounded: cleared when large, as reloads bring
/// new routes).
#[derive(Default)]
pub struct HistogramCache {
    routes: HashMap<(Arc<str>, Arc<str>), RouteHistograms>,
}

impl HistogramCache {
    fn get(&mut self, m: &Metrics, api: &Arc<str>, route: &Arc<str>) -> &RouteHistograms {
        if self.routes.len() > 10_000 {
            self.routes.clear();
        }
        self.routes
            .entry((api.clone(), route.clone()))
            .or_insert_with(|| m.route_histograms(api, route))
    }
}

/// Registers the shared request counts (the registry takes ownership of a collector).
struct RequestsCollector(Arc<RequestCounts>);

impl prometheus::core::Collector for RequestsCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

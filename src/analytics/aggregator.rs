//! The aggregator: a background service that takes records from the channel in batches and
//! feeds the metrics, the access log, the usage rollups and the anomaly detector. It also
//! reopens the access log on `SIGUSR1`, writes rollups to the store every few seconds, closes
//! alert windows and moves the consumer label cap once a minute. It keeps running through the
//! shutdown grace period (requests still finish then) until the runtime drops it; then it takes
//! what is left in the channel and writes it all out (`Drop` of its state). Store writes run on
//! the blocking pool, never in the loop that takes records.

use super::access_log::AccessLog;
use super::anomaly::{Alert, Detector};
use super::metrics::HistogramCache;
use super::record::Record;
use super::webhook::{Webhook, QUEUE};
use super::Analytics;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};

/// How often the channel is emptied while requests come. The aggregator polls instead of
/// waiting on the channel: a waiting receiver would make every request's send wake it (a system
/// call on the request path); polled, a send is a few atomic operations.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// After this many empty drains in a row (one second without a request) the aggregator waits
/// on the channel instead of polling: an idle gateway does not wake 100 times a second, and
/// only the first request after the pause wakes it.
pub const IDLE_AFTER: u32 = 100;
/// How often rollups are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often the consumer label cap follows traffic.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(60);

pub struct Aggregator {
    pub shared: Arc<Shared>,
}

/// The aggregator's working state; dropping it writes out everything left.
struct Work<'a> {
    shared: &'a Arc<Shared>,
    a: &'a Analytics,
    rx: mpsc::Receiver<Record>,
    /// The store write in progress, if any.
    writing: Option<tokio::task::JoinHandle<()>>,
    log: Option<AccessLog>,
    hists: HistogramCache,
    detector: Option<Detector>,
    names: super::names::Names,
    webhook: Option<mpsc::Sender<Alert>>,
    /// OpenTelemetry export (`[telemetry]`), when configured.
    telemetry: Option<Telemetry>,
}

/// What the aggregator hands to the OpenTelemetry exporter: the records of sampled requests,
/// and with `export_access_log` those the access log's sampling keeps (the spans and log
/// records are built on the export thread, not here).
struct Telemetry {
    exporter: crate::telemetry::export::Exporter,
    logs: Option<super::access_log::Sampling>,
    /// How long the last export may take at exit.
    timeout: Duration,
}

impl Telemetry {
    fn start(shared: &Shared, a: &Analytics) -> Option<Telemetry> {
        let snapshot = shared.snapshot();
        let cfg = &snapshot.file.telemetry;
        if !cfg.enabled() {
            return None;
        }
        match crate::telemetry::export::Exporter::start(cfg, a.metrics.telemetry.clone()) {
            Ok(exporter) => Some(Telemetry {
                exporter,
                logs: cfg
                    .export_access_log
                    .then(|| super::access_log::Sampling::new(a.cfg.access_log_sample)),
                // The rest of the stop must fit Pingora's graceful_shutdown_timeout.
                timeout: cfg
                    .timeout
                    .0
                    .min(snapshot.file.server.graceful_shutdown_timeout.0 / 2),
            }),
            Err(why) => {
                log::error!("telemetry export disabled: {why}");
                None
            }
        }
    }

    /// A record to the export queue when it was sampled or its log record is kept.
    fn add(&mut self, r: Record) {
        let log = self.logs.as_mut().is_some_and(|s| s.keep(&r));
        self.exporter.request(r, log);
    }
}

impl Work<'_> {
    /// Takes every record waiting in the channel; how many there were.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(r) = self.rx.try_recv() {
            self.take(r);
            n += 1;
        }
        if n > 0 {
            self.flush_log();
        }
        n
    }

    /// One record: absorbed, then handed to the telemetry export.
    fn take(&mut self, r: Record) {
        self.absorb(&r);
        if let Some(t) = &mut self.telemetry {
            t.add(r);
        }
    }

    fn absorb(&mut self, r: &Record) {
        let labels = self.names.labels(r);
        self.a.metrics.observe(r, &labels, &mut self.hists);
        if let Some(log) = &mut self.log {
            log.add(r);
        }
        self.a
            .rollups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(r, &labels);
        if let Some(d) = &mut self.detector {
            d.add(r, &labels);
        }
        if let Some(hit) = &r.shadow {
            self.shadow(hit, (r.time_ms / 1000) as i64);
        }
        // Last, so that a scrape showing N records was taken after N records were fully
        // absorbed (a later scrape then sees all of them in every metric).
        self.a.metrics.records.inc();
    }

    /// Counts a request that matched no route, under the current `[catalog]` bounds.
    fn shadow(&mut self, hit: &super::shadow::Hit, at: i64) {
        let snapshot = self.shared.snapshot();
        let c = &snapshot.file.catalog;
        let evicted = {
            let mut t = self.a.shadow.lock().unwrap_or_else(|e| e.into_inner());
            t.cap = c.shadow_shapes;
            t.retention = i64::try_from(c.shadow_retention.0.as_secs()).unwrap_or(i64::MAX);
            t.add(hit, at)
        };
        self.a.metrics.shadow_requests.inc();
        self.a.metrics.shadow_evicted.inc_by(evicted);
    }

    fn flush_log(&mut self) {
        if let Some(log) = &mut self.log {
            if let Err(lost) = log.flush() {
                self.a.metrics.access_log_errors.inc_by(lost);
            }
        }
    }

    /// Starts a store write of the rollups unless one is still running.
    fn flush_usage(&mut self) {
        if self.writing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let shared = self.shared.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_usage(&shared);
        }));
    }

    fn close_window(&mut self) {
        let Some(d) = &mut self.detector else {
            return;
        };
        for alert in d.close(crate::clock::now()) {
            log::warn!("anomaly: {} ({})", alert.message, alert.kind);
            self.a
                .metrics
                .anomalies
                .with_label_values(&[alert.kind, &alert.api])
                .inc();
            if let Some(tx) = &self.webhook {
                if tx.try_send(alert.clone()).is_err() {
                    log::warn!("alert webhook queue is full: an alert was not sent");
                }
            }
            self.a.remember(alert);
        }
    }
}

fn write_usage(shared: &Shared) {
    if let Err(e) = shared.analytics.flush_usage(shared.identity.store()) {
        log::warn!("usage rollups not written (kept for the next attempt): {e}");
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        let mut n = 0;
        while let Ok(r) = self.rx.try_recv() {
            self.take(r);
            n += 1;
        }
        self.flush_log();
        // Usage first: a slow collector must not cost the rollups their write.
        write_usage(self.shared);
        if let Some(t) = &mut self.telemetry {
            t.exporter.finish(t.timeout);
        }
        log::info!("analytics written at exit ({n} records were waiting)");
    }
}

#[async_trait]
impl BackgroundService for Aggregator {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let a = &self.shared.analytics;
        let Some(rx) = a.take_receiver() else {
            return;
        };
        let webhook = a
            .cfg
            .alerts
            .webhook
            .clone()
            .filter(|_| a.cfg.alerts.enabled);
        let webhook = webhook.map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let hook = Webhook {
                url: url.expose().to_string(),
                timeout: a.cfg.alerts.webhook_timeout.0,
                retries: a.cfg.alerts.webhook_retries,
                failures: a.metrics.webhook_failures.clone(),
            };
            tokio::spawn(hook.run(rx));
            tx
        });
        let mut w = Work {
            shared: &self.shared,
            a,
            rx,
            writing: None,
            log: a
                .access_log
                .as_ref()
                .map(|t| AccessLog::new(t.clone(), a.cfg.access_log_sample)),
            hists: HistogramCache::default(),
            detector: a
                .cfg
                .alerts
                .enabled
                .then(|| Detector::new(a.cfg.alerts.clone())),
            names: Default::default(),
            webhook,
            telemetry: Telemetry::start(&self.shared, a),
        };
        // Always listened for, so that a SIGUSR1 without an access log does not end the process.
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| log::error!("cannot listen for SIGUSR1 (access log reopen): {e}"))
                .ok();
        let tick = |every: Duration| {
            let mut t = interval(every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        };
        let mut flush = tick(FLUSH_EVERY);
        let mut window = tick(a.cfg.alerts.window.0);
        let mut rebalance = tick(REBALANCE_EVERY);
        // The first ticks fire at once; the window's first one must not close an empty window.
        window.tick().await;
        rebalance.tick().await;
        let mut drain = tick(DRAIN_EVERY);
        let mut empty_drains = 0u32;
        loop {
            let polling = empty_drains < IDLE_AFTER;
            tokio::select! {
                _ = drain.tick(), if polling => {
                    match w.drain() {
                        0 => empty_drains += 1,
                        _ => empty_drains = 0,
                    }
                }
                first = w.rx.recv(), if !polling => {
                    // Traffic again: back to polling.
                    if let Some(r) = first {
                        w.take(r);
                        w.drain();
                        w.flush_log();
                    }
                    empty_drains = 0;
                    drain.reset();
                }
                Some(()) = async { match &mut usr1 { Some(s) => s.recv().await, None => None } } => {
                    w.flush_log();
                    if let Some(log) = &mut w.log {
                        log.reopen();
                        log::info!("access log reopened");
                    }
                }
                _ = flush.tick() => w.flush_usage(),
                _ = window.tick() => w.close_window(),
                _ = rebalance.tick() => a.metrics.requests.rebalance(),
            }
        }
    }
}

//! Analytics: one `Record` per request, sent from the `logging` phase through a bounded channel
//! (a full channel drops the record and counts it; the request never waits) to the aggregator,
//! a background service that feeds the Prometheus metrics, the JSON access log, the per-minute
//! usage rollups in the embedded store and the anomaly detector. `Analytics` is the handle the
//! proxy and the admin API share.

pub mod access_log;
pub mod aggregator;
pub mod anomaly;
pub mod callers;
pub mod metrics;
pub mod names;
pub mod record;
pub mod report;
pub mod requests;
pub mod rollup;
pub mod shadow;
pub mod sketch;
pub mod source;
pub mod webhook;

use crate::config::analytics::AnalyticsSection;
use anomaly::Alert;
use record::Record;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Raised alerts kept for `GET /analytics/alerts`.
pub const KEPT_ALERTS: usize = 500;

pub struct Analytics {
    tx: mpsc::Sender<Record>,
    rx: Mutex<Option<mpsc::Receiver<Record>>>,
    pub cfg: AnalyticsSection,
    /// Where the access log goes (`None`: no access log).
    pub access_log: Option<access_log::Target>,
    pub metrics: metrics::Metrics,
    pub rollups: Mutex<rollup::Rollups>,
    /// Requests that matched no route, by shape, between flushes.
    pub shadow: Mutex<shadow::Table>,
    /// The fleet's Redis (`[store] redis_url`), where rollups are also added, and the deltas
    /// waiting for it.
    pub fleet: Option<std::sync::Arc<crate::cluster::Cluster>>,
    fleet_pending: Mutex<crate::cluster::usage::Pending>,
    /// Held from taking the rollups' deltas until they are in the store, so that a usage query
    /// never reads between another flush's take and its write (and misses those counts).
    flushing: Mutex<()>,
    alerts: Mutex<VecDeque<Alert>>,
}

impl Analytics {
    /// `config_dir`: relative access log paths are relative to it.
    pub fn new(
        cfg: &AnalyticsSection,
        config_dir: Option<&Path>,
        fleet: Option<std::sync::Arc<crate::cluster::Cluster>>,
    ) -> Analytics {
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let metrics = match metrics::Metrics::new(cfg.consumer_labels) {
            Ok(m) => m,
            // Only a programming error (a clashing metric name) can get here.
            Err(e) => panic!("metric definitions are inconsistent: {e}"),
        };
        Analytics {
            tx,
            rx: Mutex::new(Some(rx)),
            access_log: cfg
                .access_log
                .as_deref()
                .map(|p| access_log::Target::from_config(p, config_dir)),
            cfg: cfg.clone(),
            metrics,
            rollups: Mutex::new(rollup::Rollups::default()),
            shadow: Mutex::new(shadow::Table::default()),
            fleet,
            fleet_pending: Mutex::new(Default::default()),
            flushing: Mutex::new(()),
            alerts: Mutex::new(VecDeque::new()),
        }
    }

    /// Hands a record to the aggregator, or drops and counts it when the channel is full.
    pub fn send(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// The receiving end, once (for the aggregator).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Record>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Adds the rollups and shadow endpoints waiting in memory into the store (before a usage
    /// query). Blocking: called on the blocking pool.
    pub fn flush_usage(&self, store: &crate::store::Store) -> crate::store::Result<usize> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        match shadow::flush(&self.shadow, store, self.fleet.as_deref()) {
            Ok(evicted) => self.metrics.shadow_evicted.inc_by(evicted),
            Err(e) => log::warn!("shadow endpoints not written: {e}"),
        }
        let written = rollup::flush(
            &self.rollups,
            store,
            secs(self.cfg.retention.0),
            secs(self.cfg.hour_retention.0),
            |deltas| {
                if self.fleet.is_some() {
                    let mut p = self.fleet_pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.push(deltas.to_vec());
                }
            },
        );
        // An outage is logged by the cluster's health (once); the rows wait.
        if let Err(e) = self.write_fleet() {
            log::debug!("{e}");
        }
        written
    }

    /// Writes the deltas waiting for the fleet's Redis; on an outage they wait (bounded).
    fn write_fleet(&self) -> crate::store::Result<()> {
        let Some(c) = &self.fleet else {
            return Ok(());
        };
        let f = &self.cfg.fleet;
        let limits = crate::cluster::usage::Limits {
            minutes: secs(f.minute_retention.0),
            hours: secs(f.hour_retention.0),
            days: secs(f.day_retention.0),
            max_series: f.max_series_per_minute,
        };
        let mut p = self.fleet_pending.lock().unwrap_or_else(|e| e.into_inner());
        let result = crate::cluster::usage::write(c, &mut p, limits);
        // Only rows that could not be written count against the buffer.
        let dropped = p.trim(f.buffer_rows);
        self.metrics.fleet_dropped.inc_by(dropped as u64);
        self.metrics.fleet_waiting.set(p.rows() as i64);
        match result {
            Ok(folded) => {
                self.metrics.fleet_folded.inc_by(folded);
                Ok(())
            }
            Err(e) => Err(crate::store::StoreError::Redis(format!(
                "fleet usage not written yet ({} rows wait): {e}",
                p.rows()
            ))),
        }
    }

    pub fn remember(&self, alert: Alert) {
        let mut kept = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT_ALERTS {
            kept.pop_front();
        }
        kept.push_back(alert);
    }

    /// Raised alerts, oldest first.
    pub fn alerts(&self) -> Vec<Alert> {
        let kept = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().cloned().collect()
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

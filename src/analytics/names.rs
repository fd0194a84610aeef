//! Interned label strings for the aggregator's maps: one `Arc<str>` per distinct API, route,
//! version or consumer name, so keys clone cheaply. A record's labels are interned once
//! (`labels`) and shared by the metrics, the rollups and the anomaly detector. Bounded: cleared
//! when it grows past `MAX_NAMES` (reloads and consumer churn bring new names).
//!
//! The aggregator's maps hash with foldhash (randomly seeded per process): their keys are
//! names from config, the admin API and the `sub`-like claims of tokens an operator's issuer
//! signed, never free text from an anonymous client, and every map is bounded.

use super::record::Record;
use foldhash::HashMap;
use std::sync::Arc;

/// A record's label strings.
pub struct Labels {
    pub api: Arc<str>,
    pub version: Arc<str>,
    pub route: Arc<str>,
    /// `""` for anonymous requests.
    pub consumer: Arc<str>,
}

pub const MAX_NAMES: usize = 100_000;

#[derive(Default)]
pub struct Names(HashMap<Box<str>, Arc<str>>);

impl Names {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        if self.0.len() >= MAX_NAMES {
            self.0.clear();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(Box::from(s), a.clone());
        a
    }

    pub fn labels(&mut self, r: &Record) -> Labels {
        Labels {
            api: self.get(r.api_name()),
            version: self.get(r.api_version()),
            route: self.get(r.route_name()),
            consumer: self.get(r.consumer_id().unwrap_or("")),
        }
    }
}

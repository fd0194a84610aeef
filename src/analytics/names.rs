//! Interned label strings for the aggregator's maps: one `Arc<str>` per distinct API, route,
//! version or consumer name, so keys clone cheaply. Bounded: cleared when it grows past
//! `MAX_NAMES` (reloads and consumer churn bring new names).

use std::collections::HashMap;
use std::sync::Arc;

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
}

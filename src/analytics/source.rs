//! Where usage reports read their rows: the fleet's buckets in Redis when `[store] redis_url`
//! is set (`"scope": "fleet"`), this node's store otherwise (`"scope": "node"`). Reports, the
//! admin analytics API, the catalogue and the who-still-calls report all read through here, so
//! they agree on what they count.

use crate::cluster::Cluster;
use crate::store::usage::{self, CallerRow, Filter, UsageRow, UsageTotals};
use crate::store::{Store, StoreError};

pub enum Source<'a> {
    Node(&'a Store),
    Fleet(&'a Cluster),
}

fn fleet_error(e: crate::cluster::CallError) -> StoreError {
    StoreError::Redis(format!("fleet usage: {e}"))
}

impl<'a> Source<'a> {
    /// The fleet's rows when there is a fleet, else the node's.
    pub fn new(store: &'a Store, cluster: Option<&'a Cluster>) -> Source<'a> {
        match cluster {
            Some(c) => Source::Fleet(c),
            None => Source::Node(store),
        }
    }

    /// `"fleet"` or `"node"`, as answers name it.
    pub fn scope(&self) -> &'static str {
        match self {
            Source::Node(_) => "node",
            Source::Fleet(_) => "fleet",
        }
    }

    /// The rows of `f`, at most `limit`.
    pub fn query(&self, f: &Filter, limit: usize) -> Result<Vec<UsageRow>, StoreError> {
        match self {
            Source::Node(s) => s.read(|c| usage::query(c, f, limit)),
            Source::Fleet(c) => crate::cluster::usage::query(c, f, limit).map_err(fleet_error),
        }
    }

    /// Per consumer, the requests to `api` `version` in the `granularity` rows starting in
    /// `[from, to)` (identified consumers by most requests first, anonymous last).
    pub fn callers(
        &self,
        granularity: i64,
        from: i64,
        to: i64,
        api: &str,
        version: &str,
    ) -> Result<Vec<CallerRow>, StoreError> {
        match self {
            Source::Node(s) => s.read(|c| usage::callers(c, granularity, from, to, api, version)),
            Source::Fleet(_) => {
                let rows = self.query(&api_filter(granularity, from, to, api), usize::MAX)?;
                Ok(usage::callers_of(&rows, version))
            }
        }
    }

    /// The totals of `api` `version` over the `granularity` rows starting in `[from, to)`.
    pub fn api_totals(
        &self,
        granularity: i64,
        from: i64,
        to: i64,
        api: &str,
        version: &str,
    ) -> Result<UsageTotals, StoreError> {
        match self {
            Source::Node(s) => {
                s.read(|c| usage::api_totals(c, granularity, from, to, api, version))
            }
            Source::Fleet(_) => {
                let rows = self.query(&api_filter(granularity, from, to, api), usize::MAX)?;
                let mut total = UsageTotals::default();
                for r in rows.iter().filter(|r| r.key.version == version) {
                    total.merge(&r.totals);
                }
                Ok(total)
            }
        }
    }
}

fn api_filter(granularity: i64, from: i64, to: i64, api: &str) -> Filter {
    Filter {
        granularity,
        from,
        to,
        api: Some(api.to_string()),
        consumer: None,
    }
}

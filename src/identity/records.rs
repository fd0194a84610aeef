//! The store that holds consumers, keys and the audit log: the embedded SQLite file, or Redis
//! for a fleet (`[store] redis_url`). The admin API and the CLI speak to either through this.

use crate::cluster::records::RedisRecords;
use crate::identity::key::NewKey;
use crate::store::audit::{AuditEntry, Verified};
use crate::store::consumers::{
    self as rows, ConsumerPatch, ConsumerRow, KeyRow, NewConsumer, RecordTx, SqlTx,
};
use crate::store::{audit, Change, Result, Store};

#[derive(Clone, Copy)]
pub enum Records<'a> {
    Sqlite(&'a Store),
    Redis(&'a RedisRecords),
}

impl Records<'_> {
    /// Runs one change with its audit entry in whichever store is in use (`f` may run more
    /// than once with Redis, when another node changed something meanwhile).
    fn change<T>(
        &self,
        actor: &str,
        mut f: impl FnMut(&mut dyn RecordTx) -> Result<(T, Change)>,
    ) -> Result<T> {
        match self {
            Records::Sqlite(s) => s.change(actor, |tx| f(&mut SqlTx(tx))),
            Records::Redis(r) => r.change(actor, |tx| f(tx)),
        }
    }

    /// Records an admin action that changes no record (e.g. a cache purge) in the audit log.
    pub fn record(&self, actor: &str, change: Change) -> Result<()> {
        self.change(actor, |_| Ok(((), change.clone())))
    }

    pub fn create_consumer(&self, actor: &str, c: NewConsumer) -> Result<ConsumerRow> {
        self.change(actor, |tx| rows::create_consumer(tx, c.clone()))
    }

    pub fn update_consumer(
        &self,
        actor: &str,
        id: &str,
        patch: ConsumerPatch,
    ) -> Result<ConsumerRow> {
        self.change(actor, |tx| rows::update_consumer(tx, id, patch.clone()))
    }

    pub fn delete_consumer(&self, actor: &str, id: &str) -> Result<Vec<KeyRow>> {
        self.change(actor, |tx| rows::delete_consumer(tx, id))
    }

    pub fn create_key(
        &self,
        actor: &str,
        consumer_id: &str,
        label: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(KeyRow, NewKey)> {
        self.change(actor, |tx| {
            rows::create_key(tx, consumer_id, label, expires_at)
        })
    }

    pub fn revoke_key(&self, actor: &str, consumer_id: &str, key_id: &str) -> Result<KeyRow> {
        self.change(actor, |tx| rows::revoke_key(tx, consumer_id, key_id))
    }

    pub fn rotate_key(
        &self,
        actor: &str,
        consumer_id: &str,
        key_id: &str,
        grace_secs: i64,
    ) -> Result<(KeyRow, NewKey, KeyRow)> {
        self.change(actor, |tx| {
            rows::rotate_key(tx, consumer_id, key_id, grace_secs)
        })
    }

    pub fn get_consumer(&self, id: &str) -> Result<Option<ConsumerRow>> {
        match self {
            Records::Sqlite(s) => s.read(|c| rows::get_consumer(c, id)),
            Records::Redis(r) => r.read(|tx| rows::RecordTx::consumer(tx, id)),
        }
    }

    pub fn list_consumers(&self, after: &str, limit: i64) -> Result<Vec<ConsumerRow>> {
        match self {
            Records::Sqlite(s) => s.read(|c| rows::list_consumers(c, after, limit)),
            Records::Redis(r) => r.list_consumers(after, limit),
        }
    }

    pub fn list_keys(&self, consumer_id: &str) -> Result<Vec<KeyRow>> {
        match self {
            Records::Sqlite(s) => s.read(|c| rows::list_keys(c, consumer_id)),
            Records::Redis(r) => r.read(|tx| rows::RecordTx::keys_of(tx, consumer_id)),
        }
    }

    pub fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        match self {
            Records::Sqlite(s) => s.read(|c| audit::page(c, after_seq, limit)),
            Records::Redis(r) => r.audit_page(after_seq, limit),
        }
    }

    pub fn verify_audit(&self) -> Result<Verified> {
        match self {
            Records::Sqlite(s) => s.read(audit::verify),
            Records::Redis(r) => r.verify(),
        }
    }

    /// Forgets a consumer's stored plan counters (audited).
    pub fn reset_counts(&self, actor: &str, consumer: &str) -> Result<usize> {
        match self {
            Records::Sqlite(s) => s.reset_counts(actor, consumer),
            Records::Redis(r) => r.reset_counts(actor, consumer),
        }
    }
}

//! Consumers, API key digests and the audit log in Redis, for a fleet that shares them.
//!
//! Layout (every key under `[store] redis_prefix`): `c:{id}` a consumer (JSON), `consumers` a
//! sorted set of ids (keyset pagination by id), `ck:{id}` the ids of a consumer's keys,
//! `k:{key id}` a key (JSON with the SHA-256 digest, never the key), `audit` the audit log (a
//! list of JSON entries, hash-chained as in the SQLite store), `audit:head` the last entry's
//! sequence and hash, and `version`, bumped by every change.
//!
//! A change is an optimistic transaction: WATCH `version`, read what the change needs, then
//! MULTI the writes, the audit entry and the version bump; if another node changed anything in
//! between, EXEC fails and the change is computed again. So changes from every node are
//! serialised, each lands whole with its audit entry, and the audit chain has no forks.
//! Nodes poll `version` every `sync_interval` and rebuild their index when it moved.

use super::Cluster;
use crate::identity::key::{from_hex, to_hex};
use crate::store::audit::{self, AuditEntry, Stored, Verified};
use crate::store::consumers::{ConsumerRow, KeyRow, RecordTx};
use crate::store::{Change, Result, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How often a change is tried when other nodes keep changing things under it.
const ATTEMPTS: usize = 20;

/// A key as stored in Redis.
#[derive(Serialize, Deserialize)]
struct KeyDoc {
    id: String,
    consumer_id: String,
    digest: String,
    display: String,
    label: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    replaced_by: Option<String>,
}

impl KeyDoc {
    fn of(r: &KeyRow) -> KeyDoc {
        KeyDoc {
            id: r.id.clone(),
            consumer_id: r.consumer_id.clone(),
            digest: to_hex(&r.digest),
            display: r.display.clone(),
            label: r.label.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            replaced_by: r.replaced_by.clone(),
        }
    }

    fn row(self) -> Option<KeyRow> {
        Some(KeyRow {
            digest: from_hex(&self.digest)?,
            id: self.id,
            consumer_id: self.consumer_id,
            display: self.display,
            label: self.label,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            replaced_by: self.replaced_by,
        })
    }
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::RedisCall(e)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Redis(format!("{what} is not valid: {e}")))
}

/// The identity records of a fleet in Redis.
pub struct RedisRecords {
    pub cluster: Arc<Cluster>,
}

/// One change in progress: reads go to Redis under WATCH, writes wait in a MULTI pipeline.
pub struct RedisTx<'a> {
    c: &'a Cluster,
    conn: &'a mut redis::Connection,
    pipe: redis::Pipeline,
}

impl RedisTx<'_> {
    fn get(&mut self, key: String) -> Result<Option<String>> {
        redis::cmd("GET")
            .arg(key)
            .query(self.conn)
            .map_err(redis_error)
    }

    fn keys_by_id(&mut self, ids: &[String]) -> Result<Vec<KeyRow>> {
        mget_keys(self.c, self.conn, ids)
    }
}

fn mget_keys(c: &Cluster, conn: &mut redis::Connection, ids: &[String]) -> Result<Vec<KeyRow>> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let names: Vec<String> = chunk.iter().map(|id| c.key(&["k", id])).collect();
        let docs: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&names)
            .query(conn)
            .map_err(redis_error)?;
        for doc in docs.into_iter().flatten() {
            if let Some(row) = decode::<KeyDoc>("a stored key", &doc)?.row() {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

impl RecordTx for RedisTx<'_> {
    fn consumer(&mut self, id: &str) -> Result<Option<ConsumerRow>> {
        match self.get(self.c.key(&["c", id]))? {
            Some(doc) => Ok(Some(decode("a stored consumer", &doc)?)),
            None => Ok(None),
        }
    }

    fn keys_of(&mut self, consumer_id: &str) -> Result<Vec<KeyRow>> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.c.key(&["ck", consumer_id]))
            .query(self.conn)
            .map_err(redis_error)?;
        ids.sort();
        let mut rows = self.keys_by_id(&ids)?;
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rows)
    }

    fn key(&mut self, consumer_id: &str, key_id: &str) -> Result<KeyRow> {
        let found = match self.get(self.c.key(&["k", key_id]))? {
            Some(doc) => decode::<KeyDoc>("a stored key", &doc)?.row(),
            None => None,
        };
        found
            .filter(|k| k.consumer_id == consumer_id)
            .ok_or_else(|| StoreError::NotFound(format!("key {key_id} of consumer {consumer_id}")))
    }

    fn put_consumer(&mut self, row: &ConsumerRow) -> Result<()> {
        let doc = serde_json::to_string(row).map_err(|e| StoreError::Io(e.to_string()))?;
        self.pipe.set(self.c.key(&["c", &row.id]), doc);
        self.pipe.zadd(self.c.key(&["consumers"]), &row.id, 0);
        Ok(())
    }

    fn remove_consumer(&mut self, id: &str, keys: &[KeyRow]) -> Result<()> {
        self.pipe.del(self.c.key(&["c", id]));
        self.pipe.zrem(self.c.key(&["consumers"]), id);
        self.pipe.del(self.c.key(&["ck", id]));
        for k in keys {
            self.pipe.del(self.c.key(&["k", &k.id]));
        }
        Ok(())
    }

    fn put_key(&mut self, row: &KeyRow) -> Result<()> {
        let doc =
            serde_json::to_string(&KeyDoc::of(row)).map_err(|e| StoreError::Io(e.to_string()))?;
        self.pipe.set(self.c.key(&["k", &row.id]), doc);
        self.pipe
            .sadd(self.c.key(&["ck", &row.consumer_id]), &row.id);
        Ok(())
    }
}

impl RedisRecords {
    /// Runs `f` on the plain connection; a failed Redis call inside it reaches `with_conn`,
    /// so that an outage marks Redis down and drops the connection.
    fn conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> Result<T>,
    ) -> Result<T> {
        let mut out = None;
        let r = self.cluster.with_conn(what, |conn| match f(conn) {
            Err(StoreError::RedisCall(e)) => Err(e),
            other => {
                out = Some(other);
                Ok(())
            }
        });
        match r {
            Ok(()) => out.unwrap_or_else(|| Err(StoreError::Redis("no result".into()))),
            Err(e) => Err(StoreError::Redis(e.to_string())),
        }
    }

    /// Runs one change with its audit entry (see the module docs). `f` may run more than once.
    pub fn change<T>(
        &self,
        actor: &str,
        mut f: impl FnMut(&mut RedisTx<'_>) -> Result<(T, Change)>,
    ) -> Result<T> {
        let c = &*self.cluster;
        let version = c.key(&["version"]);
        let head = c.key(&["audit:head"]);
        self.conn("admin change", |conn| {
            for _ in 0..ATTEMPTS {
                redis::cmd("WATCH")
                    .arg(&version)
                    .exec(conn)
                    .map_err(redis_error)?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                let mut tx = RedisTx { c, conn, pipe };
                let (value, change) = match f(&mut tx) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = redis::cmd("UNWATCH").exec(tx.conn);
                        return Err(e);
                    }
                };
                let last: Option<String> = match tx.get(head.clone()) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = redis::cmd("UNWATCH").exec(tx.conn);
                        return Err(e);
                    }
                };
                let last = last.and_then(|t| {
                    let (seq, hash) = t.split_once(' ')?;
                    Some((seq.parse().ok()?, hash.to_string()))
                });
                let entry = Stored::next(last, actor, &change);
                let text =
                    serde_json::to_string(&entry).map_err(|e| StoreError::Io(e.to_string()))?;
                tx.pipe.rpush(c.key(&["audit"]), text);
                tx.pipe.set(&head, format!("{} {}", entry.seq, entry.hash));
                tx.pipe.incr(&version, 1);
                let RedisTx { conn, pipe, .. } = tx;
                let done: Option<Vec<redis::Value>> = pipe.query(conn).map_err(redis_error)?;
                if done.is_some() {
                    return Ok(value);
                }
            }
            Err(StoreError::Conflict(
                "the store kept changing under this change; try again".into(),
            ))
        })
    }

    /// Runs reads on one connection.
    pub fn read<T>(&self, f: impl FnOnce(&mut RedisTx<'_>) -> Result<T>) -> Result<T> {
        let c = &*self.cluster;
        self.conn("admin read", |conn| {
            let mut tx = RedisTx {
                c,
                conn,
                pipe: redis::pipe(),
            };
            f(&mut tx)
        })
    }

    /// Up to `limit` consumers ordered by id, after `after`.
    pub fn list_consumers(&self, after: &str, limit: i64) -> Result<Vec<ConsumerRow>> {
        self.read(|tx| {
            let min = if after.is_empty() {
                "-".to_string()
            } else {
                format!("({after}")
            };
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(tx.c.key(&["consumers"]))
                .arg(min)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(tx.conn)
                .map_err(redis_error)?;
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(row) = tx.consumer(&id)? {
                    rows.push(row);
                }
            }
            Ok(rows)
        })
    }

    /// Up to `limit` audit entries after `after_seq`, oldest first.
    pub fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        Ok(self
            .stored_audit(after_seq, limit)?
            .into_iter()
            .map(Stored::entry)
            .collect())
    }

    fn stored_audit(&self, after_seq: i64, limit: i64) -> Result<Vec<Stored>> {
        // Entry n is at list index n - 1.
        let key = self.cluster.key(&["audit"]);
        self.conn("audit read", |conn| {
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(after_seq.max(0))
                .arg(after_seq.max(0) + limit.max(1) - 1)
                .query(conn)
                .map_err(redis_error)?;
            items.iter().map(|t| decode("an audit entry", t)).collect()
        })
    }

    /// Walks the whole audit chain.
    pub fn verify(&self) -> Result<Verified> {
        audit::verify_pages(|after| self.stored_audit(after, 1000))
    }

    /// The version every change bumps.
    pub fn version(&self) -> Result<i64> {
        let key = self.cluster.key(&["version"]);
        self.conn("identity poll", |conn| {
            let v: Option<i64> = redis::cmd("GET")
                .arg(&key)
                .query(conn)
                .map_err(redis_error)?;
            Ok(v.unwrap_or(0))
        })
    }

    /// Every consumer and every key that is not revoked, with the version read before them
    /// (a change made while they are read moves the version, so the next poll reads again).
    pub fn load_all(&self) -> Result<(i64, Vec<ConsumerRow>, Vec<KeyRow>)> {
        let version = self.version()?;
        let c = &*self.cluster;
        self.conn("identity load", |conn| {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(c.key(&["consumers"]))
                .arg(0)
                .arg(-1)
                .query(conn)
                .map_err(redis_error)?;
            let mut consumers = Vec::with_capacity(ids.len());
            let mut key_ids = Vec::new();
            for chunk in ids.chunks(1000) {
                let names: Vec<String> = chunk.iter().map(|id| c.key(&["c", id])).collect();
                let docs: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&names)
                    .query(conn)
                    .map_err(redis_error)?;
                for doc in docs.into_iter().flatten() {
                    consumers.push(decode::<ConsumerRow>("a stored consumer", &doc)?);
                }
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.smembers(c.key(&["ck", id]));
                }
                let sets: Vec<Vec<String>> = pipe.query(conn).map_err(redis_error)?;
                key_ids.extend(sets.into_iter().flatten());
            }
            let keys = mget_keys(c, conn, &key_ids)?
                .into_iter()
                .filter(|k| k.revoked_at.is_none())
                .collect();
            Ok((version, consumers, keys))
        })
    }

    /// Forgets a consumer's plan counters in Redis, with an audit entry.
    pub fn reset_counts(&self, actor: &str, consumer: &str) -> Result<usize> {
        let c = self.cluster.clone();
        let deleted =
            super::counters::reset(&c, consumer).map_err(|e| StoreError::Redis(e.to_string()))?;
        self.change(actor, |_| {
            Ok((
                deleted,
                Change {
                    action: "usage.reset",
                    target: format!("consumer/{consumer}/usage"),
                    before: Some(serde_json::json!({ "counters": deleted })),
                    after: None,
                },
            ))
        })
    }
}

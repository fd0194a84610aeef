//! Consumers and their API keys in the store: reads, and the changes the admin API and the
//! `keys create` command make (each one transaction with its audit entry).

use super::{Change, Result, StoreError};
use crate::identity::key::{self, Digest, NewKey};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A consumer as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsumerRow {
    pub id: String,
    pub plan: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An API key as stored: its digest, never the key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub consumer_id: String,
    pub digest: Digest,
    pub display: String,
    pub label: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub replaced_by: Option<String>,
}

impl KeyRow {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }

    /// What the admin API and the audit log show of a key (no digest, no secret).
    pub fn summary(&self, now: i64) -> Value {
        let time = |t: Option<i64>| t.map(crate::clock::rfc3339);
        json!({
            "id": self.id,
            "consumer": self.consumer_id,
            "prefix": self.display,
            "label": self.label,
            "status": self.status(now),
            "created_at": crate::clock::rfc3339(self.created_at),
            "expires_at": time(self.expires_at),
            "revoked_at": time(self.revoked_at),
            "replaced_by": self.replaced_by,
        })
    }
}

/// A consumer to create.
#[derive(Debug, Clone, Default)]
pub struct NewConsumer {
    pub id: String,
    pub plan: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
}

/// Fields to change; `None` leaves a field as it is (`plan: Some(None)` clears the plan).
#[derive(Debug, Clone, Default)]
pub struct ConsumerPatch {
    pub plan: Option<Option<String>>,
    pub groups: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
}

fn json_col<T: serde::de::DeserializeOwned + Default>(text: String) -> T {
    serde_json::from_str(&text).unwrap_or_default()
}

fn consumer_row(r: &Row<'_>) -> rusqlite::Result<ConsumerRow> {
    Ok(ConsumerRow {
        id: r.get(0)?,
        plan: r.get(1)?,
        groups: json_col(r.get(2)?),
        scopes: json_col(r.get(3)?),
        metadata: json_col(r.get(4)?),
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

const CONSUMER_COLS: &str = "id, plan, groups, scopes, metadata, created_at, updated_at";
const KEY_COLS: &str =
    "id, consumer_id, digest, display, label, created_at, expires_at, revoked_at, replaced_by";

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    let digest: Vec<u8> = r.get(2)?;
    Ok(KeyRow {
        id: r.get(0)?,
        consumer_id: r.get(1)?,
        digest: digest.try_into().unwrap_or([0u8; 32]),
        display: r.get(3)?,
        label: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        replaced_by: r.get(8)?,
    })
}

pub fn get_consumer(conn: &Connection, id: &str) -> Result<Option<ConsumerRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {CONSUMER_COLS} FROM consumers WHERE id = ?1"),
            [id],
            consumer_row,
        )
        .optional()?)
}

/// Up to `limit` consumers ordered by id, after `after` (keyset pagination).
pub fn list_consumers(conn: &Connection, after: &str, limit: i64) -> Result<Vec<ConsumerRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CONSUMER_COLS} FROM consumers WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], consumer_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

pub fn list_keys(conn: &Connection, consumer_id: &str) -> Result<Vec<KeyRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE consumer_id = ?1 ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([consumer_id], key_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

fn get_key(conn: &Connection, consumer_id: &str, key_id: &str) -> Result<KeyRow> {
    conn.query_row(
        &format!("SELECT {KEY_COLS} FROM api_keys WHERE id = ?1 AND consumer_id = ?2"),
        [key_id, consumer_id],
        key_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("key {key_id} of consumer {consumer_id}")))
}

/// Everything the identity index needs: all consumers and the keys that are not revoked.
pub fn load_all(conn: &Connection) -> Result<(Vec<ConsumerRow>, Vec<KeyRow>)> {
    let mut stmt = conn.prepare(&format!("SELECT {CONSUMER_COLS} FROM consumers"))?;
    let consumers = stmt
        .query_map([], consumer_row)?
        .collect::<std::result::Result<_, _>>()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE revoked_at IS NULL"
    ))?;
    let keys = stmt
        .query_map([], key_row)?
        .collect::<std::result::Result<_, _>>()?;
    Ok((consumers, keys))
}

/// The reads and writes the admin changes need, over one transaction of a store (SQLite
/// here, Redis in `cluster::records`). The changes below are written once against it.
pub trait RecordTx {
    fn consumer(&mut self, id: &str) -> Result<Option<ConsumerRow>>;
    fn keys_of(&mut self, consumer_id: &str) -> Result<Vec<KeyRow>>;
    /// The key `key_id` of `consumer_id` (`NotFound` otherwise).
    fn key(&mut self, consumer_id: &str, key_id: &str) -> Result<KeyRow>;
    /// Inserts or replaces a consumer.
    fn put_consumer(&mut self, row: &ConsumerRow) -> Result<()>;
    /// Deletes a consumer and its keys.
    fn remove_consumer(&mut self, id: &str, keys: &[KeyRow]) -> Result<()>;
    /// Inserts or replaces a key.
    fn put_key(&mut self, row: &KeyRow) -> Result<()>;
}

/// A SQLite transaction as a `RecordTx`.
pub struct SqlTx<'a, 'b>(pub &'a rusqlite::Transaction<'b>);

impl RecordTx for SqlTx<'_, '_> {
    fn consumer(&mut self, id: &str) -> Result<Option<ConsumerRow>> {
        get_consumer(self.0, id)
    }

    fn keys_of(&mut self, consumer_id: &str) -> Result<Vec<KeyRow>> {
        list_keys(self.0, consumer_id)
    }

    fn key(&mut self, consumer_id: &str, key_id: &str) -> Result<KeyRow> {
        get_key(self.0, consumer_id, key_id)
    }

    fn put_consumer(&mut self, row: &ConsumerRow) -> Result<()> {
        self.0.execute(
            &format!(
                "INSERT INTO consumers ({CONSUMER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET plan = excluded.plan, groups = excluded.groups,
                 scopes = excluded.scopes, metadata = excluded.metadata,
                 updated_at = excluded.updated_at"
            ),
            params![
                row.id,
                row.plan,
                json!(row.groups).to_string(),
                json!(row.scopes).to_string(),
                Value::Object(row.metadata.clone()).to_string(),
                row.created_at,
                row.updated_at
            ],
        )?;
        Ok(())
    }

    fn remove_consumer(&mut self, id: &str, _keys: &[KeyRow]) -> Result<()> {
        // The keys go with it (ON DELETE CASCADE).
        self.0
            .execute("DELETE FROM consumers WHERE id = ?1", [id])?;
        Ok(())
    }

    fn put_key(&mut self, row: &KeyRow) -> Result<()> {
        self.0.execute(
            &format!(
                "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET label = excluded.label,
                 expires_at = excluded.expires_at, revoked_at = excluded.revoked_at,
                 replaced_by = excluded.replaced_by"
            ),
            params![
                row.id,
                row.consumer_id,
                &row.digest[..],
                row.display,
                row.label,
                row.created_at,
                row.expires_at,
                row.revoked_at,
                row.replaced_by
            ],
        )?;
        Ok(())
    }
}

fn new_key_row(
    consumer_id: &str,
    label: Option<&str>,
    expires_at: Option<i64>,
    now: i64,
) -> (KeyRow, NewKey) {
    let new = key::generate();
    let row = KeyRow {
        id: key::random_id("key_"),
        consumer_id: consumer_id.to_string(),
        digest: new.digest,
        display: new.display.clone(),
        label: label.map(str::to_string),
        created_at: now,
        expires_at,
        revoked_at: None,
        replaced_by: None,
    };
    (row, new)
}

fn not_found(what: String) -> StoreError {
    StoreError::NotFound(what)
}

/// Creates a consumer.
pub fn create_consumer(tx: &mut dyn RecordTx, c: NewConsumer) -> Result<(ConsumerRow, Change)> {
    if tx.consumer(&c.id)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "consumer {} already exists",
            c.id
        )));
    }
    let now = crate::clock::now();
    let row = ConsumerRow {
        id: c.id,
        plan: c.plan,
        groups: c.groups,
        scopes: c.scopes,
        metadata: c.metadata,
        created_at: now,
        updated_at: now,
    };
    tx.put_consumer(&row)?;
    let change = Change {
        action: "consumer.create",
        target: format!("consumer/{}", row.id),
        before: None,
        after: Some(json!(row)),
    };
    Ok((row, change))
}

/// Changes the fields of a consumer that the patch names.
pub fn update_consumer(
    tx: &mut dyn RecordTx,
    id: &str,
    patch: ConsumerPatch,
) -> Result<(ConsumerRow, Change)> {
    let before = tx
        .consumer(id)?
        .ok_or_else(|| not_found(format!("consumer {id}")))?;
    let mut row = before.clone();
    if let Some(plan) = patch.plan {
        row.plan = plan;
    }
    if let Some(groups) = patch.groups {
        row.groups = groups;
    }
    if let Some(scopes) = patch.scopes {
        row.scopes = scopes;
    }
    if let Some(metadata) = patch.metadata {
        row.metadata = metadata;
    }
    row.updated_at = crate::clock::now();
    tx.put_consumer(&row)?;
    let change = Change {
        action: "consumer.update",
        target: format!("consumer/{id}"),
        before: Some(json!(before)),
        after: Some(json!(row)),
    };
    Ok((row, change))
}

/// Deletes a consumer and its keys; returns the keys.
pub fn delete_consumer(tx: &mut dyn RecordTx, id: &str) -> Result<(Vec<KeyRow>, Change)> {
    let before = tx
        .consumer(id)?
        .ok_or_else(|| not_found(format!("consumer {id}")))?;
    let keys = tx.keys_of(id)?;
    tx.remove_consumer(id, &keys)?;
    let mut summary = json!(before);
    summary["keys_deleted"] = json!(keys.len());
    let change = Change {
        action: "consumer.delete",
        target: format!("consumer/{id}"),
        before: Some(summary),
        after: None,
    };
    Ok((keys, change))
}

/// Issues a new key to a consumer; the secret is in the `NewKey`, and only there.
pub fn create_key(
    tx: &mut dyn RecordTx,
    consumer_id: &str,
    label: Option<&str>,
    expires_at: Option<i64>,
) -> Result<((KeyRow, NewKey), Change)> {
    if tx.consumer(consumer_id)?.is_none() {
        return Err(not_found(format!("consumer {consumer_id}")));
    }
    let now = crate::clock::now();
    let (row, new) = new_key_row(consumer_id, label, expires_at, now);
    tx.put_key(&row)?;
    let change = Change {
        action: "key.create",
        target: format!("consumer/{consumer_id}/keys/{}", row.id),
        before: None,
        after: Some(row.summary(now)),
    };
    Ok(((row, new), change))
}

/// Revokes a key at once.
pub fn revoke_key(
    tx: &mut dyn RecordTx,
    consumer_id: &str,
    key_id: &str,
) -> Result<(KeyRow, Change)> {
    let before = tx.key(consumer_id, key_id)?;
    if before.revoked_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "key {key_id} is already revoked"
        )));
    }
    let now = crate::clock::now();
    let after = KeyRow {
        revoked_at: Some(now),
        ..before.clone()
    };
    tx.put_key(&after)?;
    let change = Change {
        action: "key.revoke",
        target: format!("consumer/{consumer_id}/keys/{key_id}"),
        before: Some(before.summary(now)),
        after: Some(after.summary(now)),
    };
    Ok((after, change))
}

/// Replaces a key: the new one gets the old one's lifetime from now, the old one keeps working
/// for `grace_secs` (or until it expires, if sooner). Returns (new row, new key, old row).
pub fn rotate_key(
    tx: &mut dyn RecordTx,
    consumer_id: &str,
    key_id: &str,
    grace_secs: i64,
) -> Result<((KeyRow, NewKey, KeyRow), Change)> {
    let before = tx.key(consumer_id, key_id)?;
    let now = crate::clock::now();
    if before.status(now) != "active" {
        return Err(StoreError::Conflict(format!(
            "key {key_id} is {}: only an active key can be rotated",
            before.status(now)
        )));
    }
    if before.replaced_by.is_some() {
        return Err(StoreError::Conflict(format!(
            "key {key_id} was already rotated"
        )));
    }
    let new_expiry = before
        .expires_at
        .map(|t| now.saturating_add((t - before.created_at).max(0)));
    let (new_row, new) = new_key_row(consumer_id, before.label.as_deref(), new_expiry, now);
    tx.put_key(&new_row)?;
    let old_expiry = Some(
        before
            .expires_at
            .map_or(now + grace_secs, |t| t.min(now + grace_secs)),
    );
    let old = KeyRow {
        expires_at: old_expiry,
        replaced_by: Some(new_row.id.clone()),
        ..before.clone()
    };
    tx.put_key(&old)?;
    let change = Change {
        action: "key.rotate",
        target: format!("consumer/{consumer_id}/keys/{key_id}"),
        before: Some(before.summary(now)),
        after: Some(json!({ "old": old.summary(now), "new": new_row.summary(now) })),
    };
    Ok(((new_row, new, old), change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn consumers_and_keys_round_trip_and_the_secret_is_never_stored() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s.db");
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = crate::identity::records::Records::Sqlite(&s);
        let c = r
            .create_consumer(
                "t",
                NewConsumer {
                    id: "acme".into(),
                    groups: vec!["partners".into()],
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.groups, vec!["partners"]);
        assert!(matches!(
            r.create_consumer(
                "t",
                NewConsumer {
                    id: "acme".into(),
                    ..Default::default()
                }
            ),
            Err(StoreError::Conflict(_))
        ));
        let now = crate::clock::now();
        let (row, new) = r
            .create_key("t", "acme", Some("ci"), Some(now + 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        let (rotated, new2, old) = r
            .rotate_key("t", "acme", &row.id, 60)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.replaced_by.as_deref(), Some(rotated.id.as_str()));
        assert!(old
            .expires_at
            .is_some_and(|t| t <= crate::clock::now() + 60));
        // The new key lives as long as the old one did, from now.
        assert!(rotated
            .expires_at
            .is_some_and(|t| (t - rotated.created_at - 1000).abs() <= 1));
        let (_, keys) = s.read(load_all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.len(), 2);
        r.revoke_key("t", "acme", &rotated.id)
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, keys) = s.read(load_all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.len(), 1, "revoked keys leave the index");
        r.delete_consumer("t", "acme")
            .unwrap_or_else(|e| panic!("{e}"));
        let (consumers, keys) = s.read(load_all).unwrap_or_else(|e| panic!("{e}"));
        assert!(consumers.is_empty() && keys.is_empty());
        assert_eq!(
            s.read(crate::store::audit::verify).map(|v| v.entries).ok(),
            Some(5)
        );
        drop(s);
        // Neither secret appears anywhere in the files SQLite wrote.
        for entry in std::fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")) {
            let bytes = std::fs::read(entry.unwrap_or_else(|e| panic!("{e}")).path())
                .unwrap_or_else(|e| panic!("{e}"));
            for secret in [&new.secret, &new2.secret] {
                assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
            }
        }
    }
}

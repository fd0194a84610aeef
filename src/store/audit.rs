//! The audit log: every admin change, appended in the change's own transaction, chained by
//! hashes. Each entry's hash is SHA-256 over the previous entry's hash and every field of the
//! entry (length-prefixed, so no field can bleed into another); the first entry chains from
//! 64 zeros. Editing, inserting or deleting an entry in the middle breaks the chain, which
//! `verify` (and `turnpike audit verify`) reports. Cutting entries off the end cannot be seen
//! from the file alone: `verify` prints the last hash so that operators can keep it elsewhere.

use super::{Result, StoreError};
use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a change did, for its audit entry. `before`/`after` are summaries (never secrets).
#[derive(Debug, Clone)]
pub struct Change {
    pub action: &'static str,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// One entry as stored and listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

/// An entry as stored (SQLite row or Redis list item): `before`/`after` are the exact texts
/// the hash covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Stored {
    /// The entry for `change` after `last` ((seq, hash) of the last entry, if any).
    pub fn next(last: Option<(i64, String)>, actor: &str, change: &Change) -> Stored {
        let (seq, prev_hash) = match last {
            Some((s, h)) => (s + 1, h),
            None => (1, GENESIS.to_string()),
        };
        let mut e = Stored {
            seq,
            at: crate::clock::now(),
            actor: actor.to_string(),
            action: change.action.to_string(),
            target: change.target.clone(),
            before: change.before.as_ref().map(Value::to_string),
            after: change.after.as_ref().map(Value::to_string),
            prev_hash,
            hash: String::new(),
        };
        e.hash = e.computed_hash();
        e
    }

    fn computed_hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(self.prev_hash.as_bytes());
        field(&self.seq.to_be_bytes());
        field(&self.at.to_be_bytes());
        field(self.actor.as_bytes());
        field(self.action.as_bytes());
        field(self.target.as_bytes());
        // Absent and present-but-empty differ.
        field(
            self.before
                .as_deref()
                .map_or(&b"\x00absent"[..], str::as_bytes),
        );
        field(
            self.after
                .as_deref()
                .map_or(&b"\x00absent"[..], str::as_bytes),
        );
        let d = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        crate::identity::key::to_hex(&out)
    }

    /// The entry as listed.
    pub fn entry(self) -> AuditEntry {
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        AuditEntry {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            before: parse(self.before),
            after: parse(self.after),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// Appends the entry for `change` inside the caller's transaction.
pub fn append(tx: &Transaction<'_>, actor: &str, change: &Change) -> Result<()> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let e = Stored::next(last, actor, change);
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, target, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            e.seq,
            e.at,
            e.actor,
            e.action,
            e.target,
            e.before,
            e.after,
            e.prev_hash,
            e.hash
        ],
    )?;
    Ok(())
}

fn raw_rows(conn: &Connection, after_seq: i64, limit: i64) -> Result<Vec<Stored>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, before, after, prev_hash, hash
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit], |r| {
        Ok(Stored {
            seq: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            before: r.get(5)?,
            after: r.get(6)?,
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Up to `limit` entries after `after_seq`, oldest first.
pub fn page(conn: &Connection, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
    Ok(raw_rows(conn, after_seq, limit)?
        .into_iter()
        .map(Stored::entry)
        .collect())
}

/// The outcome of a successful verification.
#[derive(Debug, PartialEq)]
pub struct Verified {
    pub entries: u64,
    pub last_hash: String,
}

/// Walks a chain page by page (`fetch(after_seq)` gives the next entries, empty at the end);
/// the first broken link is the error.
pub fn verify_pages(mut fetch: impl FnMut(i64) -> Result<Vec<Stored>>) -> Result<Verified> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut entries = 0;
    loop {
        let batch = fetch(expected_seq - 1)?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            if e.seq != expected_seq {
                return Err(StoreError::Tampered(format!(
                    "entry {expected_seq} is missing (next is {})",
                    e.seq
                )));
            }
            if e.prev_hash != prev {
                return Err(StoreError::Tampered(format!(
                    "entry {} does not follow entry {}",
                    e.seq,
                    e.seq - 1
                )));
            }
            if e.computed_hash() != e.hash {
                return Err(StoreError::Tampered(format!(
                    "entry {} was changed after it was written",
                    e.seq
                )));
            }
            prev = e.hash;
            expected_seq += 1;
            entries += 1;
        }
    }
    Ok(Verified {
        entries,
        last_hash: prev,
    })
}

/// Walks the whole chain of the SQLite store.
pub fn verify(conn: &Connection) -> Result<Verified> {
    verify_pages(|after| raw_rows(conn, after, 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&dir.path().join("a.db")).unwrap_or_else(|e| panic!("{e}"));
        (dir, s)
    }

    fn add(s: &Store, n: usize) {
        for i in 0..n {
            s.change("test", |_| {
                Ok((
                    (),
                    Change {
                        action: "consumer.create",
                        target: format!("consumer/c{i}"),
                        before: None,
                        after: Some(json!({"id": format!("c{i}")})),
                    },
                ))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn the_chain_verifies_and_every_kind_of_tampering_is_found() {
        let (_d, s) = store();
        add(&s, 5);
        let ok = s.read(verify).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.entries, 5);
        let page1 = s.read(|c| page(c, 0, 2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page1.len(), 2);
        assert_eq!(page1[1].prev_hash, page1[0].hash);
        assert_eq!(ok.last_hash.len(), 64);

        let tamper = |sql: &str| {
            s.read(|c| {
                c.execute_batch(sql)?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
            let err = s.read(verify).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("does not verify")),
                "{sql}: {err:?}"
            );
        };
        tamper("UPDATE audit SET after = '{\"id\":\"evil\"}' WHERE seq = 3; ");
        tamper("UPDATE audit SET after = '{\"id\":\"c2\"}' WHERE seq = 3; DELETE FROM audit WHERE seq = 2;");
    }

    #[test]
    fn a_failed_change_writes_no_audit_entry() {
        let (_d, s) = store();
        let r: Result<()> = s.change("test", |_| Err(StoreError::Conflict("no".into())));
        assert!(r.is_err());
        assert_eq!(s.read(verify).map(|v| v.entries).ok(), Some(0));
    }
}

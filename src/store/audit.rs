//! The audit log: every admin change, appended in the change's own transaction, chained by
//! hashes. Each entry's hash is SHA-256 over the previous entry's hash and every field of the
//! entry (length-prefixed, so no field can bleed into another); the first entry chains from
//! 64 zeros. Editing, inserting or deleting an entry in the middle breaks the chain, which
//! `verify` (and `turnpike audit verify`) reports. Cutting entries off the end cannot be seen
//! from the file alone: `verify` prints the last hash so that operators can keep it elsewhere.

use super::{Result, StoreError};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
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

/// The hashed fields of an entry, as stored.
struct Fields<'a> {
    seq: i64,
    at: i64,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

fn entry_hash(prev: &str, e: &Fields<'_>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(prev.as_bytes());
    field(&e.seq.to_be_bytes());
    field(&e.at.to_be_bytes());
    field(e.actor.as_bytes());
    field(e.action.as_bytes());
    field(e.target.as_bytes());
    // Absent and present-but-empty differ.
    field(e.before.map_or(&b"\x00absent"[..], str::as_bytes));
    field(e.after.map_or(&b"\x00absent"[..], str::as_bytes));
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    crate::identity::key::to_hex(&out)
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
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let at = crate::clock::now();
    let before = change.before.as_ref().map(Value::to_string);
    let after = change.after.as_ref().map(Value::to_string);
    let hash = entry_hash(
        &prev,
        &Fields {
            seq,
            at,
            actor,
            action: change.action,
            target: &change.target,
            before: before.as_deref(),
            after: after.as_deref(),
        },
    );
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, target, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            seq,
            at,
            actor,
            change.action,
            change.target,
            before,
            after,
            prev,
            hash
        ],
    )?;
    Ok(())
}

type RawEntry = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
);

fn raw_rows(conn: &Connection, after_seq: i64, limit: i64) -> Result<Vec<RawEntry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, before, after, prev_hash, hash
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// Up to `limit` entries after `after_seq`, oldest first.
pub fn page(conn: &Connection, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(raw_rows(conn, after_seq, limit)?
        .into_iter()
        .map(
            |(seq, at, actor, action, target, before, after, prev_hash, hash)| AuditEntry {
                seq,
                at,
                actor,
                action,
                target,
                before: parse(before),
                after: parse(after),
                prev_hash,
                hash,
            },
        )
        .collect())
}

/// The outcome of a successful verification.
#[derive(Debug, PartialEq)]
pub struct Verified {
    pub entries: u64,
    pub last_hash: String,
}

/// Walks the whole chain; the first broken link is the error.
pub fn verify(conn: &Connection) -> Result<Verified> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut entries = 0;
    loop {
        let batch = raw_rows(conn, expected_seq - 1, 1000)?;
        if batch.is_empty() {
            break;
        }
        for (seq, at, actor, action, target, before, after, prev_hash, hash) in batch {
            if seq != expected_seq {
                return Err(StoreError::Tampered(format!(
                    "entry {expected_seq} is missing (next is {seq})"
                )));
            }
            if prev_hash != prev {
                return Err(StoreError::Tampered(format!(
                    "entry {seq} does not follow entry {}",
                    seq - 1
                )));
            }
            let computed = entry_hash(
                &prev,
                &Fields {
                    seq,
                    at,
                    actor: &actor,
                    action: &action,
                    target: &target,
                    before: before.as_deref(),
                    after: after.as_deref(),
                },
            );
            if computed != hash {
                return Err(StoreError::Tampered(format!(
                    "entry {seq} was changed after it was written"
                )));
            }
            prev = hash;
            expected_seq += 1;
            entries += 1;
        }
    }
    Ok(Verified {
        entries,
        last_hash: prev,
    })
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

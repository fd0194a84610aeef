//! Schema migrations. Each step runs in its own transaction together with the version bump,
//! so a store is always at exactly one known version. Steps are only ever appended.

use super::{Result, StoreError};
use rusqlite::Connection;

/// (version reached, SQL). Version 0 is an empty file.
const STEPS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE consumers (
        id TEXT PRIMARY KEY,
        plan TEXT,
        groups TEXT NOT NULL DEFAULT '[]',
        scopes TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        consumer_id TEXT NOT NULL REFERENCES consumers(id) ON DELETE CASCADE,
        digest BLOB NOT NULL UNIQUE,
        display TEXT NOT NULL,
        label TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER,
        replaced_by TEXT
    ) STRICT;
    CREATE INDEX api_keys_consumer ON api_keys(consumer_id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        before TEXT,
        after TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    ) STRICT;",
    ),
    (
        2,
        "CREATE TABLE quota_counters (
        key TEXT NOT NULL,
        period TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (key, period)
    ) STRICT, WITHOUT ROWID;
    -- Bumped by every change to consumers or keys, whoever makes it: other processes rebuild
    -- their index when it moves, and not for counter writes.
    CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) STRICT;
    INSERT INTO meta VALUES ('identity_version', 0);
    CREATE TRIGGER consumers_ins AFTER INSERT ON consumers BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;
    CREATE TRIGGER consumers_upd AFTER UPDATE ON consumers BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;
    CREATE TRIGGER consumers_del AFTER DELETE ON consumers BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;
    CREATE TRIGGER keys_ins AFTER INSERT ON api_keys BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;
    CREATE TRIGGER keys_upd AFTER UPDATE ON api_keys BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;
    CREATE TRIGGER keys_del AFTER DELETE ON api_keys BEGIN
        UPDATE meta SET v = v + 1 WHERE k = 'identity_version'; END;",
    ),
    (
        3,
        "CREATE TABLE usage_rollups (
        granularity INTEGER NOT NULL,
        start INTEGER NOT NULL,
        api TEXT NOT NULL,
        version TEXT NOT NULL,
        consumer TEXT NOT NULL,
        status_class INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        latency BLOB NOT NULL,
        PRIMARY KEY (granularity, start, api, version, consumer, status_class)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_by_consumer ON usage_rollups(consumer, granularity, start);",
    ),
    (
        4,
        "CREATE TABLE shadow_endpoints (
        host TEXT NOT NULL,
        method TEXT NOT NULL,
        shape TEXT NOT NULL,
        day INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        callers TEXT NOT NULL,
        PRIMARY KEY (host, method, shape, day)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX shadow_by_day ON shadow_endpoints(day);
    -- Lifecycle notices sent (or being sent) to [catalog] notify_webhook: one per consumer,
    -- API version and event, whatever restarts happen.
    CREATE TABLE catalog_notices (
        consumer TEXT NOT NULL,
        api TEXT NOT NULL,
        version TEXT NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (consumer, api, version, event)
    ) STRICT, WITHOUT ROWID;",
    ),
];

/// The schema version this binary writes.
pub fn latest() -> u32 {
    STEPS.last().map_or(0, |s| s.0)
}

/// Brings the store up to `latest()`; refuses a store from a newer binary.
pub fn apply(conn: &mut Connection) -> Result<()> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(StoreError::TooNew {
            found: current,
            known: latest(),
        });
    }
    for (version, sql) in STEPS.iter().filter(|(v, _)| *v > current) {
        // IMMEDIATE, and the version read again inside: two processes opening a new store at
        // once must not both run a step.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now >= *version {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        log::info!("store schema migrated to version {version}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_reaches_the_latest_version_and_reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("sub/dir/t.db");
        let store = crate::store::Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.schema_version().ok(), Some(latest()));
        store
            .read(|c| {
                c.execute(
                    "INSERT INTO consumers (id, created_at, updated_at) VALUES ('a', 1, 1)",
                    [],
                )?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let store = crate::store::Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM consumers", [], |r| r.get(0))?))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);
        let mode: String = store
            .read(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_store_from_a_newer_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.db");
        {
            let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            c.pragma_update(None, "user_version", latest() + 1)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        match crate::store::Store::open(&path) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, latest() + 1),
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_step_leaves_the_version_unchanged() {
        let mut c = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        // A table in the way makes step 1 fail half-way: nothing of it may remain.
        c.execute_batch("CREATE TABLE audit (x INTEGER);")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(apply(&mut c).is_err());
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, 0);
        let consumers: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'consumers'",
                [],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(consumers, 0, "the failed step was rolled back");
    }
}

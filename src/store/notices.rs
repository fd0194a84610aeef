//! Lifecycle notices in the embedded store: one row per (consumer, API, version, event) once
//! a notice is claimed for sending, so that it goes out at most once across restarts and
//! binary upgrades. States: `sending` (claimed; a claim older than its lifetime was left by a
//! process that stopped mid-send and may be taken again), `sent`, `sent_by_fleet` (another node
//! of the fleet delivered it) and `superseded` (a later event was due first, so this one is
//! never sent).

use super::Result;
use rusqlite::{params, Connection, Transaction};

/// What a notice is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeKey<'a> {
    pub consumer: &'a str,
    pub api: &'a str,
    /// `""` for an API without a version.
    pub version: &'a str,
    pub event: &'a str,
}

/// Claims `key` in `state`; false when a row for it already exists (sent, superseded, or
/// being sent since `stale_before` or later). An older `sending` row is taken over.
pub fn claim(
    tx: &Transaction<'_>,
    key: &NoticeKey<'_>,
    state: &str,
    now: i64,
    stale_before: i64,
) -> Result<bool> {
    let n = tx.execute(
        "INSERT INTO catalog_notices (consumer, api, version, event, state, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (consumer, api, version, event) DO UPDATE
         SET state = excluded.state, at = excluded.at
         WHERE catalog_notices.state = 'sending' AND catalog_notices.at < ?7",
        params![
            key.consumer,
            key.api,
            key.version,
            key.event,
            state,
            now,
            stale_before
        ],
    )?;
    Ok(n == 1)
}

/// Whether `key` has a row that a claim at `stale_before` would not take over.
pub fn settled(conn: &Connection, key: &NoticeKey<'_>, stale_before: i64) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM catalog_notices WHERE consumer = ?1 AND api = ?2 AND version = ?3
         AND event = ?4 AND (state <> 'sending' OR at >= ?5)",
    )?;
    Ok(stmt.exists(params![
        key.consumer,
        key.api,
        key.version,
        key.event,
        stale_before
    ])?)
}

/// Sets the state of a claimed notice.
pub fn set_state(tx: &Transaction<'_>, key: &NoticeKey<'_>, state: &str, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE catalog_notices SET state = ?5, at = ?6
         WHERE consumer = ?1 AND api = ?2 AND version = ?3 AND event = ?4",
        params![key.consumer, key.api, key.version, key.event, state, now],
    )?;
    Ok(())
}

/// Gives a claim back (the delivery failed): the notice is tried again later.
pub fn release(tx: &Transaction<'_>, key: &NoticeKey<'_>) -> Result<()> {
    tx.execute(
        "DELETE FROM catalog_notices
         WHERE consumer = ?1 AND api = ?2 AND version = ?3 AND event = ?4 AND state = 'sending'",
        params![key.consumer, key.api, key.version, key.event],
    )?;
    Ok(())
}

/// One stored notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRow {
    pub consumer: String,
    pub api: String,
    pub version: String,
    pub event: String,
    pub state: String,
    pub at: i64,
}

/// The notices of `api` `version`, by consumer then event.
pub fn of_api(conn: &Connection, api: &str, version: &str) -> Result<Vec<NoticeRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT consumer, api, version, event, state, at FROM catalog_notices
         WHERE api = ?1 AND version = ?2 ORDER BY consumer, event",
    )?;
    let rows = stmt.query_map(params![api, version], |r| {
        Ok(NoticeRow {
            consumer: r.get(0)?,
            api: r.get(1)?,
            version: r.get(2)?,
            event: r.get(3)?,
            state: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_claimed_once_and_a_released_one_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::Store::open(&dir.path().join("t.db")).expect("open");
        let key = NoticeKey {
            consumer: "acme",
            api: "orders",
            version: "v1",
            event: "api.deprecated",
        };
        let claim_at = |now: i64| {
            store
                .write(|tx| claim(tx, &key, "sending", now, now - 100))
                .expect("claim")
        };
        let claim_it = || claim_at(1);
        assert!(claim_it());
        assert!(!claim_it());
        assert!(
            store.read(|c| settled(c, &key, -99)).expect("read"),
            "a fresh claim is held"
        );
        assert!(claim_at(500), "a claim past its lifetime is taken over");
        assert!(!claim_at(501));
        store.write(|tx| release(tx, &key)).expect("release");
        assert!(claim_it());
        store
            .write(|tx| set_state(tx, &key, "sent", 2))
            .expect("sent");
        store.write(|tx| release(tx, &key)).expect("no-op");
        assert!(!claim_it(), "a sent notice is never released");
        assert!(!claim_at(10_000), "nor taken over");
        assert!(store.read(|c| settled(c, &key, 9_900)).expect("read"));
        let rows = store.read(|c| of_api(c, "orders", "v1")).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].at), ("sent", 2));
    }
}

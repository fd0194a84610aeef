//! The embedded store: one SQLite file (bundled SQLite, WAL mode) holding consumers, API key
//! digests and the audit log. Nothing on the request path touches it: the identity index is
//! built from it and updated when it changes.
//!
//! Every change is one transaction that also appends its audit entry, so a crash (even
//! `kill -9` in the middle of a burst of admin writes) leaves either the whole change with its
//! audit entry or nothing. The schema is versioned with `PRAGMA user_version`; `migrations`
//! lists every step and a database newer than the binary is refused rather than guessed at.

pub mod audit;
pub mod consumers;
mod migrations;
pub mod notices;
pub mod quotas;
pub mod shadow;
pub mod usage;

use rusqlite::{Connection, Transaction};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use audit::{AuditEntry, Change};
pub use consumers::{ConsumerRow, KeyRow};

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    Io(String),
    /// The named thing does not exist.
    NotFound(String),
    /// The change conflicts with what exists.
    Conflict(String),
    /// The database was written by a newer Turnpike.
    TooNew {
        found: u32,
        known: u32,
    },
    /// The audit chain does not verify.
    Tampered(String),
    /// Redis could not complete the operation (unreachable, or an unexpected reply).
    Redis(String),
    /// A Redis call failed (kept whole so that an outage can be recognised).
    RedisCall(redis::RedisError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "store: {e}"),
            StoreError::Io(e) => write!(f, "store: {e}"),
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::Conflict(why) => f.write_str(why),
            StoreError::TooNew { found, known } => write!(
                f,
                "the store has schema version {found}, this binary knows up to {known}: use a newer turnpike"
            ),
            StoreError::Tampered(why) => write!(f, "audit log does not verify: {why}"),
            StoreError::Redis(why) => write!(f, "redis: {why}"),
            StoreError::RedisCall(e) => write!(f, "redis: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The store. One connection, serialised by a mutex: writes are rare (admin actions) and the
/// request path never waits on it. The connection can be released (before the process forks
/// into the background, as SQLite connections must not cross a fork) and is opened again on
/// the next use.
pub struct Store {
    conn: Mutex<Option<Connection>>,
    /// Counts connections opened: `data_version` is only comparable within one connection.
    epoch: AtomicU64,
    pub path: PathBuf,
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed admin change survives power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating on first use) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = connect(path)?;
        migrations::apply(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(Some(conn)),
            epoch: AtomicU64::new(1),
            path: path.to_path_buf(),
        })
    }

    /// Closes the connection; the next use opens a new one.
    pub fn release(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => {
                let conn = connect(&self.path)?;
                self.epoch.fetch_add(1, Ordering::AcqRel);
                guard.insert(conn)
            }
        };
        f(conn)
    }

    /// Runs a read on the store's connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.with_conn(|c| f(c))
    }

    /// Runs one change in a transaction and appends its audit entry in the same transaction.
    pub fn change<T>(
        &self,
        actor: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<(T, Change)>,
    ) -> Result<T> {
        self.write(|tx| {
            let (value, change) = f(tx)?;
            audit::append(tx, actor, &change)?;
            Ok(value)
        })
    }

    /// Runs a write transaction without an audit entry (counters, not admin changes).
    pub fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with_conn(|conn| {
            // IMMEDIATE: take the write lock first, so that a writer in another process makes
            // this one wait (busy_timeout) instead of failing when a read turns into a write.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// SQLite's counter of commits made by other connections (other processes, such as
    /// `turnpike keys create`), with the connection it was read on: when either moves, the
    /// index must be rebuilt.
    pub fn data_version(&self) -> Result<(u64, i64)> {
        self.read(|c| {
            // Cached: this runs every half second, idle or not.
            let v = c
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?;
            Ok((self.epoch.load(Ordering::Acquire), v))
        })
    }

    /// The counter that triggers bump on every change to consumers or keys.
    pub fn identity_version(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT v FROM meta WHERE k = 'identity_version'", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<u32> {
        self.read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }
}

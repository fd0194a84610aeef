//! Redis as the shared store of a fleet (`[store] redis_url`): the connections, whether Redis
//! is reachable, and what `GET /status` says about it. Plan counters live in `counters`,
//! consumers, keys and the audit log in `records`; the Lua scripts in `scripts`.
//!
//! Two connections per process: a multiplexed async one for the request path (strict plans and
//! quotas without a lease; created by the background sync, so a request never waits for a
//! connect) and a plain one, behind a mutex, for the background sync, the admin API's changes
//! (which need WATCH/MULTI) and index rebuilds. Any I/O error or timeout marks Redis down:
//! plans follow their `on_store_error` until a sync succeeds again, which is tried every
//! `sync_interval`. Nothing here ever logs the URL (it may hold a password).

pub mod counters;
pub mod notices;
pub mod records;
mod scripts;
pub mod shadow;
pub mod usage;

use crate::config::file::StoreSection;
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Checks a `redis_url`; `Ok` is the address to show (never the password).
pub fn check_url(url: &str) -> Result<String, String> {
    if url.starts_with("rediss://") {
        return Err("TLS to Redis (rediss://) is not supported yet: use redis:// on a private network or a local TLS tunnel".into());
    }
    match redis::Client::open(url) {
        Ok(c) => Ok(c.get_connection_info().addr().to_string()),
        Err(_) => Err(
            "not a Redis URL: expected redis://[:password@]host:port[/db] or redis+unix:///path"
                .into(),
        ),
    }
}

/// Whether Redis answered lately, and since when.
#[derive(Default)]
struct Health {
    up: AtomicBool,
    since: AtomicI64,
    outages: AtomicU64,
    last_error: Mutex<Option<String>>,
}

pub struct Cluster {
    client: redis::Client,
    /// `host:port` (for logs and status).
    pub address: String,
    pub prefix: String,
    /// This process's id in lease records (random per start).
    pub node_id: String,
    pub nodes: u64,
    pub timeout: Duration,
    pub interval: Duration,
    /// `[store] max_key_staleness`.
    pub key_staleness: Duration,
    sync_conn: Mutex<Option<redis::Connection>>,
    async_conn: ArcSwapOption<MultiplexedConnection>,
    health: Health,
    /// Serialises counter syncs (the periodic one and the one at exit).
    pub sync_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error that means this server cannot serve us now: no answer, or a server that is
/// loading, read-only (a demoted primary after a failover) or without a primary. The
/// connection is dropped and a new one opened on the next try.
pub fn is_outage(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
            )
        )
}

/// How a call on the plain connection failed.
#[derive(Debug)]
pub enum CallError {
    /// No connection could be opened: nothing was sent.
    NotSent(redis::RedisError),
    /// The call was sent and failed; it may or may not have run.
    Failed(redis::RedisError),
}

impl CallError {
    pub fn redis(&self) -> &redis::RedisError {
        match self {
            CallError::NotSent(e) | CallError::Failed(e) => e,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.redis().fmt(f)
    }
}

impl Cluster {
    /// The cluster of `[store]`, if it names a Redis server. Nothing connects yet.
    pub fn from_config(store: &StoreSection) -> Result<Option<Cluster>, String> {
        let Some(url) = &store.redis_url else {
            return Ok(None);
        };
        let address = check_url(url.expose())?;
        let client = redis::Client::open(url.expose()).map_err(|e| e.to_string())?;
        Ok(Some(Cluster {
            client,
            address,
            prefix: store.redis_prefix.clone(),
            node_id: crate::identity::key::random_id("node_"),
            nodes: u64::from(store.nodes.max(1)),
            timeout: store.redis_timeout.0,
            interval: store.sync_interval.0,
            key_staleness: store.max_key_staleness.0,
            sync_conn: Mutex::new(None),
            async_conn: ArcSwapOption::empty(),
            health: Health::default(),
            sync_lock: Mutex::new(()),
        }))
    }

    /// The Redis client (for connections of their own, e.g. pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A key of this fleet.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Acquire)
    }

    /// Records a failed call: the first failure after a success is logged as an outage.
    pub fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let text = format!("{what}: {e}");
        // A multiplexed connection does not reconnect by itself: the next use opens a new one.
        self.drop_async_conn();
        if self.health.up.swap(false, Ordering::AcqRel) {
            self.health
                .since
                .store(crate::clock::now(), Ordering::Release);
            self.health.outages.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "redis at {} is unreachable ({text}); plans follow their on_store_error until it is back",
                self.address
            );
        }
        *lock(&self.health.last_error) = Some(text);
    }

    /// Records that Redis counts again. Only the counter sync calls it, after it pushed what
    /// was counted during an outage, so that no request is decided by Redis before Redis has
    /// those counts. The first success after an outage is logged as recovery.
    pub fn succeeded(&self) {
        if !self.health.up.swap(true, Ordering::AcqRel) {
            let now = crate::clock::now();
            let was = self.health.since.swap(now, Ordering::AcqRel);
            if self.health.outages.load(Ordering::Relaxed) > 0 {
                log::warn!(
                    "redis at {} is reachable again after {} s; counting through redis again",
                    self.address,
                    now - was
                );
            } else {
                log::info!("redis at {} is reachable", self.address);
            }
        }
    }

    /// Runs `f` on the plain connection (connecting first if needed); an outage drops the
    /// connection and marks Redis down.
    pub fn with_conn<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, CallError> {
        let mut slot = lock(&self.sync_conn);
        if slot.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(self.timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(self.timeout.max(Duration::from_secs(2))))?;
                    c.set_write_timeout(Some(self.timeout.max(Duration::from_secs(2))))?;
                    Ok(c)
                });
            match conn {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    self.failed(what, &e);
                    return Err(CallError::NotSent(e));
                }
            }
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("connected above")
        };
        let result = f(conn);
        if let Err(e) = &result {
            if is_outage(e) {
                *slot = None;
                self.failed(what, e);
            }
        }
        result.map_err(CallError::Failed)
    }

    /// The request path's connection, if one is open.
    fn async_conn(&self) -> Option<MultiplexedConnection> {
        self.async_conn.load_full().map(|c| (*c).clone())
    }

    /// Opens the request path's connection if there is none (from the background sync).
    pub async fn ensure_async_conn(&self) {
        if self.async_conn.load().is_some() {
            return;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => self.async_conn.store(Some(std::sync::Arc::new(c))),
            Err(e) => self.failed("connect", &e),
        }
    }

    /// Forgets the request path's connection after an outage (the sync opens a new one).
    fn drop_async_conn(&self) {
        self.async_conn.store(None);
    }

    /// What `GET /status` shows.
    pub fn status(&self) -> serde_json::Value {
        let since = self.health.since.load(Ordering::Acquire);
        serde_json::json!({
            "address": self.address,
            "state": if self.is_up() { "up" } else { "down" },
            "since": (since > 0).then(|| crate::clock::rfc3339(since)),
            "outages": self.health.outages.load(Ordering::Relaxed),
            "last_error": lock(&self.health.last_error).clone(),
            "nodes": self.nodes,
            "counting": if self.is_up() { "redis" } else { "on_store_error" },
        })
    }

    /// Closes both connections (before Pingora's fork into the background).
    pub fn release(&self) {
        *lock(&self.sync_conn) = None;
        self.drop_async_conn();
    }
}

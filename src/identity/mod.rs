//! Who is calling: consumers, their API keys, and the lookups the request path makes.
//!
//! Consumers come from two places. Those in the config file (`[[consumers]]`, keys given as
//! digests) are compiled into each config snapshot. Those in the store (admin API, `turnpike
//! keys create`) live in `Identity`, which owns the store and the in-memory `Index` built from
//! it. A lookup checks the config first, then the index; neither touches SQLite.
//!
//! The index follows the store: admin changes update it in the same call, and `IdentitySync`
//! polls the store so that changes made elsewhere are picked up within a second: SQLite's
//! `data_version` twice a second (the CLI, the other process during an upgrade), or with
//! `[store] redis_url` the fleet's Redis `version` every `sync_interval` (any node's admin API).

pub mod index;
pub mod key;
pub mod ops;
pub mod records;

use crate::store::{ConsumerRow, KeyRow, Store, StoreError};
use async_trait::async_trait;
use http::HeaderValue;
use index::Index;
use key::Digest;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A consumer as the request path sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: String,
    pub plan: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    /// Defined in the config file (read-only through the admin API).
    pub from_config: bool,
    /// `X-Consumer-Id` and `X-Consumer-Groups` for the upstream, built once.
    pub id_header: Option<HeaderValue>,
    pub groups_header: Option<HeaderValue>,
    /// The consumer's metadata as text (`{consumer.metadata.KEY}` in policy templates);
    /// strings as they are, other values as JSON.
    pub metadata: Vec<(String, String)>,
}

impl Consumer {
    pub fn new(
        id: &str,
        plan: Option<String>,
        groups: Vec<String>,
        scopes: Vec<String>,
        from_config: bool,
    ) -> Consumer {
        Consumer {
            id_header: HeaderValue::from_str(id).ok(),
            groups_header: (!groups.is_empty())
                .then(|| HeaderValue::from_str(&groups.join(",")).ok())
                .flatten(),
            id: id.to_string(),
            plan,
            groups,
            scopes,
            from_config,
            metadata: Vec::new(),
        }
    }

    /// The consumer with `metadata` (string values as they are, others as JSON text).
    pub fn with_metadata<'a>(
        mut self,
        metadata: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    ) -> Consumer {
        self.metadata = metadata
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        self
    }

    /// The text of metadata key `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn from_row(r: &ConsumerRow, from_config: bool) -> Consumer {
        Consumer::new(
            &r.id,
            r.plan.clone(),
            r.groups.clone(),
            r.scopes.clone(),
            from_config,
        )
        .with_metadata(&r.metadata)
    }

    pub fn in_any_group(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.groups.contains(g))
    }

    /// The first of `required` this consumer does not have.
    pub fn missing_scope<'a>(&self, required: &'a [String]) -> Option<&'a str> {
        required
            .iter()
            .find(|s| !self.scopes.contains(s))
            .map(String::as_str)
    }
}

/// A key digest's entry in an index.
#[derive(Debug)]
pub struct KeyEntry {
    pub key_id: String,
    pub consumer: String,
    pub expires_at: Option<i64>,
}

impl KeyEntry {
    pub fn from_row(r: &KeyRow) -> KeyEntry {
        KeyEntry {
            key_id: r.id.clone(),
            consumer: r.consumer_id.clone(),
            expires_at: r.expires_at,
        }
    }
}

/// The consumers and key digests of the config file, compiled into a snapshot.
#[derive(Debug, Default)]
pub struct ConfigIdentities {
    pub consumers: HashMap<String, Arc<Consumer>>,
    pub keys: HashMap<Digest, Arc<KeyEntry>>,
}

/// The result of looking up a presented key.
pub enum KeyLookup {
    Valid(Arc<Consumer>),
    Expired,
    Unknown,
    /// Only the fleet's Redis can say, and this node has not read it for longer than
    /// `[store] max_key_staleness` (fail closed).
    Unavailable,
}

/// The store and the index that mirrors it.
///
/// Every change goes through `apply`, which holds one lock across the store write and the
/// index update; `sync` holds the same lock across reading the store and swapping the index.
/// So index updates land in commit order, and a rebuild from an older read can never undo a
/// newer change (a revoked key cannot come back).
pub struct Identity {
    store: Store,
    /// The fleet's records, when `[store] redis_url` is set (then SQLite holds none of them).
    redis: Option<crate::cluster::records::RedisRecords>,
    pub index: Index,
    /// The store's (connection, `data_version`) last looked at, and the identity version
    /// (bumped by triggers on consumers and keys) the index was built from.
    seen_version: Mutex<Option<(u64, i64)>>,
    built_from: Mutex<Option<i64>>,
    changes: Mutex<()>,
    /// With Redis: when the index last matched it (monotonic ms, 0 = never).
    in_step_at: AtomicU64,
}

impl Identity {
    /// Opens the store (creating it) and builds the index. With a cluster, the records are in
    /// Redis; if Redis cannot be reached yet, the index starts empty and fills on the first
    /// sync that reaches it.
    pub fn open(
        path: &Path,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Identity, StoreError> {
        let store = Store::open(path)?;
        let redis = cluster.map(|cluster| crate::cluster::records::RedisRecords { cluster });
        let in_redis = redis.is_some();
        let identity = Identity {
            store,
            redis,
            index: Index::default(),
            seen_version: Mutex::new(None),
            built_from: Mutex::new(None),
            changes: Mutex::new(()),
            in_step_at: AtomicU64::new(0),
        };
        match identity.sync() {
            Err(e) if in_redis => log::error!("identity index not loaded from redis yet: {e}"),
            other => {
                other?;
            }
        }
        Ok(identity)
    }

    /// Where consumers, keys and the audit log are kept.
    pub fn records(&self) -> records::Records<'_> {
        match &self.redis {
            Some(r) => records::Records::Redis(r),
            None => records::Records::Sqlite(&self.store),
        }
    }

    /// Rebuilds the index if another connection changed the store since the last build.
    /// Returns whether it rebuilt.
    pub fn sync(&self) -> Result<bool, StoreError> {
        let _serial = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(redis) = &self.redis {
            let mut built = self.built_from.lock().unwrap_or_else(|e| e.into_inner());
            if *built == Some(redis.version()?) {
                self.in_step_at.store(mono_ms(), Ordering::Relaxed);
                return Ok(false);
            }
            let (version, consumers, keys) = redis.load_all()?;
            self.index.rebuild(&consumers, &keys);
            *built = Some(version);
            self.in_step_at.store(mono_ms(), Ordering::Relaxed);
            log::info!(
                "identity index built from redis: {} consumers, {} keys",
                consumers.len(),
                self.index.key_count()
            );
            return Ok(true);
        }
        let version = self.store.data_version()?;
        let mut seen = self.seen_version.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some(version) {
            return Ok(false);
        }
        // Other processes also write quota counters: rebuild only when consumers or keys moved.
        // `seen` moves only once this succeeded, so a failed read is tried again next time.
        let identity_version = self.store.identity_version()?;
        let mut built = self.built_from.lock().unwrap_or_else(|e| e.into_inner());
        if *built == Some(identity_version) {
            *seen = Some(version);
            return Ok(false);
        }
        let (consumers, keys) = self.store.read(crate::store::consumers::load_all)?;
        self.index.rebuild(&consumers, &keys);
        *built = Some(identity_version);
        *seen = Some(version);
        log::info!(
            "identity index built from the store: {} consumers, {} keys",
            consumers.len(),
            self.index.key_count()
        );
        Ok(true)
    }

    /// Runs a change of the store and its index update as one step (see the type's docs).
    pub fn apply<T>(
        &self,
        f: impl FnOnce(records::Records<'_>, &Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _serial = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        f(self.records(), &self.index)
    }

    /// The store, for reads and for closing its connection before a fork.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Problems for config consumers whose id is also a consumer in the store: one id must name
    /// one consumer, or a store key would take on the config consumer's groups and could not
    /// be managed through the admin API.
    /// Every reason the store and a config file cannot serve together: start and reload
    /// refuse such a file.
    pub fn conflicts(
        &self,
        file: &crate::config::file::FileConfig,
    ) -> Vec<crate::config::error::Problem> {
        let mut problems = self.shadowed(file);
        problems.extend(self.unknown_plans(file));
        problems
    }

    fn shadowed(
        &self,
        file: &crate::config::file::FileConfig,
    ) -> Vec<crate::config::error::Problem> {
        file.consumers
            .iter()
            .enumerate()
            .filter(|(_, c)| self.index.consumer(&c.id).is_some())
            .map(|(i, c)| {
                crate::config::error::Problem::at(
                    format!("consumers[{i}].id"),
                    format!(
                        "consumer {:?} also exists in the store: delete it there (DELETE /consumers/{}) or rename one",
                        c.id, c.id
                    ),
                )
            })
            .collect()
    }

    /// Problems for store consumers whose plan a config with plans does not define: without
    /// the check, a renamed plan would silently lift their limits.
    fn unknown_plans(
        &self,
        file: &crate::config::file::FileConfig,
    ) -> Vec<crate::config::error::Problem> {
        if file.plans.is_empty() {
            return Vec::new();
        }
        let mut missing: Vec<(String, String)> = self
            .index
            .plans_in_use()
            .into_iter()
            .filter(|(_, plan)| !file.plans.contains_key(plan))
            .collect();
        missing.sort();
        missing
            .into_iter()
            .take(20)
            .map(|(id, plan)| {
                crate::config::error::Problem::at(
                    "plans",
                    format!(
                        "store consumer {id:?} has plan {plan:?}, which is not defined: add [plans.{plan}] or change the consumer (PATCH /consumers/{id})"
                    ),
                )
            })
            .collect()
    }

    /// A consumer by id: the config's first, then the store's.
    pub fn consumer(&self, config: &ConfigIdentities, id: &str) -> Option<Arc<Consumer>> {
        config
            .consumers
            .get(id)
            .cloned()
            .or_else(|| self.index.consumer(id))
    }

    /// Looks up a presented key by its digest.
    pub fn lookup_key(&self, config: &ConfigIdentities, digest: &Digest, now: i64) -> KeyLookup {
        let entry = match config.keys.get(digest) {
            Some(e) => e.clone(),
            None if self.stale() => return KeyLookup::Unavailable,
            None => match self.index.key(digest) {
                Some(e) => e,
                None => return KeyLookup::Unknown,
            },
        };
        if entry.expires_at.is_some_and(|t| t <= now) {
            return KeyLookup::Expired;
        }
        match self.consumer(config, &entry.consumer) {
            Some(c) => KeyLookup::Valid(c),
            None => KeyLookup::Unknown,
        }
    }
}

impl Identity {
    /// Whether the store's keys are out of reach: with Redis, when the index has not been
    /// found in step with it for longer than `max_key_staleness` (or never was).
    fn stale(&self) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let at = self.in_step_at.load(Ordering::Relaxed);
        let limit = u64::try_from(redis.cluster.key_staleness.as_millis()).unwrap_or(u64::MAX);
        at == 0 || mono_ms().saturating_sub(at) > limit
    }
}

/// Milliseconds on a monotonic clock (since the first call in this process), never 0.
fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Keeps the index in step with changes other processes make to the store.
pub struct IdentitySync {
    pub identity: Arc<Identity>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for IdentitySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One line when syncing starts failing and one when it works again, not one per tick.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let identity = self.identity.clone();
            let failure = match tokio::task::spawn_blocking(move || identity.sync()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("task failed: {e}")),
            };
            match failure {
                Some(e) if !failing => {
                    log::warn!("identity index sync failed (keeps serving the last index): {e}");
                    failing = true;
                }
                None if failing => {
                    log::info!("identity index sync works again");
                    failing = false;
                }
                _ => {}
            }
        }
    }
}

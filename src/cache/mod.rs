//! The edge cache (`[cache]`, `[apis.cache]`, `[apis.routes.cache]`): pingora-cache with the
//! project's bounded storage (`storage`), pingora-cache's LRU eviction manager and its
//! cache lock (concurrent misses of one key make one upstream request). This module owns the
//! process-wide cache objects and the compiled per-endpoint policy; `key` builds cache keys,
//! `rules` decides what is stored, `purge` removes copies (on this node and, through Redis,
//! on every node). The proxy hooks that use them are in `proxy::caching`.

pub mod key;
pub mod purge;
pub mod rules;
pub mod storage;

use crate::config::file::{ApiCacheSection, CacheScope, CacheSection};
use http::HeaderName;
use pingora::cache::eviction::simple_lru::Manager;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheOptionOverrides, CachePhase, NoCacheReason};
use std::time::Duration;
use storage::MemoryStore;

/// Request headers that common frameworks honour to change the URL, host, scheme or method
/// of a request, and that are not part of a cache key: the default of `[cache]
/// strip_unkeyed`. Left in, one client's header would shape the copy every other client gets.
pub const UNKEYED_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-host",
    "x-original-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-http-destinationurl",
    "x-proxy-url",
    "front-end-https",
];

/// The compiled cache block of an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Freshness when the upstream gives none.
    pub ttl: Duration,
    /// One copy for every caller (else one per consumer).
    pub shared: bool,
    /// Request headers that are part of the key.
    pub vary: Vec<HeaderName>,
    /// `[cache] strip_unkeyed`: request headers removed before the upstream.
    pub strip: crate::headers::NameList,
    /// Seconds of stale-while-revalidate / stale-if-error when the upstream says nothing.
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
    pub max_object: usize,
    pub store_set_cookie: bool,
}

impl Policy {
    /// The policy of an `[apis.cache]` block; `has_auth` decides the default scope. `None` when
    /// the block is switched off.
    pub fn compile(
        block: &ApiCacheSection,
        has_auth: bool,
        cache: &CacheSection,
    ) -> Option<Policy> {
        if !block.enabled {
            return None;
        }
        let max_memory = cache.max_memory.0;
        // Checked by `validate`: these are header names.
        let strip = crate::headers::NameList::compile(&cache.strip_unkeyed).unwrap_or_default();
        // A header that changes what the upstream answers and is let through is keyed on.
        let let_through = UNKEYED_HEADERS
            .iter()
            .filter(|h| !strip.contains(h))
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        let secs = |d: Option<crate::config::units::Dur>| {
            d.map_or(0, |d| u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX))
        };
        let shared = match block.scope {
            Some(CacheScope::Shared) => true,
            Some(CacheScope::Consumer) => false,
            None => !has_auth,
        };
        Some(Policy {
            ttl: block.ttl.0,
            shared,
            // Checked by `validate`: these are header names.
            vary: block
                .vary
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .chain(let_through)
                .collect(),
            strip,
            stale_while_revalidate: secs(block.stale_while_revalidate),
            stale_if_error: secs(block.stale_if_error),
            max_object: usize::try_from(
                block
                    .max_object
                    .map_or((1 << 20).min(max_memory / 8), |m| m.0),
            )
            .unwrap_or(usize::MAX),
            store_set_cookie: block.store_set_cookie,
        })
    }

    #[cfg(test)]
    pub fn test_default() -> Policy {
        Policy {
            ttl: Duration::from_secs(60),
            shared: false,
            vary: Vec::new(),
            strip: Default::default(),
            stale_while_revalidate: 0,
            stale_if_error: 0,
            max_object: 1 << 20,
            store_set_cookie: false,
        }
    }
}

/// The cache objects of the process. pingora-cache takes them as `&'static`: they are created
/// once at start (`[cache]` changes need a restart) and live as long as the process.
pub struct EdgeCache {
    pub storage: &'static MemoryStore,
    pub eviction: &'static Manager,
    pub lock: &'static CacheKeyLockImpl,
    pub lock_timeout: Duration,
}

impl EdgeCache {
    pub fn new(section: &CacheSection) -> EdgeCache {
        let max = usize::try_from(section.max_memory.0).unwrap_or(usize::MAX);
        let limit = max / 8 * storage::EVICTION_SHARE;
        // One exact LRU over every copy (a sharded one evicts from random shards, which is not
        // least-recently-used when a small cache holds few objects).
        let eviction: &'static Manager = Box::leak(Box::new(Manager::new(limit)));
        let storage: &'static MemoryStore = Box::leak(Box::new(
            MemoryStore::new(max, eviction).with_max_variants(section.max_variants),
        ));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(section.lock_timeout.0));
        EdgeCache {
            storage,
            eviction,
            lock,
            lock_timeout: section.lock_timeout.0,
        }
    }

    /// How long a request waits behind another request's miss of the same key.
    pub fn overrides(&self) -> CacheOptionOverrides {
        let mut o = CacheOptionOverrides::default();
        o.wait_timeout = Some(self.lock_timeout);
        o
    }

    /// What `GET /status` shows.
    pub fn status(&self) -> serde_json::Value {
        let (objects, bytes) = self.storage.usage();
        serde_json::json!({
            "max_memory": self.storage.max(),
            "bytes": bytes,
            "objects": objects,
            "evicted": self.eviction.evicted_items(),
        })
    }
}

/// The `X-Cache-Status` of a response. `stale_found` says a stale copy was found for the
/// request (then a fetched answer is `EXPIRED`).
pub fn status_label(phase: &CachePhase, stale_found: bool) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale => "STALE",
        CachePhase::StaleUpdating => "UPDATING",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        CachePhase::Disabled(NoCacheReason::NeverEnabled) | CachePhase::Bypass => "BYPASS",
        CachePhase::Disabled(_) if stale_found => "EXPIRED",
        CachePhase::Disabled(_) | CachePhase::Uninit | CachePhase::CacheKey => "MISS",
    }
}

/// The `X-Cache-Status` of an error answer (nothing was served from the cache).
pub fn failure_label(phase: &CachePhase, stale_found: bool) -> &'static str {
    match phase {
        CachePhase::Disabled(NoCacheReason::NeverEnabled) | CachePhase::Bypass => "BYPASS",
        _ if stale_found => "EXPIRED",
        _ => "MISS",
    }
}

/// The eviction manager as pingora-cache takes it.
pub fn eviction_ref(m: &'static Manager) -> &'static (dyn EvictionManager + Sync) {
    m
}

//! The edge cache's storage: complete responses kept in memory, bounded by `[cache]
//! max_memory`. pingora-cache drives it (lookups, writes of misses, meta updates after a
//! revalidation, purges of what its LRU eviction manager evicts); the admin purge removes
//! entries by URL, API or tag through `purge_where`.
//!
//! Accounting: every byte of a stored object (body, header, meta, and a fixed overhead) and
//! every byte of a response still being written counts against `max_memory`. The eviction
//! manager is given a limit below it (see `EVICTION_SHARE`) so that writes in flight
//! have room; a write that would still go over the bound fails, and that response is passed
//! through without being stored. A reader never sees a partial object: objects become visible
//! when their write finishes (readers of the same key wait on the cache lock meanwhile).
//!
//! Every stored object has its own id (pingora-cache's entry id), so that an eviction decided
//! for an older copy of a key never removes a newer one, and the eviction manager forgets exactly
//! the copies that leave the map. A purge also voids every write that started before it: a
//! fetch in flight during a purge does not store what the purge meant to remove.
//!
//! Variants: the copies of one key that differ by the upstream's `Vary` are counted per key,
//! and past `[cache] max_variants` a new variant is served but not stored, so that a client
//! varying a header cannot push everything else out of the cache.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryId, CacheEntryKeyRef, CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Bytes counted per object on top of its body, header and meta (map entry, key, labels).
pub const OBJECT_OVERHEAD: usize = 256;
/// The share of `max_memory` (in eighths) the eviction manager keeps objects under.
pub const EVICTION_SHARE: usize = 7;
const SHARDS: usize = 16;

/// What an object is for the admin purge: its API, normalised URL and `Surrogate-Key` tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub api: Arc<str>,
    pub url: Arc<str>,
    pub tags: Vec<Box<str>>,
}

/// A stored answer. The meta's response header is kept parsed, so that a hit does not
/// decompress a header (pingora-cache compresses serialized headers with zstd, which costs
/// more than the rest of a lookup).
struct Object {
    id: u64,
    internal: Internal,
    header: ResponseHeader,
    body: Bytes,
    weight: usize,
    key: CompactCacheKey,
    labels: Arc<Labels>,
}

/// A meta's internal part (times, variance): as `CacheMeta::new` takes it when that is all
/// it holds, else serialized (small).
enum Internal {
    Plain(Plain),
    Serialized(Vec<u8>),
}

/// The internal meta of an answer that was never revalidated: what `CacheMeta::new` takes plus
/// the two fields it has setters for. A hit on such an object builds its meta from these
/// instead of decoding the serialized form (about 4,000 instructions per hit).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plain {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl Plain {
    /// `None` when `meta` holds more than `CacheMeta::new` can give back (a revalidated
    /// answer's update time, a provenance of its own).
    fn of(meta: &CacheMeta) -> Option<Plain> {
        let created = meta.created();
        (meta.updated() == created && meta.provenance() == created).then(|| Plain {
            fresh_until: meta.fresh_until(),
            created,
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        })
    }

    fn meta(&self, header: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            header,
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }
}

/// A meta as the storage keeps it.
struct Parts {
    internal: Internal,
    header: ResponseHeader,
    /// Bytes counted against `max_memory` for the meta.
    counted: usize,
}

type Shard = RwLock<HashMap<HashBinary, Arc<Object>>>;

/// The bounded in-memory storage.
pub struct MemoryStore {
    shards: Vec<Shard>,
    /// Stored objects plus writes in flight.
    bytes: AtomicUsize,
    objects: AtomicUsize,
    next_id: AtomicU64,
    /// Purges so far; a write started before the latest one is not stored.
    purges: AtomicU64,
    max: usize,
    eviction: &'static (dyn EvictionManager + Sync),
    /// A serialized empty header, given to `CacheMeta::deserialize` before the object's parsed
    /// header replaces it.
    blank_header: Vec<u8>,
    /// Stored secondary variants per primary key (only keys with some), and the most allowed:
    /// pingora-cache keeps the first variant of a key in the key's own (primary) slot and the
    /// others under the key plus their variance, so `max_variants` copies are the primary and
    /// `max_variants - 1` secondaries. Taken after a shard's lock, never before one.
    variants: std::sync::Mutex<HashMap<HashBinary, usize>>,
    max_secondary: usize,
}

/// The default of `[cache] max_variants`.
pub const MAX_VARIANTS: usize = 16;

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    pub fn new(max: usize, eviction: &'static (dyn EvictionManager + Sync)) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            bytes: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            purges: AtomicU64::new(0),
            max,
            eviction,
            blank_header: blank_header(),
            variants: std::sync::Mutex::new(HashMap::new()),
            max_secondary: MAX_VARIANTS - 1,
        }
    }

    /// At most `n` variants (by the upstream's `Vary`) of one key are stored.
    pub fn with_max_variants(mut self, n: usize) -> Self {
        self.max_secondary = n.saturating_sub(1);
        self
    }

    fn variant_counts(&self) -> std::sync::MutexGuard<'_, HashMap<HashBinary, usize>> {
        self.variants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another variant of `primary` may be stored.
    fn variant_room(&self, primary: &HashBinary) -> bool {
        self.variant_counts()
            .get(primary)
            .is_none_or(|&n| n < self.max_secondary)
    }

    /// Counts a new stored variant of `key`'s primary key, if there is room (checked and
    /// counted in one step, so concurrent writers cannot both take the last place).
    fn take_variant(&self, key: &CompactCacheKey) -> bool {
        if key.variance.is_none() {
            return true;
        }
        let mut counts = self.variant_counts();
        let n = counts.entry(key.primary).or_insert(0);
        if *n >= self.max_secondary {
            if *n == 0 {
                counts.remove(&key.primary);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// A stored object with a variance went.
    fn drop_variant(&self, key: &CompactCacheKey) {
        if key.variance.is_none() {
            return;
        }
        let mut counts = self.variant_counts();
        if let Some(n) = counts.get_mut(&key.primary) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key.primary);
            }
        }
    }

    /// The meta of an object, as pingora-cache wants it for a hit.
    fn meta_of(&self, object: &Object) -> Result<CacheMeta> {
        let internal = match &object.internal {
            Internal::Plain(plain) => return Ok(plain.meta(object.header.clone())),
            Internal::Serialized(bytes) => bytes,
        };
        let mut meta = CacheMeta::deserialize(internal, &self.blank_header)?;
        *meta.response_header_mut() = object.header.clone();
        Ok(meta)
    }

    fn shard(&self, key: &HashBinary) -> &Shard {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// Counts `n` more bytes, unless that would pass the bound.
    fn reserve(&self, n: usize) -> bool {
        let mut now = self.bytes.load(Ordering::Relaxed);
        loop {
            let Some(next) = now.checked_add(n).filter(|&t| t <= self.max) else {
                return false;
            };
            match self
                .bytes
                .compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Removes the object of `key` (only the copy `id`, when given). pingora-cache updates the
    /// eviction manager itself for the purges it makes.
    fn remove(&self, key: &HashBinary, id: Option<u64>) -> Option<Arc<Object>> {
        let mut map = write(self.shard(key));
        if id.is_some_and(|id| map.get(key).is_some_and(|o| o.id != id)) {
            return None;
        }
        let gone = map.remove(key);
        if let Some(o) = &gone {
            self.release(o.weight);
            self.objects.fetch_sub(1, Ordering::Relaxed);
            self.drop_variant(&o.key);
        }
        gone
    }

    fn forget(&self, o: &Object) {
        self.eviction.remove(CacheEntryKeyRef::Identified {
            key: &o.key,
            id: CacheEntryId::new(o.id),
        });
    }

    /// Removes every object whose labels match, and voids the writes in flight; returns how
    /// many objects went. The eviction manager forgets them too.
    pub fn purge_where(&self, matches: impl Fn(&Labels) -> bool) -> usize {
        self.purges.fetch_add(1, Ordering::AcqRel);
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = write(shard);
            map.retain(|_, o| {
                if !matches(&o.labels) {
                    return true;
                }
                self.release(o.weight);
                self.objects.fetch_sub(1, Ordering::Relaxed);
                self.drop_variant(&o.key);
                self.forget(o);
                removed += 1;
                false
            });
        }
        removed
    }

    /// (objects, bytes counted against the bound).
    pub fn usage(&self) -> (usize, usize) {
        (
            self.objects.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// The labels of an object: its key carries the API and URL (set when the key is built), the
/// upstream's `Surrogate-Key` header the tags.
fn labels(key: &CacheKey, meta: &CacheMeta) -> Arc<Labels> {
    let (api, url) = match key.extensions.get::<super::key::Entry>() {
        Some(e) => (e.api.clone(), e.url.clone()),
        None => (Arc::from(""), Arc::from("")),
    };
    let tags = meta
        .headers()
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .take(64)
        .map(Box::from)
        .collect();
    Arc::new(Labels { api, url, tags })
}

fn blank_header() -> Vec<u8> {
    let now = std::time::SystemTime::now();
    ResponseHeader::build(200, Some(0))
        .ok()
        .and_then(|h| CacheMeta::new(now, now, 0, 0, h).serialize().ok())
        .map(|(_, header)| header)
        .unwrap_or_default()
}

fn split_meta(meta: &CacheMeta) -> Result<Parts> {
    // `serialize` also compresses the header, which is kept parsed: only a revalidated meta
    // pays for it.
    let (internal, internal_len) = match Plain::of(meta) {
        Some(plain) => (Internal::Plain(plain), std::mem::size_of::<Plain>()),
        None => {
            let (bytes, _) = meta.serialize()?;
            let len = bytes.len();
            (Internal::Serialized(bytes), len)
        }
    };
    let header = meta.response_header_copy();
    let header_bytes: usize = header
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let counted = internal_len + header_bytes + 32;
    Ok(Parts {
        internal,
        header,
        counted,
    })
}

fn storage_error(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, why)
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let Some(object) = read(self.shard(&hash)).get(&hash).cloned() else {
            return Ok(None);
        };
        let meta = self.meta_of(&object)?;
        let len = object.body.len();
        let hit = Hit {
            id: object.id,
            body: object.body.clone(),
            range: (0, len),
            done: false,
            weight: object.weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let hash = key.combined_bin();
        // Past the variants cap: served, not stored. A writer that keeps nothing (rather than
        // an error, which pingora-cache would log for every such request).
        let discard = key.variance_bin().is_some()
            && !self.variant_room(&key.primary_bin())
            && !read(self.shard(&hash)).contains_key(&hash);
        let parts = split_meta(meta)?;
        let base = if discard {
            0
        } else {
            parts.counted + OBJECT_OVERHEAD
        };
        if !self.reserve(base) {
            return Err(storage_error("cache memory is full"));
        }
        Ok(Box::new(Writer {
            store: self,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            purges: self.purges.load(Ordering::Acquire),
            hash,
            key: key.to_compact(),
            meta: Some(parts),
            labels: labels(key, meta),
            parts: Vec::new(),
            reserved: base,
            discard,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let id = match target {
            PurgeTarget::Active(_) => None,
            PurgeTarget::Exact(entry) => entry.entry_id().map(CacheEntryId::get),
        };
        match self.remove(&target.key().combined_bin(), id) {
            Some(o) => Ok(PurgeOutcome::Purged(Some(CacheEntryId::new(o.id)))),
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        let parts = split_meta(meta)?;
        let labels = labels(key, meta);
        let mut map = write(self.shard(&hash));
        let Some(old) = map.get(&hash) else {
            return Ok(false);
        };
        let updated = Object {
            id: old.id,
            internal: parts.internal,
            header: parts.header,
            body: old.body.clone(),
            weight: old.weight,
            key: old.key.clone(),
            labels,
        };
        map.insert(hash, Arc::new(updated));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one stored body (or a range of it).
struct Hit {
    id: u64,
    body: Bytes,
    range: (usize, usize),
    done: bool,
    weight: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Err(Error::explain(
                ErrorType::InternalError,
                "range outside the cached body",
            ));
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects the body of a miss; the object appears when `finish` runs. Dropped unfinished, it
/// gives its bytes back.
struct Writer {
    store: &'static MemoryStore,
    id: u64,
    /// `store.purges` when the write started.
    purges: u64,
    hash: HashBinary,
    key: CompactCacheKey,
    meta: Option<Parts>,
    labels: Arc<Labels>,
    parts: Vec<Bytes>,
    reserved: usize,
    /// Keep nothing (the key has all the variants it may have).
    discard: bool,
}

#[async_trait]
impl HandleMiss for Writer {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() || self.discard {
            return Ok(());
        }
        if !self.store.reserve(data.len()) {
            return Err(storage_error("cache memory is full"));
        }
        self.reserved += data.len();
        self.parts.push(data);
        Ok(())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.discard {
            return Ok(MissFinishType::Created(0));
        }
        if self.store.purges.load(Ordering::Acquire) != self.purges {
            // A purge ran while this answer was fetched: it may be what the purge removed.
            // Dropping `self` gives the bytes back; the entry the eviction manager gets weighs 0.
            return Ok(MissFinishType::Created(0));
        }
        let body = match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.remove(0),
            _ => Bytes::from(self.parts.concat()),
        };
        let weight = self.reserved;
        let Some(meta) = self.meta.take() else {
            return Err(storage_error("cache object finished twice"));
        };
        let object = Object {
            id: self.id,
            internal: meta.internal,
            header: meta.header,
            body,
            weight,
            key: self.key.clone(),
            labels: self.labels.clone(),
        };
        let mut map = write(self.store.shard(&self.hash));
        if !map.contains_key(&self.hash) && !self.store.take_variant(&self.key) {
            // Other writes filled the key's variants meanwhile: served, not stored.
            return Ok(MissFinishType::Created(0));
        }
        // The bytes now belong to the stored object.
        self.reserved = 0;
        match map.insert(self.hash, Arc::new(object)) {
            Some(old) => {
                self.store.release(old.weight);
                self.store.forget(&old);
            }
            None => {
                self.store.objects.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(map);
        Ok(MissFinishType::Created(weight))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.store.release(self.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::eviction::lru::Manager;
    use pingora::cache::trace::Span;
    use std::time::{Duration, SystemTime};

    fn store(max: usize) -> &'static MemoryStore {
        let eviction: &'static Manager<4> = Box::leak(Box::new(Manager::with_capacity(max, 64)));
        Box::leak(Box::new(MemoryStore::new(max, eviction)))
    }

    fn meta(tags: &str) -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).expect("header");
        h.insert_header("surrogate-key", tags).expect("tag");
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    fn key(url: &str, api: &str) -> CacheKey {
        let mut k = CacheKey::new(url, "");
        k.extensions.insert(super::super::key::Entry {
            api: Arc::from(api),
            url: Arc::from(url),
        });
        k
    }

    async fn put(s: &'static MemoryStore, k: &CacheKey, tags: &str, body: &[u8]) -> Result<()> {
        let span = Span::inactive().handle();
        let mut w = s.get_miss_handler(k, &meta(tags), &span).await?;
        w.write_body(Bytes::copy_from_slice(body), true).await?;
        w.finish().await.map(|_| ())
    }

    /// Every accessor of a meta, to compare two metas that should be the same.
    fn facts(m: &CacheMeta) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {} {} {:?} {:?} {:?}",
            m.fresh_until(),
            m.created(),
            m.updated(),
            m.provenance(),
            m.epoch(),
            m.stale_while_revalidate_sec(),
            m.stale_if_error_sec(),
            m.variance(),
            m.epoch_override(),
            m.headers(),
        )
    }

    #[test]
    fn a_plain_meta_is_rebuilt_exactly_and_a_revalidated_one_is_decoded() {
        let blank = blank_header();
        let mut m = meta("t1");
        m.set_variance([7; 16]);
        m.set_epoch_override(SystemTime::now() - Duration::from_secs(5));
        let plain = Plain::of(&m).expect("never revalidated");
        let (internal, _) = m.serialize().expect("serialize");
        let mut decoded = CacheMeta::deserialize(&internal, &blank).expect("decode");
        *decoded.response_header_mut() = m.response_header_copy();
        assert_eq!(facts(&plain.meta(m.response_header_copy())), facts(&m));
        assert_eq!(facts(&decoded), facts(&m));
        // After a revalidation the update time differs from the creation: decoded instead.
        std::thread::sleep(Duration::from_millis(2));
        m.update_freshness(SystemTime::now() + Duration::from_secs(60), 1, 2);
        assert!(Plain::of(&m).is_none());
    }

    #[tokio::test]
    async fn a_revalidated_meta_is_kept_serialized_and_comes_back_whole() {
        let s = store(1 << 20);
        let span = Span::inactive().handle();
        let k = key("http://h/r", "catalog");
        put(s, &k, "t1", b"body").await.expect("put");
        let mut m = meta("t1");
        std::thread::sleep(Duration::from_millis(2));
        m.update_freshness(SystemTime::now() + Duration::from_secs(90), 3, 4);
        assert!(s.update_meta(&k, &m, &span).await.expect("update"));
        let (back, mut hit) = s.lookup(&k, &span).await.expect("lookup").expect("hit");
        assert_eq!(facts(&back), facts(&m));
        assert_eq!(
            hit.read_body().await.expect("body").as_deref(),
            Some(&b"body"[..])
        );
    }

    #[tokio::test]
    async fn stores_reads_and_purges_by_label() {
        let s = store(1 << 20);
        let span = Span::inactive().handle();
        let a = key("http://h/a", "catalog");
        let b = key("http://h/b", "catalog");
        let c = key("http://h/c", "orders");
        put(s, &a, "t1 t2", b"alpha").await.expect("a");
        put(s, &b, "t2", b"beta").await.expect("b");
        put(s, &c, "t3", b"gamma").await.expect("c");
        let (_, mut hit) = s.lookup(&a, &span).await.expect("lookup").expect("hit");
        assert_eq!(
            hit.read_body().await.expect("body").as_deref(),
            Some(&b"alpha"[..])
        );
        assert_eq!(hit.read_body().await.expect("end"), None);
        assert_eq!(s.usage().0, 3);
        assert_eq!(s.purge_where(|l| l.tags.iter().any(|t| &**t == "t2")), 2);
        assert!(s.lookup(&a, &span).await.expect("lookup").is_none());
        assert_eq!(s.purge_where(|l| &*l.api == "orders"), 1);
        assert_eq!(s.usage(), (0, 0), "all bytes are given back");
    }

    #[tokio::test]
    async fn writes_past_the_bound_fail_and_give_their_bytes_back() {
        let s = store(8 * 1024);
        let big = vec![b'x'; 6 * 1024];
        put(s, &key("http://h/1", "a"), "", &big)
            .await
            .expect("fits");
        let used = s.usage().1;
        assert!(used <= s.max());
        assert!(put(s, &key("http://h/2", "a"), "", &big).await.is_err());
        assert_eq!(s.usage().1, used, "a failed write keeps nothing");
        // Replacing an object counts only the new copy.
        put(s, &key("http://h/1", "a"), "", b"small")
            .await
            .expect("replace");
        assert!(s.usage().1 < used);
        assert_eq!(s.usage().0, 1);
    }

    #[tokio::test]
    async fn an_old_eviction_never_removes_a_newer_copy_and_purges_void_writes_in_flight() {
        let s = store(1 << 20);
        let span = Span::inactive().handle();
        let k = key("http://h/e", "a");
        put(s, &k, "", b"first").await.expect("first");
        let (_, old) = s.lookup(&k, &span).await.expect("lookup").expect("hit");
        let old_id = old.entry_id().expect("id");
        put(s, &k, "", b"second").await.expect("second");
        let stale = pingora::cache::CacheEntryKey::identified(k.to_compact(), old_id);
        let outcome = s
            .purge(PurgeTarget::Exact(&stale), PurgeType::Eviction, &span)
            .await
            .expect("purge");
        assert_eq!(outcome, PurgeOutcome::NotFound);
        let (_, mut hit) = s.lookup(&k, &span).await.expect("lookup").expect("kept");
        assert_eq!(
            hit.read_body().await.expect("body").as_deref(),
            Some(&b"second"[..])
        );
        // A write that started before a purge is not stored.
        let k2 = key("http://h/inflight", "a");
        let mut w = s
            .get_miss_handler(&k2, &meta(""), &span)
            .await
            .expect("writer");
        w.write_body(Bytes::from_static(b"old"), true)
            .await
            .expect("write");
        s.purge_where(|l| &*l.api == "a");
        w.finish().await.expect("finish");
        assert!(s.lookup(&k2, &span).await.expect("lookup").is_none());
        assert_eq!(s.usage(), (0, 0));
    }

    #[tokio::test]
    async fn seeks_serve_ranges() {
        let s = store(1 << 20);
        let span = Span::inactive().handle();
        let k = key("http://h/r", "a");
        put(s, &k, "", b"0123456789").await.expect("put");
        let (_, mut hit) = s.lookup(&k, &span).await.expect("lookup").expect("hit");
        hit.seek(2, Some(5)).expect("seek");
        assert_eq!(
            hit.read_body().await.expect("body").as_deref(),
            Some(&b"234"[..])
        );
        assert!(hit.seek(11, None).is_err());
    }

    #[tokio::test]
    async fn variants_of_one_key_are_capped_and_slots_come_back() {
        let s: &'static MemoryStore = Box::leak(Box::new(
            MemoryStore::new(
                1 << 20,
                Box::leak(Box::new(Manager::<4>::with_capacity(1 << 20, 64))),
            )
            .with_max_variants(3),
        ));
        let variant = |url: &str, v: u8| {
            let mut k = key(url, "api");
            k.set_variance_key([v; 16]);
            k
        };
        let span = Span::inactive().handle();
        put(s, &variant("/a", 1), "", b"one")
            .await
            .expect("first variant");
        put(s, &variant("/a", 2), "", b"two")
            .await
            .expect("second variant");
        put(s, &variant("/a", 3), "", b"three")
            .await
            .expect("served, not stored");
        assert!(s
            .lookup(&variant("/a", 3), &span)
            .await
            .expect("lookup")
            .is_none());
        // The stored ones are rewritten freely, and other keys are not affected.
        put(s, &variant("/a", 2), "", b"two again")
            .await
            .expect("rewrite");
        put(s, &variant("/b", 1), "", b"b")
            .await
            .expect("other key");
        put(s, &key("/c", "api"), "", b"plain")
            .await
            .expect("no variance");
        // A variant that goes makes room for another.
        assert!(s.remove(&variant("/a", 1).combined_bin(), None).is_some());
        put(s, &variant("/a", 3), "", b"three")
            .await
            .expect("room again");
        assert_eq!(s.usage().0, 4, "/a twice, /b and /c");
    }
}

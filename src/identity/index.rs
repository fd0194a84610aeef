//! The in-memory index of the store's consumers and key digests: what the request path reads.
//!
//! Keys sit in 64 shards by the first digest byte, each a `HashMap` behind an `ArcSwap`: a
//! lookup is one atomic load and one hash probe, never a lock. A change clones and swaps one
//! shard (about 16,000 entries with a million keys), so a revocation is visible to every worker
//! as soon as the admin call returns. A full rebuild (after another process changed the store)
//! swaps every shard. Writers are serialised by a mutex; readers never wait for them.

use super::key::Digest;
use super::{Consumer, KeyEntry};
use crate::store::{ConsumerRow, KeyRow};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;

type KeyShard = HashMap<Digest, Arc<KeyEntry>>;

pub struct Index {
    shards: Vec<ArcSwap<KeyShard>>,
    consumers: ArcSwap<HashMap<String, Arc<Consumer>>>,
    writer: Mutex<()>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| ArcSwap::default()).collect(),
            consumers: ArcSwap::default(),
            writer: Mutex::new(()),
        }
    }
}

fn shard_of(d: &Digest) -> usize {
    usize::from(d[0]) % SHARDS
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self, d: &Digest) -> Option<Arc<KeyEntry>> {
        self.shards[shard_of(d)].load().get(d).cloned()
    }

    pub fn consumer(&self, id: &str) -> Option<Arc<Consumer>> {
        self.consumers.load().get(id).cloned()
    }

    /// Every store consumer with a plan: (id, plan).
    pub fn plans_in_use(&self) -> Vec<(String, String)> {
        self.consumers
            .load()
            .values()
            .filter_map(|c| c.plan.clone().map(|p| (c.id.clone(), p)))
            .collect()
    }

    /// Number of keys indexed.
    pub fn key_count(&self) -> usize {
        self.shards.iter().map(|s| s.load().len()).sum()
    }

    /// Replaces everything with the store's current content (revoked keys excluded).
    pub fn rebuild(&self, consumers: &[ConsumerRow], keys: &[KeyRow]) {
        let mut shards: Vec<KeyShard> = (0..SHARDS).map(|_| HashMap::new()).collect();
        for k in keys.iter().filter(|k| k.revoked_at.is_none()) {
            shards[shard_of(&k.digest)].insert(k.digest, Arc::new(KeyEntry::from_row(k)));
        }
        let consumers: HashMap<String, Arc<Consumer>> = consumers
            .iter()
            .map(|c| (c.id.clone(), Arc::new(Consumer::from_row(c, false))))
            .collect();
        let _w = self.lock();
        for (slot, shard) in self.shards.iter().zip(shards) {
            slot.store(Arc::new(shard));
        }
        self.consumers.store(Arc::new(consumers));
    }

    fn edit_shard(&self, d: &Digest, f: impl FnOnce(&mut KeyShard)) {
        let slot = &self.shards[shard_of(d)];
        let mut shard = HashMap::clone(&slot.load());
        f(&mut shard);
        slot.store(Arc::new(shard));
    }

    /// Adds or replaces a key; a revoked one is removed instead.
    pub fn put_key(&self, k: &KeyRow) {
        let _w = self.lock();
        self.edit_shard(&k.digest, |s| {
            if k.revoked_at.is_some() {
                s.remove(&k.digest);
            } else {
                s.insert(k.digest, Arc::new(KeyEntry::from_row(k)));
            }
        });
    }

    pub fn put_consumer(&self, c: &ConsumerRow) {
        let _w = self.lock();
        let mut map = HashMap::clone(&self.consumers.load());
        map.insert(c.id.clone(), Arc::new(Consumer::from_row(c, false)));
        self.consumers.store(Arc::new(map));
    }

    /// Removes a consumer and the given keys of it.
    pub fn remove_consumer(&self, id: &str, keys: &[KeyRow]) {
        let _w = self.lock();
        for k in keys {
            self.edit_shard(&k.digest, |s| {
                s.remove(&k.digest);
            });
        }
        let mut map = HashMap::clone(&self.consumers.load());
        map.remove(id);
        self.consumers.store(Arc::new(map));
    }
}

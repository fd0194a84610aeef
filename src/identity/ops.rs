//! The changes to consumers and keys that callers make (the admin API today, the developer
//! portal next): each writes the store, with its audit entry, and updates the index as one
//! step (`Identity::apply`), so a key works, or stops working, as soon as the call returns.
//! These block on SQLite: async callers run them on a blocking thread.

use super::key::NewKey;
use super::Identity;
use crate::store::consumers::{ConsumerPatch, NewConsumer};
use crate::store::{ConsumerRow, KeyRow, StoreError};

impl Identity {
    pub fn create_consumer(
        &self,
        actor: &str,
        new: NewConsumer,
    ) -> Result<ConsumerRow, StoreError> {
        self.apply(|store, index| {
            let row = store.create_consumer(actor, new)?;
            index.put_consumer(&row);
            Ok(row)
        })
    }

    pub fn update_consumer(
        &self,
        actor: &str,
        id: &str,
        patch: ConsumerPatch,
    ) -> Result<ConsumerRow, StoreError> {
        self.apply(|store, index| {
            let row = store.update_consumer(actor, id, patch)?;
            index.put_consumer(&row);
            Ok(row)
        })
    }

    /// Deletes a consumer and its keys.
    pub fn delete_consumer(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        self.apply(|store, index| {
            let keys = store.delete_consumer(actor, id)?;
            index.remove_consumer(id, &keys);
            Ok(())
        })
    }

    /// A new key for a consumer; the secret is in the `NewKey`, shown once.
    pub fn create_key(
        &self,
        actor: &str,
        consumer: &str,
        label: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(KeyRow, NewKey), StoreError> {
        self.apply(|store, index| {
            let (row, new) = store.create_key(actor, consumer, label, expires_at)?;
            index.put_key(&row);
            Ok((row, new))
        })
    }

    /// A new key replacing `key_id`, which keeps working for `grace_secs`.
    pub fn rotate_key(
        &self,
        actor: &str,
        consumer: &str,
        key_id: &str,
        grace_secs: i64,
    ) -> Result<(KeyRow, NewKey, KeyRow), StoreError> {
        self.apply(|store, index| {
            let (new_row, new, old) = store.rotate_key(actor, consumer, key_id, grace_secs)?;
            index.put_key(&new_row);
            index.put_key(&old);
            Ok((new_row, new, old))
        })
    }

    pub fn revoke_key(
        &self,
        actor: &str,
        consumer: &str,
        key_id: &str,
    ) -> Result<KeyRow, StoreError> {
        self.apply(|store, index| {
            let row = store.revoke_key(actor, consumer, key_id)?;
            index.put_key(&row);
            Ok(row)
        })
    }
}

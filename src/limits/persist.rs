//! Write-behind of quota counters: every second (and once more at shutdown) the increments
//! counted since the last flush are added to the store in one transaction and the totals read
//! back, off the request path. A kill -9 loses at most the last second of counts; a graceful
//! stop or upgrade loses none. Several processes sharing the store (old and new during an
//! upgrade) add up instead of overwriting each other.

use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// Flushes once; returns how many counters were written. When another process (the other
/// side of an upgrade) wrote to the store since the last look, every stored total of the
/// current windows is read again, so that both count against the same totals within a second.
pub fn flush(shared: &Shared) -> usize {
    let mut seen = shared.limiter.persist_lock();
    let store = shared.identity.store();
    let pending = shared.limiter.take_dirty();
    let mut written = 0;
    if !pending.is_empty() {
        match store.add_counts(&pending) {
            Ok(totals) => {
                let now = crate::clock::now();
                for t in &totals {
                    shared.limiter.set_total(t, now);
                }
                written = totals.len();
            }
            Err(e) => {
                log::warn!("quota counters not saved this time (kept for the next try): {e}");
                shared.limiter.restore(&pending);
                return 0;
            }
        }
    }
    match store.data_version() {
        Ok(version) if *seen != Some(version) => match read_back(shared) {
            Ok(_) => *seen = Some(version),
            Err(e) => log::warn!("quota counters not read back this time: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::warn!("quota counters: cannot read the store version: {e}"),
    }
    written
}

/// Sets every counter of a current window to the store's total.
fn read_back(shared: &Shared) -> Result<usize, crate::store::StoreError> {
    let now = crate::clock::now();
    let records = shared.identity.store().load_counts()?;
    for r in &records {
        shared.limiter.set_total(r, now);
    }
    Ok(records.len())
}

/// Loads the stored counters of the current windows (at start).
pub fn load(shared: &Shared) -> Result<usize, crate::store::StoreError> {
    let mut seen = shared.limiter.persist_lock();
    let n = read_back(shared)?;
    *seen = Some(shared.identity.store().data_version()?);
    Ok(n)
}

pub struct CounterPersister {
    pub shared: Arc<Shared>,
}

/// Flushes one last time when the persister's task is dropped: Pingora drops service tasks
/// when it stops its runtimes, after the grace period in which in-flight requests finish.
struct FinalFlush(Arc<Shared>);

impl Drop for FinalFlush {
    fn drop(&mut self) {
        let written = flush(&self.0);
        log::info!("quota counters saved at exit ({written} counters)");
    }
}

#[async_trait]
impl BackgroundService for CounterPersister {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let _last = FinalFlush(self.shared.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Keeps flushing through the shutdown grace period (requests are still counted then)
        // until the runtime drops this task.
        loop {
            tick.tick().await;
            let shared = self.shared.clone();
            if tokio::task::spawn_blocking(move || flush(&shared))
                .await
                .is_err()
            {
                log::warn!("the quota counter flush task failed");
            }
        }
    }
}

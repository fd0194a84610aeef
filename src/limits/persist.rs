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

/// Flushes once; returns how many counters were written.
pub fn flush(shared: &Shared) -> usize {
    let _one = shared.limiter.persist_lock();
    let pending = shared.limiter.take_dirty();
    if pending.is_empty() {
        return 0;
    }
    match shared.identity.store().add_counts(&pending) {
        Ok(totals) => {
            let now = crate::clock::now();
            for t in &totals {
                shared.limiter.set_total(t, now);
            }
            totals.len()
        }
        Err(e) => {
            log::warn!("quota counters not saved this time (kept for the next try): {e}");
            shared.limiter.restore(&pending);
            0
        }
    }
}

/// Loads the stored counters of the current windows (at start).
pub fn load(shared: &Shared) -> Result<usize, crate::store::StoreError> {
    let now = crate::clock::now();
    let records = shared.identity.store().load_counts()?;
    for r in &records {
        shared.limiter.set_total(r, now);
    }
    Ok(records.len())
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

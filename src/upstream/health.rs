//! Active health checks: builds Pingora's HTTP or TCP check for a pool with the configured
//! path, timeout and thresholds, and runs the checks of every pool of the current config from
//! one background service, each pool on its own interval.

use super::passive::TargetState;
use super::Pool;
use crate::config::file::{HealthKind, UpstreamSection};
use crate::state::Shared;
use async_trait::async_trait;
use foldhash::HashMap;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mirrors health flips into the pool's target states (for `/upstreams` and logs).
struct Observer(HashMap<SocketAddr, Arc<TargetState>>);

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if let Some(t) = target.addr.as_inet().and_then(|a| self.0.get(a)) {
            t.set_active_health(healthy);
            if healthy {
                log::info!("target {} ({}) is healthy again", t.label, t.addr);
            } else {
                log::warn!("target {} ({}) failed its health checks", t.label, t.addr);
            }
        }
    }
}

/// The configured active check of a pool, if any.
pub fn build_check(
    def: &UpstreamSection,
    targets: &HashMap<SocketAddr, Arc<TargetState>>,
) -> Option<Box<dyn HealthCheck + Send + Sync>> {
    let h = def.health.as_ref()?;
    let observer = Box::new(Observer(targets.clone()));
    let timeout = Some(h.timeout.0);
    Some(match h.kind {
        HealthKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.consecutive_success = h.healthy_after as usize;
            c.consecutive_failure = h.unhealthy_after as usize;
            c.peer_template.options.connection_timeout = timeout;
            c.peer_template.options.total_connection_timeout = timeout;
            c.health_changed_callback = Some(observer);
            c
        }
        HealthKind::Http => {
            let host = h.host.clone().unwrap_or_else(|| "localhost".into());
            let mut c = HttpHealthCheck::new(&host, false);
            c.consecutive_success = h.healthy_after as usize;
            c.consecutive_failure = h.unhealthy_after as usize;
            c.peer_template.options.connection_timeout = timeout;
            c.peer_template.options.total_connection_timeout = timeout;
            c.peer_template.options.read_timeout = timeout;
            c.peer_template.options.write_timeout = timeout;
            // The path was validated as printable ASCII starting with '/'.
            if let Ok(uri) = h.path.parse::<http::Uri>() {
                c.req.set_uri(uri);
            }
            c.req.insert_header("User-Agent", "turnpike-health").ok();
            c.health_changed_callback = Some(observer);
            Box::new(c)
        }
    })
}

/// Runs due health checks of the current config's pools.
pub struct HealthService {
    pub shared: Arc<Shared>,
}

/// The service sleeps until the next check is due, at least this long (a check still running
/// when its next one is due is waited for) ...
const MIN_SLEEP: Duration = Duration::from_millis(100);
/// ... and at most this long, so that checks a reload adds start within a second.
const MAX_SLEEP: Duration = Duration::from_secs(1);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snapshot = self.shared.snapshot();
            let now = Instant::now();
            for pool in snapshot.pools.values() {
                if let Some(interval) = pool.claim_check(now) {
                    let pool: Arc<Pool> = pool.clone();
                    tokio::spawn(async move {
                        // A pass never outlives its interval by much: a hung check is dropped.
                        let budget = interval.max(Duration::from_secs(1)) * 2;
                        if tokio::time::timeout(budget, pool.run_check())
                            .await
                            .is_err()
                        {
                            pool.checking
                                .store(false, std::sync::atomic::Ordering::Release);
                        }
                    });
                }
            }
            // An idle gateway wakes once a second at most, not ten times.
            let sleep = snapshot
                .pools
                .values()
                .filter_map(|p| p.next_check_due())
                .min()
                .map_or(MAX_SLEEP, |due| {
                    due.saturating_duration_since(Instant::now())
                })
                .clamp(MIN_SLEEP, MAX_SLEEP);
            drop(snapshot);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

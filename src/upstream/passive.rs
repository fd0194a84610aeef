//! Per-target state shared by the active and passive checks: the health reported by active
//! checks (with the time it last changed) and the consecutive live-traffic failures that eject
//! a target for a cool-down. Everything is atomics: the request path takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A process-wide monotonic origin so instants fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn mono_ms(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The live state of one target address.
pub struct TargetState {
    pub addr: SocketAddr,
    /// The target as written in the config (a name may resolve to several addresses).
    pub label: String,
    healthy: AtomicBool,
    /// Unix ms when the active health state last changed (or the pool was built).
    health_since: AtomicU64,
    failures: AtomicU32,
    /// Monotonic ms until which the target is ejected; 0 when not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU64,
}

impl TargetState {
    pub fn new(addr: SocketAddr, label: String) -> Self {
        TargetState {
            addr,
            label,
            healthy: AtomicBool::new(true),
            health_since: AtomicU64::new(unix_ms()),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// Called by the active health check when the health flips.
    pub fn set_active_health(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.health_since.store(unix_ms(), Ordering::Relaxed);
    }

    pub fn active_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn health_since_unix_ms(&self) -> u64 {
        self.health_since.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && mono_ms(now) < until
    }

    /// Remaining ejection time, if ejected.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = mono_ms(now);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts a failure; returns true when this failure ejected the target.
    pub fn record_failure(&self, threshold: u32, cooldown: Duration) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < threshold {
            return false;
        }
        self.failures.store(0, Ordering::Release);
        let until = mono_ms(Instant::now() + cooldown);
        self.ejected_until.store(until, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_and_recovers_after_cooldown() {
        let t = TargetState::new(
            "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            "x".into(),
        );
        // A long cooldown, checked at computed instants: no sleep, no race with the clock.
        let cool = Duration::from_secs(60);
        assert!(!t.record_failure(3, cool));
        assert!(!t.record_failure(3, cool));
        t.record_success();
        assert!(!t.record_failure(3, cool));
        assert!(!t.record_failure(3, cool));
        assert!(t.record_failure(3, cool));
        let now = Instant::now();
        assert!(t.is_ejected(now));
        assert!(t.is_ejected(now + Duration::from_secs(59)));
        assert_eq!(t.ejections(), 1);
        assert!(!t.is_ejected(now + Duration::from_secs(61)));
    }
}

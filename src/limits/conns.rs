//! `[server.limits] max_connections`: how many client connections the proxy listeners hold at
//! once. A connection over the cap is closed as soon as it is accepted and counted, so that a
//! flood of idle connections cannot use up the process's file descriptors and take `/health`,
//! the admin listener, upstream connections and the store down with it.
//!
//! On TLS listeners the slot is taken before the handshake (which Pingora bounds by 60 s) and
//! kept for the connection by its peer address ([`Connections::admit_handshake`],
//! [`Connections::claim_handshake`]); a handshake that never completes gives its slot back
//! after [`HANDSHAKE_BOUND`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a slot taken for a TLS handshake is kept without the connection claiming it:
/// Pingora's own bound on a handshake, and a second.
pub const HANDSHAKE_BOUND: Duration = Duration::from_secs(61);

/// Open and refused client connections of the proxy listeners.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// Slots taken for TLS handshakes in flight, by peer address, and when.
    handshakes: Mutex<HashMap<SocketAddr, Instant>>,
}

/// A held connection slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// A cap of `max` connections; 0 means automatic (see [`auto_max`]).
    pub fn new(max: usize) -> Arc<Connections> {
        let max = if max == 0 {
            auto_max(open_files_limit())
        } else {
            max
        };
        Arc::new(Connections {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            handshakes: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for a new connection, or counts it as refused when the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.take().then(|| Slot(self.clone()))
    }

    fn handshakes(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a TLS connection from `peer` before its handshake; false (counted as
    /// refused) when the cap is reached. Slots of handshakes that never completed are given
    /// back first.
    pub fn admit_handshake(&self, peer: SocketAddr, now: Instant) -> bool {
        let mut pending = self.handshakes();
        let before = pending.len();
        pending.retain(|_, at| now.saturating_duration_since(*at) < HANDSHAKE_BOUND);
        self.open
            .fetch_sub(before - pending.len(), Ordering::AcqRel);
        if !self.take() {
            return false;
        }
        if pending.insert(peer, now).is_some() {
            // A stale entry of an earlier connection from the same address and port.
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// The handshake slot of `old` is now known by `new` (a PROXY protocol header named the
    /// client before the handshake).
    pub fn rekey_handshake(&self, old: SocketAddr, new: SocketAddr) {
        let mut pending = self.handshakes();
        if let Some(at) = pending.remove(&old) {
            if pending.insert(new, at).is_some() {
                // A stale entry of an earlier connection named alike.
                self.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The slot taken for `peer`'s handshake, now that it completed; `None` when there is
    /// none (then the caller admits the connection as a new one).
    pub fn claim_handshake(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        self.handshakes().remove(&peer).map(|_| Slot(self.clone()))
    }

    /// Counts one more open connection unless the cap is reached.
    fn take(&self) -> bool {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => true,
            Err(_) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "client connections reached server.limits.max_connections ({}): new ones are closed (counted in turnpike_connections_refused_total)",
                        self.max
                    );
                }
                false
            }
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The automatic cap: half of the open-file limit, keeping the other half for upstream
/// connections (a client connection may need one or, over HTTP/2, several), listeners, the
/// store, logs and the admin listener.
pub fn auto_max(open_files: u64) -> usize {
    usize::try_from(open_files / 2)
        .unwrap_or(usize::MAX)
        .max(16)
}

/// The soft limit on open files of this process (`ulimit -n`), from `/proc/self/limits`;
/// 1024 (the usual default) when it cannot be read.
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_open_files(&text))
        .unwrap_or(1024)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_and_counts_and_slots_come_back() {
        let c = Connections::new(2);
        let a = c.admit();
        let b = c.admit();
        assert!(a.is_some() && b.is_some());
        assert!(c.admit().is_none());
        assert_eq!((c.open(), c.refused()), (2, 1));
        drop(a);
        let again = c.admit();
        assert!(again.is_some());
        assert_eq!(c.open(), 2);
        drop((again, b));
        assert_eq!(c.open(), 0);
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1400                 524288               files\n";
        assert_eq!(parse_open_files(text), Some(1400));
        assert_eq!(auto_max(1400), 700);
        assert!(open_files_limit() >= 16);
    }

    #[test]
    fn tls_handshakes_hold_slots_until_claimed_or_timed_out() {
        let c = Connections::new(2);
        let t0 = Instant::now();
        let (a, b, d): (SocketAddr, SocketAddr, SocketAddr) = (
            ([127, 0, 0, 1], 1).into(),
            ([127, 0, 0, 1], 2).into(),
            ([127, 0, 0, 1], 3).into(),
        );
        assert!(c.admit_handshake(a, t0));
        assert!(c.admit_handshake(b, t0));
        assert!(
            !c.admit_handshake(d, t0),
            "two handshakes in flight fill the cap"
        );
        let claimed = c.claim_handshake(a);
        assert!(claimed.is_some());
        assert_eq!(c.open(), 2, "a claimed slot stays counted");
        drop(claimed);
        assert_eq!(c.open(), 1);
        // b never completes: its slot comes back once Pingora's handshake bound has passed.
        assert!(c.admit_handshake(d, t0 + Duration::from_secs(1)));
        assert!(!c.admit_handshake(a, t0 + Duration::from_secs(2)));
        assert!(c.admit_handshake(a, t0 + HANDSHAKE_BOUND + Duration::from_millis(500)));
        assert!(c.claim_handshake(b).is_none(), "b was given back");
        assert_eq!(c.open(), 2);
    }
}

//! `[server.limits] max_connections`: how many client connections the proxy listeners hold at
//! once. A connection over the cap is closed as soon as it is accepted and counted, so that a
//! flood of idle connections cannot use up the process's file descriptors and take `/health`,
//! the admin listener, upstream connections and the store down with it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Open and refused client connections of the proxy listeners.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
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
        })
    }

    /// Takes a slot for a new connection, or counts it as refused when the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot(self.clone())),
            Err(_) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "client connections reached server.limits.max_connections ({}): new ones are closed (counted in turnpike_connections_refused_total)",
                        self.max
                    );
                }
                None
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

/// The automatic cap: three quarters of the open-file limit, keeping the last quarter for
/// upstream connections, listeners, the store, logs and the admin listener.
pub fn auto_max(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_mul(3) / 4)
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
        assert_eq!(auto_max(1400), 1050);
        assert!(open_files_limit() >= 16);
    }
}

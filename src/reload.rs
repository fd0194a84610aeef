//! Hot reload of the config file: read, validate and compile a whole new `Snapshot` off the hot
//! path, then swap it in at once. On any problem nothing changes and the old config keeps
//! serving. Settings that only take effect when the process starts (listeners, threads, process
//! files, connection-level limits, the admin listener) cannot change by reload: a file that
//! changes them is refused as a whole, naming the keys, so the running config is always exactly
//! one file. Triggers: SIGHUP (`ReloadSignals`) and `POST /reload` on the admin listener.

use crate::config::error::ConfigError;
use crate::config::file::FileConfig;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a reload changed nothing.
#[derive(Debug, Clone)]
pub enum ReloadError {
    /// The file could not be read, parsed, validated or compiled.
    Invalid(ConfigError),
    /// The file changes settings that need a restart or a binary upgrade.
    NeedsRestart(Vec<String>),
    /// The file would remove more than half of the running APIs or config consumers (a file
    /// cut short is often valid TOML): it needs to be asked for.
    LargeRemoval(Removal),
}

/// What a reload would remove, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub apis: Vec<String>,
    pub consumers: Vec<String>,
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the new file removes {} API(s) [{}] and {} config consumer(s) [{}], more than half of either; nothing was applied. If that is meant, reload with POST /reload?allow_large_removal=true or turnpike reload --force",
            self.apis.len(),
            self.apis.join(", "),
            self.consumers.len(),
            self.consumers.join(", ")
        )
    }
}

impl Removal {
    /// What `new` removes from `old`, when that is more than half of its APIs or of its config
    /// consumers.
    pub fn large(old: &FileConfig, new: &FileConfig) -> Option<Removal> {
        fn gone(old: Vec<String>, new: &[String]) -> Vec<String> {
            old.into_iter().filter(|n| !new.contains(n)).collect()
        }
        // An API is its name and version ("orders v2"); consumers are their ids.
        let apis = |f: &FileConfig| -> Vec<String> {
            f.apis
                .iter()
                .map(|a| match &a.version {
                    Some(v) => format!("{} {v}", a.name),
                    None => a.name.clone(),
                })
                .collect()
        };
        let consumers =
            |f: &FileConfig| -> Vec<String> { f.consumers.iter().map(|c| c.id.clone()).collect() };
        let removal = Removal {
            apis: gone(apis(old), &apis(new)),
            consumers: gone(consumers(old), &consumers(new)),
        };
        let over_half = |gone: usize, had: usize| gone * 2 > had && gone > 0;
        (over_half(removal.apis.len(), old.apis.len())
            || over_half(removal.consumers.len(), old.consumers.len()))
        .then_some(removal)
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{}", e.to_string().trim_end()),
            ReloadError::NeedsRestart(keys) => write!(
                f,
                "these changes need a restart or an upgrade, so nothing was applied: {}",
                keys.join(", ")
            ),
            ReloadError::LargeRemoval(r) => write!(f, "{r}"),
        }
    }
}

/// The outcome of the last reload attempt, for `GET /status`.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub at: SystemTime,
    pub error: Option<ReloadError>,
}

/// Reloads the config file of `shared`. Blocking (file I/O, DNS): call it from a blocking
/// context. Reloads are serialised. A file that removes more than half of the running APIs
/// or config consumers is refused unless `allow_large_removal`.
pub fn reload(shared: &Shared, allow_large_removal: bool) -> Result<u64, ReloadError> {
    let _one_at_a_time = shared.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.snapshot();
    let result = crate::config::load_snapshot(&shared.config_path, Some(&current))
        .and_then(|next| {
            let problems = shared.identity.conflicts(&next.file);
            if problems.is_empty() {
                Ok(next)
            } else {
                Err(ConfigError {
                    file: shared.config_path.clone(),
                    problems,
                })
            }
        })
        .map_err(ReloadError::Invalid)
        .and_then(|next| {
            let keys = restart_only_changes(&current.file, &next.file);
            if !keys.is_empty() {
                return Err(ReloadError::NeedsRestart(keys));
            }
            match Removal::large(&current.file, &next.file) {
                Some(removal) if !allow_large_removal => Err(ReloadError::LargeRemoval(removal)),
                _ => Ok(next),
            }
        });
    let outcome = match result {
        Ok(next) => {
            let generation = next.generation;
            shared.swap(next);
            log::info!(
                "config {} reloaded: generation {generation}",
                shared.config_path.display()
            );
            Ok(generation)
        }
        Err(e) => {
            log::error!("config reload refused, the running config is unchanged: {e}");
            Err(e)
        }
    };
    shared.set_last_reload(ReloadReport {
        at: SystemTime::now(),
        error: outcome.as_ref().err().cloned(),
    });
    outcome
}

/// The keys whose change needs a restart or an upgrade.
pub fn restart_only_changes(old: &FileConfig, new: &FileConfig) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let (ol, nl) = (&o.limits, &n.limits);
    let (os, ns) = (&old.store, &new.store);
    let (oc, nc) = (&old.cache, &new.cache);
    let checks: [(&str, bool); 35] = [
        ("analytics", old.analytics != new.analytics),
        ("telemetry", old.telemetry != new.telemetry),
        ("cache.max_memory", oc.max_memory != nc.max_memory),
        ("cache.lock_timeout", oc.lock_timeout != nc.lock_timeout),
        ("cache.purge_channel", oc.purge_channel != nc.purge_channel),
        ("cache.max_variants", oc.max_variants != nc.max_variants),
        ("store.path", os.path != ns.path),
        ("store.redis_url", os.redis_url != ns.redis_url),
        ("store.redis_prefix", os.redis_prefix != ns.redis_prefix),
        ("store.nodes", os.nodes != ns.nodes),
        ("store.sync_interval", os.sync_interval != ns.sync_interval),
        ("store.redis_timeout", os.redis_timeout != ns.redis_timeout),
        (
            "store.max_key_staleness",
            os.max_key_staleness != ns.max_key_staleness,
        ),
        ("server.listen", o.listen != n.listen),
        ("server.tls", o.tls != n.tls),
        ("server.threads", o.threads != n.threads),
        ("server.work_stealing", o.work_stealing != n.work_stealing),
        ("server.h2c", o.h2c != n.h2c),
        (
            "server.proxy_protocol",
            o.proxy_protocol != n.proxy_protocol,
        ),
        ("server.pid_file", o.pid_file != n.pid_file),
        ("server.upgrade_sock", o.upgrade_sock != n.upgrade_sock),
        ("server.grace_period", o.grace_period != n.grace_period),
        (
            "server.keepalive_drain",
            o.keepalive_drain != n.keepalive_drain,
        ),
        (
            "server.graceful_shutdown_timeout",
            o.graceful_shutdown_timeout != n.graceful_shutdown_timeout,
        ),
        (
            "server.upstream_keepalive_pool_size",
            o.upstream_keepalive_pool_size != n.upstream_keepalive_pool_size,
        ),
        (
            "server.limits.head_timeout",
            ol.head_timeout != nl.head_timeout,
        ),
        (
            "server.limits.idle_before_request",
            ol.idle_before_request != nl.idle_before_request,
        ),
        (
            "server.limits.max_connections",
            ol.max_connections != nl.max_connections,
        ),
        (
            "server.limits.h2_max_resets",
            ol.h2_max_resets != nl.h2_max_resets,
        ),
        (
            "server.limits.keepalive_requests",
            ol.keepalive_requests != nl.keepalive_requests,
        ),
        (
            "server.limits.h2_max_concurrent_streams",
            ol.h2_max_concurrent_streams != nl.h2_max_concurrent_streams,
        ),
        (
            "server.limits.h2_max_header_list",
            ol.h2_max_header_list != nl.h2_max_header_list,
        ),
        (
            "server.limits.h2_stream_window",
            ol.h2_stream_window != nl.h2_stream_window,
        ),
        (
            "server.limits.h2_connection_window",
            ol.h2_connection_window != nl.h2_connection_window,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
    ];
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k.to_string())
        .collect()
}

/// Reloads the config on SIGHUP. Pingora does not handle SIGHUP, whose default action would
/// end the process.
pub struct ReloadSignals {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ReloadSignals {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    log::info!("SIGHUP: reloading {}", self.shared.config_path.display());
                    let shared = self.shared.clone();
                    // The outcome is logged and kept for GET /status.
                    let _ = tokio::task::spawn_blocking(move || reload(&shared, false)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> FileConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn restart_only_keys_are_named() {
        let a = cfg("[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = 2\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\n");
        let routes_only = cfg("[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = 2\n[server.limits]\nbody = \"1MiB\"\n[[apis]]\nname = \"b\"\nbase_path = \"/b\"\n[apis.respond]\n");
        assert!(
            restart_only_changes(&a, &routes_only).is_empty(),
            "routes and per-request limits reload live"
        );
        let listeners = cfg("[server]\nlisten = [\"127.0.0.1:2\"]\nthreads = 4\n[server.limits]\nhead_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:3\"\n");
        assert_eq!(
            restart_only_changes(&a, &listeners),
            vec![
                "server.listen",
                "server.threads",
                "server.limits.head_timeout",
                "admin.listen"
            ]
        );
    }

    #[test]
    fn removing_more_than_half_of_the_apis_or_consumers_is_a_large_removal() {
        let file = |apis: &[&str], consumers: &[&str]| {
            let mut t = String::new();
            for a in apis {
                t += &format!("[[apis]]\nname = \"{a}\"\nbase_path = \"/{a}\"\n[apis.respond]\n");
            }
            for c in consumers {
                t += &format!("[[consumers]]\nid = \"{c}\"\n");
            }
            cfg(&t)
        };
        let old = file(&["a", "b", "c", "d"], &["x", "y"]);
        assert_eq!(Removal::large(&old, &file(&["a", "b"], &["x", "y"])), None);
        assert_eq!(
            Removal::large(&old, &file(&["a", "b", "c", "d"], &["x"])),
            None
        );
        let r = Removal::large(&old, &file(&["a"], &["x", "y"]));
        assert_eq!(
            r.map(|r| (r.apis, r.consumers)),
            Some((vec!["b".into(), "c".into(), "d".into()], vec![]))
        );
        let r = Removal::large(&old, &file(&["a", "b", "c", "d", "e"], &[]));
        assert_eq!(
            r.map(|r| r.consumers),
            Some(vec!["x".to_string(), "y".to_string()])
        );
        // Renaming is a removal too; adding is not.
        assert!(Removal::large(&file(&["a"], &[]), &file(&["z"], &[])).is_some());
        assert_eq!(Removal::large(&file(&[], &[]), &file(&["a"], &[])), None);
    }
}

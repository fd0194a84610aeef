//! Assembles the Pingora server from a loaded config: the proxy service with its TCP and TLS
//! listeners and edge options, the admin service, and the health-check background service.

use crate::admin::AdminApp;
use crate::config::{self, error::ConfigError};
use crate::identity::{Identity, IdentitySync};
use crate::proxy::conn::{EdgeApp, RequestEnd};
use crate::proxy::deadline::Timeouts;
use crate::proxy::Gateway;
use crate::reload::ReloadSignals;
use crate::state::Shared;
use crate::upstream::health::HealthService;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::H2Options;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;

/// Flags passed through to Pingora.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunFlags {
    pub daemon: bool,
    pub upgrade: bool,
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Listener(String),
    Store(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Listener(e) => write!(f, "{e}"),
            StartError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Loads the config and builds a ready-to-run server.
pub fn build(config_path: &Path, flags: RunFlags) -> Result<(Server, Arc<Shared>), StartError> {
    // Daemon mode may change the working directory: keep absolute paths for later reloads.
    let config_path =
        &std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let snapshot = config::load_snapshot(config_path, None).map_err(StartError::Config)?;
    let file = snapshot.file.clone();
    let s = &file.server;

    let conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        daemon: flags.daemon,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.0.as_secs()),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        // Timeouts of a second or more (the configured read, write and idle timeouts) run on
        // tokio's timer wheel instead of Pingora's timer thread (a 10 ms clock and a lock per
        // timer): measured with loadtest/run.py --instructions, 2,700 fewer instructions per
        // proxied request. Sub-second timeouts keep Pingora's timers.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..Default::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    if snapshot.admin_token.is_none() {
        log::warn!(
            "no admin token configured: admin routes other than /health and /ready will answer 401"
        );
    }
    let store_path = store_path(config_path, &file.store.path);
    let cluster = crate::cluster::Cluster::from_config(&file.store)
        .map_err(|e| StartError::Store(format!("store.redis_url: {e}")))?
        .map(Arc::new);
    if let Some(c) = &cluster {
        log::info!(
            "shared store: redis at {} ({} nodes, sync every {:?})",
            c.address,
            c.nodes,
            c.interval
        );
    }
    let identity = Identity::open(&store_path, cluster.clone())
        .map_err(|e| StartError::Store(format!("{}: {e}", store_path.display())))?;
    let conflicts = identity.conflicts(&file);
    if !conflicts.is_empty() {
        return Err(StartError::Config(ConfigError {
            file: config_path.to_path_buf(),
            problems: conflicts,
        }));
    }
    let identity = Arc::new(identity);
    let shared = Shared::new(
        snapshot,
        identity.clone(),
        cluster.clone(),
        config_path.to_path_buf(),
    );
    if cluster.is_none() {
        match crate::limits::persist::load(&shared) {
            Ok(n) => log::info!("quota counters loaded from the store: {n}"),
            Err(e) => return Err(StartError::Store(format!("loading quota counters: {e}"))),
        }
    }
    // Connections must not cross the fork into the background; the index and the counters
    // stay in memory and the connections open again on first use.
    shared.identity.store().release();
    if let Some(c) = &cluster {
        c.release();
    }

    let l = &s.limits;
    let mut proxy_app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway {
            shared: shared.clone(),
        },
    );
    let mut opts = HttpServerOptions::default();
    opts.h2c = s.h2c;
    opts.keepalive_request_limit = (l.keepalive_requests > 0).then_some(l.keepalive_requests);
    opts.h2_idle_timeout = Some(l.keepalive_idle.0);
    proxy_app.server_options = Some(opts);
    proxy_app.h2_options = Some(h2_options(l));
    let proxy_listeners = crate::proxy::conn::ProxyListeners {
        plain: s.proxy_protocol,
        tls: s
            .tls
            .iter()
            .filter(|t| t.proxy_protocol)
            .filter_map(|t| t.listen.parse().ok())
            .collect(),
        shared: shared.clone(),
    };
    let edge = EdgeApp {
        inner: Arc::new(RequestEnd::new(proxy_app, s.keepalive_drain.0)),
        timeouts: Timeouts {
            idle: l.idle_before_request.0,
            head: l.head_timeout.0,
        },
        h2c: s.h2c,
        h2_max_resets: l.h2_max_resets,
        connections: shared.connections.clone(),
        proxy: proxy_listeners.clone(),
    };
    let mut proxy = Service::new("turnpike proxy".to_string(), edge);
    proxy
        .endpoints()
        .set_pre_tls_callback(Arc::new(crate::proxy::conn::HelloDeadline {
            timeouts: Timeouts {
                idle: l.idle_before_request.0,
                head: l.head_timeout.0,
            },
            connections: shared.connections.clone(),
            proxy: proxy_listeners,
        }));
    for addr in &s.listen {
        proxy.add_tcp(addr);
    }
    for t in &s.tls {
        let cert = std::path::absolute(&t.cert).unwrap_or_else(|_| t.cert.clone());
        let key = std::path::absolute(&t.key).unwrap_or_else(|_| t.key.clone());
        let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
        let mut settings = TlsSettings::intermediate(&cert, &key)
            .map_err(|e| StartError::Listener(format!("TLS listener {}: {e}", t.listen)))?;
        if t.h2 {
            settings.enable_h2();
        }
        proxy.add_tls_with_settings(&t.listen, None, settings);
    }

    let mut admin = Service::new(
        "turnpike admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp {
            shared: shared.clone(),
        }),
    );
    admin.add_tcp(&file.admin.listen);

    let health = background_service(
        "health checks",
        HealthService {
            shared: shared.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    match &cluster {
        None => {
            server.add_service(background_service(
                "quota counter write-behind",
                crate::limits::persist::CounterPersister {
                    shared: shared.clone(),
                },
            ));
        }
        Some(c) => {
            server.add_service(background_service(
                "cache purges from the fleet",
                crate::cache::purge::PurgeListener {
                    cluster: c.clone(),
                    shared: shared.clone(),
                    channel: file.cache.purge_channel.clone(),
                },
            ));
            server.add_service(background_service(
                "plan counter sync with redis",
                crate::cluster::counters::CounterSync {
                    cluster: c.clone(),
                    limiter: shared.limiter.clone(),
                },
            ));
        }
    }
    server.add_service(background_service(
        "lifecycle notices",
        crate::notices::Notifier {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "JWKS refresh",
        crate::auth::jwt::JwksRefresher {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "identity index sync",
        IdentitySync {
            identity,
            interval: cluster
                .as_ref()
                .map_or(std::time::Duration::from_millis(500), |c| c.interval),
        },
    ));
    server.add_service(background_service(
        "analytics aggregator",
        crate::analytics::aggregator::Aggregator {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "config reload on SIGHUP",
        ReloadSignals {
            shared: shared.clone(),
        },
    ));
    Ok((server, shared))
}

/// The store file: relative paths are relative to the config file's directory.
pub fn store_path(config_path: &Path, configured: &Path) -> std::path::PathBuf {
    if configured.is_absolute() {
        return configured.to_path_buf();
    }
    config_path
        .parent()
        .map_or_else(|| configured.to_path_buf(), |dir| dir.join(configured))
}

/// Explicit HTTP/2 settings: bounded streams, header list and windows.
fn h2_options(l: &config::file::LimitsSection) -> H2Options {
    let mut b = H2Options::new();
    b.max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_header_list_size(l.h2_max_header_list.0 as u32)
        .initial_window_size(l.h2_stream_window.0 as u32)
        .initial_connection_window_size(l.h2_connection_window.0 as u32)
        .max_concurrent_reset_streams(100)
        .max_pending_accept_reset_streams(100)
        .max_send_buffer_size(1 << 20);
    b
}

//! Turnpike: an API management gateway built on Cloudflare's Pingora.
//!
//! The library holds everything; `main.rs` only parses the command line. See the README for
//! the architecture and `conf/turnpike.toml` for every config key.

pub mod admin;
pub mod analytics;
pub mod app;
pub mod auth;
pub mod cache;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod headers;
pub mod identity;
pub mod limits;
pub mod lint;
pub mod notices;
pub mod offline;
pub mod openapi;
pub mod path;
pub mod peers;
pub mod policy;
pub mod policytest;
pub mod proxy;
pub mod reload;
pub mod remote;
pub mod reply;
pub mod route;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod upstream;

/// A one-line summary of a valid config, printed by `turnpike check`.
pub fn summary(snapshot: &state::Snapshot) -> String {
    let f = &snapshot.file;
    let targets: usize = snapshot.pools.values().map(|p| p.targets.len()).sum();
    let mut listeners: Vec<String> = f.server.listen.clone();
    listeners.extend(f.server.tls.iter().map(|t| format!("{} (tls)", t.listen)));
    format!(
        "ok: {} APIs, {} routes, {} upstreams with {} targets; listening on {}; admin on {}",
        f.apis.len(),
        snapshot
            .endpoints
            .iter()
            .filter(|e| !matches!(e.action, state::Action::Usage))
            .count(),
        snapshot.pools.len(),
        targets,
        listeners.join(", "),
        f.admin.listen
    )
}

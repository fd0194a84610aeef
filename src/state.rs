//! The compiled config (`Snapshot`, immutable, swapped atomically) and the state that outlives
//! one config (`Shared`). Requests pin one snapshot for their whole life.

use crate::config::file::FileConfig;
use crate::reload::ReloadReport;
use crate::route::{Match, Router};
use crate::upstream::Pool;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A secret value whose Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// A static answer given by the gateway (`respond` blocks).
#[derive(Debug, Clone)]
pub struct StaticReply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What a matched route does.
pub enum Action {
    Proxy(Arc<Pool>),
    Respond(Arc<StaticReply>),
    /// Answers from the API's OpenAPI document: the route's operations.
    Mock(Arc<Vec<Arc<crate::openapi::mock::MockOp>>>),
    /// `[usage]`: the identified caller's own usage.
    Usage,
}

/// The API a route belongs to.
#[derive(Debug)]
pub struct ApiInfo {
    pub name: String,
    pub version: Option<String>,
}

/// One routable endpoint: an API route (or a whole API without routes).
pub struct Endpoint {
    pub api: Arc<ApiInfo>,
    /// The full template, e.g. `/catalog/v1/items/{id}` (never the raw path).
    pub template: Arc<str>,
    pub action: Action,
    /// Bytes removed from the front of the path before forwarding (base-path strip).
    pub strip: usize,
    pub max_body: u64,
    /// How callers are identified (None: a public API).
    pub auth: Option<Arc<crate::auth::AuthPolicy>>,
    /// Scopes the caller needs for this route.
    pub scopes: Vec<String>,
    /// The plans that apply on this API (None: no limits).
    pub limits: Option<Arc<crate::limits::EndpointLimits>>,
    /// `[apis.limits] per_ip`, shared by the API's endpoints.
    pub per_ip: Option<Arc<crate::limits::ip::IpLimit>>,
    /// `[apis.cache]` (or the route's own block), on proxied endpoints.
    pub cache: Option<Arc<crate::cache::Policy>>,
    /// The policy pipeline of this endpoint (`crate::policy`).
    pub chain: crate::policy::Chain,
    /// The API is deprecated or retired (`[apis.catalog]`): its requests are counted in
    /// `turnpike_deprecated_requests_total`.
    pub deprecated: bool,
}

impl Endpoint {
    /// The 413 answer when a declared body length is over the route's limit.
    pub fn body_too_large(&self, content_length: Option<u64>) -> Option<crate::reply::Reply> {
        content_length.filter(|n| *n > self.max_body).map(|_| {
            crate::reply::Reply::new(
                crate::reply::Code::PayloadTooLarge,
                format!("the body limit of this route is {} bytes", self.max_body),
            )
        })
    }
}

impl Snapshot {
    /// The endpoint of a request: the usage endpoint for `GET [usage] path`, else the route
    /// table's answer. `host` as sent (port allowed), `path` checked by `crate::path`.
    pub fn route(&self, host: Option<&[u8]>, path: &[u8], method: &http::Method) -> Match {
        if let Some((usage, ep)) = &self.usage {
            if path == usage.as_bytes() && method == http::Method::GET {
                return Match::Found(*ep);
            }
        }
        self.router.find(host, path, method.as_str().as_bytes())
    }

    /// The endpoint a CORS preflight asks about: the route of the same path for the method
    /// named in `Access-Control-Request-Method`.
    pub fn preflight_endpoint(&self, req: &pingora::http::RequestHeader) -> Option<usize> {
        let method = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())?;
        let target = crate::path::check_target(req.raw_path()).ok()?;
        let host = crate::headers::request_host(req);
        match self.route(host, target.path, &method) {
            Match::Found(id) => Some(id),
            _ => None,
        }
    }
}

/// Edge limits in the form the hot path uses.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_line: usize,
    pub header_line: usize,
    pub header_block: usize,
    pub header_count: usize,
    pub keepalive_idle: Duration,
    /// Bytes per second a request body must average after `body_rate_after` (0: no rule).
    pub body_min_rate: u64,
    pub body_rate_after: Duration,
    /// Bytes per second a client must read answers at (0: no rule).
    pub send_min_rate: usize,
    pub upstream_header_block: usize,
}

/// One compiled config generation.
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub file: FileConfig,
    pub router: Router,
    pub endpoints: Vec<Endpoint>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub limits: Limits,
    /// `[server] strip_request_headers`.
    pub strip_request: crate::headers::NameList,
    pub admin_token: Option<Secret>,
    /// Consumers and key digests of the config file.
    pub identities: crate::identity::ConfigIdentities,
    /// The JWKS sources of the APIs, by URL (carried over by reloads).
    pub jwks: HashMap<String, Arc<crate::auth::jwt::JwksSource>>,
    /// `[plans.NAME]`, compiled.
    pub plans: Arc<crate::limits::Plans>,
    /// The usage path and its endpoint (whose auth is borrowed from an API).
    pub usage: Option<(String, usize)>,
    /// `[policies]`, the server's and groups' attachments, `[server] trusted_proxies`.
    pub policies: Arc<crate::policy::compile::Catalog>,
    /// The failed-authentication guard (`[server.limits] auth_failures_per_ip`).
    pub auth_guard: Option<Arc<crate::limits::ip::IpLimit>>,
    /// `[admin] auth_failures_per_ip`: the wrong-token guard of the admin listener.
    pub admin_guard: Option<Arc<crate::limits::ip::IpLimit>>,
    /// The API-key headers of every API, for naming the callers of shadow endpoints.
    pub key_headers: Vec<http::HeaderName>,
}

/// State shared by every service of the process.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// The store and its index (outlive config generations).
    pub identity: Arc<crate::identity::Identity>,
    /// Plan counters (outlive config generations: a reload changes numbers, not counts).
    pub limiter: Arc<crate::limits::limiter::Limiter>,
    /// The fleet's Redis (`[store] redis_url`), if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The edge cache (`[cache]`; created once, restart-only).
    pub cache: crate::cache::EdgeCache,
    /// Request records and what is built from them (`[analytics]`; restart-only).
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Client connections of the proxy listeners (`[server.limits] max_connections`).
    pub connections: Arc<crate::limits::conns::Connections>,
    pub config_path: PathBuf,
    pub started_at: SystemTime,
    /// Serialises reloads.
    pub reload_lock: Mutex<()>,
    last_reload: Mutex<Option<ReloadReport>>,
}

impl Shared {
    /// Where usage reports read: the fleet's Redis when there is one, else this node's store.
    pub fn usage(&self) -> crate::analytics::source::Source<'_> {
        crate::analytics::source::Source::new(self.identity.store(), self.cluster.as_deref())
    }

    pub fn new(
        snapshot: Snapshot,
        identity: Arc<crate::identity::Identity>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        config_path: PathBuf,
    ) -> Arc<Shared> {
        let cache = crate::cache::EdgeCache::new(&snapshot.file.cache);
        let analytics = Arc::new(crate::analytics::Analytics::new(
            &snapshot.file.analytics,
            config_path.parent(),
            cluster.clone(),
        ));
        let connections =
            crate::limits::conns::Connections::new(snapshot.file.server.limits.max_connections);
        Arc::new(Shared {
            cache,
            analytics,
            connections,
            snapshot: ArcSwap::from_pointee(snapshot),
            identity,
            limiter: Arc::new(crate::limits::limiter::Limiter::new()),
            cluster,
            config_path,
            started_at: SystemTime::now(),
            reload_lock: Mutex::new(()),
            last_reload: Mutex::new(None),
        })
    }

    /// The current config generation.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the current config generation.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The outcome of the last reload attempt, if any.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_last_reload(&self, report: ReloadReport) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_bytes_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        let mut long = b"secret".to_vec();
        long.extend(std::iter::repeat_n(0xff, 65_536));
        assert!(
            !constant_time_eq(b"secret", &long),
            "lengths differing by 2^16 still differ"
        );
        assert!(format!("{:?}", Secret(b"abc".to_vec())).contains("redacted"));
    }
}

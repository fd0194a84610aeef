//! The admin listener: `/health` and `/ready` for probes, and token-protected routes for
//! operators (`/upstreams`, `/status`, `POST /reload`). The token is compared in constant time; requests without
//! it get 401 problem+json. The proxy listeners never serve these routes.

use crate::headers::request_id;
use crate::reload::ReloadError;
use crate::reply::{problem_body, problem_value, Code};
use crate::state::{constant_time_eq, Shared};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod analytics;
mod cache;
mod catalog;
pub use catalog::since_seconds;
mod consumers;

/// Largest request body the admin API reads.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// An admin answer.
pub(crate) type Answer = Response<Vec<u8>>;

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

pub(crate) fn json_response(
    status: u16,
    body: serde_json::Value,
    content_type: &str,
    request_id: &str,
) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
    problem_or_json(status, body, content_type, request_id)
}

fn problem_or_json(
    status: u16,
    body: Vec<u8>,
    content_type: &str,
    request_id: &str,
) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    resp
}

/// 204 with the usual admin headers.
pub(crate) fn no_content(request_id: &str) -> Answer {
    let mut resp = problem_or_json(204, Vec::new(), "application/json", request_id);
    resp.headers_mut().remove(http::header::CONTENT_TYPE);
    resp
}

/// Reads the request body, up to `limit` bytes (`None`: too large or unreadable).
async fn read_body(session: &mut ServerSession, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return None;
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(out),
            Err(_) => return None,
        }
    }
}

pub(crate) fn problem(code: Code, detail: &str, request_id: &str) -> Response<Vec<u8>> {
    let body = problem_body(code, detail, request_id).to_vec();
    let mut resp = problem_or_json(code.status(), body, "application/problem+json", request_id);
    if code == Code::Unauthorized {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"turnpike-admin\""),
        );
    }
    resp
}

/// A problem answer with extra members (RFC 9457 extensions).
fn problem_with(
    code: Code,
    detail: &str,
    request_id: &str,
    extra: serde_json::Value,
) -> Response<Vec<u8>> {
    let mut body = problem_value(code, detail, request_id);
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    problem_or_json(code.status(), bytes, "application/problem+json", request_id)
}

/// The detail for a request body that is not the JSON expected: where it went wrong, not
/// serde's message, which repeats the value it read (a key, for one).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    format!(
        "invalid JSON body (line {}, column {})",
        e.line(),
        e.column()
    )
}

/// The first value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    crate::auth::query_values(query?.as_bytes(), name)
        .into_iter()
        .next()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Runs blocking store work (SQLite, Redis) off the admin's async worker, so that `/health`
/// and `/ready` keep answering during a long query.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(crate::store::StoreError::Io(format!(
            "store task failed: {e}"
        )))
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The proxy listen addresses that do not accept connections (probed on loopback for
/// wildcard addresses).
async fn listeners_down(server: &crate::config::file::ServerSection) -> Vec<String> {
    let addrs = server
        .listen
        .iter()
        .chain(server.tls.iter().map(|t| &t.listen));
    let mut down = Vec::new();
    for text in addrs {
        let Ok(mut addr) = text.parse::<std::net::SocketAddr>() else {
            continue;
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let probe = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if !matches!(probe, Ok(Ok(_))) {
            down.push(text.clone());
        }
    }
    down
}

impl AdminApp {
    /// The actor recorded in the audit log for the request's token: a fingerprint of it
    /// (never the token).
    fn authorized(&self, session: &ServerSession) -> Result<String, &'static str> {
        let snapshot = self.shared.snapshot();
        let Some(token) = &snapshot.admin_token else {
            return Err("no admin token is configured (set [admin] token_env or token_file)");
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .ok_or("missing bearer token")?;
        if constant_time_eq(given, &token.0) {
            let d = crate::identity::key::digest(&token.0);
            Ok(format!(
                "admin-token:{}",
                &crate::identity::key::to_hex(&d)[..12]
            ))
        } else {
            Err("invalid bearer token")
        }
    }

    /// `authorized`, behind the wrong-token guard of `[admin] auth_failures_per_ip`: an
    /// address that sent too many wrong tokens gets 429 for the rest of the window without its
    /// token being looked at, and the start of each such episode is logged once.
    fn guarded(
        &self,
        session: &ServerSession,
        rid: &str,
    ) -> Result<String, Box<Response<Vec<u8>>>> {
        let snapshot = self.shared.snapshot();
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let guard = snapshot.admin_guard.as_ref().zip(ip);
        if let Some((g, ip)) = guard {
            if g.exhausted(&ip) {
                let mut resp = problem(
                    Code::RateLimited,
                    "too many wrong admin tokens from this address; try again later",
                    rid,
                );
                if let Ok(v) = http::HeaderValue::from_str(&g.spec.per_secs.to_string()) {
                    resp.headers_mut().insert(http::header::RETRY_AFTER, v);
                }
                return Err(Box::new(resp));
            }
        }
        self.authorized(session).map_err(|why| {
            if let Some((g, ip)) = guard {
                g.record(&ip);
                if g.exhausted(&ip) {
                    log::warn!(
                        "admin: {ip} sent {} wrong or missing tokens within {} s; its admin requests get 429 until the window ends",
                        g.spec.count,
                        g.spec.per_secs
                    );
                }
            }
            Box::new(problem(Code::Unauthorized, why, rid))
        })
    }

    fn status(&self, rid: &str) -> Response<Vec<u8>> {
        let s = self.shared.snapshot();
        let last = self.shared.last_reload().map(|r| {
            json!({
                "at": unix_secs(r.at),
                "ok": r.error.is_none(),
                "error": r.error.as_ref().map(|e| e.to_string()),
            })
        });
        json_response(
            200,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "config_file": self.shared.config_path.display().to_string(),
                "config_generation": s.generation,
                "loaded_at": unix_secs(s.loaded_at),
                "started_at": unix_secs(self.shared.started_at),
                "last_reload": last,
                "store": self.store_status(),
                "cache": self.shared.cache.status(),
                "governance": governance_warnings(&s.file),
            }),
            "application/json",
            rid,
        )
    }

    /// Where records and counters are kept; with Redis, whether it is reachable and so whether
    /// plans count through it or follow their `on_store_error`.
    fn store_status(&self) -> serde_json::Value {
        match &self.shared.cluster {
            None => json!({
                "kind": "sqlite",
                "path": self.shared.identity.store().path.display().to_string(),
            }),
            Some(c) => {
                let mut v = c.status();
                v["kind"] = json!("redis");
                v
            }
        }
    }

    async fn reload(&self, query: Option<&str>, rid: &str) -> Response<Vec<u8>> {
        let shared = self.shared.clone();
        let force = query_param(query, "allow_large_removal").as_deref() == Some("true");
        let outcome = match tokio::task::spawn_blocking(move || {
            crate::reload::reload(&shared, force)
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => return problem(Code::InternalError, "the reload task failed", rid),
        };
        match outcome {
            Ok(generation) => json_response(
                200,
                json!({"status": "reloaded", "config_generation": generation}),
                "application/json",
                rid,
            ),
            Err(ReloadError::Invalid(e)) => {
                let file = e.file.display().to_string();
                let problems: Vec<serde_json::Value> = e
                    .problems
                    .iter()
                    .map(|p| {
                        json!({
                            "location": match p.line_col {
                                Some((l, c)) => format!("{file}:{l}:{c}"),
                                None => file.clone(),
                            },
                            "key_path": (!p.key_path.is_empty()).then(|| p.key_path.clone()),
                            "message": p.message,
                        })
                    })
                    .collect();
                let detail = format!(
                    "{} problem(s); the running config is unchanged",
                    problems.len()
                );
                problem_with(
                    Code::InvalidConfig,
                    &detail,
                    rid,
                    json!({ "problems": problems }),
                )
            }
            Err(ReloadError::NeedsRestart(keys)) => {
                let detail = format!(
                    "{} can only change with a restart or an upgrade; the running config is unchanged",
                    keys.join(", ")
                );
                problem_with(Code::RestartRequired, &detail, rid, json!({ "keys": keys }))
            }
            Err(ReloadError::LargeRemoval(r)) => problem_with(
                Code::LargeRemoval,
                &r.to_string(),
                rid,
                json!({ "would_remove": { "apis": r.apis, "consumers": r.consumers } }),
            ),
        }
    }

    fn upstreams(&self, rid: &str) -> Response<Vec<u8>> {
        let snapshot = self.shared.snapshot();
        let now = Instant::now();
        let mut pools: Vec<_> = snapshot.pools.values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let list: Vec<serde_json::Value> = pools.iter().map(|p| pool_json(p, now)).collect();
        json_response(200, json!({ "upstreams": list }), "application/json", rid)
    }
}

/// A pool, its balancing and each target's health, as `/upstreams` and the catalogue show it.
pub(crate) fn pool_json(p: &crate::upstream::Pool, now: Instant) -> serde_json::Value {
    let targets: Vec<serde_json::Value> = p
        .targets
        .iter()
        .map(|t| {
            let ejected = t.ejected_for(now);
            let healthy = t.active_healthy();
            json!({
                "target": t.label,
                "address": t.addr.to_string(),
                "health": if healthy { "healthy" } else { "unhealthy" },
                "health_since": t.health_since_unix_ms() / 1000,
                "ejected": ejected.is_some(),
                "ejected_for_ms": ejected.map(|d| d.as_millis() as u64),
                "ejections": t.ejections(),
                "state": if !healthy { "down" } else if ejected.is_some() { "ejected" } else { "up" },
            })
        })
        .collect();
    json!({
        "name": &*p.name,
        "balance": format!("{:?}", p.def.balance).to_lowercase(),
        "active_check": p.health_kind().map(|k| format!("{k:?}").to_lowercase()),
        "targets": targets,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let rid = request_id(req.headers.get("x-request-id"));
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let accept = req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let Some(body) = read_body(session, MAX_ADMIN_BODY).await else {
            session.set_keepalive(None);
            return problem(
                Code::PayloadTooLarge,
                &format!("admin request bodies are limited to {MAX_ADMIN_BODY} bytes"),
                &rid,
            );
        };
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/health") => {
                return json_response(200, json!({"status": "ok"}), "application/json", &rid);
            }
            ("GET" | "HEAD", "/ready") => {
                let s = self.shared.snapshot();
                let down = listeners_down(&s.file.server).await;
                let (status, word) = if down.is_empty() {
                    (200, "ready")
                } else {
                    (503, "not_ready")
                };
                return json_response(
                    status,
                    json!({
                        "status": word,
                        "config_generation": s.generation,
                        "loaded_at": unix_secs(s.loaded_at),
                        "listeners_down": down,
                    }),
                    "application/json",
                    &rid,
                );
            }
            _ => {}
        }
        let actor = match self.guarded(session, &rid) {
            Ok(actor) => actor,
            Err(answer) => return *answer,
        };
        if path == "/audit" || path == "/consumers" || path.starts_with("/consumers/") {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let call = consumers::Call {
                method: method.as_str(),
                segments,
                query: query.as_deref(),
                body: &body,
                actor: &actor,
                rid: &rid,
            };
            return consumers::handle(&self.shared, call).await;
        }
        if path == "/catalog" || path.starts_with("/catalog/") {
            return catalog::handle(&self.shared, method.as_str(), &path, query.as_deref(), &rid)
                .await;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/upstreams") => self.upstreams(&rid),
            ("GET", "/metrics") => analytics::metrics(&self.shared, &rid),
            ("GET", "/analytics/usage") => {
                analytics::usage(&self.shared, query.as_deref(), &accept, &rid).await
            }
            ("GET", "/analytics/top") => analytics::top(&self.shared, query.as_deref(), &rid).await,
            ("GET", "/analytics/alerts") => analytics::alerts(&self.shared, query.as_deref(), &rid),
            ("GET", "/status") => self.status(&rid),
            ("POST", "/reload") => self.reload(query.as_deref(), &rid).await,
            ("POST", "/cache/purge") => cache::purge(&self.shared, &body, &actor, &rid).await,
            (_, "/cache/purge") => problem(Code::MethodNotAllowed, "use POST", &rid),
            (
                _,
                "/upstreams" | "/health" | "/ready" | "/status" | "/metrics" | "/analytics/usage"
                | "/analytics/top" | "/analytics/alerts",
            ) => problem(Code::MethodNotAllowed, "use GET", &rid),
            (_, "/reload") => problem(Code::MethodNotAllowed, "use POST", &rid),
            _ => problem(Code::RouteNotFound, "no such admin route", &rid),
        }
    }
}

/// The governance findings at severity warn of the running config (errors never load).
fn governance_warnings(file: &crate::config::file::FileConfig) -> serde_json::Value {
    use crate::config::governance::{evaluate, Severity};
    serde_json::Value::Array(
        evaluate(file)
            .into_iter()
            .filter(|f| f.severity == Severity::Warn)
            .map(|f| {
                json!({
                    "rule": f.rule,
                    "severity": f.severity.as_str(),
                    "key_path": f.key_path,
                    "message": f.message,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_body_that_does_not_parse_is_not_repeated() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Keys {
            keys: Vec<u32>,
        }
        let e = serde_json::from_slice::<Keys>(br#"{"keys":["tpk_secret"]}"#)
            .expect_err("a string is not a number");
        assert!(e.to_string().contains("tpk_secret"), "serde repeats it");
        let detail = super::json_error(&e);
        assert!(!detail.contains("tpk_secret"), "{detail}");
        assert!(detail.contains("line 1"), "{detail}");
    }
}

//! The offline policy runner behind `turnpike explain` and `turnpike test`: a request is routed
//! and run through the very code the live gateway runs (`Snapshot::route`,
//! `policy::run::request`, `forward::upstream_request`, `policy::run::response`), without
//! any upstream or network. Keys are looked up in the configured store (opened read only in
//! effect: nothing is written), plans count against fresh counters.

pub mod cases;
pub mod explain;

use crate::identity::{Identity, KeyEntry};
use crate::policy::run::{Inbound, Outcome, Services};
use crate::policy::{Event, Flow, Stage};
use crate::reply::Reply;
use crate::route::Match;
use crate::state::{Action, Snapshot};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A request to simulate.
#[derive(Debug, Clone)]
pub struct Simulate {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The TCP peer (default 127.0.0.1); behind `trusted_proxies`, `X-Forwarded-For` applies.
    pub client_ip: Option<IpAddr>,
    /// A declared body length.
    pub body_size: Option<u64>,
    /// The body (validated against the API's OpenAPI document where a validate step applies;
    /// its length is the declared one unless `body_size` says otherwise).
    pub body: Option<String>,
}

/// What the gateway would do.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Simulated {
    /// `API [version] template`, once routed.
    pub route: Option<String>,
    pub params: Vec<(String, String)>,
    pub client_ip: Option<String>,
    /// The gateway's own answer; `None` when the request goes to the upstream.
    pub status: Option<u16>,
    pub code: Option<String>,
    pub detail: Option<String>,
    /// The policy that refused, if one did.
    pub policy: Option<String>,
    pub stages: Vec<Decision>,
    /// The request the upstream would receive.
    pub upstream: Option<UpstreamRequest>,
    /// Headers added to the answer (RateLimit fields, CORS, and a refusal's own).
    pub answer_headers: Vec<(String, String)>,
    /// What the Response stage does to a `200 application/json` answer of the upstream.
    pub response_edits: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub stage: &'static str,
    pub policy: String,
    pub kind: &'static str,
    pub decision: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamRequest {
    pub pool: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A config, its store and fresh counters, ready to simulate requests.
pub struct Bench {
    pub snapshot: Snapshot,
    identity: Identity,
    limiter: crate::limits::limiter::Limiter,
    /// A store made for this run (the config's did not exist), removed at the end.
    scratch: Option<PathBuf>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(p) = self.scratch.take() {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }
}

impl Bench {
    /// Loads and compiles `config` (every problem is an error, as for `turnpike check`).
    pub fn open(config: &Path) -> Result<Bench, String> {
        let snapshot = crate::config::load_snapshot(config, None).map_err(|e| e.to_string())?;
        let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        let path = crate::app::store_path(&absolute, &snapshot.file.store.path);
        let (path, scratch) = if path.exists() {
            (path, None)
        } else {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let p = std::env::temp_dir().join(format!(
                "turnpike-policytest-{}-{nanos}.db",
                std::process::id()
            ));
            (p.clone(), Some(p))
        };
        let identity =
            Identity::open(&path, None).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Bench {
            snapshot,
            identity,
            limiter: crate::limits::limiter::Limiter::new(),
            scratch,
        })
    }

    /// A key that identifies `consumer` in this run only (`{key:ID}` in test cases).
    pub fn test_key(&mut self, consumer: &str) -> Result<String, String> {
        if self
            .identity
            .consumer(&self.snapshot.identities, consumer)
            .is_none()
        {
            return Err(format!(
                "{{key:{consumer}}}: no consumer {consumer:?} in the config or the store"
            ));
        }
        let key = crate::identity::key::generate();
        self.snapshot.identities.keys.insert(
            key.digest,
            Arc::new(KeyEntry {
                key_id: "test".into(),
                consumer: consumer.to_string(),
                expires_at: None,
            }),
        );
        Ok(key.secret)
    }

    /// Counts `n` requests like `req` before it (`--usage N`).
    pub async fn warm(&self, req: &Simulate, n: u64) -> Result<(), String> {
        for _ in 0..n {
            self.run(req).await?;
        }
        Ok(())
    }

    /// Runs one request through the pipeline.
    pub async fn run(&self, req: &Simulate) -> Result<Simulated, String> {
        let head = request_header(req)?;
        let snapshot = &self.snapshot;
        let mut out = Simulated::default();
        let peer = req.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let client_ip = crate::policy::ip::client_address(
            Some(peer),
            &snapshot.policies.trusted,
            head.headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
        );
        out.client_ip = client_ip.map(|ip| ip.to_string());
        let request_id = head
            .headers
            .get("x-request-id")
            .map(|v| crate::headers::request_id(Some(v)))
            .unwrap_or_else(|| crate::headers::RequestId::from_static("offline"));
        let target = match crate::path::check_target(head.raw_path()) {
            Ok(t) => t,
            Err(e) => {
                return Ok(refused(
                    out,
                    Reply::new(crate::reply::Code::BadRequest, e.detail()),
                ))
            }
        };
        let host = crate::headers::request_host(&head);
        let (id, wrong_method) = match snapshot.route(host, target.path, &head.method) {
            Match::Found(id) => (id, None),
            Match::NotFound => {
                return Ok(refused(out, Reply::no_route(&head.method, target.path)));
            }
            Match::MethodNotAllowed(allowed, id) => {
                let reply = Reply::wrong_method(&head.method, allowed);
                // As live: only a CORS preflight goes on, with the route it asks about.
                if !crate::policy::cors::is_preflight(&head) {
                    return Ok(refused(out, reply));
                }
                (
                    snapshot.preflight_endpoint(&head).unwrap_or(id),
                    Some(reply),
                )
            }
        };
        let ep = &snapshot.endpoints[id];
        out.route = Some(match &ep.api.version {
            Some(v) => format!("{} {v} {}", ep.api.name, ep.template),
            None => format!("{} {}", ep.api.name, ep.template),
        });
        let params = crate::policy::template::Params {
            names: &ep.chain.params,
            path: target.path,
        };
        out.params = ep
            .chain
            .params
            .iter()
            .filter_map(|(_, n)| {
                Some((
                    n.to_string(),
                    String::from_utf8_lossy(params.get(n)?).into_owned(),
                ))
            })
            .collect();
        if wrong_method.is_none() {
            if let Some(reply) = ep.body_too_large(req.body_size) {
                return Ok(refused(out, reply));
            }
        }
        let mut flow = Flow::new(ep.max_body);
        flow.trace = Some(Vec::new());
        let services = Services {
            identity: &self.identity,
            limiter: &self.limiter,
            cluster: None,
        };
        let inbound = Inbound {
            head: &head,
            client_ip,
            content_length: req.body_size,
            background: false,
        };
        let last = if wrong_method.is_some() {
            Stage::Cors
        } else {
            Stage::Limit
        };
        let outcome =
            crate::policy::run::request(snapshot, &services, ep, &inbound, &mut flow, last).await;
        let outcome = match (outcome, wrong_method) {
            (Ok(Outcome::Continue), Some(reply)) => Err(reply),
            // The Validate stage, as the proxy runs it once the body is read.
            (Ok(Outcome::Continue), None) => {
                let raw = head.raw_path();
                let q = raw.iter().position(|&b| b == b'?');
                let (path, query) = match q {
                    Some(i) => (&raw[..i], &raw[i + 1..]),
                    None => (raw, &b""[..]),
                };
                let request = crate::openapi::contract::Request {
                    headers: &head.headers,
                    path,
                    query,
                    body: req.body.as_deref().map(str::as_bytes),
                    has_body: req.body.as_ref().is_some_and(|b| !b.is_empty())
                        || req.body_size.is_some_and(|n| n > 0),
                };
                crate::policy::run::validate(ep, &head.method, &request, &mut flow)
                    .map(|_| Outcome::Continue)
            }
            (other, _) => other,
        };
        match outcome {
            Err(mut reply) => {
                out.answer_headers = headers_text(&flow.answer);
                if ep.cache.is_some() {
                    reply = reply.header("X-Cache-Status", "BYPASS");
                }
                let mut out = refused(out, reply);
                out.stages = decisions(&mut flow);
                return Ok(out);
            }
            Ok(Outcome::Preflight(headers)) => {
                out.status = Some(204);
                out.answer_headers = headers_text(&headers);
            }
            Ok(Outcome::Continue) => match &ep.action {
                Action::Respond(r) => {
                    out.status = Some(r.status);
                    let raw = head.raw_path();
                    let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
                    let mut all = crate::policy::run::static_headers(
                        &ep.chain,
                        &mut flow,
                        &request_id,
                        client_ip,
                        path,
                        r.status,
                        &r.headers,
                    )
                    .unwrap_or_else(|| r.headers.clone());
                    all.extend(flow.answer.iter().cloned());
                    out.answer_headers = headers_text(&all);
                }
                Action::Mock(ops) => {
                    let get = http::Method::GET;
                    let method = if head.method == http::Method::HEAD {
                        &get
                    } else {
                        &head.method
                    };
                    let answer = ops
                        .iter()
                        .find(|o| o.method == *method)
                        .and_then(|o| o.answer(None, None, None).ok());
                    out.status = Some(answer.map_or(400, |a| a.status));
                    let mut all = vec![(
                        http::HeaderName::from_static("x-turnpike-mock"),
                        http::HeaderValue::from_static("true"),
                    )];
                    all.extend(flow.answer.iter().cloned());
                    out.answer_headers = headers_text(&all);
                }
                Action::Usage => {
                    out.status = Some(200);
                    out.answer_headers = headers_text(&flow.answer);
                }
                Action::Proxy(pool) => {
                    let mut upstream = head.clone();
                    let forward = crate::forward::Forward {
                        original: &head,
                        client_ip,
                        tls: req.url.to_ascii_lowercase().starts_with("https://"),
                        request_id: &request_id,
                        traceparent: &http::HeaderValue::from_static(
                            "00-00000000000000000000000000000000-0000000000000000-00",
                        ),
                        cache_strip: ep.cache.as_ref().map(|c| &c.strip),
                    };
                    crate::forward::upstream_request(
                        snapshot,
                        ep,
                        &mut flow,
                        &forward,
                        &mut upstream,
                    )
                    .map_err(|e| format!("the upstream request could not be built: {e}"))?;
                    out.upstream = Some(UpstreamRequest {
                        pool: pool.name.to_string(),
                        method: upstream.method.to_string(),
                        path: upstream
                            .uri
                            .path_and_query()
                            .map_or_else(|| "/".to_string(), |p| p.to_string()),
                        headers: upstream
                            .headers
                            .iter()
                            .map(|(n, v)| {
                                (
                                    n.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect(),
                    });
                    out.answer_headers = headers_text(&flow.answer);
                    out.response_edits =
                        response_edits(ep, &mut flow, &request_id, client_ip, target.path);
                }
            },
        }
        out.stages = decisions(&mut flow);
        Ok(out)
    }
}

/// What the Response stage does to a plain `200 application/json` answer.
fn response_edits(
    ep: &crate::state::Endpoint,
    flow: &mut Flow,
    request_id: &str,
    client_ip: Option<IpAddr>,
    path: &[u8],
) -> Vec<(String, String)> {
    let Ok(mut resp) = ResponseHeader::build(200, None) else {
        return Vec::new();
    };
    let _ = resp.insert_header("content-type", "application/json");
    let before = headers_of(&resp);
    let _ = crate::policy::run::response(
        &ep.chain, flow, request_id, client_ip, path, &mut resp, true,
    );
    let after = headers_of(&resp);
    let mut out: Vec<(String, String)> = after
        .iter()
        .filter(|h| !before.contains(h))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    out.extend(
        before
            .iter()
            .filter(|(n, _)| !after.iter().any(|(m, _)| m == n))
            .map(|(n, _)| (n.clone(), "(removed)".to_string())),
    );
    if flow.json.take().is_some() {
        out.push((
            "body".into(),
            "edited by json_fields (when JSON, whole and unencoded)".into(),
        ));
    }
    out
}

fn headers_of(resp: &ResponseHeader) -> Vec<(String, String)> {
    resp.headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn headers_text(h: &[(http::HeaderName, http::HeaderValue)]) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn decisions(flow: &mut Flow) -> Vec<Decision> {
    flow.trace
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|e: Event| Decision {
            stage: e.stage.as_str(),
            policy: e.policy.to_string(),
            kind: e.kind,
            decision: e.decision,
        })
        .collect()
}

fn refused(mut out: Simulated, reply: Reply) -> Simulated {
    out.status = Some(reply.code.status());
    out.code = Some(reply.code.as_str().to_string());
    out.detail = Some(reply.detail.clone());
    out.policy = reply.by.as_ref().map(|(n, _)| n.to_string());
    for (n, v) in &reply.headers {
        out.answer_headers
            .retain(|(m, _)| !m.eq_ignore_ascii_case(n));
        out.answer_headers.push((n.to_ascii_lowercase(), v.clone()));
    }
    out
}

/// Builds the request head from a method, an absolute URL and headers; the URL's authority
/// is the Host header unless one is given.
fn request_header(req: &Simulate) -> Result<RequestHeader, String> {
    let uri: http::Uri = req
        .url
        .parse()
        .map_err(|e| format!("{:?} is not a URL: {e}", req.url))?;
    let Some(authority) = uri.authority().map(|a| a.as_str().to_string()) else {
        return Err(format!(
            "{:?} needs a scheme and a host, e.g. https://api.example.com/orders",
            req.url
        ));
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let method = req.method.to_ascii_uppercase();
    let mut head = RequestHeader::build(method.as_str(), path.as_bytes(), None)
        .map_err(|e| format!("{method}: {e}"))?;
    let mut has_host = false;
    for (n, v) in &req.headers {
        has_host |= n.eq_ignore_ascii_case("host");
        head.append_header(n.to_ascii_lowercase(), v.as_str())
            .map_err(|e| format!("header {n}: {e}"))?;
    }
    if !has_host {
        head.insert_header("host", authority.as_str())
            .map_err(|e| format!("host {authority}: {e}"))?;
    }
    if let Some(n) = req.body_size.or(req.body.as_ref().map(|b| b.len() as u64)) {
        head.insert_header("content-length", n.to_string())
            .map_err(|e| format!("content-length: {e}"))?;
    }
    Ok(head)
}

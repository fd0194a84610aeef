//! Runs an endpoint's pipeline: the request stages up to the action (`request`), the upstream
//! request's edits (`upstream`), and the answer's (`response`, `response_body`). The live proxy
//! and the offline runner call these same functions.

use super::template::{Params, Vars};
use super::{caller, Chain, Flow, Kind, Policy, Stage, Step};
use crate::reply::{Code, Reply};
use crate::state::{Endpoint, Snapshot};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;

/// What the request stages need beside the request: the stores and counters of the process.
pub struct Services<'a> {
    pub identity: &'a crate::identity::Identity,
    pub limiter: &'a crate::limits::limiter::Limiter,
    pub cluster: Option<&'a crate::cluster::Cluster>,
}

/// The request as the stages see it.
pub struct Inbound<'a> {
    pub head: &'a RequestHeader,
    /// The client address (`ip::client_address`).
    pub client_ip: Option<IpAddr>,
    pub content_length: Option<u64>,
    /// The cache's background refresh: only identification runs (for the cache key).
    pub background: bool,
}

/// How the request stages ended when nothing refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// On to the action.
    Continue,
    /// A CORS preflight the `cors` policy answers itself (204 with these headers).
    Preflight(Vec<(HeaderName, HeaderValue)>),
}

/// Runs the request stages of `ep` up to and including `last`; `Err` is the refusal, naming
/// its policy.
pub async fn request(
    snapshot: &Snapshot,
    services: &Services<'_>,
    ep: &Endpoint,
    req: &Inbound<'_>,
    flow: &mut Flow,
    last: Stage,
) -> Result<Outcome, Reply> {
    for stage in Stage::ALL
        .into_iter()
        .take_while(|s| *s <= last.min(Stage::Limit))
    {
        if req.background && stage != Stage::Identify {
            continue;
        }
        for step in ep.chain.at(stage) {
            if let Some(out) = run_step(snapshot, services, req, flow, stage, &step.policy).await? {
                return Ok(out);
            }
        }
        if stage == Stage::Identify {
            // (A background refresh needs the groups too: their Transform edits shape the
            // copy it stores.)
            flow.groups = group_policies(snapshot, flow);
            if req.background {
                continue;
            }
            // Group policies of Edge kinds run now that the consumer is known.
            let early: Vec<Arc<Policy>> = flow
                .groups
                .iter()
                .filter(|p| p.kind.stages().contains(&Stage::Edge))
                .cloned()
                .collect();
            for p in early {
                run_step(snapshot, services, req, flow, Stage::Edge, &p).await?;
            }
        }
        if stage > Stage::Identify {
            let groups: Vec<Arc<Policy>> = flow
                .groups
                .iter()
                .filter(|p| p.kind.stages().contains(&stage))
                .cloned()
                .collect();
            for p in groups {
                run_step(snapshot, services, req, flow, stage, &p).await?;
            }
        }
    }
    if last >= Stage::Limit {
        if let Some((policy, state)) = flow.ratelimit.take() {
            push_text(&mut flow.answer, "ratelimit-policy", policy);
            push_text(&mut flow.answer, "ratelimit", state);
        }
    }
    Ok(Outcome::Continue)
}

fn push_text(out: &mut Vec<(HeaderName, HeaderValue)>, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        out.push((HeaderName::from_static(name), v));
    }
}

/// The policies of the consumer's groups, each once, in the order of the consumer's groups.
fn group_policies(snapshot: &Snapshot, flow: &Flow) -> Vec<Arc<Policy>> {
    let Some(c) = flow
        .consumer
        .as_ref()
        .filter(|_| snapshot.policies.has_groups())
    else {
        return Vec::new();
    };
    let mut out: Vec<Arc<Policy>> = Vec::new();
    for g in &c.groups {
        for p in snapshot.policies.group(g) {
            if !out.iter().any(|q| Arc::ptr_eq(q, p)) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// Runs one request-stage step; `Some` ends the request stages with that outcome.
async fn run_step(
    snapshot: &Snapshot,
    services: &Services<'_>,
    req: &Inbound<'_>,
    flow: &mut Flow,
    stage: Stage,
    policy: &Policy,
) -> Result<Option<Outcome>, Reply> {
    let by = |mut r: Reply| {
        r.by = Some((policy.name.clone(), policy.kind.as_str()));
        r
    };
    let result: Result<Option<Outcome>, Reply> = match &policy.kind {
        Kind::Lifecycle(l) => l.check(crate::clock::now(), &mut flow.answer).map(|_| None),
        Kind::BodySize(max) => {
            if *max < flow.max_body {
                flow.max_body = *max;
                flow.max_body_by = Some((policy.name.clone(), policy.kind.as_str()));
            }
            match req.content_length {
                Some(n) if n > *max => Err(Reply::new(
                    Code::PayloadTooLarge,
                    format!("the body limit of this API is {max} bytes"),
                )),
                _ => Ok(None),
            }
        }
        Kind::IpFilter(f) => match f.admits(req.client_ip) {
            true => Ok(None),
            false => Err(Reply::new(
                Code::Forbidden,
                "requests from this address are not allowed on this API",
            )),
        },
        Kind::Bot(b) => {
            let ua = req
                .head
                .headers
                .get(header::USER_AGENT)
                .map(|v| v.as_bytes());
            match b.refuses(ua) {
                None => Ok(None),
                Some(why) => Err(Reply::new(Code::Forbidden, why)),
            }
        }
        Kind::PerIp(limit) => caller::per_ip(limit, req.client_ip, flow).map(|_| None),
        Kind::Cors(c) => {
            if super::cors::is_preflight(req.head) {
                match c.preflight(req.head) {
                    Ok(headers) => Ok(Some(Outcome::Preflight(headers))),
                    Err(why) => Err(Reply::new(Code::CorsRejected, why)),
                }
            } else {
                flow.cors = true;
                c.actual(req.head, &mut flow.answer);
                Ok(None)
            }
        }
        Kind::Identify(auth) => caller::identify(
            snapshot,
            services.identity,
            auth,
            req.head,
            req.client_ip,
            flow,
        )
        .await
        .map(|_| None),
        Kind::Authorize { auth, scopes } => match &flow.consumer {
            Some(c) => crate::auth::authorize(auth, c, scopes).map(|_| None),
            None => Ok(None),
        },
        Kind::Plan(limits) => caller::plan(limits, services.limiter, services.cluster, flow)
            .await
            .map(|_| None),
        // Transform and Response kinds do not run in the request stages; Validate runs in
        // `validate`, once the body is read.
        Kind::Headers(_) | Kind::Rewrite(_) | Kind::JsonFields(_) | Kind::Validate(_) => Ok(None),
    };
    match result {
        Ok(out) => {
            flow.note(stage, policy, || match &out {
                Some(Outcome::Preflight(_)) => "answer the preflight: 204".into(),
                _ => "continue".into(),
            });
            Ok(out)
        }
        Err(reply) => {
            flow.note(stage, policy, || {
                format!(
                    "refuse: {} {} ({})",
                    reply.code.status(),
                    reply.code.as_str(),
                    reply.detail
                )
            });
            Err(by(reply))
        }
    }
}

/// The Validate stage: the endpoint's most specific validate step checks the request (its
/// body, when `req.body` holds it). `Err` is the refusal naming the policy; in report mode the
/// problems are left in `flow.contract`.
pub fn validate(
    ep: &Endpoint,
    method: &http::Method,
    req: &crate::openapi::contract::Request<'_>,
    flow: &mut Flow,
) -> Result<(), Reply> {
    let Some(step) = ep.chain.at(Stage::Validate).last() else {
        return Ok(());
    };
    let Kind::Validate(v) = &step.policy.kind else {
        return Ok(());
    };
    let result = super::validate::run(v, &ep.chain.ops, method, req, flow);
    let policy = &step.policy;
    match &result {
        Ok(()) => {
            let reported = flow.contract.reported.len();
            flow.note(Stage::Validate, policy, || match reported {
                0 => "continue".into(),
                n => format!("continue (report: {n} problems)"),
            })
        }
        Err(reply) => flow.note(Stage::Validate, policy, || {
            format!("refuse: 400 request_invalid ({})", reply.detail)
        }),
    }
    result.map_err(|mut r| {
        r.by = Some((policy.name.clone(), policy.kind.as_str()));
        r
    })
}

/// The template variables of a request.
pub fn vars<'a>(
    chain: &'a Chain,
    flow: &'a Flow,
    request_id: &'a str,
    client_ip: Option<IpAddr>,
    path: &'a [u8],
) -> Vars<'a> {
    Vars {
        consumer: flow.consumer.as_deref(),
        request_id,
        client_ip,
        params: Params {
            names: &chain.params,
            path,
        },
    }
}

/// The policies of `stage` for this request: the endpoint's, then its groups'.
fn steps_at(chain: &Chain, flow: &Flow, stage: Stage) -> Vec<Arc<Policy>> {
    chain
        .at(stage)
        .map(|s: &Step| s.policy.clone())
        .chain(
            flow.groups
                .iter()
                .filter(|p| p.kind.stages().contains(&stage))
                .cloned(),
        )
        .collect()
}

/// The Transform stage: edits the upstream request (after the base-path strip). A rewrite whose
/// template has no value for this request leaves the target as it is.
pub fn upstream(
    chain: &Chain,
    flow: &mut Flow,
    request_id: &str,
    client_ip: Option<IpAddr>,
    path: &[u8],
    upstream: &mut RequestHeader,
) -> pingora::Result<()> {
    if !chain.transforms && flow.groups.is_empty() {
        return Ok(());
    }
    let mut changes = flow.trace.as_ref().map(|_| Vec::new());
    let policies = steps_at(chain, flow, Stage::Transform);
    let vars = vars(chain, flow, request_id, client_ip, path);
    let mut notes: Vec<(Arc<Policy>, String)> = Vec::new();
    for p in &policies {
        match &p.kind {
            Kind::Headers(h) => {
                h.request.apply(upstream, &vars, &mut changes)?;
            }
            Kind::Rewrite(r) => {
                let current = upstream.uri.path().to_string();
                let query = upstream.uri.query().map(str::to_string);
                let (target, skipped) = r.apply(&current, query.as_deref(), &vars);
                if let Some(c) = changes.as_mut() {
                    c.push(super::edits::Change::Path(target.clone()));
                    c.extend(
                        skipped
                            .into_iter()
                            .map(|why| super::edits::Change::Skipped("rewrite".into(), why)),
                    );
                }
                replace_path_and_query(upstream, target.into_bytes())?;
            }
            Kind::JsonFields(j) if j.applies(vars.consumer) => {
                // The answer must come whole and unencoded to be edited.
                for name in [header::ACCEPT_ENCODING, header::RANGE, header::IF_RANGE] {
                    if upstream.remove_header(&name).is_some() {
                        if let Some(c) = changes.as_mut() {
                            c.push(super::edits::Change::Removed(name.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(c) = changes.as_mut() {
            notes.push((p.clone(), describe(c)));
            c.clear();
        }
    }
    for (p, text) in notes {
        let text = if text.is_empty() {
            "no change".to_string()
        } else {
            text
        };
        flow.note(Stage::Transform, &p, || text);
    }
    Ok(())
}

/// Replaces the path and query of an upstream request, keeping the scheme and authority
/// (HTTP/2 carries the host there).
pub fn replace_path_and_query(
    upstream: &mut RequestHeader,
    path_and_query: Vec<u8>,
) -> pingora::Result<()> {
    use pingora::{Error, ErrorType};
    const WHY: &str = "cannot rewrite the request target";
    let mut parts = upstream.uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|e| Error::because(ErrorType::InternalError, WHY, e))?,
    );
    let uri = http::Uri::from_parts(parts)
        .map_err(|e| Error::because(ErrorType::InternalError, WHY, e))?;
    upstream.set_uri(uri);
    Ok(())
}

fn describe(changes: &[super::edits::Change]) -> String {
    use super::edits::Change;
    changes
        .iter()
        .map(|c| match c {
            Change::Removed(n) => format!("remove {n}"),
            Change::Set(n, v) => format!("set {n}: {v}"),
            Change::Skipped(n, why) => format!("skip {n} ({why})"),
            Change::Path(p) => format!("target {p}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The body of an answer being collected for `json_fields`.
#[derive(Debug)]
pub struct JsonEdit {
    policies: Vec<Arc<Policy>>,
    buf: Vec<u8>,
    max: u64,
}

/// The Response stage on the answer's head: header edits, then the preparation of a JSON
/// body edit (the length goes: the edited body is framed anew). `Err` is a refusal of an
/// answer that must be edited but cannot be.
pub fn response(
    chain: &Chain,
    flow: &mut Flow,
    request_id: &str,
    client_ip: Option<IpAddr>,
    path: &[u8],
    resp: &mut ResponseHeader,
    body_follows: bool,
) -> Result<(), Reply> {
    if !chain.responds && flow.groups.is_empty() {
        return Ok(());
    }
    let mut changes = flow.trace.as_ref().map(|_| Vec::new());
    let policies = steps_at(chain, flow, Stage::Response);
    let mut json: Vec<Arc<Policy>> = Vec::new();
    {
        let vars = vars(chain, flow, request_id, client_ip, path);
        for p in &policies {
            match &p.kind {
                Kind::Headers(h) if h.response.apply(resp, &vars, &mut changes).is_err() => {
                    log::debug!("policy {}: an answer header could not be set", p.name);
                }
                Kind::JsonFields(j) if j.applies(vars.consumer) => json.push(p.clone()),
                _ => {}
            }
        }
    }
    if let Some(c) = changes.as_ref().filter(|c| !c.is_empty()) {
        let text = describe(c);
        if let Some(p) = policies.iter().find(|p| matches!(p.kind, Kind::Headers(_))) {
            flow.note(Stage::Response, p, || text);
        }
    }
    let content_type = resp
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_ascii_lowercase())
        .unwrap_or_default();
    let is_json = super::json::is_json(&content_type);
    if !json.is_empty() && !body_follows && is_json {
        // A HEAD answer's length would tell the size of what the policy removes.
        resp.remove_header(&header::CONTENT_LENGTH);
    }
    if json.is_empty() || !body_follows || resp.status == 204 || resp.status == 304 {
        return Ok(());
    }
    // Part of a body cannot be edited: a range answer (Range is removed from requests these
    // policies edit, but an upstream may answer one anyway) is refused, never passed.
    if resp.status == 206 || content_type.starts_with(b"multipart/byteranges") {
        let first = &json[0];
        let mut r = Reply::new(
            Code::UneditableResponse,
            "the upstream sent part of an answer that a policy must edit whole",
        );
        r.by = Some((first.name.clone(), first.kind.as_str()));
        return Err(r);
    }
    if !is_json {
        return Ok(());
    }
    let max = json
        .iter()
        .filter_map(|p| match &p.kind {
            Kind::JsonFields(j) => Some(j.max_body),
            _ => None,
        })
        .min()
        .unwrap_or(super::json::DEFAULT_MAX_BODY);
    let first = &json[0];
    let refuse = |detail: String| {
        let mut r = Reply::new(Code::UneditableResponse, detail);
        r.by = Some((first.name.clone(), first.kind.as_str()));
        r
    };
    let encoded = resp
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(refuse(
            "the upstream sent an encoded JSON answer that a policy must edit".into(),
        ));
    }
    let declared = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(refuse(format!(
            "the JSON answer is over the {max} bytes a policy may edit"
        )));
    }
    resp.remove_header(&header::CONTENT_LENGTH);
    flow.note(Stage::Response, first, || "edit the JSON body".into());
    flow.json = Some(JsonEdit {
        policies: json,
        buf: Vec::new(),
        max,
    });
    Ok(())
}

/// The Response stage on the head of a static answer (`respond`): the header policies' edits of
/// its `headers`; `None` when no policy could edit it (the headers stand as they are). Bodies
/// the gateway answers itself are not edited by `json_fields`.
pub fn static_headers(
    chain: &Chain,
    flow: &mut Flow,
    request_id: &str,
    client_ip: Option<IpAddr>,
    path: &[u8],
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    if !chain.responds && flow.groups.is_empty() {
        return None;
    }
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2)).ok()?;
    for (n, v) in headers {
        resp.append_header(n.clone(), v.clone()).ok()?;
    }
    // (No body follows for `response`: no JSON edit is prepared.)
    let _ = response(chain, flow, request_id, client_ip, path, &mut resp, false);
    flow.json = None;
    Some(
        resp.headers
            .iter()
            .filter(|(n, _)| **n != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    )
}

/// The Response stage on the answer's body when `response` prepared a JSON edit: the body is
/// held back until its end, then edited once. `Err` when it outgrows the limit (the answer is
/// then cut off: its head is already sent, and the unedited body must not be).
pub fn response_body(flow: &mut Flow, body: &mut Option<Bytes>, end: bool) -> Result<(), String> {
    let Some(edit) = flow.json.as_mut() else {
        return Ok(());
    };
    if let Some(b) = body.take() {
        if edit.buf.len() as u64 + b.len() as u64 > edit.max {
            let max = edit.max;
            flow.json = None;
            return Err(format!(
                "a JSON answer grew over the {max} bytes a policy may edit"
            ));
        }
        edit.buf.extend_from_slice(&b);
    }
    if end {
        let policies: Vec<&super::json::JsonFields> = edit
            .policies
            .iter()
            .filter_map(|p| match &p.kind {
                Kind::JsonFields(j) => Some(j),
                _ => None,
            })
            .collect();
        let buf = std::mem::take(&mut edit.buf);
        let out = match super::json::edit_body(&buf, &policies) {
            Ok(Some(edited)) => edited,
            Ok(None) => buf,
            // A body the parser refuses passes only when it cannot hold what the policies
            // remove (it does not name those members); otherwise the answer is cut off.
            Err(_) if !super::json::mentions(&buf, &policies) => buf,
            Err(_) => {
                flow.json = None;
                return Err("a JSON answer that a policy must edit could not be parsed".to_string());
            }
        };
        *body = Some(Bytes::from(out));
        flow.json = None;
    }
    Ok(())
}

/// Whether a `json_fields` policy edits this request's answer (then the client's `Range`
/// must not cut the answer: the whole body is edited).
pub fn edits_answer(chain: &Chain, flow: &Flow) -> bool {
    (chain.responds || !flow.groups.is_empty())
        && steps_at(chain, flow, Stage::Response)
            .iter()
            .any(|p| matches!(&p.kind, Kind::JsonFields(j) if j.applies(flow.consumer.as_deref())))
}

/// Applies the answer headers to a proxied or cached answer (`Vary` is added to, never
/// replaced).
pub fn answer_headers(flow: &Flow, resp: &mut ResponseHeader) -> pingora::Result<()> {
    if flow.cors {
        // The cors policy alone decides: an upstream's own CORS headers never reach the client.
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            resp.remove_header(&name);
        }
    }
    for (name, value) in &flow.answer {
        if name == header::VARY {
            resp.append_header(name.clone(), value.clone())?;
        } else {
            resp.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

//! The per-request context carried through the proxy hooks.

use super::reply::Code;
use crate::headers::RequestId;
use crate::policy::Flow;
use crate::state::Snapshot;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Whether and from when the minimum body rate (`[server.limits] body_min_rate`) is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRate {
    /// No body, or a gRPC one (its streams may be quiet for long).
    Off,
    /// From when the upstream was first asked: the body is read while it is sent there.
    FromUpstream,
    /// `Expect: 100-continue`: the client may wait for the go-ahead, so from the first body
    /// byte (the instant, once it came).
    FromFirstByte(Option<Instant>),
}

pub struct RequestCtx {
    /// The config generation this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    pub request_id: RequestId,
    pub traceparent: http::HeaderValue,
    /// Index into `snapshot.endpoints` once routed.
    pub endpoint: Option<usize>,
    /// Targets this request failed to connect to.
    pub tried: Vec<SocketAddr>,
    pub retries_left: u32,
    /// The target of the current attempt.
    pub peer: Option<SocketAddr>,
    /// Set before returning an error whose answer is decided by the gateway.
    pub fail: Option<Code>,
    /// Request body bytes seen so far, and the limit that applies.
    pub body_seen: u64,
    /// How the minimum body rate applies to this request's body (see `proxy::body_rate`).
    pub body_rate: BodyRate,
    /// Whether the current peer's outcome was already reported to passive health.
    pub reported: bool,
    /// The policy state: the caller, answer headers, the body limit (`crate::policy`).
    pub flow: Flow,
    /// The client address (the peer, or behind trusted proxies `X-Forwarded-For`'s).
    pub client_ip: Option<IpAddr>,
    /// The policy that refused the request, and its kind.
    pub refused_by: Option<(Arc<str>, &'static str)>,
    /// The endpoint's cache policy (set for every request to a cached endpoint).
    pub cache: Option<Arc<crate::cache::Policy>>,
    /// A stale copy was found for this request.
    pub stale_found: bool,
    /// The request's declared body length.
    pub content_length: Option<u64>,
    /// The request announced a body.
    pub had_body: bool,
    /// pingora-cache's background refresh of a stale copy (not a client's request).
    pub background: bool,
    /// When the request head had been read.
    pub start: Instant,
    /// The code of an answer the gateway gave itself.
    pub code: Option<Code>,
    /// The limit that refused the request (`rate`, `quota_<period>`, `per_ip`, `auth_failures`).
    pub limited: Option<&'static str>,
    /// The `X-Cache-Status` sent.
    pub cache_status: Option<&'static str>,
    /// When the first upstream attempt began, and how long the upstream took to answer.
    pub upstream_start: Option<Instant>,
    pub upstream_us: Option<u64>,
    /// A request that matched no route, as shadow endpoint discovery keeps it.
    pub shadow: Option<Box<crate::analytics::shadow::Hit>>,
    /// The trace of a request sampled for export (`[telemetry]`).
    pub trace: Option<Box<crate::telemetry::Trace>>,
    /// The body read whole for validation (`proxy::contract`), forwarded in its place.
    pub preread: Option<bytes::Bytes>,
    /// The answer's status and media type, and its body as collected, to check against the
    /// contract (sampled, report mode).
    pub answer_head: Option<(u16, Option<String>)>,
    pub answer_body: Option<bytes::BytesMut>,
    /// Places of contract violations (`analytics::record::violation_bit`).
    pub violations: u8,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            request_id: RequestId::default(),
            traceparent: http::HeaderValue::from_static(""),
            endpoint: None,
            tried: Vec::new(),
            retries_left: 0,
            peer: None,
            fail: None,
            body_seen: 0,
            body_rate: BodyRate::Off,
            reported: false,
            flow: Flow::new(u64::MAX),
            client_ip: None,
            refused_by: None,
            cache: None,
            stale_found: false,
            content_length: None,
            had_body: false,
            background: false,
            start: Instant::now(),
            shadow: None,
            trace: None,
            code: None,
            limited: None,
            cache_status: None,
            upstream_start: None,
            upstream_us: None,
            preread: None,
            answer_head: None,
            answer_body: None,
            violations: 0,
        }
    }
}

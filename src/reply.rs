//! Local answers: the problem+json error edge (RFC 9457) and static `respond` replies. Every
//! answer the gateway writes itself goes through `write`, with `X-Request-Id` and a length.

use crate::headers::RequestId;
use crate::state::StaticReply;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;

/// The stable machine codes clients see in the `code` member of an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    RouteNotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    RequestTimeout,
    NoHealthyUpstream,
    UpstreamUnavailable,
    UpstreamTimeout,
    Unauthorized,
    InternalError,
    InvalidConfig,
    RestartRequired,
    MissingCredentials,
    InvalidCredentials,
    Forbidden,
    /// The API is retired (or past its sunset): 410.
    ApiRetired,
    /// A deprecated API in a scheduled brownout window: 410.
    ApiBrownout,
    /// A `beta` API called by a consumer outside its `beta_groups`: 403.
    ApiBeta,
    /// A CORS preflight from an origin, method or header the API's `cors` policy does not allow.
    CorsRejected,
    /// A JSON answer a `json_fields` policy must edit but cannot (encoded or too large).
    UneditableResponse,
    NoPlan,
    LargeRemoval,
    NotFound,
    Conflict,
    InvalidRequest,
    RateLimited,
    QuotaExceeded,
    StoreUnavailable,
    /// A request that does not match the API's OpenAPI contract: 400 with `errors`.
    RequestInvalid,
    /// A chunked body too large to validate without a declared length: 411.
    LengthRequired,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::RouteNotFound => "route_not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UriTooLong => "uri_too_long",
            Code::HeadersTooLarge => "headers_too_large",
            Code::RequestTimeout => "request_timeout",
            Code::NoHealthyUpstream => "no_healthy_upstream",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::Unauthorized => "unauthorized",
            Code::InternalError => "internal_error",
            Code::InvalidConfig => "invalid_config",
            Code::RestartRequired => "restart_required",
            Code::MissingCredentials => "missing_credentials",
            Code::InvalidCredentials => "invalid_credentials",
            Code::Forbidden => "forbidden",
            Code::ApiRetired => "api_retired",
            Code::ApiBrownout => "api_brownout",
            Code::ApiBeta => "api_beta",
            Code::CorsRejected => "cors_rejected",
            Code::UneditableResponse => "uneditable_response",
            Code::NoPlan => "no_plan",
            Code::LargeRemoval => "large_removal",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::InvalidRequest => "invalid_request",
            Code::RateLimited => "rate_limited",
            Code::QuotaExceeded => "quota_exceeded",
            Code::StoreUnavailable => "store_unavailable",
            Code::RequestInvalid => "request_invalid",
            Code::LengthRequired => "length_required",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Code::BadRequest => 400,
            Code::RouteNotFound => 404,
            Code::MethodNotAllowed => 405,
            Code::PayloadTooLarge => 413,
            Code::UriTooLong => 414,
            Code::HeadersTooLarge => 431,
            Code::RequestTimeout => 408,
            Code::NoHealthyUpstream => 503,
            Code::UpstreamUnavailable => 502,
            Code::UpstreamTimeout => 504,
            Code::Unauthorized => 401,
            Code::InternalError => 500,
            Code::InvalidConfig => 422,
            Code::RestartRequired | Code::LargeRemoval => 409,
            Code::MissingCredentials | Code::InvalidCredentials => 401,
            Code::Forbidden | Code::NoPlan | Code::CorsRejected | Code::ApiBeta => 403,
            Code::UneditableResponse => 502,
            Code::ApiRetired | Code::ApiBrownout => 410,
            Code::NotFound => 404,
            Code::Conflict => 409,
            Code::InvalidRequest => 422,
            Code::RateLimited | Code::QuotaExceeded => 429,
            Code::StoreUnavailable => 503,
            Code::RequestInvalid => 400,
            Code::LengthRequired => 411,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Code::BadRequest => "Bad request",
            Code::RouteNotFound => "No route matches this request",
            Code::MethodNotAllowed => "Method not allowed on this route",
            Code::PayloadTooLarge => "Request body too large",
            Code::UriTooLong => "Request line too long",
            Code::HeadersTooLarge => "Request headers too large",
            Code::RequestTimeout => "Request not received in time",
            Code::NoHealthyUpstream => "No healthy upstream target",
            Code::UpstreamUnavailable => "Upstream unavailable",
            Code::UpstreamTimeout => "Upstream timed out",
            Code::Unauthorized => "Unauthorized",
            Code::InternalError => "Internal error",
            Code::InvalidConfig => "The config file has problems",
            Code::RestartRequired => "The change needs a restart or an upgrade",
            Code::MissingCredentials => "Credentials required",
            Code::InvalidCredentials => "Invalid credentials",
            Code::Forbidden => "Not allowed",
            Code::ApiRetired => "This API is retired",
            Code::ApiBrownout => "This API is in a scheduled brownout",
            Code::ApiBeta => "This API is in beta for invited consumers",
            Code::CorsRejected => "Cross-origin request not allowed",
            Code::UneditableResponse => "The answer could not be edited as policy requires",
            Code::NoPlan => "No plan",
            Code::LargeRemoval => "Large removal",
            Code::NotFound => "Not found",
            Code::Conflict => "Conflict",
            Code::InvalidRequest => "The request body is not valid",
            Code::RateLimited => "Too many requests",
            Code::QuotaExceeded => "Quota exceeded",
            Code::StoreUnavailable => "Limits cannot be checked right now",
            Code::RequestInvalid => "The request does not match the API's contract",
            Code::LengthRequired => "Content-Length required",
        }
    }
}

/// A denial or error answer: a value, written once by `write_problem`.
#[derive(Debug)]
pub struct Reply {
    pub code: Code,
    pub detail: String,
    pub headers: Vec<(&'static str, String)>,
    /// A wrong credential (counted by the failed-authentication guard).
    pub bad_credential: bool,
    /// The limit that refused the request (`rate`, `quota_hour`, `per_ip`, ...), recorded in
    /// analytics and `turnpike_limited_total`.
    pub limited: Option<&'static str>,
    /// The policy that refused the request and its kind (`crate::policy`), recorded in
    /// analytics, the access log and `turnpike_policy_refusals_total`.
    pub by: Option<(std::sync::Arc<str>, &'static str)>,
    /// The `errors` member of a `request_invalid` answer.
    pub errors: Option<Box<serde_json::Value>>,
}

impl Reply {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Reply {
            code,
            detail: detail.into(),
            headers: Vec::new(),
            bad_credential: false,
            limited: None,
            by: None,
            errors: None,
        }
    }

    /// 404 `route_not_found` for a method and path.
    pub fn no_route(method: &http::Method, path: &[u8]) -> Reply {
        let detail = format!("no route for {method} {}", String::from_utf8_lossy(path));
        Reply::new(Code::RouteNotFound, detail)
    }

    /// 405 `method_not_allowed` with the `Allow` header of the route's methods.
    pub fn wrong_method(method: &http::Method, allowed: crate::route::Methods) -> Reply {
        let allow = allowed.allow_header();
        let detail = format!("{method} is not allowed here; allowed: {allow}");
        Reply::new(Code::MethodNotAllowed, detail).header("Allow", allow)
    }

    /// Marks the answer as refusing a wrong credential.
    pub fn bad_credential(mut self) -> Self {
        self.bad_credential = true;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: &'a str,
}

fn problem<'a>(code: Code, detail: &'a str, request_id: &'a str) -> ProblemBody<'a> {
    ProblemBody {
        kind: format!("urn:turnpike:problem:{}", code.as_str()),
        title: code.title(),
        status: code.status(),
        detail,
        code: code.as_str(),
        request_id,
    }
}

/// The body of a problem answer.
pub fn problem_body(code: Code, detail: &str, request_id: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&problem(code, detail, request_id)).unwrap_or_default())
}

/// The members of a problem answer as a JSON object, for answers that add extension members.
pub fn problem_value(code: Code, detail: &str, request_id: &str) -> serde_json::Value {
    serde_json::to_value(problem(code, detail, request_id)).unwrap_or_default()
}

/// Builds the response header of a problem answer.
pub fn problem_header(
    reply: &Reply,
    request_id: &RequestId,
    len: usize,
    answer: &[(HeaderName, HeaderValue)],
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(reply.code.status(), Some(4 + reply.headers.len()))?;
    h.insert_header(
        "Content-Type",
        HeaderValue::from_static("application/problem+json"),
    )?;
    h.insert_header("Content-Length", len.to_string())?;
    h.insert_header("X-Request-Id", request_id.header())?;
    h.insert_header("Cache-Control", HeaderValue::from_static("no-store"))?;
    for (name, value) in &reply.headers {
        h.insert_header(*name, value.as_str())?;
    }
    // The answer headers of the policies that ran (CORS, RateLimit fields): the refusal's own
    // fields win.
    for (name, value) in answer {
        if !reply
            .headers
            .iter()
            .any(|(n, _)| name.as_str().eq_ignore_ascii_case(n))
        {
            h.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(h)
}

/// Writes a problem answer. `close` asks for the connection to be closed afterwards (used when
/// the request body was not read, so leftover bytes are never parsed as a next request).
pub async fn write_problem(
    session: &mut Session,
    reply: &Reply,
    request_id: &RequestId,
    close: bool,
    answer: &[(HeaderName, HeaderValue)],
) -> Result<()> {
    let body = match &reply.errors {
        None => problem_body(reply.code, &reply.detail, request_id),
        Some(errors) => {
            let mut v = problem_value(reply.code, &reply.detail, request_id);
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("errors".into(), (**errors).clone());
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
    };
    let header = problem_header(reply, request_id, body.len(), answer)?;
    if close {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes a static `respond` answer.
pub async fn write_static(
    session: &mut Session,
    reply: &StaticReply,
    request_id: &RequestId,
    close: bool,
    answer: &[(HeaderName, HeaderValue)],
) -> Result<()> {
    let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 4))?;
    for (name, value) in &reply.headers {
        h.append_header(name.clone(), value.clone())?;
    }
    // The answer headers of the policies that ran (RateLimit fields, CORS).
    for (name, value) in answer {
        h.append_header(name.clone(), value.clone())?;
    }
    // No length on answers that never have a body (RFC 9110 section 8.6).
    if reply.status != 204 && reply.status != 304 {
        h.insert_header("Content-Length", reply.body.len().to_string())?;
    }
    h.insert_header("X-Request-Id", request_id.header())?;
    if close {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD || reply.body.is_empty();
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_body_has_every_member() {
        let b = problem_body(Code::RouteNotFound, "no route for GET /x", "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["status"], 404);
        assert_eq!(v["code"], "route_not_found");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["type"], "urn:turnpike:problem:route_not_found");
        assert_eq!(v["detail"], "no route for GET /x");
        assert!(v["title"].is_string());
    }
}

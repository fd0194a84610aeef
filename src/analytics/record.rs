//! The request record: what one request through the proxy did, built in the `logging` phase for
//! every request (local answers and failures included) and handed to the aggregator. It names
//! the route template, never the raw path, and holds no key, token or Authorization value: the
//! consumer is its id.

use crate::identity::Consumer;
use crate::state::ApiInfo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// At most this many bytes of the client's `User-Agent` are kept.
pub const MAX_USER_AGENT: usize = 256;

/// The places of contract violations, by bit of `Record::violations`.
pub const VIOLATION_PLACES: [&str; 6] = ["path", "query", "header", "cookie", "body", "response"];

/// The bit of a violation place.
pub fn violation_bit(place: &str) -> u8 {
    VIOLATION_PLACES
        .iter()
        .position(|p| *p == place)
        .map_or(0, |i| 1 << i)
}

/// One request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request head had been read, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub request_id: crate::headers::RequestId,
    /// The API and route template, once routed.
    pub api: Option<Arc<ApiInfo>>,
    pub route: Option<Arc<str>>,
    /// The identified caller (its id and plan are used, nothing else).
    pub consumer: Option<Arc<Consumer>>,
    pub method: http::Method,
    /// The status sent to the client (0: no answer could be sent).
    pub status: u16,
    /// The stable code of an answer the gateway gave itself.
    pub code: Option<&'static str>,
    /// The limit that refused the request (`rate`, `quota_hour`, `per_ip`, ...).
    pub limited: Option<&'static str>,
    /// The policy that refused the request and its kind (`office-only`, `ip_filter`).
    pub policy: Option<(Arc<str>, &'static str)>,
    /// The API is deprecated or retired (`[apis.catalog]`).
    pub deprecated: bool,
    /// Where a request (or its sampled answer) broke the API's contract, as bits of
    /// [`VIOLATION_PLACES`] (validation in report mode).
    pub violations: u8,
    /// From the head being read to the end of the answer (for an upgraded connection, to its
    /// 101 answer).
    pub duration_us: u64,
    /// From the first upstream attempt to the upstream's response head.
    pub upstream_us: Option<u64>,
    /// Body bytes read from and sent to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `X-Cache-Status` on cached APIs.
    pub cache: Option<&'static str>,
    /// The upstream pool and the target of the last attempt.
    pub upstream: Option<(Arc<str>, SocketAddr)>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// A request that matched no route: its host, method, path shape and caller.
    pub shadow: Option<Box<super::shadow::Hit>>,
    /// The trace of a request sampled for export (`[telemetry]`).
    pub trace: Option<Box<crate::telemetry::Trace>>,
}

impl Record {
    /// `1`..`5` for the status class; `0` when no answer was sent.
    pub fn status_class(&self) -> u8 {
        match self.status {
            100..=599 => (self.status / 100) as u8,
            _ => 0,
        }
    }

    /// A failure for the error rate: a 5xx, or a failure the gateway saw after the answer
    /// began (an upstream dying mid-body) or before any answer. A client that went away before
    /// its answer (status 0, no code) is not an error of the API.
    pub fn is_error(&self) -> bool {
        self.status >= 500 || (self.code.is_some() && self.status < 400)
    }

    pub fn api_name(&self) -> &str {
        self.api.as_ref().map_or("", |a| a.name.as_str())
    }

    pub fn api_version(&self) -> &str {
        self.api
            .as_ref()
            .and_then(|a| a.version.as_deref())
            .unwrap_or("")
    }

    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or("")
    }

    pub fn consumer_id(&self) -> Option<&str> {
        self.consumer.as_ref().map(|c| c.id.as_str())
    }

    pub fn plan(&self) -> Option<&str> {
        self.consumer.as_ref().and_then(|c| c.plan.as_deref())
    }

    /// One access-log line (JSON, without the newline). The keys and numbers are written
    /// directly and only the strings go through `serde_json`'s escaping: a line is written
    /// for every request, and a serializer map with `to_string` for the addresses cost about
    /// three times as much.
    pub fn to_json_line(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(br#"{"time":""#);
        crate::clock::push_rfc3339_ms(out, self.time_ms);
        out.extend_from_slice(br#"","request_id":"#);
        json_str(out, Some(self.request_id.as_str()));
        out.extend_from_slice(br#","api":"#);
        json_str(out, self.api.as_ref().map(|a| a.name.as_str()));
        out.extend_from_slice(br#","version":"#);
        json_str(out, self.api.as_ref().and_then(|a| a.version.as_deref()));
        out.extend_from_slice(br#","route":"#);
        json_str(out, self.route.as_deref());
        out.extend_from_slice(br#","consumer":"#);
        json_str(out, self.consumer_id());
        out.extend_from_slice(br#","plan":"#);
        json_str(out, self.plan());
        out.extend_from_slice(br#","method":"#);
        json_str(out, Some(self.method.as_str()));
        out.extend_from_slice(br#","status":"#);
        out.extend_from_slice(digits.format(self.status).as_bytes());
        out.extend_from_slice(br#","code":"#);
        json_str(out, self.code);
        out.extend_from_slice(br#","limited":"#);
        json_str(out, self.limited);
        out.extend_from_slice(br#","policy":"#);
        json_str(out, self.policy.as_ref().map(|p| &*p.0));
        out.extend_from_slice(br#","duration_ms":"#);
        millis(out, self.duration_us);
        out.extend_from_slice(br#","upstream_ms":"#);
        match self.upstream_us {
            Some(us) => millis(out, us),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","bytes_in":"#);
        out.extend_from_slice(digits.format(self.bytes_in).as_bytes());
        out.extend_from_slice(br#","bytes_out":"#);
        out.extend_from_slice(digits.format(self.bytes_out).as_bytes());
        out.extend_from_slice(br#","cache":"#);
        json_str(out, self.cache);
        out.extend_from_slice(br#","upstream":"#);
        json_str(out, self.upstream.as_ref().map(|u| &*u.0));
        out.extend_from_slice(br#","target":"#);
        match &self.upstream {
            Some((_, addr)) => {
                out.push(b'"');
                crate::text::push_ip(out, addr.ip(), addr.is_ipv6());
                out.push(b':');
                out.extend_from_slice(digits.format(addr.port()).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","client_ip":"#);
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                crate::text::push_ip(out, ip, false);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","user_agent":"#);
        json_str(out, self.user_agent.as_deref());
        out.push(b'}');
    }
}

/// A JSON string (escaped by `serde_json`), or `null`.
fn json_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        // Writing to a Vec cannot fail.
        Some(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Microseconds as a JSON number of milliseconds with three decimals (`1.500`).
fn millis(out: &mut Vec<u8>, us: u64) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(us / 1000).as_bytes());
    crate::text::push_thousandths(out, us);
}

/// The first `MAX_USER_AGENT` bytes of a header value, as text.
pub fn user_agent(value: &[u8]) -> String {
    let cut = &value[..value.len().min(MAX_USER_AGENT)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
pub(crate) fn sample() -> Record {
    Record {
        time_ms: 1_795_000_000_123,
        request_id: crate::headers::RequestId::from_static("r1"),
        api: Some(Arc::new(ApiInfo {
            name: "orders".into(),
            version: Some("v1".into()),
        })),
        route: Some(Arc::from("/orders/v1/items/{id}")),
        consumer: Some(Arc::new(Consumer::new(
            "acme",
            Some("gold".into()),
            vec![],
            vec![],
            true,
        ))),
        method: http::Method::GET,
        status: 200,
        code: None,
        limited: None,
        policy: None,
        deprecated: false,
        violations: 0,
        duration_us: 1_500,
        upstream_us: Some(1_000),
        bytes_in: 0,
        bytes_out: 42,
        cache: None,
        upstream: Some((Arc::from("app"), "127.0.0.1:9000".parse().expect("addr"))),
        client_ip: Some("127.0.0.1".parse().expect("ip")),
        user_agent: Some("curl/8 \"quoted\"\n".into()),
        shadow: None,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_line_is_one_json_object_with_every_field() {
        let mut out = Vec::new();
        sample().to_json_line(&mut out);
        assert!(!out.contains(&b'\n'), "control characters are escaped");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["route"], "/orders/v1/items/{id}");
        assert_eq!(v["consumer"], "acme");
        assert_eq!(v["plan"], "gold");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["target"], "127.0.0.1:9000");
        assert_eq!(v["code"], serde_json::Value::Null);
        assert_eq!(v.as_object().map(|o| o.len()), Some(21));
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["user_agent"], "curl/8 \"quoted\"\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_ms"], 1.0);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["limited"], serde_json::Value::Null);
        let mut other = sample();
        other.upstream = Some((
            Arc::from("app"),
            "[2001:db8::1]:8443".parse().expect("addr"),
        ));
        other.client_ip = Some("2001:db8::2".parse().expect("ip"));
        other.api = None;
        other.upstream_us = None;
        other.duration_us = 12;
        other.code = Some("rate_limited");
        let mut out = Vec::new();
        other.to_json_line(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["target"], "[2001:db8::1]:8443");
        assert_eq!(v["client_ip"], "2001:db8::2");
        assert_eq!(v["api"], serde_json::Value::Null);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 0.012);
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(user_agent(&[b'a'; 1000]).len(), MAX_USER_AGENT);
    }
}

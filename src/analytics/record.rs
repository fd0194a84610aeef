//! The request record: what one request through the proxy did, built in the `logging` phase for
//! every request (local answers and failures included) and handed to the aggregator. It names
//! the route template, never the raw path, and holds no key, token or Authorization value: the
//! consumer is its id.

use crate::identity::Consumer;
use crate::state::ApiInfo;
use serde::ser::{SerializeMap, Serializer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// At most this many bytes of the client's `User-Agent` are kept.
pub const MAX_USER_AGENT: usize = 256;

/// One request.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request head had been read, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub request_id: String,
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

    /// One access-log line (JSON, without the newline).
    pub fn to_json_line(&self, out: &mut Vec<u8>) {
        let mut ser = serde_json::Serializer::new(out);
        // Writing to a Vec cannot fail, and every value is a plain string or number.
        let _ = self.write_fields(&mut ser);
    }

    fn write_fields<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("time", &crate::clock::rfc3339_ms(self.time_ms))?;
        m.serialize_entry("request_id", &self.request_id)?;
        m.serialize_entry("api", &self.api.as_ref().map(|a| a.name.as_str()))?;
        m.serialize_entry(
            "version",
            &self.api.as_ref().and_then(|a| a.version.as_deref()),
        )?;
        m.serialize_entry("route", &self.route.as_deref())?;
        m.serialize_entry("consumer", &self.consumer_id())?;
        m.serialize_entry("plan", &self.plan())?;
        m.serialize_entry("method", self.method.as_str())?;
        m.serialize_entry("status", &self.status)?;
        m.serialize_entry("code", &self.code)?;
        m.serialize_entry("limited", &self.limited)?;
        m.serialize_entry("policy", &self.policy.as_ref().map(|p| &*p.0))?;
        m.serialize_entry("duration_ms", &(self.duration_us as f64 / 1000.0))?;
        m.serialize_entry("upstream_ms", &self.upstream_us.map(|u| u as f64 / 1000.0))?;
        m.serialize_entry("bytes_in", &self.bytes_in)?;
        m.serialize_entry("bytes_out", &self.bytes_out)?;
        m.serialize_entry("cache", &self.cache)?;
        m.serialize_entry("upstream", &self.upstream.as_ref().map(|u| &*u.0))?;
        m.serialize_entry("target", &self.upstream.as_ref().map(|u| u.1.to_string()))?;
        m.serialize_entry("client_ip", &self.client_ip.map(|ip| ip.to_string()))?;
        m.serialize_entry("user_agent", &self.user_agent)?;
        m.end()
    }
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
        request_id: "r1".into(),
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
        duration_us: 1_500,
        upstream_us: Some(1_000),
        bytes_in: 0,
        bytes_out: 42,
        cache: None,
        upstream: Some((Arc::from("app"), "127.0.0.1:9000".parse().expect("addr"))),
        client_ip: Some("127.0.0.1".parse().expect("ip")),
        user_agent: Some("curl/8 \"quoted\"\n".into()),
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
        assert_eq!(user_agent(&[b'a'; 1000]).len(), MAX_USER_AGENT);
    }
}

//! `[telemetry]`: OpenTelemetry export of traces (a server span per request, a client span per
//! upstream attempt) and, optionally, of the access-log records as OTLP log records, to a
//! collector over OTLP/HTTP with protobuf. The serde mirror and its checks. The whole block is
//! read when the process starts (a reload that changes it is refused).

use super::error::Problem;
use super::hidden::Hidden;
use super::units::Dur;
use serde::Deserialize;
use std::time::Duration;

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); traces go to
    /// `/v1/traces` and logs to `/v1/logs` under it. Absent: nothing is exported.
    pub otlp_endpoint: Option<Hidden>,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The fraction of new traces sampled. Parent-based: a request whose `traceparent` says
    /// sampled is always exported, one that says not sampled never.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// An environment variable holding headers for the collector (`key=value,key2=value2`,
    /// as `OTEL_EXPORTER_OTLP_HEADERS`), for its authentication.
    pub headers_env: Option<String>,
    /// Also export each access-log record (same fields, same `access_log_sample`) as an OTLP
    /// log record.
    #[serde(default)]
    pub export_access_log: bool,
    /// Spans and log records waiting for export; past it they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// Most spans (or log records) per export request.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long items wait for a batch to fill.
    #[serde(default = "default_delay")]
    pub batch_delay: Dur,
    /// Per export request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Retries of a failed export (with doubling pauses, honouring `Retry-After`).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_ratio(),
            headers_env: None,
            export_access_log: false,
            queue_size: default_queue(),
            batch_size: default_batch(),
            batch_delay: default_delay(),
            timeout: default_timeout(),
            retries: default_retries(),
        }
    }
}

impl TelemetrySection {
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

fn default_service_name() -> String {
    "turnpike".to_string()
}
fn default_ratio() -> f64 {
    1.0
}
fn default_queue() -> usize {
    8_192
}
fn default_batch() -> usize {
    512
}
fn default_delay() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_retries() -> u32 {
    3
}

/// The collector headers from `headers_env` (`key=value,...`, values percent-decoded as
/// `OTEL_EXPORTER_OTLP_HEADERS` allows); an error names the first bad entry by position only
/// (the values are credentials).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = entry.split_once('=') else {
            return Err(format!("entry {} is not key=value", i + 1));
        };
        let k = k.trim();
        let v = crate::text::percent_decode(v.trim());
        let ok_name = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
        let ok_value = http::HeaderValue::from_str(&v).is_ok();
        if !ok_name || !ok_value {
            return Err(format!("entry {} is not a valid HTTP header", i + 1));
        }
        out.push((k.to_ascii_lowercase(), v));
    }
    Ok(out)
}

/// Every problem of the block, with key paths.
pub fn validate(t: &TelemetrySection) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |key: &str, msg: &str| out.push(Problem::at(format!("telemetry.{key}"), msg));
    if let Some(url) = &t.otlp_endpoint {
        let ok = url.expose().parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.query().is_none()
        });
        if !ok {
            add(
                "otlp_endpoint",
                "an http:// or https:// base URL without a query (e.g. http://127.0.0.1:4318)",
            );
        }
    }
    if t.service_name.trim().is_empty() || t.service_name.len() > 255 {
        add("service_name", "1 to 255 characters");
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        add("sample_ratio", "a fraction from 0 to 1");
    }
    if let Some(var) = &t.headers_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                if let Err(why) = parse_headers(&v) {
                    add(
                        "headers_env",
                        &format!("the variable's value is not key=value,...: {why}"),
                    );
                }
            }
            _ => add(
                "headers_env",
                "names an environment variable that is not set (or is empty)",
            ),
        }
    }
    if !(16..=1_048_576).contains(&t.queue_size) {
        add("queue_size", "between 16 and 1048576");
    }
    if !(1..=8_192).contains(&t.batch_size) {
        add("batch_size", "between 1 and 8192");
    }
    if t.batch_delay.0 < Duration::from_millis(10) || t.batch_delay.0 > Duration::from_secs(60) {
        add("batch_delay", "between 10ms and 60s");
    }
    if t.timeout.0 < Duration::from_millis(100) || t.timeout.0 > Duration::from_secs(120) {
        add("timeout", "between 100ms and 120s");
    }
    if t.retries > 10 {
        add("retries", "at most 10");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_key_value_pairs() {
        assert_eq!(
            parse_headers("Authorization=Basic%20dXNlcjpwdw==, x-team = edge"),
            Ok(vec![
                ("authorization".into(), "Basic dXNlcjpwdw==".into()),
                ("x-team".into(), "edge".into())
            ])
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("bad name=1").is_err());
    }

    #[test]
    fn problems_have_key_paths() {
        let t: TelemetrySection =
            toml::from_str("otlp_endpoint = \"ftp://x\"\nsample_ratio = 1.5\nqueue_size = 1")
                .expect("parses");
        let keys: Vec<String> = validate(&t).into_iter().map(|p| p.key_path).collect();
        assert_eq!(
            keys,
            [
                "telemetry.otlp_endpoint",
                "telemetry.sample_ratio",
                "telemetry.queue_size"
            ]
        );
    }
}

//! A finished request as OpenTelemetry data, built by the aggregator (off the request path):
//! the server span and one client span per upstream attempt (`spans`), and the access-log
//! record as an OTLP log record (`Logs::record`).
//!
//! Attribute names follow the OpenTelemetry HTTP semantic conventions (`http.request.method`,
//! `http.route`, `http.response.status_code`, `server.address`, `client.address`,
//! `http.request.resend_count`, `error.type`), plus `turnpike.*` for what the gateway knows
//! (API, version, consumer, plan, refusing policy, cache status, request id). Everything comes
//! from the analytics record, which holds no key, token, Authorization value, path or query
//! string: a route template names the route.

use super::{Attempt, Trace};
use crate::analytics::record::Record;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instrumentation scope of everything exported.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("turnpike")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn at(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The method as the conventions want it: a known method, or `_OTHER`.
fn method(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

fn context(trace_id: u128, span_id: u64) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

fn put(out: &mut Vec<KeyValue>, key: &'static str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        out.push(KeyValue::new(key, v.to_string()));
    }
}

/// The server span and the client spans of a sampled request.
pub fn spans(r: &Record, t: &Trace, scope: &InstrumentationScope) -> Vec<SpanData> {
    let start = t.start_ns;
    let end = start.saturating_add(r.duration_us.saturating_mul(1_000));
    let m = method(&r.method);
    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new("http.request.method", m));
    put(&mut attrs, "http.route", r.route.as_deref());
    if r.status != 0 {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    put(&mut attrs, "server.address", t.host.as_deref());
    attrs.push(KeyValue::new(
        "url.scheme",
        if t.https { "https" } else { "http" },
    ));
    if let Some(ip) = r.client_ip {
        attrs.push(KeyValue::new("client.address", ip.to_string()));
    }
    put(
        &mut attrs,
        "turnpike.request_id",
        Some(r.request_id.as_str()),
    );
    put(
        &mut attrs,
        "turnpike.api",
        r.api.as_ref().map(|a| a.name.as_str()),
    );
    put(&mut attrs, "turnpike.version", Some(r.api_version()));
    put(&mut attrs, "turnpike.consumer", r.consumer_id());
    put(&mut attrs, "turnpike.plan", r.plan());
    if let Some((name, kind)) = &r.policy {
        put(&mut attrs, "turnpike.policy", Some(name));
        put(&mut attrs, "turnpike.policy_kind", Some(kind));
    }
    put(&mut attrs, "turnpike.limited", r.limited);
    put(&mut attrs, "turnpike.cache", r.cache);
    put(&mut attrs, "turnpike.code", r.code);
    let failed = r.status >= 500 || r.is_error();
    if failed {
        let kind = r.code.map_or_else(|| r.status.to_string(), str::to_string);
        attrs.push(KeyValue::new("error.type", kind));
    }
    let name = match r.route.as_deref() {
        Some(route) => format!("{m} {route}"),
        None => m.to_string(),
    };
    let mut out = Vec::with_capacity(1 + t.attempts.len());
    out.push(SpanData {
        span_context: context(t.trace_id, t.span_id),
        parent_span_id: t.parent.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: t.parent.is_some(),
        span_kind: SpanKind::Server,
        name: name.into(),
        start_time: at(start),
        end_time: at(end),
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if failed {
            Status::error(r.code.unwrap_or("server error"))
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    });
    let pool = r.upstream.as_ref().map(|u| &*u.0);
    for (i, a) in t.attempts.iter().enumerate() {
        out.push(client_span(t, a, i, m, pool, end, scope));
    }
    out
}

fn client_span(
    t: &Trace,
    a: &Attempt,
    retry: usize,
    m: &'static str,
    pool: Option<&str>,
    request_end: u64,
    scope: &InstrumentationScope,
) -> SpanData {
    let mut attrs = Vec::with_capacity(10);
    attrs.push(KeyValue::new("http.request.method", m));
    attrs.push(KeyValue::new("server.address", a.target.ip().to_string()));
    attrs.push(KeyValue::new("server.port", i64::from(a.target.port())));
    attrs.push(KeyValue::new(
        "network.peer.address",
        a.target.ip().to_string(),
    ));
    if retry > 0 {
        attrs.push(KeyValue::new(
            "http.request.resend_count",
            i64::try_from(retry).unwrap_or(i64::MAX),
        ));
    }
    put(&mut attrs, "turnpike.upstream", pool);
    attrs.push(KeyValue::new("turnpike.connection_reused", a.reused));
    if let Some(s) = a.status {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    let failed = a.error.is_some() || a.status.is_some_and(|s| s >= 500);
    if let Some(e) = a.error {
        attrs.push(KeyValue::new("error.type", e));
    } else if let Some(s) = a.status.filter(|s| *s >= 500) {
        attrs.push(KeyValue::new("error.type", s.to_string()));
    }
    // Within the server span (its end comes from the request's duration; an upgraded
    // connection's span ends at its 101 answer).
    let within = |ns: u64| ns.clamp(t.start_ns, request_end.max(t.start_ns));
    let mut events = SpanEvents::default();
    if let Some(c) = a.connected_ns {
        events.events.push(Event::new(
            "connected",
            at(within(c)),
            vec![KeyValue::new("turnpike.connection_reused", a.reused)],
            0,
        ));
    }
    if let Some(r) = a.response_ns {
        events
            .events
            .push(Event::new("response_head", at(within(r)), Vec::new(), 0));
    }
    let start = within(a.start_ns);
    let end = within(a.end_ns.unwrap_or(request_end)).max(start);
    SpanData {
        span_context: context(t.trace_id, a.span_id),
        parent_span_id: SpanId::from(t.span_id),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: m.into(),
        start_time: at(start),
        end_time: at(end),
        attributes: attrs,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: if failed {
            Status::error(a.error.unwrap_or("upstream error"))
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Makes OTLP log records (the SDK creates them through a logger; nothing is emitted through
/// it: records go to the exporter's queue like spans).
pub struct Logs {
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
}

impl Default for Logs {
    fn default() -> Self {
        let provider = SdkLoggerProvider::builder().build();
        Logs {
            logger: provider.logger_with_scope(scope()),
            _provider: provider,
        }
    }
}

impl Logs {
    /// The access-log record of a request, with the same fields as the JSON line, linked to
    /// its trace when it was sampled.
    pub fn record(&self, r: &Record) -> SdkLogRecord {
        let mut rec = self.logger.create_log_record();
        let time = UNIX_EPOCH + Duration::from_millis(r.time_ms);
        rec.set_timestamp(time);
        rec.set_observed_timestamp(SystemTime::now());
        rec.set_event_name("turnpike.access");
        let (number, text) = match r.status {
            0 | 500.. => (Severity::Error, "ERROR"),
            400..=499 => (Severity::Warn, "WARN"),
            _ => (Severity::Info, "INFO"),
        };
        rec.set_severity_number(number);
        rec.set_severity_text(text);
        let route = r.route.as_deref().unwrap_or("-");
        rec.set_body(AnyValue::from(format!(
            "{} {route} {}",
            r.method.as_str(),
            r.status
        )));
        let mut s = |k: &'static str, v: Option<&str>| {
            if let Some(v) = v {
                rec.add_attribute(k, v.to_string());
            }
        };
        s("request_id", Some(r.request_id.as_str()));
        s("api", r.api.as_ref().map(|a| a.name.as_str()));
        s("version", r.api.as_ref().and_then(|a| a.version.as_deref()));
        s("route", r.route.as_deref());
        s("consumer", r.consumer_id());
        s("plan", r.plan());
        s("method", Some(r.method.as_str()));
        s("code", r.code);
        s("limited", r.limited);
        s("policy", r.policy.as_ref().map(|p| &*p.0));
        s("cache", r.cache);
        s("upstream", r.upstream.as_ref().map(|u| &*u.0));
        s("user_agent", r.user_agent.as_deref());
        let target = r.upstream.as_ref().map(|u| u.1.to_string());
        s("target", target.as_deref());
        let client = r.client_ip.map(|ip| ip.to_string());
        s("client_ip", client.as_deref());
        rec.add_attribute("status", i64::from(r.status));
        rec.add_attribute("duration_ms", r.duration_us as f64 / 1000.0);
        if let Some(us) = r.upstream_us {
            rec.add_attribute("upstream_ms", us as f64 / 1000.0);
        }
        rec.add_attribute("bytes_in", i64::try_from(r.bytes_in).unwrap_or(i64::MAX));
        rec.add_attribute("bytes_out", i64::try_from(r.bytes_out).unwrap_or(i64::MAX));
        if let Some(t) = &r.trace {
            rec.set_trace_context(
                TraceId::from(t.trace_id),
                SpanId::from(t.span_id),
                Some(TraceFlags::SAMPLED),
            );
        }
        rec
    }
}

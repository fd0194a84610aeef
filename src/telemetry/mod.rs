//! OpenTelemetry export (`[telemetry]`): what a request's trace holds, and the decisions taken
//! on the request path. This module owns the per-request part; `spans` turns a finished
//! request into OTLP spans and log records, `export` sends them from a thread of its own.
//!
//! On the request path, with an `otlp_endpoint`: the trace is continued from the client's
//! `traceparent` or started (sampled by `sample_ratio` on the trace id's random part; a parent's
//! decision is kept: parent-based). A sampled request carries a `Trace` (one allocation): the
//! gateway's server span id, the client's span id as its parent, and one `Attempt` per upstream
//! attempt, each with a span id of its own that the upstream receives as the `traceparent`'s
//! parent id. Nothing else happens on the path: the trace rides on the analytics record to the
//! aggregator, which builds the spans off the path. Unsampled requests pay for one random
//! number and one comparison; a gateway without `[telemetry]` pays for neither.

pub mod export;
pub mod spans;

use crate::config::telemetry::TelemetrySection;
use crate::headers::{format_traceparent, new_span_id, new_trace_id, parse_traceparent};
use http::HeaderValue;
use std::net::SocketAddr;

/// One upstream attempt of a sampled request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The client span's id: the parent id of the `traceparent` this attempt sends.
    pub span_id: u64,
    pub target: SocketAddr,
    /// Wall-clock nanoseconds: chosen, connected, response head read, ended.
    pub start_ns: u64,
    pub connected_ns: Option<u64>,
    pub reused: bool,
    pub response_ns: Option<u64>,
    pub end_ns: Option<u64>,
    pub status: Option<u16>,
    /// Why the attempt failed (`connect_failed`, `retried`, ...).
    pub error: Option<&'static str>,
}

/// The trace of a sampled request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: u128,
    /// The gateway's server span.
    pub span_id: u64,
    /// The client's span (a remote parent), when the request continued a trace.
    pub parent: Option<u64>,
    /// The trace flags sent on (sampled, and the random-trace-id flag of a client's).
    pub flags: u8,
    /// Wall-clock nanoseconds when the request head had been read.
    pub start_ns: u64,
    /// `server.address`: the Host the client asked for, without its port.
    pub host: Option<Box<str>>,
    pub https: bool,
    pub attempts: Vec<Attempt>,
}

/// The `error.type` of an attempt that failed after connecting.
pub fn error_kind(e: &pingora::ErrorType) -> &'static str {
    use pingora::ErrorType as E;
    match e {
        E::ConnectTimedout => "connect_timeout",
        E::ReadTimedout => "read_timeout",
        E::WriteTimedout => "write_timeout",
        E::ConnectionClosed => "connection_closed",
        E::ReadError => "read_error",
        E::WriteError => "write_error",
        E::H2Error | E::H2Downgrade | E::InvalidH2 => "h2_error",
        E::InvalidHTTPHeader => "invalid_response",
        _ => "upstream_error",
    }
}

/// Whether a new trace with this id is sampled at `ratio`: the id's low 64 bits (random in
/// every W3C trace id this gateway makes) against the ratio, as the OpenTelemetry
/// `TraceIdRatioBased` sampler does.
pub fn sampled_by_ratio(ratio: f64, trace_id: u128) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let x = (trace_id as u64) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

/// The `traceparent` for the upstream and, when sampled, the request's trace.
pub fn begin(
    cfg: &TelemetrySection,
    incoming: Option<&[u8]>,
    host: Option<&str>,
    https: bool,
    started: std::time::Instant,
) -> (HeaderValue, Option<Box<Trace>>) {
    let span_id = new_span_id();
    let parent = incoming.and_then(parse_traceparent);
    let (trace_id, sampled, flags) = match parent {
        Some(p) => (p.trace_id, p.sampled(), p.flags),
        None => {
            let id = new_trace_id();
            let s = sampled_by_ratio(cfg.sample_ratio, id);
            (id, s, u8::from(s))
        }
    };
    let header = format_traceparent(trace_id, span_id, flags);
    if !sampled {
        return (header, None);
    }
    let host = host.map(|h| crate::analytics::shadow::host_of(h).into_boxed_str());
    let trace = Trace {
        trace_id,
        span_id,
        parent: parent.map(|p| p.parent_id),
        flags,
        // The same instant as the request's duration (`RequestCtx::start`) starts from.
        start_ns: crate::clock::now_ns()
            .saturating_sub(u64::try_from(started.elapsed().as_nanos()).unwrap_or(0)),
        host,
        https,
        attempts: Vec::new(),
    };
    (header, Some(Box::new(trace)))
}

impl Trace {
    /// An upstream attempt to `target` starts (a target was chosen); the one before it, if
    /// still open, ended in a retry.
    pub fn attempt(&mut self, target: SocketAddr) {
        let now = crate::clock::now_ns();
        self.end_open(now, "retried");
        self.attempts.push(Attempt {
            span_id: new_span_id(),
            target,
            start_ns: now,
            connected_ns: None,
            reused: false,
            response_ns: None,
            end_ns: None,
            status: None,
            error: None,
        });
    }

    fn open(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.end_ns.is_none())
    }

    fn end_open(&mut self, now: u64, why: &'static str) {
        if let Some(a) = self.open() {
            a.end_ns = Some(now);
            if a.status.is_none() {
                a.error = Some(why);
            }
        }
    }

    /// The current attempt has its connection (`reused`: from the pool).
    pub fn connected(&mut self, reused: bool) {
        if let Some(a) = self.open() {
            a.connected_ns = Some(crate::clock::now_ns());
            a.reused = reused;
        }
    }

    /// The `traceparent` the current attempt sends: its own span as the parent.
    pub fn upstream_traceparent(&self) -> Option<HeaderValue> {
        let a = self.attempts.last()?;
        Some(format_traceparent(self.trace_id, a.span_id, self.flags))
    }

    /// The current attempt's response head was read.
    pub fn response(&mut self, status: u16) {
        if let Some(a) = self.open() {
            a.response_ns = Some(crate::clock::now_ns());
            a.status = Some(status);
        }
    }

    /// The current attempt failed (`connect_failed`, ...).
    pub fn failed(&mut self, why: &'static str) {
        let now = crate::clock::now_ns();
        if let Some(a) = self.open() {
            a.end_ns = Some(now);
            a.error = Some(why);
        }
    }

    /// The request ended: an attempt still open ends now (without an error when it answered).
    pub fn finish(&mut self, end_ns: u64) {
        self.end_open(end_ns, "aborted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    fn cfg(ratio: f64) -> TelemetrySection {
        TelemetrySection {
            sample_ratio: ratio,
            ..Default::default()
        }
    }

    #[test]
    fn parents_decide_and_new_traces_follow_the_ratio() {
        let on = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (h, t) = begin(
            &cfg(0.0),
            Some(on),
            Some("API.example.com:8443"),
            true,
            now(),
        );
        let t = t.expect("a sampled parent is always sampled");
        assert_eq!(t.parent, Some(0x00f067aa0ba902b7));
        assert_eq!(t.host.as_deref(), Some("api.example.com"));
        let h = h.to_str().expect("ascii").to_string();
        assert!(h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && h.ends_with("-01"));
        let off = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(begin(&cfg(1.0), Some(off), None, false, now()).1.is_none());
        let (h, t) = begin(&cfg(1.0), None, None, false, now());
        assert!(t.is_some() && h.to_str().expect("ascii").ends_with("-01"));
        let (h, t) = begin(&cfg(0.0), Some(b"garbage"), None, false, now());
        assert!(t.is_none() && h.to_str().expect("ascii").ends_with("-00"));
        let kept = (0..10_000u128)
            .filter(|i| sampled_by_ratio(0.25, crate::headers::new_trace_id() ^ i))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }

    #[test]
    fn attempts_get_their_own_spans_and_end() {
        let (_, t) = begin(&cfg(1.0), None, None, false, now());
        let mut t = *t.expect("sampled");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.attempt(a);
        t.failed("connect_failed");
        t.attempt(b);
        t.connected(true);
        let tp = t.upstream_traceparent().expect("an attempt");
        t.response(200);
        t.finish(crate::clock::now_ns());
        assert_eq!(t.attempts.len(), 2);
        assert_eq!(t.attempts[0].error, Some("connect_failed"));
        assert_eq!(t.attempts[1].error, None);
        assert!(t.attempts[1].reused && t.attempts[1].end_ns.is_some());
        assert_ne!(t.attempts[0].span_id, t.attempts[1].span_id);
        let sent = tp.to_str().expect("ascii");
        assert!(sent.contains(&format!("-{:016x}-", t.attempts[1].span_id)));
        assert!(sent.contains(&format!("{:032x}", t.trace_id)));
    }
}

//! A local OpenTelemetry collector for tests: an OTLP/HTTP receiver on an ephemeral loopback
//! port that decodes the protobuf bodies posted to `/v1/traces` and `/v1/logs` (with the
//! `opentelemetry-proto` messages) and keeps them, and the raw bytes, for assertions. It can be
//! stalled: it then reads a request and never answers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Kept {
    traces: Vec<ExportTraceServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    raw: Vec<u8>,
    content_types: Vec<String>,
}

pub struct Collector {
    pub addr: SocketAddr,
    kept: Arc<Mutex<Kept>>,
    stalled: Arc<AtomicBool>,
    /// Requests received (answered or not).
    pub posts: Arc<AtomicUsize>,
}

/// A span with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub span: Span,
}

impl Got {
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// An attribute as text (strings, integers, booleans, doubles).
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(text)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("address");
        let kept = Arc::new(Mutex::new(Kept::default()));
        let stalled = Arc::new(AtomicBool::new(false));
        let posts = Arc::new(AtomicUsize::new(0));
        let (k, s, p) = (kept.clone(), stalled.clone(), posts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (k, s, p) = (k.clone(), s.clone(), p.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (k, s, p) = (k.clone(), s.clone(), p.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            p.fetch_add(1, Ordering::SeqCst);
                            if s.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_secs(3_600)).await;
                            }
                            {
                                let mut kept = k.lock().expect("lock");
                                kept.raw.extend_from_slice(&body);
                                kept.content_types.push(ctype);
                                match path.as_str() {
                                    "/v1/traces" => {
                                        if let Ok(m) = ExportTraceServiceRequest::decode(&body[..])
                                        {
                                            kept.traces.push(m);
                                        }
                                    }
                                    "/v1/logs" => {
                                        if let Ok(m) = ExportLogsServiceRequest::decode(&body[..]) {
                                            kept.logs.push(m);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            let mut r = Response::new(Full::new(Bytes::new()));
                            r.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            kept,
            stalled,
            posts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Got> {
        let kept = self.kept.lock().expect("lock");
        let mut out = Vec::new();
        for req in &kept.traces {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(Got {
                            service: service.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        let kept = self.kept.lock().expect("lock");
        kept.logs
            .iter()
            .flat_map(|r| r.resource_logs.iter())
            .flat_map(|r| r.scope_logs.iter())
            .flat_map(|s| s.log_records.iter().cloned())
            .collect()
    }

    /// Every byte received.
    pub fn raw(&self) -> Vec<u8> {
        self.kept.lock().expect("lock").raw.clone()
    }

    pub fn content_types(&self) -> Vec<String> {
        self.kept.lock().expect("lock").content_types.clone()
    }

    /// Waits (at most 20 s) until `pred` holds for the spans received.
    pub async fn wait_spans(&self, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the collector never got {what}: {} spans",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

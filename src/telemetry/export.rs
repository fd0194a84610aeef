//! The export of spans and log records to the collector, from a thread of its own: a bounded
//! queue of finished requests (`Exporter::request` never waits; what does not fit is dropped and
//! counted), their spans and log records built on that thread (`spans`), batches of
//! `batch_size` or every `batch_delay`, OTLP/HTTP with protobuf through the `opentelemetry-otlp`
//! exporters (their retry policy: doubling pauses, `Retry-After` honoured), and a last export
//! of everything queued when the gateway stops (`Exporter::finish`, called by the aggregator
//! once it has written its last records, during a graceful shutdown or an upgrade).
//!
//! The HTTP client is the gateway's `reqwest` (rustls), driven by a single-threaded runtime on
//! the export thread, so a stalled collector stalls that thread only.

use crate::analytics::record::Record;
use crate::config::telemetry::{parse_headers, TelemetrySection};
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// What goes to the export thread.
enum Item {
    /// A finished request: its spans when it was sampled, and its log record when `log`.
    Request(Box<Record>, bool),
    /// Export everything queued, answer, and stop.
    Finish(SyncSender<()>),
}

/// Counters of what was exported and dropped.
#[derive(Clone)]
pub struct Counters {
    /// `turnpike_telemetry_exported_total{signal}`.
    pub exported: IntCounterVec,
    /// `turnpike_telemetry_dropped_total{signal,reason}`: `queue_full` or `export_failed`.
    pub dropped: IntCounterVec,
}

/// The sending side, held by the aggregator.
pub struct Exporter {
    tx: SyncSender<Item>,
    counters: Counters,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An `opentelemetry_http::HttpClient` over the gateway's `reqwest` client.
#[derive(Debug)]
struct Client {
    inner: reqwest::Client,
    timeout: Duration,
}

/// Collector answers are small; more than this is not read.
const MAX_ANSWER: usize = 1 << 20;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self
            .inner
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(reqwest::Error::without_url)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(bytes::Bytes::from(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

fn signal_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

impl Exporter {
    /// Starts the export thread for `cfg` (which has an endpoint); an error says why it could
    /// not start (the gateway then runs without export).
    pub fn start(cfg: &TelemetrySection, counters: Counters) -> Result<Exporter, String> {
        let Some(base) = cfg.otlp_endpoint.as_ref().map(|u| u.expose().to_string()) else {
            return Err("no otlp_endpoint".into());
        };
        let headers = match cfg.headers_env.as_deref().map(std::env::var) {
            None => Vec::new(),
            Some(Ok(v)) => parse_headers(&v)?,
            Some(Err(_)) => return Err("headers_env is not set".into()),
        };
        let client = || -> Result<Client, String> {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("turnpike/", env!("CARGO_PKG_VERSION")))
                .build()
                .map(|inner| Client {
                    inner,
                    timeout: cfg.timeout.0,
                })
                .map_err(|e| format!("cannot build an HTTP client: {e}"))
        };
        let header_map: std::collections::HashMap<String, String> = headers.into_iter().collect();
        let retry = opentelemetry_otlp::RetryPolicy::recommended()
            .with_max_retries(cfg.retries as usize)
            .with_initial_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(8));
        let mut spans = SpanExporter::builder()
            .with_http()
            .with_http_client(client()?)
            .with_endpoint(signal_url(&base, "/v1/traces"))
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(cfg.timeout.0)
            .with_headers(header_map.clone())
            .with_retry_policy(retry.clone())
            .build()
            .map_err(|e| format!("trace exporter: {e}"))?;
        let mut logs = LogExporter::builder()
            .with_http()
            .with_http_client(client()?)
            .with_endpoint(signal_url(&base, "/v1/logs"))
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(cfg.timeout.0)
            .with_headers(header_map)
            .with_retry_policy(retry)
            .build()
            .map_err(|e| format!("log exporter: {e}"))?;
        let resource = Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attributes([opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            )])
            .build();
        spans.set_resource(&resource);
        logs.set_resource(&resource);
        for signal in ["spans", "logs"] {
            counters.exported.with_label_values(&[signal]);
            for reason in ["queue_full", "export_failed", "export_stopped"] {
                counters.dropped.with_label_values(&[signal, reason]);
            }
        }
        let (tx, rx) = sync_channel(cfg.queue_size);
        let work = Work {
            rx,
            spans,
            logs,
            maker: super::spans::Logs::default(),
            scope: super::spans::scope(),
            batch: cfg.batch_size,
            delay: cfg.batch_delay.0,
            counters: counters.clone(),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || work.run())
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        Ok(Exporter {
            tx,
            counters,
            thread: Some(thread),
        })
    }

    /// Queues a finished request for its spans (when sampled) and, with `log`, its log record;
    /// when the queue is full (or the thread has stopped) they are dropped and counted.
    pub fn request(&self, record: Record, log: bool) {
        let spans = record
            .trace
            .as_ref()
            .map_or(0, |t| 1 + t.attempts.len() as u64);
        if spans == 0 && !log {
            return;
        }
        let reason = match self.tx.try_send(Item::Request(Box::new(record), log)) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            Err(TrySendError::Disconnected(_)) => "export_stopped",
        };
        let dropped = &self.counters.dropped;
        if spans > 0 {
            dropped.with_label_values(&["spans", reason]).inc_by(spans);
        }
        if log {
            dropped.with_label_values(&["logs", reason]).inc();
        }
    }

    /// Exports everything queued and stops the thread, waiting at most `within`.
    pub fn finish(&mut self, within: Duration) {
        let (ack_tx, ack_rx) = sync_channel(1);
        let deadline = Instant::now() + within;
        // The queue may be full: the thread empties it while we wait for room.
        let mut item = Item::Finish(ack_tx);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    log::warn!("telemetry: the export queue did not drain at exit");
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(()) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(_) => log::warn!(
                "telemetry: the last export did not finish within {within:?}; what was queued is lost"
            ),
        }
    }
}

/// The export thread's state.
struct Work {
    rx: Receiver<Item>,
    spans: SpanExporter,
    logs: LogExporter,
    maker: super::spans::Logs,
    scope: InstrumentationScope,
    batch: usize,
    delay: Duration,
    counters: Counters,
    /// Exports are failing (logged once per streak).
    failing: bool,
}

impl Work {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("telemetry export disabled: cannot start its runtime: {e}");
                return;
            }
        };
        let mut spans: Vec<SpanData> = Vec::with_capacity(self.batch);
        let mut logs: Vec<SdkLogRecord> = Vec::new();
        let mut due = Instant::now() + self.delay;
        loop {
            // Checked on every item too: a steady stream must not hold a partial batch.
            if Instant::now() >= due {
                self.export_spans(&rt, &mut spans);
                self.export_logs(&rt, &mut logs);
                due = Instant::now() + self.delay;
            }
            let wait = due.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Item::Request(r, log)) => {
                    self.build(&r, log, &mut spans, &mut logs);
                    if spans.len() >= self.batch {
                        self.export_spans(&rt, &mut spans);
                    }
                    if logs.len() >= self.batch {
                        self.export_logs(&rt, &mut logs);
                    }
                }
                Ok(Item::Finish(ack)) => {
                    while let Ok(item) = self.rx.try_recv() {
                        if let Item::Request(r, log) = item {
                            self.build(&r, log, &mut spans, &mut logs);
                        }
                    }
                    while !spans.is_empty() {
                        self.export_spans(&rt, &mut spans);
                    }
                    while !logs.is_empty() {
                        self.export_logs(&rt, &mut logs);
                    }
                    let _ = ack.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export_spans(&rt, &mut spans);
                    self.export_logs(&rt, &mut logs);
                    due = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// A finished request's spans and log record, added to the pending ones.
    fn build(
        &self,
        r: &Record,
        log: bool,
        spans: &mut Vec<SpanData>,
        logs: &mut Vec<SdkLogRecord>,
    ) {
        if let Some(t) = &r.trace {
            spans.extend(super::spans::spans(r, t, &self.scope));
        }
        if log {
            logs.push(self.maker.record(r));
        }
    }

    fn outcome(&mut self, signal: &str, n: usize, result: Result<(), String>) {
        let n = n as u64;
        match result {
            Ok(()) => {
                self.counters
                    .exported
                    .with_label_values(&[signal])
                    .inc_by(n);
                if std::mem::take(&mut self.failing) {
                    log::info!("telemetry: exports to the collector succeed again");
                }
            }
            Err(why) => {
                self.counters
                    .dropped
                    .with_label_values(&[signal, "export_failed"])
                    .inc_by(n);
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(
                        "telemetry: export to the collector failed after retries ({why}); dropped items are counted in turnpike_telemetry_dropped_total"
                    );
                }
            }
        }
    }

    /// Exports up to one batch of spans (the oldest), removing them.
    fn export_spans(&mut self, rt: &tokio::runtime::Runtime, spans: &mut Vec<SpanData>) {
        if spans.is_empty() {
            return;
        }
        let rest = spans.split_off(spans.len().min(self.batch));
        let batch = std::mem::replace(spans, rest);
        let n = batch.len();
        let result = rt
            .block_on(self.spans.export(batch))
            .map_err(|e| e.to_string());
        self.outcome("spans", n, result);
    }

    /// Exports up to one batch of log records (the oldest), removing them.
    fn export_logs(&mut self, rt: &tokio::runtime::Runtime, logs: &mut Vec<SdkLogRecord>) {
        if logs.is_empty() {
            return;
        }
        let rest = logs.split_off(logs.len().min(self.batch));
        let batch = std::mem::replace(logs, rest);
        let n = batch.len();
        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|r| (r, &self.scope)).collect();
        let result = rt
            .block_on(self.logs.export(LogBatch::new(&pairs)))
            .map_err(|e| e.to_string());
        self.outcome("logs", n, result);
    }
}

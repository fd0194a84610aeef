//! OpenTelemetry export with a real local OTLP/HTTP receiver that decodes the protobuf: a
//! proxied request gives a server span (continuing the client's `traceparent`) and a client
//! span whose id is the parent id the upstream received; a request retried after a failed
//! connect gives two client spans; a refused request a server span with the refusing policy
//! and no client span; access-log records arrive as OTLP log records linked to their trace; no
//! key, token, Authorization value or query string is in any exported byte. A stalled collector
//! never holds requests (what does not fit the queue is dropped and counted), and what is
//! queued at a graceful shutdown is exported before the process exits.

mod support;

use std::time::Duration;
use support::otlp::{attr, hex, Collector, Got};
use support::upstream::Upstream;
use support::{client, metric_value, metrics_text, Gateway};

const KEY: &str = "tp_otel_acme_0123456789abcdefghij";
const BEARER: &str = "SECRETBEARER0123456789";
const QUERY_SECRET: &str = "SECRETQUERY0123456789";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn body(collector: &Collector, up: &Upstream, dead: &str, telemetry_extra: &str) -> String {
    format!(
        r#"
[telemetry]
otlp_endpoint = "{otlp}"
service_name = "edge-test"
sample_ratio = 1.0
export_access_log = true
{telemetry_extra}

[plans.gold]
rate = "1000/s"

[policies.office-only]
kind = "ip_filter"
allow = ["192.0.2.0/24"]

[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[upstreams.flaky]
targets = [ {{ addr = "{dead}" }}, {{ addr = "{up}" }} ]
retries = 1
[upstreams.flaky.passive]
enabled = false

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders/v1"
upstream = "orders"
[apis.auth]
methods = ["api_key"]

[[apis]]
name = "flaky"
base_path = "/flaky"
upstream = "flaky"

[[apis]]
name = "office"
base_path = "/office"
upstream = "orders"
policies = ["office-only"]

[[consumers]]
id = "acme"
plan = "gold"
keys = [ {{ sha256 = "{digest}" }} ]
"#,
        otlp = collector.url(),
        up = up.addr,
        digest = support::key_digest(KEY),
    )
}

fn server_spans(spans: &[Got]) -> Vec<&Got> {
    spans.iter().filter(|g| g.span.kind == 2).collect()
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    let mut c: Vec<&Got> = spans
        .iter()
        .filter(|g| g.span.kind == 3 && g.span.parent_span_id == parent.span.span_id)
        .collect();
    c.sort_by_key(|g| g.span.start_time_unix_nano);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_reach_the_collector_without_secrets() {
    let collector = Collector::start().await;
    let up = Upstream::start("orders").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let gw = Gateway::start(&body(&collector, &up, &dead, "batch_delay = \"100ms\""));
    let c = client();

    // A proxied request continuing the client's trace, carrying secrets.
    let r = c
        .get(gw.url(&format!("/orders/v1/items/42?token={QUERY_SECRET}")))
        .header("x-api-key", KEY)
        .header("authorization", format!("Bearer {BEARER}"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 200);
    let sent = up
        .last()
        .and_then(|s| s.header("traceparent").map(String::from))
        .expect("the upstream got a traceparent");

    // Two requests to a pool whose first target refuses connections: round robin sends one
    // of them there first, and the retry goes to the live target.
    for _ in 0..2 {
        let r = c.get(gw.url("/flaky/x")).send().await.expect("flaky");
        assert_eq!(r.status(), 200);
    }
    // A request refused by a policy.
    let r = c.get(gw.url("/office/x")).send().await.expect("office");
    assert_eq!(r.status(), 403);

    let spans = collector
        .wait_spans("four server spans", |s| server_spans(s).len() >= 4)
        .await;
    assert!(spans.iter().all(|g| g.service == "edge-test"));
    assert!(
        collector
            .content_types()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP with protobuf"
    );

    // The proxied request: its server span continues the client's trace.
    let server = server_spans(&spans)
        .into_iter()
        .find(|g| g.attr("turnpike.api").as_deref() == Some("orders"))
        .expect("the orders span");
    assert_eq!(hex(&server.span.trace_id), TRACE);
    assert_eq!(hex(&server.span.parent_span_id), PARENT);
    assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("turnpike.consumer").as_deref(), Some("acme"));
    assert_eq!(server.attr("turnpike.plan").as_deref(), Some("gold"));
    assert_eq!(server.attr("turnpike.version").as_deref(), Some("v1"));
    assert_eq!(server.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
    let route = server.attr("http.route").expect("a route template");
    assert!(!route.contains("42"), "a template, not the path: {route}");
    assert!(server.span.name.starts_with("GET "), "{}", server.span.name);
    let client_spans = children(&spans, server);
    assert_eq!(client_spans.len(), 1);
    let cs = client_spans[0];
    assert_eq!(hex(&cs.span.trace_id), TRACE);
    assert_eq!(
        sent,
        format!("00-{TRACE}-{}-01", hex(&cs.span.span_id)),
        "the upstream's parent is the client span"
    );
    assert_eq!(cs.attr("server.port"), Some(up.addr.port().to_string()));
    assert_eq!(cs.attr("http.response.status_code").as_deref(), Some("200"));
    assert!(cs.span.events.iter().any(|e| e.name == "connected"));
    assert!(cs.span.events.iter().any(|e| e.name == "response_head"));
    assert!(cs.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(cs.span.end_time_unix_nano <= server.span.end_time_unix_nano);

    // The retried request: two client spans, the first failed to connect.
    let retried = server_spans(&spans)
        .into_iter()
        .filter(|g| g.attr("turnpike.api").as_deref() == Some("flaky"))
        .map(|g| children(&spans, g))
        .find(|c| c.len() == 2)
        .expect("a flaky request with two attempts");
    assert_eq!(
        retried[0].attr("error.type").as_deref(),
        Some("connect_failed")
    );
    assert_eq!(retried[0].span.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        retried[0].attr("server.port"),
        Some(dead_port.port.to_string())
    );
    assert_eq!(
        retried[1].attr("http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        retried[1].attr("http.response.status_code").as_deref(),
        Some("200")
    );

    // The refused request: the policy, no attempt.
    let refused = server_spans(&spans)
        .into_iter()
        .find(|g| g.attr("turnpike.api").as_deref() == Some("office"))
        .expect("the office span");
    assert_eq!(
        refused.attr("http.response.status_code").as_deref(),
        Some("403")
    );
    assert_eq!(
        refused.attr("turnpike.policy").as_deref(),
        Some("office-only")
    );
    assert!(children(&spans, refused).is_empty());

    // Log records: one per request (all kept: access_log_sample is 1), linked to the trace.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while collector.logs().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "log records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = collector.logs();
    let orders = logs
        .iter()
        .find(|l| attr(&l.attributes, "api").as_deref() == Some("orders"))
        .expect("the orders log record");
    assert_eq!(hex(&orders.trace_id), TRACE);
    assert_eq!(orders.span_id, server.span.span_id);
    assert_eq!(attr(&orders.attributes, "status").as_deref(), Some("200"));
    assert_eq!(
        attr(&orders.attributes, "consumer").as_deref(),
        Some("acme")
    );
    assert_eq!(attr(&orders.attributes, "route"), Some(route));
    assert_eq!(
        attr(&orders.attributes, "request_id"),
        server.attr("turnpike.request_id")
    );

    // No secret in any exported byte.
    let raw = collector.raw();
    let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    for secret in [KEY, BEARER, QUERY_SECRET, "token=", "items/42"] {
        assert!(!has(secret), "{secret:?} was exported");
    }

    let m = metrics_text(&gw).await;
    assert!(
        m.contains("turnpike_telemetry_dropped_total{reason=\"queue_full\",signal=\"spans\"} 0")
    );
    assert!(metric_value(&m, "turnpike_telemetry_exported_total{signal=\"spans\"}") >= 7.0);
    assert!(metric_value(&m, "turnpike_telemetry_exported_total{signal=\"logs\"}") >= 4.0);
}

/// A collector that never answers: requests are answered as if it did not exist (each one
/// would otherwise wait the 60 s export timeout), and the spans that do not fit the queue are
/// dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_never_holds_requests() {
    let collector = Collector::start().await;
    collector.stall(true);
    let up = Upstream::start("orders").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let extra =
        "queue_size = 16\nbatch_size = 4\nbatch_delay = \"10ms\"\ntimeout = \"60s\"\nretries = 0";
    let gw = Gateway::start(&body(&collector, &up, &dead, extra));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for i in 0..200 {
        let r = c
            .get(gw.url("/orders/v1/items"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} waited on the collector: {e}"));
        assert_eq!(r.status(), 200);
    }
    support::wait_records(&gw, 200.0).await;
    let m = metrics_text(&gw).await;
    let dropped = metric_value(
        &m,
        "turnpike_telemetry_dropped_total{reason=\"queue_full\",signal=\"spans\"}",
    );
    assert!(
        dropped >= 100.0,
        "spans dropped and counted: {dropped}\n{m}"
    );
    assert!(
        m.contains("turnpike_telemetry_exported_total{signal=\"spans\"} 0\n"),
        "nothing exported: {m}"
    );
    assert!(collector.posts.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// Spans waiting for their batch when the gateway stops gracefully are exported before it
/// exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_exported_at_a_graceful_shutdown() {
    let collector = Collector::start().await;
    let up = Upstream::start("orders").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let extra = "batch_size = 8192\nbatch_delay = \"60s\"";
    let mut gw = Gateway::start_with(
        "grace_period = \"1s\"\nkeepalive_drain = \"0s\"\ngraceful_shutdown_timeout = \"5s\"",
        &body(&collector, &up, &dead, extra),
    );
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/orders/v1/items"))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    support::wait_records(&gw, 3.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.spans().is_empty(),
        "nothing before the batch is due"
    );
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some(), "no exit");
    let spans = collector.spans();
    assert_eq!(server_spans(&spans).len(), 3, "exported at exit");
    assert_eq!(spans.len(), 6, "and their client spans");
}

/// Parent-based sampling at `sample_ratio = 0`: new traces and a client's unsampled one are not
/// exported (and the upstream is told so), a client's sampled trace is; log records go out for
/// every request, with trace ids only for the sampled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_export_no_spans() {
    let collector = Collector::start().await;
    let up = Upstream::start("orders").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let text = body(&collector, &up, &dead, "batch_delay = \"50ms\"")
        .replace("sample_ratio = 1.0", "sample_ratio = 0.0");
    let gw = Gateway::start(&text);
    let call = |tp: Option<String>| {
        let mut req = client()
            .get(gw.url("/orders/v1/items"))
            .header("x-api-key", KEY);
        if let Some(tp) = tp {
            req = req.header("traceparent", tp);
        }
        async move {
            let r = req.send().await.expect("request");
            assert_eq!(r.status(), 200);
        }
    };
    call(None).await;
    let sent = up
        .last()
        .and_then(|s| s.header("traceparent").map(String::from));
    assert!(
        sent.is_some_and(|t| t.ends_with("-00")),
        "not sampled, and said so"
    );
    call(Some(format!("00-{TRACE}-{PARENT}-00"))).await;
    call(Some(format!("00-{TRACE}-{PARENT}-01"))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while collector.logs().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "log records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = collector.spans();
    assert_eq!(
        server_spans(&spans).len(),
        1,
        "only the sampled parent's request"
    );
    assert_eq!(hex(&server_spans(&spans)[0].span.trace_id), TRACE);
    let linked = collector
        .logs()
        .iter()
        .filter(|l| !l.trace_id.is_empty())
        .count();
    assert_eq!(linked, 1, "log records carry trace ids only when sampled");
}

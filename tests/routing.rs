//! Routing, base-path strip, static answers, error bodies and the headers the gateway sets,
//! through the real binary to real upstreams on loopback.

mod support;

use support::upstream::Upstream;
use support::{client, problem, raw_exchange, Gateway};

fn catalog_config(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
[upstreams.catalog]
balance = "round_robin"
targets = [ {{ addr = "{a}" }}, {{ addr = "{b}", weight = 2 }} ]
connect_timeout = "1s"
read_timeout = "10s"
retries = 1

[upstreams.catalog.health]
type = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
unhealthy_after = 2
healthy_after = 2

[[apis]]
name = "catalog"
version = "v1"
base_path = "/catalog/v1"
upstream = "catalog"
strip_base_path = true

[[apis.routes]]
path = "/items/{{id}}"
methods = ["GET"]

[[apis.routes]]
path = "/items"
methods = ["GET", "POST"]

[[apis]]
name = "hello"
version = "v1"
base_path = "/hello"
[apis.respond]
status = 200
content_type = "application/json"
body = '{{"message":"hello from turnpike"}}'

[[apis]]
name = "raw"
base_path = "/raw"
upstream = "catalog"
"#,
        a = a.addr,
        b = b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_strip_base_path_and_answer_statically() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&catalog_config(&a, &b));
    let c = client();

    let r = c
        .get(gw.url("/catalog/v1/items/42?x=1"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["uri"], "/items/42?x=1", "base path stripped, query kept");

    let r = c
        .post(gw.url("/catalog/v1/items"))
        .body("abc")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["uri"], "/items");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_len"], 3);

    // Without strip_base_path the path is forwarded as received.
    let v: serde_json::Value = c
        .get(gw.url("/raw/any/thing"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(v["uri"], "/raw/any/thing");

    let r = c.get(gw.url("/hello")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(
        r.text().await.expect("body"),
        r#"{"message":"hello from turnpike"}"#
    );
    assert_eq!(
        a.hits() + b.hits(),
        3,
        "the static answer never reaches an upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_method_not_allowed_are_problem_json() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&catalog_config(&a, &b));
    let c = client();

    let r = c
        .get(gw.url("/nowhere"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["x-request-id"], "trace-me-1");
    let v = problem(&r.text().await.expect("body"), 404, "route_not_found");
    assert_eq!(v["request_id"], "trace-me-1");

    let r = c
        .delete(gw.url("/catalog/v1/items"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    problem(&r.text().await.expect("body"), 405, "method_not_allowed");

    let r = c
        .put(gw.url("/catalog/v1/items/42"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");

    // Route templates only match whole segments.
    let r = c
        .get(gw.url("/catalog/v1/items/42/extra"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    assert_eq!(a.hits() + b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_by_the_gateway() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&catalog_config(&a, &b));
    let c = client();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(gw.url("/catalog/v1/items"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x_custom", "underscore")
        .header("x-request-id", "bad id with spaces")
        .header("traceparent", trace)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(rid.len(), 32, "a malformed client id is replaced");
    let seen = a
        .last()
        .or_else(|| b.last())
        .expect("upstream saw the request");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.headers["x-forwarded-for"].len(), 1);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(
        seen.header("x_custom"),
        None,
        "underscored header names are dropped"
    );
    assert_eq!(seen.header("x-request-id"), Some(rid.as_str()));
    let tp = seen.header("traceparent").expect("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "trace continued: {tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"), "with our own parent id");

    // No traceparent from the client: a new trace starts.
    c.get(gw.url("/catalog/v1/items"))
        .send()
        .await
        .expect("request");
    let seen = a.last().into_iter().chain(b.last()).find(|s| {
        s.header("traceparent")
            .is_some_and(|t| !t.contains("4bf92f"))
    });
    assert!(seen.is_some(), "a fresh traceparent was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&catalog_config(&a, &b));
    let out = raw_exchange(
        gw.addr,
        b"GET /catalog/v1/items HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret-hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = a.last().or_else(|| b.last()).expect("seen");
    assert_eq!(seen.header("x-secret-hop"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_ne!(seen.header("connection"), Some("close, x-secret-hop"));
}

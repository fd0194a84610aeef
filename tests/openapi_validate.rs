//! Request validation against an API's OpenAPI document through the real gateway and a real
//! upstream: a refused request gets 400 `request_invalid` with its exact `errors` and never
//! reaches the upstream; a valid body (small, and over Pingora's 64 KiB retry buffer) reaches
//! it byte for byte; bodies over `max_validated_body` get 413; report mode passes requests,
//! logs and counts `turnpike_contract_violations_total`; sampled answers are checked.

mod support;

use serde_json::json;
use support::upstream::Upstream;
use support::{client, metrics_text, Gateway};

const SPEC: &str = r#"
openapi: 3.1.0
info: {title: Orders, version: '1'}
paths:
  /orders:
    post:
      parameters:
        - {name: dry_run, in: query, schema: {type: boolean}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Order'}
      responses:
        '201': {description: created}
  /orders/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string, format: uuid}}
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema:
                type: object
                required: [id, total]
                properties:
                  total: {type: number}
components:
  schemas:
    Order:
      type: object
      required: [items]
      additionalProperties: false
      properties:
        items:
          type: array
          minItems: 1
          items:
            type: object
            required: [sku, qty]
            properties:
              sku: {type: string, pattern: '^[A-Z]{3}-[0-9]+$'}
              qty: {type: integer, minimum: 1}
        note: {type: [string, 'null'], maxLength: 200000}
"#;

fn config(dir: &std::path::Path, up: &str, openapi: &str) -> String {
    std::fs::write(dir.join("orders.yaml"), SPEC).expect("spec");
    format!(
        r#"
[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
base_path = "/shop"
upstream = "orders"
[apis.catalog]
openapi = "{spec}"
[apis.openapi]
routes = true
{openapi}
"#,
        spec = dir.join("orders.yaml").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_before_the_upstream() {
    let up = Upstream::start("orders").await;
    let dir = tempfile::tempdir().expect("tmp");
    let gw = Gateway::start(&config(
        dir.path(),
        &up.addr.to_string(),
        "validate = \"request\"\nmax_validated_body = \"512KiB\"",
    ));
    let c = client();
    let post = |body: String| {
        c.post(gw.url("/shop/orders?dry_run=maybe"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(r#"{"items":[{"sku":"abc","qty":0}],"extra":1}"#.into())
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let ct = r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "request_invalid");
    assert_eq!(
        v["errors"],
        json!([
            {"in": "query", "name": "dry_run", "pointer": "/dry_run", "detail": "value is not of type \"boolean\""},
            {"in": "body", "pointer": "/items/0/qty", "detail": "value is less than the minimum of 1"},
            {"in": "body", "pointer": "/items/0/sku", "detail": "value does not match \"^[A-Z]{3}-[0-9]+$\""},
            {"in": "body", "pointer": "", "detail": "Additional properties are not allowed ('extra' was unexpected)"},
        ]),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap_or("").contains("4 problems"),
        "{v}"
    );
    let r = c
        .get(gw.url("/shop/orders/not-a-uuid"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        v["errors"],
        json!([{"in": "path", "name": "id", "pointer": "/id", "detail": "value is not a \"uuid\""}])
    );
    let r = c
        .post(gw.url("/shop/orders"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .expect("post");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["in"], "header", "{v}");
    assert_eq!(up.hits(), 0, "no refused request reached the upstream");

    // Valid: the body reaches the upstream whole, small or over 64 KiB.
    let small = r#"{"items":[{"sku":"ABC-1","qty":2}]}"#.to_string();
    let r = c
        .post(gw.url("/shop/orders?dry_run=true"))
        .header("content-type", "application/json")
        .body(small.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        up.last().and_then(|s| s.body).as_deref(),
        Some(small.as_bytes())
    );
    let note: String = (0..150_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let big = json!({"items": [{"sku": "XYZ-9", "qty": 1}], "note": note}).to_string();
    assert!(big.len() > 140_000);
    let r = c
        .post(gw.url("/shop/orders"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let seen = up.last().expect("seen");
    assert_eq!(seen.body_len, big.len());
    assert_eq!(
        seen.body.as_deref(),
        Some(big.as_bytes()),
        "forwarded byte for byte"
    );
    assert_eq!(up.hits(), 2);

    // Over max_validated_body: 413 before anything is forwarded.
    let huge =
        json!({"items": [{"sku": "XYZ-9", "qty": 1}], "note": "x".repeat(600_000)}).to_string();
    let r = post(huge).await.expect("post");
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(up.hits(), 2);
    // A body that is invalid JSON.
    let r = post("{\"items\":".into()).await.expect("post");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["errors"][1]["in"], "body", "{v}");
    assert!(
        v["errors"][1]["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("the body is not valid JSON"),
        "{v}"
    );
    // A client that waits for 100 Continue gets it from the gateway, which reads the body,
    // validates it and sends the upstream the request without Expect.
    let addr = gw.addr;
    let body = r#"{"items":[{"sku":"ABC-7","qty":1}]}"#;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let head = format!(
            "POST /shop/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("head");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("100");
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        s.write_all(body.as_bytes()).expect("body");
        let mut rest = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&rest).contains("HTTP/1.1 200") {
                break;
            }
        }
        (first, String::from_utf8_lossy(&rest).into_owned())
    })
    .await
    .expect("client");
    assert!(answer.0.starts_with("HTTP/1.1 100 Continue"), "{answer:?}");
    let whole = format!("{}{}", answer.0, answer.1);
    assert!(whole.contains("HTTP/1.1 200"), "{whole}");
    let seen = up.last().expect("seen");
    assert_eq!(seen.body.as_deref(), Some(body.as_bytes()));
    assert_eq!(
        seen.header("expect"),
        None,
        "the upstream is not asked to wait"
    );

    let m = metrics_text(&gw).await;
    assert!(
        m.contains(
            "turnpike_policy_refusals_total{api=\"orders\",kind=\"validate\",policy=\"openapi\"}"
        ),
        "the refusing policy is recorded: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_passes_logs_and_counts() {
    let up = Upstream::start("orders").await;
    let dir = tempfile::tempdir().expect("tmp");
    let gw = Gateway::start(&config(
        dir.path(),
        &up.addr.to_string(),
        "validate = \"request\"\nmode = \"report\"\nvalidate_responses = \"report\"\nresponse_sample = 1.0",
    ));
    let c = client();
    let r = c
        .post(gw.url("/shop/orders"))
        .header("content-type", "application/json")
        .body(r#"{"items":[],"secret_field":"hunter2-value"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200, "report mode passes");
    assert_eq!(up.hits(), 1);
    // The upstream's answer (its own JSON) is no documented 201 of POST /orders.
    let id = "6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f";
    let r = c
        .get(gw.url(&format!("/shop/orders/{id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.bytes().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = metrics_text(&gw).await;
        let body = support::metric_value(
            &m,
            "turnpike_contract_violations_total{api=\"orders\",in=\"body\",route=\"/shop/orders\"}",
        );
        let answer = support::metric_value(
            &m,
            "turnpike_contract_violations_total{api=\"orders\",in=\"response\",route=\"/shop/orders/{id}\"}",
        );
        if body == 1.0 && answer >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = gw.log();
    assert!(
        log.contains("contract violation (report mode) in the request of orders /shop/orders"),
        "{log}"
    );
    assert!(
        log.contains("body \"/items\": \"value has less than 1 item\""),
        "{log}"
    );
    assert!(
        log.contains("in the answer of orders /shop/orders/{id}")
            && log.contains("\\\"total\\\" is a required property")
                | log.contains("\"total\" is a required property"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "no value is logged");
}

//! Mocks from OpenAPI documents through the real gateway: a mocked API answers from the spec's
//! examples (or an instance generated from its schemas) with `X-Turnpike-Mock: true`,
//! `Prefer: code=` and `Prefer: example=` select other answers, the request is validated
//! first, and mocked requests still pass identity and plans and are counted. Uses the public
//! Petstore 3.0 document and a spec with named examples.

mod support;

use serde_json::json;
use support::{client, metrics_text, Gateway};

const ORDERS: &str = r#"
openapi: 3.1.0
info: {title: Orders, version: '1'}
paths:
  /orders/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer}}
      responses:
        '200':
          description: ok
          content:
            application/json:
              examples:
                open: {value: {id: 7, state: open}}
                shipped: {value: {id: 7, state: shipped}}
        '404':
          description: missing
          content:
            application/problem+json:
              schema:
                type: object
                required: [code]
                properties:
                  code: {type: string, enum: [order_not_found]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocked_apis_answer_from_the_spec() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("orders.yaml"), ORDERS).expect("spec");
    let petstore = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openapi/petstore-3.0.json");
    let key = "mock-test-key-0123456789";
    let text = format!(
        r#"
[plans.free]
quotas = ["100/hour"]

[[consumers]]
id = "tester"
plan = "free"
keys = [{{ sha256 = "{digest}" }}]

[[apis]]
name = "petstore"
base_path = "/pets/v1"
[apis.catalog]
openapi = "{petstore}"
[apis.openapi]
routes = true
mock = true

[[apis]]
name = "orders"
base_path = "/orders/v1"
[apis.auth]
methods = ["api_key"]
[apis.catalog]
lifecycle = "design"
openapi = "{orders}"
[apis.openapi]
routes = true
"#,
        digest = support::key_digest(key),
        petstore = petstore.display(),
        orders = dir.path().join("orders.yaml").display()
    );
    let gw = Gateway::start(&text);
    let c = client();

    // Petstore: no examples on the operation, so an instance generated from the schema
    // (required properties, the schema's own examples).
    let r = c.get(gw.url("/pets/v1/pet/42")).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-turnpike-mock"], "true");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v, json!({"name": "doggie", "photoUrls": []}));
    // Validated first: petId is an integer.
    let r = c.get(gw.url("/pets/v1/pet/abc")).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "request_invalid");
    assert_eq!(v["errors"][0]["pointer"], "/petId");
    let r = c
        .get(gw.url("/pets/v1/pet/42"))
        .header("prefer", "code=404")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["x-turnpike-mock"], "true");

    // Orders (lifecycle design): behind its API key; named examples.
    let get = |prefer: Option<&'static str>, with_key: bool| {
        let mut b = c.get(gw.url("/orders/v1/orders/7"));
        if with_key {
            b = b.header("x-api-key", key);
        }
        if let Some(p) = prefer {
            b = b.header("prefer", p);
        }
        b.send()
    };
    assert_eq!(get(None, false).await.expect("get").status().as_u16(), 401);
    let r = get(None, true).await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().contains_key("ratelimit"), "the plan applies");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v, json!({"id": 7, "state": "open"}));
    let r = get(Some("example=shipped"), true).await.expect("get");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["state"], "shipped");
    let r = get(Some("code=404"), true).await.expect("get");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v, json!({"code": "order_not_found"}));
    let r = get(Some("example=lost"), true).await.expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("it has: open, shipped"),
        "{v}"
    );

    // Counted like any other request.
    support::wait_records(&gw, 8.0).await;
    let m = metrics_text(&gw).await;
    assert!(
        m.contains("turnpike_requests_total{api=\"orders\",consumer=\"tester\",method=\"GET\",route=\"/orders/v1/orders/{id}\",status_class=\"2xx\",version=\"\"} 2"),
        "{m}"
    );
}

//! The cost of contract validation (`crate::openapi::contract`): a typical 2 KiB order body
//! against its schema, and a query of five parameters (an array, an enum, a bounded integer, a
//! date-time, a boolean). Run with `cargo bench --bench contract`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use turnpike::openapi::contract::{Contract, Request};

const SPEC: &str = r#"
openapi: 3.1.0
info: {title: Orders, version: '1'}
paths:
  /orders:
    get:
      parameters:
        - {name: status, in: query, schema: {type: array, items: {type: string, enum: [open, paid, shipped]}}}
        - {name: sort, in: query, schema: {type: string, enum: [created, total]}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
        - {name: since, in: query, schema: {type: string, format: date-time}}
        - {name: mine, in: query, schema: {type: boolean}}
      responses: {'200': {description: ok}}
    post:
      requestBody:
        required: true
        content:
          application/json: {schema: {$ref: '#/components/schemas/Order'}}
      responses: {'201': {description: created}}
components:
  schemas:
    Order:
      type: object
      required: [customer, lines, currency]
      additionalProperties: false
      properties:
        customer: {type: string, format: uuid}
        currency: {type: string, enum: [EUR, USD, GBP]}
        email: {type: string, format: email}
        note: {type: [string, 'null'], maxLength: 500}
        lines:
          type: array
          minItems: 1
          maxItems: 100
          items:
            type: object
            required: [sku, qty, price]
            properties:
              sku: {type: string, pattern: '^[A-Z]{3}-[0-9]{4}$'}
              qty: {type: integer, minimum: 1}
              price: {type: number, minimum: 0}
              gift: {type: boolean}
"#;

fn order() -> String {
    let lines: Vec<String> = (0..36)
        .map(|i| {
            format!(
                r#"{{"sku":"ABC-{:04}","qty":{},"price":{}.5,"gift":false}}"#,
                i,
                i + 1,
                i * 3
            )
        })
        .collect();
    format!(
        r#"{{"customer":"6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f","currency":"EUR","email":"buyer@example.com","note":"leave at the door","lines":[{}]}}"#,
        lines.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("orders.yaml"), SPEC).expect("write");
    let spec = turnpike::openapi::load(std::path::Path::new("orders.yaml"), Some(dir.path()))
        .expect("spec");
    let contract = Contract::compile(&spec, false).expect("compiles");
    let post = contract.find(&http::Method::POST, "/orders").expect("post");
    let get = contract.find(&http::Method::GET, "/orders").expect("get");
    let body = order();
    assert!((1800..2600).contains(&body.len()), "{}", body.len());
    let mut json = http::HeaderMap::new();
    json.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let empty = http::HeaderMap::new();
    let body_req = Request {
        headers: &json,
        path: b"/orders",
        query: b"",
        body: Some(body.as_bytes()),
        has_body: true,
    };
    assert!(post.check(&body_req).is_empty());
    let query = b"status=open&status=paid&sort=total&limit=20&since=2026-12-01T00:00:00Z&mine=true";
    let query_req = Request {
        headers: &empty,
        path: b"/orders",
        query,
        body: None,
        has_body: false,
    };
    assert!(get.check(&query_req).is_empty());
    c.bench_function("validate a 2 KiB order body", |b| {
        b.iter(|| black_box(post.check(black_box(&body_req))))
    });
    // For scale: parsing the same body alone.
    c.bench_function("parse a 2 KiB order body (serde_json only)", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(
                body.as_bytes(),
            )))
        })
    });
    c.bench_function("validate a query of 5 parameters", |b| {
        b.iter(|| black_box(get.check(black_box(&query_req))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

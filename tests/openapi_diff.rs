//! `turnpike openapi diff`: every breaking kind it knows found in a change made for it (and
//! nothing breaking in additions), through the library and the command line (exit codes,
//! text, JSON and Markdown), and the public Petstore compared in its 3.0 and 3.1 forms.

mod support;

use std::path::Path;
use support::run_cli;
use turnpike::openapi::{diff::diff, load};

const BASE: &str = r#"openapi: 3.0.3
info: {title: Orders, version: '1'}
paths:
  /orders:
    get:
      parameters:
        - {name: status, in: query, required: false, schema: {type: string, enum: [open, closed]}}
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema:
                type: array
                items: {$ref: '#/components/schemas/Order'}
    post:
      requestBody:
        content:
          application/json:
            schema: {$ref: '#/components/schemas/NewOrder'}
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
              schema: {$ref: '#/components/schemas/Order'}
    delete:
      responses:
        '204': {description: gone}
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: x-api-key}
  schemas:
    Order:
      type: object
      properties:
        id: {type: string}
        state: {type: string, enum: [open, closed]}
        total: {type: number}
        parent: {$ref: '#/components/schemas/Order'}
    NewOrder:
      type: object
      required: [sku]
      properties:
        sku: {type: string, maxLength: 40}
        qty: {type: integer, minimum: 1, maximum: 100}
        note: {type: string}
"#;

/// The changes from BASE to BASE with `from` replaced by `to`: (kind, breaking).
fn changes(from: &str, to: &str) -> Vec<(String, bool)> {
    assert!(
        BASE.contains(from),
        "the case must change something: {from}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("old.yaml"), BASE).expect("write");
    std::fs::write(dir.path().join("new.yaml"), BASE.replacen(from, to, 1)).expect("write");
    let old = load(Path::new("old.yaml"), Some(dir.path())).expect("old");
    let new = load(Path::new("new.yaml"), Some(dir.path())).expect("new");
    diff(&old, &new)
        .into_iter()
        .map(|c| (c.kind.to_string(), c.breaking))
        .collect()
}

#[test]
fn every_breaking_kind_is_found() {
    let cases: [(&str, &str, &str); 13] = [
        ("path_removed", "  /orders/{id}:\n", "  /orders/{oid}/x:\n"),
        ("operation_removed", "    delete:\n      responses:\n        '204': {description: gone}\n", ""),
        ("required_parameter_added", "in: query, required: false", "in: query, required: true"),
        ("required_request_property_added", "required: [sku]", "required: [sku, qty]"),
        ("required_request_property_added", "required: [sku]\n      properties:\n", "required: [sku, coupon]\n      properties:\n        coupon: {type: string}\n"),
        ("response_property_removed", "        total: {type: number}\n", ""),
        ("type_changed", "total: {type: number}", "total: {type: string}"),
        ("format_changed", "format: uuid", "format: ulid"),
        ("request_enum_narrowed", "enum: [open, closed]}}", "enum: [open]}}"),
        ("response_enum_widened", "state: {type: string, enum: [open, closed]}", "state: {type: string, enum: [open, closed, lost]}"),
        ("bounds_narrowed", "maximum: 100", "maximum: 50"),
        ("media_type_removed", "          application/json:\n            schema: {$ref: '#/components/schemas/NewOrder'}", "          application/xml:\n            schema: {$ref: '#/components/schemas/NewOrder'}"),
        ("security_added", "components:\n", "security:\n  - key: []\ncomponents:\n"),
    ];
    for (kind, from, to) in cases {
        let found = changes(from, to);
        assert!(
            found.iter().any(|(k, b)| k == kind && *b),
            "{kind}: found {found:?}"
        );
    }
    let pattern = changes(
        "sku: {type: string, maxLength: 40}",
        "sku: {type: string, maxLength: 40, pattern: '^[A-Z]+$'}",
    );
    assert!(
        pattern.contains(&("bounds_narrowed".to_string(), true)),
        "{pattern:?}"
    );
}

#[test]
fn additions_are_not_breaking() {
    let found = changes(
        "        note: {type: string}\n",
        "        note: {type: string}\n        gift: {type: boolean}\n",
    );
    assert_eq!(found, [("request_property_added".to_string(), false)]);
    let found = changes(
        "        total: {type: number}\n",
        "        total: {type: number}\n        created: {type: string}\n",
    );
    assert_eq!(
        found,
        [("response_property_added".to_string(), false)],
        "{found:?}"
    );
    let found = changes("  /orders/{id}:\n", "  /health:\n    get:\n      responses:\n        '200': {description: ok}\n  /orders/{id}:\n");
    assert_eq!(found, [("path_added".to_string(), false)]);
    let found = changes("in: query, required: false, schema: {type: string, enum: [open, closed]}}\n", "in: query, required: false, schema: {type: string, enum: [open, closed]}}\n        - {name: page, in: query, schema: {type: integer}}\n");
    assert_eq!(found, [("optional_parameter_added".to_string(), false)]);
    assert!(changes("title: Orders", "title: Orders API").is_empty());
}

#[test]
fn the_command_line_exits_by_what_it_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let old = dir.path().join("old.yaml");
    let new = dir.path().join("new.yaml");
    std::fs::write(&old, BASE).expect("write");
    std::fs::write(&new, BASE.replacen("maximum: 100", "maximum: 50", 1)).expect("write");
    let (o, n) = (old.display().to_string(), new.display().to_string());
    let (code, out, _) = run_cli(&["openapi", "diff", &o, &n], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BREAKING bounds_narrowed #/paths/~1orders/post/requestBody/content/application~1json/schema/properties/qty: "), "{out}");
    let (code, out, _) = run_cli(&["openapi", "diff", &o, &n, "--format", "json"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["breaking"], 1);
    let (_, out, _) = run_cli(&["openapi", "diff", &o, &n, "--format", "markdown"], None);
    assert!(out.contains("| breaking | `bounds_narrowed` |"), "{out}");
    let (code, out, _) = run_cli(&["openapi", "diff", &o, &o], None);
    assert_eq!((code, out.trim()), (0, "0 breaking, 0 other"));
    std::fs::write(&new, "openapi: 3.0.3\npaths: {$ref: 'https://x/y'}\n").expect("write");
    let (code, _, err) = run_cli(&["openapi", "diff", &o, &n], None);
    assert_eq!(code, 2);
    assert!(err.contains("remote $ref"), "{err}");
}

#[test]
fn the_public_petstore_in_its_two_forms() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi");
    let a = load(Path::new("petstore-3.0.json"), Some(&dir)).expect("3.0");
    let b = load(Path::new("petstore-3.1.yaml"), Some(&dir)).expect("3.1");
    assert_eq!(a.operations.len(), b.operations.len());
    let same = diff(&a, &a);
    assert!(same.is_empty(), "{same:?}");
}

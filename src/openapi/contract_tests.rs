//! Unit tests of `contract`: parameters, bodies, answers, formats and hostile inputs, with
//! the exact problems a client would read.

use super::super::load;
use super::super::tests::write;
use super::*;

fn contract(text: &str) -> Contract {
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "spec.yaml", text);
    let spec = load(std::path::Path::new("spec.yaml"), Some(dir.path())).expect("loads");
    Contract::compile(&spec, true).expect("compiles")
}

fn check(
    c: &Contract,
    method: &str,
    template: &str,
    path: &str,
    query: &str,
    ct: Option<&str>,
    body: Option<&str>,
) -> Vec<(&'static str, String, String)> {
    let mut headers = http::HeaderMap::new();
    if let Some(ct) = ct {
        headers.insert(http::header::CONTENT_TYPE, ct.parse().expect("ct"));
    }
    let method: http::Method = method.parse().expect("method");
    let op = c
        .find(&method, &super::super::operations::shape(template))
        .expect("operation");
    op.check(&Request {
        headers: &headers,
        path: path.as_bytes(),
        query: query.as_bytes(),
        body: body.map(str::as_bytes),
        has_body: body.is_some(),
    })
    .into_iter()
    .map(|v| (v.at, v.pointer, v.detail))
    .collect()
}

fn e(at: &'static str, pointer: &str, detail: &str) -> (&'static str, String, String) {
    (at, pointer.into(), detail.into())
}

const SPEC: &str = r#"
openapi: 3.0.3
info: {title: t, version: '1'}
paths:
  /orders/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
    get:
      parameters:
        - {name: expand, in: query, schema: {type: array, items: {type: string, enum: [lines, customer]}}}
        - {name: limit, in: query, required: true, schema: {type: integer, maximum: 50}}
      responses:
        '200': {description: ok, content: {application/json: {schema: {$ref: '#/components/schemas/Order'}}}}
  /orders:
    post:
      requestBody:
        required: true
        content:
          application/json: {schema: {$ref: '#/components/schemas/Order'}}
      responses:
        '201': {description: created}
components:
  schemas:
    Order:
      type: object
      required: [id, qty, email]
      properties:
        id: {type: string, format: uuid, readOnly: true}
        qty: {type: integer, minimum: 1}
        email: {type: string, format: email}
        note: {type: string, nullable: true}
"#;

#[test]
fn parameters_and_bodies() {
    let c = contract(SPEC);
    let t = "/orders/{id}";
    assert_eq!(
        check(
            &c,
            "GET",
            t,
            "/orders/0",
            "expand=lines&expand=x",
            None,
            None
        ),
        vec![
            e("path", "/id", "value is less than the minimum of 1"),
            e(
                "query",
                "/expand/1",
                "value is not one of \"lines\" or \"customer\""
            ),
            e(
                "query",
                "/limit",
                "the query parameter \"limit\" is required"
            ),
        ]
    );
    assert!(check(&c, "GET", t, "/orders/3", "limit=5", None, None).is_empty());
    assert_eq!(
        check(
            &c,
            "POST",
            "/orders",
            "/orders",
            "",
            Some("application/json"),
            Some(r#"{"id":"x","qty":0,"email":"no","note":null}"#),
        ),
        vec![
            e("body", "/email", "value is not a \"email\""),
            e(
                "body",
                "/id",
                "is read-only: it must not be sent in a request"
            ),
            e("body", "/qty", "value is less than the minimum of 1"),
        ]
    );
    let post = |ct: Option<&str>, body: Option<&str>| {
        check(&c, "POST", "/orders", "/orders", "", ct, body)
    };
    assert!(post(
        Some("application/json; charset=utf-8"),
        Some(r#"{"qty":1,"email":"a@b.io"}"#)
    )
    .is_empty());
    assert_eq!(
        post(Some("text/plain"), Some("x")),
        vec![e(
            "header",
            "/content-type",
            "Content-Type text/plain is not accepted; this operation takes application/json"
        )]
    );
    assert_eq!(
        post(None, Some("x")),
        vec![e(
            "header",
            "/content-type",
            "Content-Type is missing; this operation takes application/json"
        )]
    );
    assert_eq!(
        post(Some("application/json"), None),
        vec![e("body", "", "a request body is required")]
    );
    assert_eq!(
        post(Some("application/json"), Some("{")),
        vec![e(
            "body",
            "",
            "the body is not valid JSON: EOF while parsing an object at line 1 column 1"
        )]
    );
    assert_eq!(
        post(
            Some("application/json"),
            Some(r#"{"qty":1,"email":"a@b.io","note":null,"x":1}"#)
        ),
        vec![]
    );
    // Answers: undocumented status, the response schema (writeOnly/readOnly the other way).
    let op = c.find(&http::Method::GET, "/orders/{}").expect("op");
    assert_eq!(
        op.check_response(404, Some("application/json"), Some(b"{}"))[0].detail,
        "status 404 is not documented for this operation"
    );
    let v = op.check_response(
        200,
        Some("application/json"),
        Some(br#"{"qty":"1","email":"a@b.io"}"#),
    );
    let got: Vec<_> = v.into_iter().map(|v| (v.at, v.pointer, v.detail)).collect();
    assert_eq!(
        got,
        vec![
            e("response", "", "\"id\" is a required property"),
            e("response", "/qty", "value is not of type \"integer\""),
        ]
    );
}

#[test]
fn nullable_in_3_0_and_type_arrays_in_3_1_headers_cookies_discriminator() {
    let spec = |version: &str, nullable: &str| {
        format!(
            r#"
openapi: {version}
info: {{title: t, version: '1'}}
paths:
  /pets:
    post:
      parameters:
        - {{name: X-Trace, in: header, required: true, schema: {{type: string, format: uuid}}}}
        - {{name: session, in: cookie, schema: {{type: integer}}}}
      requestBody:
        content:
          application/json:
            schema:
              oneOf: [{{$ref: '#/components/schemas/Cat'}}, {{$ref: '#/components/schemas/Dog'}}]
              discriminator: {{propertyName: kind}}
      responses: {{'200': {{description: ok}}}}
components:
  schemas:
    Cat:
      type: object
      required: [kind, lives]
      properties:
        kind: {{type: string}}
        lives: {{type: integer, maximum: 9}}
        name: {nullable}
    Dog:
      type: object
      required: [kind, bark]
      properties:
        kind: {{type: string}}
        bark: {{type: boolean}}
"#
        )
    };
    for (version, nullable) in [
        ("3.0.3", "{type: string, nullable: true}"),
        ("3.1.0", "{type: [string, 'null']}"),
    ] {
        let c = contract(&spec(version, nullable));
        let op = c.find(&http::Method::POST, "/pets").expect("op");
        let run = |trace: Option<&str>, cookie: Option<&str>, body: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().expect("h"),
            );
            if let Some(t) = trace {
                headers.insert("x-trace", t.parse().expect("h"));
            }
            if let Some(c) = cookie {
                headers.insert(http::header::COOKIE, c.parse().expect("h"));
            }
            op.check(&Request {
                headers: &headers,
                path: b"/pets",
                query: b"",
                body: Some(body.as_bytes()),
                has_body: true,
            })
            .into_iter()
            .map(|v| (v.at, v.pointer, v.detail))
            .collect::<Vec<_>>()
        };
        let id = "6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f";
        assert_eq!(
            run(
                Some(id),
                Some("session=12"),
                r#"{"kind":"Cat","lives":3,"name":null}"#
            ),
            vec![],
            "{version}"
        );
        assert_eq!(
            run(None, Some("a=1; session=x"), r#"{"kind":"Dog","bark":1}"#),
            vec![
                e(
                    "header",
                    "/X-Trace",
                    "the header parameter \"X-Trace\" is required"
                ),
                e("cookie", "/session", "value is not of type \"integer\""),
                e("body", "/bark", "value is not of type \"boolean\""),
            ],
            "{version}"
        );
        assert_eq!(
            run(Some("nope"), None, r#"{"kind":"Cat","lives":10,"name":1}"#),
            vec![
                e("header", "/X-Trace", "value is not a \"uuid\""),
                e("body", "/lives", "value is greater than the maximum of 9"),
                e(
                    "body",
                    "/name",
                    "value is not of types \"null\", \"string\""
                ),
            ],
            "{version}"
        );
        assert_eq!(
            run(Some(id), None, r#"{"kind":"Cow"}"#),
            vec![e("body", "/kind", "value is not one of \"Cat\" or \"Dog\"")],
            "{version}"
        );
    }
}

#[test]
fn hostile_and_indirect_parameters() {
    let c = contract(
        r#"
openapi: 3.0.3
info: {title: t, version: '1'}
paths:
  /a:
    post:
      parameters:
        - {name: limit, in: query, schema: {allOf: [{$ref: '#/components/schemas/Page'}], description: size}}
        - {name: filter, in: query, content: {application/json: {schema: {type: object, required: [n], properties: {n: {type: integer}}}}}}
        - {name: X-Mode, in: header, schema: {type: string, enum: [a, b]}}
      requestBody:
        content:
          application/json: {schema: {type: array, items: {type: object, required: [a, b, c]}}}
          multipart/form-data: {schema: {type: object}}
      responses: {'200': {description: ok}}
components:
  schemas:
    Page: {type: integer, maximum: 50}
"#,
    );
    let run = |query: &str, headers: &[(&str, &str)], ct: &str, body: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, ct.parse().expect("ct"));
        for (n, v) in headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let op = c.find(&http::Method::POST, "/a").expect("op");
        let reads = op.reads_body(Some(ct));
        let v = op
            .check(&Request {
                headers: &h,
                path: b"/a",
                query: query.as_bytes(),
                body: Some(body.as_bytes()),
                has_body: true,
            })
            .into_iter()
            .map(|v| (v.at, v.pointer, v.detail))
            .collect::<Vec<_>>();
        (reads, v)
    };
    // A type through allOf and a JSON `content` parameter are typed; a repeated one refused.
    let (_, v) = run(
        "limit=5&filter=%7B%22n%22%3A1%7D",
        &[],
        "application/json",
        "[]",
    );
    assert_eq!(v, vec![]);
    let (_, v) = run(
        "limit=500&limit=5&filter=%7B%22n%22%3A%22x%22%7D",
        &[("x-mode", "a"), ("x-mode", "c")],
        "application/json",
        "[]",
    );
    assert_eq!(
        v,
        vec![
            e(
                "query",
                "/limit",
                "the query parameter \"limit\" is given 2 times; it takes one value"
            ),
            e("query", "/filter/n", "value is not of type \"integer\""),
            e(
                "header",
                "/X-Mode",
                "the header parameter \"X-Mode\" is given 2 times; it takes one value"
            ),
        ]
    );
    // Only a JSON media type with a schema makes the body read.
    assert!(run("", &[], "application/json", "[]").0);
    assert!(!run("", &[], "multipart/form-data; boundary=x", "--x--").0);
    // A large invalid body reports its first problem only.
    let many = format!("[{}]", vec!["{}"; 5_000].join(","));
    let (_, v) = run("", &[], "application/json", &many);
    assert_eq!(v, vec![e("body", "/0", "\"a\" is a required property")]);
    let few = format!("[{}]", ["{}"; 3].join(","));
    assert_eq!(run("", &[], "application/json", &few).1.len(), 9);
}

#[test]
fn formats_are_asserted() {
    let c = contract(
        r#"
openapi: 3.1.0
info: {title: t, version: '1'}
paths:
  /f:
    get:
      parameters:
        - {name: at, in: query, schema: {type: string, format: date-time}}
        - {name: day, in: query, schema: {type: string, format: date}}
        - {name: link, in: query, schema: {type: string, format: uri}}
        - {name: mail, in: query, schema: {type: string, format: email}}
        - {name: id, in: query, schema: {type: string, format: uuid}}
      responses: {'200': {description: ok}}
"#,
    );
    let t = "/f";
    assert!(check(
            &c,
            "GET",
            t,
            "/f",
            "at=2026-12-06T10:00:00Z&day=2026-12-06&link=https://example.com/a&mail=a@b.io&id=6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f",
            None,
            None
        )
        .is_empty());
    assert_eq!(
        check(
            &c,
            "GET",
            t,
            "/f",
            "at=yesterday&day=2026-13-40&link=not a uri&mail=nobody&id=42",
            None,
            None
        ),
        vec![
            e("query", "/at", "value is not a \"date-time\""),
            e("query", "/day", "value is not a \"date\""),
            e("query", "/link", "value is not a \"uri\""),
            e("query", "/mail", "value is not a \"email\""),
            e("query", "/id", "value is not a \"uuid\""),
        ]
    );
}

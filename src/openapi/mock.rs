//! Mock answers from a spec (`[apis.openapi] mock = true`, a route's `mock = true`, or an API
//! in lifecycle `design`): each operation answers with its documented responses, prepared
//! once when the config is compiled.
//!
//! - The answer is the operation's first 2xx by default (`2XX` counts as 200; an operation
//!   with only `default` answers 200). `Prefer: code=404` selects another documented status
//!   (exactly, by class `4XX`, or `default`), `Prefer: example=NAME` a named example, as
//!   Prism does; both may be given (`Prefer: code=400, example=missing`).
//! - The media type is the first of the response's that the request's `Accept` takes, else
//!   its first JSON one, else its first.
//! - The body is the media type's `example`, else its first `examples` entry (an Example
//!   Object's `value`; `externalValue` is never fetched), else the schema's `example`,
//!   `examples` or `default`, else an instance generated from the schema: required properties
//!   only, the first `enum` value or `const`, the minimum of a bounded number, `minItems`
//!   items, a value of the right shape for formats (date-time, date, email, uuid, uri, ...).

use super::params::deref;
use super::Spec;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// How deep a generated instance goes (recursive schemas stop here).
const MAX_DEPTH: usize = 8;
/// How many values one generated instance may have (a wide recursive schema stops here).
const MAX_NODES: usize = 2_000;

/// One media type of a documented answer, with its bodies by example name (the first is the
/// default; a generated one is named `generated`).
#[derive(Debug)]
struct Media {
    media_type: String,
    bodies: Vec<(String, Bytes)>,
}

#[derive(Debug)]
struct Answer {
    /// `200`, `2XX`, `DEFAULT` (upper case).
    status: String,
    media: Vec<Media>,
}

/// One operation's mock answers.
#[derive(Debug)]
pub struct MockOp {
    pub method: http::Method,
    pub shape: String,
    answers: Vec<Answer>,
}

/// An API's mock answers.
#[derive(Debug, Default)]
pub struct Mocks {
    pub ops: Vec<Arc<MockOp>>,
}

/// What a mocked request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Mocks {
    /// Prepares the answers of every operation of `spec`.
    pub fn compile(spec: &Spec) -> Mocks {
        let doc = super::bundle::bundled(spec, None);
        let mut ops = Vec::new();
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
            return Mocks::default();
        };
        for (template, item) in paths {
            if template.starts_with("x-") {
                continue;
            }
            let item = deref(item, &doc);
            for m in super::operations::METHODS {
                let Some(op) = item.get(m).filter(|o| o.is_object()) else {
                    continue;
                };
                let mut answers = Vec::new();
                if let Some(Value::Object(rs)) = op.get("responses") {
                    for (status, r) in rs {
                        let r = deref(r, &doc);
                        answers.push(Answer {
                            status: status.to_ascii_uppercase(),
                            media: media_of(r, &doc),
                        });
                    }
                }
                ops.push(Arc::new(MockOp {
                    method: http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .unwrap_or(http::Method::GET),
                    shape: super::operations::shape(template),
                    answers,
                }));
            }
        }
        Mocks { ops }
    }

    /// The operations on the template shape `shape`.
    pub fn on(&self, shape: &str) -> Vec<Arc<MockOp>> {
        self.ops
            .iter()
            .filter(|o| o.shape == shape)
            .cloned()
            .collect()
    }
}

fn media_of(response: &Value, doc: &Value) -> Vec<Media> {
    let Some(Value::Object(content)) = response.get("content") else {
        return Vec::new();
    };
    content
        .iter()
        .map(|(media_type, m)| {
            let json = super::contract::is_json(&super::contract::essence(media_type));
            let encode = |v: &Value| -> Bytes {
                match (json, v) {
                    (false, Value::String(s)) => Bytes::from(s.clone()),
                    _ => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
                }
            };
            let mut bodies: Vec<(String, Bytes)> = Vec::new();
            if let Some(v) = m.get("example") {
                bodies.push(("example".into(), encode(v)));
            }
            if let Some(Value::Object(named)) = m.get("examples") {
                for (name, ex) in named {
                    if let Some(v) = deref(ex, doc).get("value") {
                        bodies.push((name.clone(), encode(v)));
                    }
                }
            }
            if bodies.is_empty() {
                if let Some(schema) = m.get("schema") {
                    let s = deref(schema, doc);
                    let from_schema = s
                        .get("example")
                        .or_else(|| s.get("examples").and_then(|e| e.get(0)))
                        .or_else(|| s.get("default"));
                    match from_schema {
                        Some(v) => bodies.push(("example".into(), encode(v))),
                        None if json => {
                            bodies.push(("generated".into(), encode(&generate(schema, doc))))
                        }
                        None => {}
                    }
                }
            }
            Media {
                media_type: media_type.clone(),
                bodies,
            }
        })
        .collect()
}

/// A minimal instance of `schema`.
pub fn generate(schema: &Value, doc: &Value) -> Value {
    let mut budget = MAX_NODES;
    instance(schema, doc, 0, &mut budget)
}

fn instance(schema: &Value, doc: &Value, depth: usize, budget: &mut usize) -> Value {
    let s = deref(schema, doc);
    if depth > MAX_DEPTH || *budget == 0 {
        return Value::Null;
    }
    *budget -= 1;
    if let Some(v) = s
        .get("const")
        .or_else(|| s.get("example"))
        .or_else(|| s.get("default"))
        .or_else(|| s.get("enum").and_then(|e| e.get(0)))
    {
        return v.clone();
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(first) = s.get(k).and_then(|l| l.get(0)) {
            return instance(first, doc, depth + 1, budget);
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        let mut merged = Map::new();
        for part in all {
            match instance(part, doc, depth + 1, budget) {
                Value::Object(m) => merged.extend(m),
                other if all.len() == 1 => return other,
                _ => {}
            }
        }
        let own = object(s, doc, depth, budget);
        if let Value::Object(m) = own {
            merged.extend(m);
        }
        return Value::Object(merged);
    }
    let t = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.get("properties").is_some() => "object",
        _ if s.get("items").is_some() => "array",
        _ => "string",
    };
    match t {
        "object" => object(s, doc, depth, budget),
        "array" => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(16);
            let item = s.get("items").cloned().unwrap_or(json!({}));
            Value::Array(
                (0..n)
                    .map(|_| instance(&item, doc, depth + 1, budget))
                    .collect(),
            )
        }
        "integer" => json!(bound(s).map_or(0, |b| b.ceil() as i64)),
        "number" => json!(bound(s).unwrap_or(0.0)),
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => json!(string(s)),
    }
}

/// The smallest number the schema allows (its minimum, or just above an exclusive one).
fn bound(s: &Value) -> Option<f64> {
    if let Some(m) = s.get("minimum").and_then(Value::as_f64) {
        // 3.0: `exclusiveMinimum: true` beside it.
        if s.get("exclusiveMinimum") == Some(&Value::Bool(true)) {
            return Some(m + 1.0);
        }
        return Some(m);
    }
    s.get("exclusiveMinimum")
        .and_then(Value::as_f64)
        .map(|m| m + 1.0)
}

fn object(s: &Value, doc: &Value, depth: usize, budget: &mut usize) -> Value {
    let mut out = Map::new();
    let required: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(Value::Object(props)) = s.get("properties") {
        for (name, p) in props {
            let p_s = deref(p, doc);
            let write_only = p_s.get("writeOnly") == Some(&Value::Bool(true));
            if required.contains(&name.as_str()) && !write_only {
                out.insert(name.clone(), instance(p, doc, depth + 1, budget));
            }
        }
    }
    Value::Object(out)
}

fn string(s: &Value) -> String {
    let base = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2026-01-01T00:00:00Z",
        Some("date") => "2026-01-01",
        Some("time") => "00:00:00Z",
        Some("email") => "user@example.com",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        Some("uri") | Some("url") => "https://example.com/",
        Some("hostname") => "example.com",
        Some("ipv4") => "192.0.2.1",
        Some("ipv6") => "2001:db8::1",
        Some("byte") => "",
        _ => "string",
    };
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let mut out = base.to_string();
    while out.chars().count() < min.min(1024) {
        out.push('x');
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        out = out.chars().take(max as usize).collect();
    }
    out
}

/// `code=404` and `example=name` of the `Prefer` headers.
pub fn preferences<'a>(headers: impl Iterator<Item = &'a str>) -> (Option<String>, Option<String>) {
    let (mut code, mut example) = (None, None);
    for h in headers {
        for pref in h.split(',') {
            let Some((k, v)) = pref.trim().split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "code" => code = Some(v),
                "example" => example = Some(v),
                _ => {}
            }
        }
    }
    (code, example)
}

impl MockOp {
    /// The answer for a request; `Err` says why the preference cannot be met.
    pub fn answer(
        &self,
        code: Option<&str>,
        example: Option<&str>,
        accept: Option<&str>,
    ) -> Result<Reply, String> {
        let statuses = || {
            self.answers
                .iter()
                .map(|a| a.status.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (status, answer) = match code {
            Some(c) => {
                let n: u16 = c
                    .parse()
                    .ok()
                    .filter(|n| (100..=599).contains(n))
                    .ok_or_else(|| format!("Prefer: code={c} is not a status code"))?;
                let class = format!("{}XX", n / 100);
                let found = self
                    .answers
                    .iter()
                    .find(|a| a.status == c)
                    .or_else(|| self.answers.iter().find(|a| a.status == class))
                    .or_else(|| self.answers.iter().find(|a| a.status == "DEFAULT"))
                    .ok_or_else(|| {
                        format!(
                            "Prefer: code={c} is not a documented answer of this operation; documented: {}",
                            statuses()
                        )
                    })?;
                (n, found)
            }
            None => {
                let mut twos: Vec<&Answer> = self
                    .answers
                    .iter()
                    .filter(|a| a.status.starts_with('2'))
                    .collect();
                twos.sort_by(|a, b| a.status.cmp(&b.status));
                let found = twos
                    .first()
                    .copied()
                    .or_else(|| self.answers.iter().find(|a| a.status == "DEFAULT"))
                    .or_else(|| self.answers.first())
                    .ok_or_else(|| "this operation documents no answer".to_string())?;
                let n = found.status.replace("XX", "00").parse().unwrap_or(200);
                (n, found)
            }
        };
        let media = choose(&answer.media, accept);
        let Some(media) = media else {
            if let Some(e) = example {
                return Err(format!(
                    "Prefer: example={e}: the {status} answer has no body"
                ));
            }
            return Ok(Reply {
                status,
                content_type: None,
                body: Bytes::new(),
            });
        };
        let body = match example {
            Some(name) => media
                .bodies
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| {
                    let names: Vec<&str> = media.bodies.iter().map(|(n, _)| n.as_str()).collect();
                    format!(
                        "Prefer: example={name} is not an example of the {status} answer; it has: {}",
                        if names.is_empty() { "none".into() } else { names.join(", ") }
                    )
                })?,
            None => media
                .bodies
                .first()
                .map(|(_, b)| b.clone())
                .unwrap_or_default(),
        };
        Ok(Reply {
            status,
            content_type: Some(media.media_type.clone()),
            body,
        })
    }
}

/// The media type `accept` takes first (by order of the response), else the first JSON one,
/// else the first.
fn choose<'a>(media: &'a [Media], accept: Option<&str>) -> Option<&'a Media> {
    let ranges: Vec<String> = accept
        .map(|a| {
            a.split(',')
                .map(super::contract::essence)
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let takes = |m: &Media| {
        let e = super::contract::essence(&m.media_type);
        ranges.iter().any(|r| super::contract::covers(r, &e))
    };
    media
        .iter()
        .find(|m| !ranges.is_empty() && takes(m))
        .or_else(|| {
            media
                .iter()
                .find(|m| super::contract::is_json(&super::contract::essence(&m.media_type)))
        })
        .or_else(|| media.first())
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::write;
    use super::*;

    const SPEC: &str = r#"
openapi: 3.0.3
info: {title: t, version: '1'}
paths:
  /pets/{id}:
    get:
      responses:
        '200':
          description: ok
          content:
            application/json:
              examples:
                cat: {value: {id: 1, name: Tom, kind: cat}}
                dog: {value: {id: 2, name: Rex, kind: dog}}
            text/plain:
              example: "Tom the cat"
        '404':
          description: gone
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Problem'}
        default:
          description: error
  /pets:
    post:
      responses:
        '201':
          description: made
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Pet'}
components:
  schemas:
    Problem:
      type: object
      required: [code, at]
      properties:
        code: {type: string, enum: [not_found, gone]}
        at: {type: string, format: date-time}
        hint: {type: string}
    Pet:
      type: object
      required: [id, tags, owner, age, secret]
      properties:
        id: {type: string, format: uuid}
        tags: {type: array, minItems: 2, items: {type: string, minLength: 3}}
        owner: {$ref: '#/components/schemas/Owner'}
        age: {type: integer, minimum: 1}
        secret: {type: string, writeOnly: true}
    Owner:
      type: object
      required: [email, pets]
      properties:
        email: {type: string, format: email}
        pets: {type: array, items: {$ref: '#/components/schemas/Pet'}}
"#;

    fn mocks() -> Mocks {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "spec.yaml", SPEC);
        let spec = load(std::path::Path::new("spec.yaml"), Some(dir.path())).expect("spec");
        Mocks::compile(&spec)
    }

    fn json_of(r: &Reply) -> Value {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    #[test]
    fn examples_preferences_and_generated_instances() {
        let m = mocks();
        let get = m.on("/pets/{}").pop().expect("get");
        let r = get.answer(None, None, None).expect("default");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(json_of(&r)["name"], "Tom");
        let r = get.answer(None, Some("dog"), None).expect("dog");
        assert_eq!(json_of(&r)["name"], "Rex");
        let r = get.answer(None, None, Some("text/plain")).expect("text");
        assert_eq!(&r.body[..], b"Tom the cat");
        let r = get.answer(Some("404"), None, None).expect("404");
        assert_eq!(r.status, 404);
        let v = json_of(&r);
        assert_eq!(v["code"], "not_found");
        assert_eq!(v["at"], "2026-01-01T00:00:00Z");
        assert!(v.get("hint").is_none(), "only required properties: {v}");
        // 500 is covered by `default` (no body).
        let r = get.answer(Some("500"), None, None).expect("default");
        assert_eq!((r.status, r.body.len()), (500, 0));
        assert!(get
            .answer(None, Some("bird"), None)
            .expect_err("no bird")
            .contains("it has: cat, dog"));
        let post = m.on("/pets").pop().expect("post");
        assert!(post
            .answer(Some("404"), None, None)
            .expect_err("undocumented")
            .contains("documented: 201"));
        let r = post.answer(None, None, None).expect("201");
        assert_eq!(r.status, 201);
        let v = json_of(&r);
        assert_eq!(v["id"], "00000000-0000-4000-8000-000000000000");
        assert_eq!(v["tags"], json!(["string", "string"]));
        assert_eq!(v["age"], 1);
        assert_eq!(v["owner"]["email"], "user@example.com");
        assert!(v.get("secret").is_none(), "write-only is not in answers");
    }

    #[test]
    fn prefer_headers() {
        assert_eq!(
            preferences(["code=404, example=\"missing\"", "respond-async"].into_iter()),
            (Some("404".into()), Some("missing".into()))
        );
        assert_eq!(preferences(std::iter::empty()), (None, None));
    }

    #[test]
    fn wide_recursive_schemas_stay_small() {
        let props: serde_json::Map<String, Value> = ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .map(|k| (k.to_string(), json!({"$ref": "#/components/schemas/Node"})))
            .collect();
        let doc = json!({"components": {"schemas": {"Node": {
            "type": "object",
            "required": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "properties": props
        }}}});
        let v = generate(&json!({"$ref": "#/components/schemas/Node"}), &doc);
        let text = v.to_string();
        assert!(text.len() < 200_000, "{}", text.len());
        assert!(v["a"]["a"].is_object(), "{v}");
    }
}

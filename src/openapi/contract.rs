//! An API's contract compiled for checking requests (and, sampled, answers): per operation its
//! parameters (location, style, schema), its request media types and body schemas, and its
//! responses. Built once when a config is compiled, from the bundled spec rewritten into JSON
//! Schema 2020-12 (`super::schema`); the request path never reads the spec.
//!
//! Schemas are compiled by the `jsonschema` crate with formats asserted (date-time, email,
//! uuid, uri, ...), patterns on the linear-time `regex` engine (a spec pattern it cannot run,
//! such as a look-ahead, refuses the config), and no retrieval: every reference is local to the
//! bundled document. What a check finds is a [`Violation`]: where (`in`), the JSON pointer in
//! that place, and a message that never repeats the value sent (masked as "value").

use super::params::{self, In, Shape, Style};
use super::schema::{self, Direction, READ_ONLY, WRITE_ONLY};
use super::source::escape;
use super::{Spec, SpecError};
use jsonschema::{Draft, Keyword, PatternOptions, Registry, ValidationError, Validator};
use serde_json::{json, Value};

/// At most this many problems are reported for one message.
pub const MAX_ERRORS: usize = 20;

/// Values of more nodes than this report their first problem only (the validator builds every
/// error of a value before its first can be taken).
const LIST_ERRORS_UP_TO: usize = 2_000;

/// The nodes of `v`, counted up to `limit`.
fn nodes(v: &Value, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        if n >= limit {
            return n;
        }
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    n
}

/// One problem of a request or answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// `path`, `query`, `header`, `cookie`, `body`; `response` for answers.
    #[serde(rename = "in")]
    pub at: &'static str,
    /// Parameter name, when the problem is in a parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON pointer inside the place (`/items/0/qty`; for a parameter, `/<name>...`).
    pub pointer: String,
    pub detail: String,
}

/// A compiled schema.
pub struct Schema(Validator);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// The problems of `value`, each with `prefix` before its pointer.
    fn check(
        &self,
        value: &Value,
        at: &'static str,
        name: Option<&str>,
        prefix: &str,
        out: &mut Vec<Violation>,
    ) {
        // The fast path: most messages are valid, and `is_valid` builds no error.
        if self.0.is_valid(value) {
            return;
        }
        // Every error is built before the first is seen: a large invalid value (thousands of
        // failing items) reports its first problem only.
        if nodes(value, LIST_ERRORS_UP_TO) >= LIST_ERRORS_UP_TO {
            if let Err(e) = self.0.validate(value) {
                out.push(Violation {
                    at,
                    name: name.map(String::from),
                    pointer: format!("{prefix}{}", e.instance_path().as_str()),
                    detail: e.masked_with("value").to_string(),
                });
            }
            return;
        }
        for e in self.0.iter_errors(value) {
            if out.len() >= MAX_ERRORS {
                return;
            }
            out.push(Violation {
                at,
                name: name.map(String::from),
                pointer: format!("{prefix}{}", e.instance_path().as_str()),
                detail: e.masked_with("value").to_string(),
            });
        }
    }
}

#[derive(Debug)]
struct Param {
    name: String,
    at: In,
    required: bool,
    style: Style,
    explode: bool,
    shape: Shape,
    /// Described by `content` with a JSON media type: the value is JSON text.
    json: bool,
    schema: Option<Schema>,
    /// The segment of the path template that holds a path parameter.
    segment: Option<usize>,
}

/// A media type an operation takes or gives (`application/json`, `image/*`, `*/*`).
#[derive(Debug)]
struct Media {
    range: String,
    json: bool,
    schema: Option<Schema>,
}

#[derive(Debug)]
struct Body {
    required: bool,
    media: Vec<Media>,
}

/// The documented answers of an operation, by status (`200`, `2XX`, `default`).
#[derive(Debug, Default)]
struct Responses(Vec<(String, Vec<Media>)>);

/// One operation's checks.
#[derive(Debug)]
pub struct OpCheck {
    pub method: http::Method,
    /// The template as in the spec, and with its parameter names erased (to find it).
    pub path: String,
    pub shape: String,
    params: Vec<Param>,
    body: Option<Body>,
    responses: Option<Responses>,
}

/// An API's contract.
#[derive(Debug, Default)]
pub struct Contract {
    pub ops: Vec<std::sync::Arc<OpCheck>>,
}

/// What a request check needs of the request.
pub struct Request<'a> {
    pub headers: &'a http::HeaderMap,
    /// The path (no query), and the query string.
    pub path: &'a [u8],
    pub query: &'a [u8],
    /// The body, when it was read; `has_body`: the request has one (read or not).
    pub body: Option<&'a [u8]>,
    pub has_body: bool,
}

const BASE: &str = "https://contract.turnpike.invalid/spec.json";

struct Flag(&'static str);

impl<'i> Keyword<'i> for Flag {
    fn validate(&self, _instance: &'i Value) -> Result<(), ValidationError<'i>> {
        Err(ValidationError::custom(self.0))
    }
    fn is_valid(&self, _instance: &'i Value) -> bool {
        false
    }
}

impl Contract {
    /// Compiles the request checks of every operation of `spec` (and the answer checks, with
    /// `responses`).
    pub fn compile(spec: &Spec, responses: bool) -> Result<Contract, Vec<SpecError>> {
        let bundled = super::bundle::bundled(spec, None);
        let req_doc = schema::rewrite(&bundled, spec.version, Direction::Request);
        let resp_doc =
            responses.then(|| schema::rewrite(&bundled, spec.version, Direction::Response));
        let err = |pointer: &str, message: String| SpecError {
            file: spec.file.clone(),
            line_col: spec
                .documents
                .get(&spec.root)
                .and_then(|s| s.line_col(pointer)),
            pointer: pointer.to_string(),
            message,
        };
        let registry = |doc: &Value| {
            Registry::new()
                .draft(Draft::Draft202012)
                .add(BASE, doc.clone())
                .and_then(|b| b.prepare())
                .map_err(|e| vec![err("", format!("cannot prepare the schemas: {e}"))])
        };
        let req_reg = registry(&req_doc)?;
        let resp_reg = resp_doc.as_ref().map(registry).transpose()?;
        let mut errors = Vec::new();
        let mut problems = Vec::new();
        let mut ops = Vec::new();
        let Some(paths) = bundled.get("paths").and_then(Value::as_object) else {
            return Ok(Contract::default());
        };
        for (template, item) in paths {
            if template.starts_with("x-") {
                continue;
            }
            let (item_ptr, item) = local(&bundled, item, &format!("/paths/{}", escape(template)));
            let segments: Vec<&str> = template.split('/').skip(1).collect();
            for m in super::operations::METHODS {
                let Some(op) = item.get(m).filter(|o| o.is_object()) else {
                    continue;
                };
                let op_ptr = format!("{item_ptr}/{m}");
                let method = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .unwrap_or(http::Method::GET);
                let mut compile = |pointer: &str, reg: &Registry<'_>| -> Option<Schema> {
                    match build(reg, pointer) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            errors.push(err(pointer, e));
                            None
                        }
                    }
                };
                // Path-item parameters, overridden by the operation's of the same name and place.
                let mut list: Vec<(String, &Value)> = Vec::new();
                for (base, holder) in [(item_ptr.clone(), item), (op_ptr.clone(), op)] {
                    if let Some(Value::Array(ps)) = holder.get("parameters") {
                        for (i, p) in ps.iter().enumerate() {
                            let (ptr, p) = local(&bundled, p, &format!("{base}/parameters/{i}"));
                            let key = |v: &Value| {
                                (
                                    v.get("name").and_then(Value::as_str).map(String::from),
                                    v.get("in").and_then(Value::as_str).map(String::from),
                                )
                            };
                            list.retain(|(_, q)| key(q) != key(p));
                            list.push((ptr, p));
                        }
                    }
                }
                let mut params_out = Vec::new();
                for (ptr, p) in list {
                    let (Some(name), Some(at)) = (
                        p.get("name").and_then(Value::as_str),
                        p.get("in").and_then(Value::as_str).and_then(In::parse),
                    ) else {
                        continue;
                    };
                    // Accept, Content-Type and Authorization are described elsewhere (3.x).
                    if at == In::Header
                        && ["accept", "content-type", "authorization"]
                            .contains(&name.to_ascii_lowercase().as_str())
                    {
                        continue;
                    }
                    let Some(style) = Style::of(p.get("style").and_then(Value::as_str), at) else {
                        problems.push(err(&ptr, "unknown parameter style".into()));
                        continue;
                    };
                    let explode = p
                        .get("explode")
                        .and_then(Value::as_bool)
                        .unwrap_or(style == Style::Form);
                    // `content` parameters: the schema of their one media type.
                    let json = p.get("schema").is_none()
                        && p.get("content")
                            .and_then(Value::as_object)
                            .and_then(|c| c.keys().next())
                            .is_some_and(|k| is_json(&essence(k)));
                    let schema_ptr = if p.get("schema").is_some() {
                        Some(format!("{ptr}/schema"))
                    } else {
                        p.get("content")
                            .and_then(Value::as_object)
                            .and_then(|c| c.keys().next())
                            .map(|k| format!("{ptr}/content/{}/schema", escape(k)))
                    };
                    let schema_val = schema_ptr.as_deref().and_then(|s| req_doc.pointer(s));
                    let shape =
                        schema_val.map_or(Shape::Scalar("string"), |s| Shape::of(s, &req_doc));
                    let segment = (at == In::Path)
                        .then(|| segments.iter().position(|s| *s == format!("{{{name}}}")));
                    if at == In::Path && segment.flatten().is_none() {
                        problems.push(err(
                            &ptr,
                            format!("path parameter {name:?} is not in the template {template}"),
                        ));
                        continue;
                    }
                    params_out.push(Param {
                        name: name.to_string(),
                        at,
                        required: at == In::Path
                            || p.get("required").and_then(Value::as_bool).unwrap_or(false),
                        style,
                        explode,
                        shape,
                        json,
                        schema: schema_ptr
                            .filter(|_| schema_val.is_some())
                            .and_then(|s| compile(&s, &req_reg)),
                        segment: segment.flatten(),
                    });
                }
                let body = op.get("requestBody").map(|rb| {
                    let (ptr, rb) = local(&bundled, rb, &format!("{op_ptr}/requestBody"));
                    Body {
                        required: rb.get("required").and_then(Value::as_bool).unwrap_or(false),
                        media: media_of(rb, &ptr, &req_doc, &mut |s| compile(s, &req_reg)),
                    }
                });
                let responses = resp_reg.as_ref().map(|reg| {
                    let mut out = Responses::default();
                    if let Some(Value::Object(rs)) = op.get("responses") {
                        for (status, r) in rs {
                            let (ptr, r) = local(
                                &bundled,
                                r,
                                &format!("{op_ptr}/responses/{}", escape(status)),
                            );
                            let doc = resp_doc.as_ref().unwrap_or(&req_doc);
                            out.0.push((
                                status.to_ascii_uppercase(),
                                media_of(r, &ptr, doc, &mut |s| compile(s, reg)),
                            ));
                        }
                    }
                    out
                });
                ops.push(std::sync::Arc::new(OpCheck {
                    method,
                    path: template.clone(),
                    shape: super::operations::shape(template),
                    params: params_out,
                    body,
                    responses,
                }));
            }
        }
        errors.extend(problems);
        if errors.is_empty() {
            Ok(Contract { ops })
        } else {
            Err(errors)
        }
    }

    /// The operation for `method` on the template shape `shape` (`HEAD` uses `GET`'s).
    pub fn find(&self, method: &http::Method, shape: &str) -> Option<&OpCheck> {
        let get = (*method == http::Method::HEAD).then_some(&http::Method::GET);
        self.ops
            .iter()
            .find(|o| o.shape == shape && o.method == *method)
            .or_else(|| {
                get.and_then(|g| self.ops.iter().find(|o| o.shape == shape && o.method == *g))
            })
            .map(|o| &**o)
    }

    /// The operations on the template shape `shape`.
    pub fn on(&self, shape: &str) -> Vec<std::sync::Arc<OpCheck>> {
        self.ops
            .iter()
            .filter(|o| o.shape == shape)
            .cloned()
            .collect()
    }
}

/// Follows a local `$ref` (of the bundled document): the pointer and value it ends at.
fn local<'a>(doc: &'a Value, v: &'a Value, pointer: &str) -> (String, &'a Value) {
    let mut v = v;
    let mut pointer = pointer.to_string();
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(p) = r.strip_prefix('#') else { break };
        match doc.pointer(p) {
            Some(t) => {
                v = t;
                pointer = p.to_string();
            }
            None => break,
        }
    }
    (pointer, v)
}

/// The media types of a request body or response (`content`), with the schemas of JSON ones.
fn media_of(
    holder: &Value,
    pointer: &str,
    doc: &Value,
    compile: &mut dyn FnMut(&str) -> Option<Schema>,
) -> Vec<Media> {
    let Some(Value::Object(content)) = holder.get("content") else {
        return Vec::new();
    };
    content
        .iter()
        .map(|(range, m)| {
            let range = essence(range);
            let json = is_json(&range);
            let sp = format!(
                "{pointer}/content/{}/schema",
                escape(&range_key(content, &range))
            );
            let schema = (json && m.get("schema").is_some() && doc.pointer(&sp).is_some())
                .then(|| compile(&sp))
                .flatten();
            Media {
                range,
                json,
                schema,
            }
        })
        .collect()
}

/// The key of `content` whose essence is `range` (keys may carry parameters or case).
fn range_key(content: &serde_json::Map<String, Value>, range: &str) -> String {
    content
        .keys()
        .find(|k| essence(k) == range)
        .cloned()
        .unwrap_or_else(|| range.to_string())
}

fn build(registry: &Registry<'_>, pointer: &str) -> Result<Schema, String> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(registry)
        .should_validate_formats(true)
        .with_pattern_options(PatternOptions::regex())
        .with_keyword(READ_ONLY, |_, _, _| {
            Ok(Box::new(Flag(
                "is read-only: it must not be sent in a request",
            )))
        })
        .with_keyword(WRITE_ONLY, |_, _, _| {
            Ok(Box::new(Flag(
                "is write-only: it must not be in a response",
            )))
        })
        .build(&json!({ "$ref": format!("{BASE}#{}", fragment(pointer)) }))
        .map(Schema)
        .map_err(|e| format!("this schema cannot be compiled for validation: {e}"))
}

/// A parameter given more than once where the spec takes one value.
fn repeated(p: &Param, times: usize) -> Violation {
    Violation {
        at: p.at.as_str(),
        name: Some(p.name.clone()),
        pointer: format!("/{}", escape(&p.name)),
        detail: format!(
            "the {} parameter {:?} is given {times} times; it takes one value",
            p.at.as_str(),
            p.name
        ),
    }
}

/// A `content: application/json` parameter's value (a string when it is not JSON, so the
/// schema reports it).
fn json_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A JSON pointer as a URI fragment (`{`, `}`, spaces and the like percent-encoded).
fn fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"/~-._!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `type/subtype` of a media type, lower case, without parameters.
pub fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// JSON and `+json` media types.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

/// Whether a media range (`application/json`, `application/*`, `*/*`) covers `essence`.
pub fn covers(range: &str, essence: &str) -> bool {
    range == "*/*"
        || range == essence
        || range
            .strip_suffix("/*")
            .is_some_and(|t| essence.split('/').next() == Some(t))
}

/// The most specific media range that covers the type.
fn chosen<'a>(media: &'a [Media], essence: &str) -> Option<&'a Media> {
    media
        .iter()
        .filter(|m| covers(&m.range, essence))
        .max_by_key(|m| (m.range != "*/*") as u8 + (!m.range.ends_with("/*")) as u8)
}

impl OpCheck {
    /// Whether checking a request needs its body (a JSON media type with a schema).
    pub fn reads_body(&self, content_type: Option<&str>) -> bool {
        let Some(ct) = content_type.map(essence) else {
            return false;
        };
        self.body.as_ref().is_some_and(|b| {
            chosen(&b.media, &ct).is_some_and(|m| m.schema.is_some() && is_json(&ct))
        })
    }

    /// The problems of a request (at most [`MAX_ERRORS`]).
    pub fn check(&self, req: &Request<'_>) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut pairs: Option<Vec<(String, String)>> = None;
        // The template's segments are the path's last ones (the API's base path comes first).
        let all: Vec<&[u8]> = req.path.split(|&b| b == b'/').skip(1).collect();
        let own = self.path.split('/').skip(1).count();
        let segments = &all[all.len().saturating_sub(own)..];
        for p in &self.params {
            if out.len() >= MAX_ERRORS {
                break;
            }
            let value = match p.at {
                In::Path => p
                    .segment
                    .and_then(|i| segments.get(i))
                    .map(|raw| crate::text::percent_decode(&String::from_utf8_lossy(raw)))
                    .map(|raw| params::single(&raw, p.style, p.explode, &p.shape)),
                In::Query => {
                    let pairs = pairs.get_or_insert_with(|| params::query_pairs(req.query));
                    let times = pairs.iter().filter(|(k, _)| *k == p.name).count();
                    if times > 1 && !(p.explode && matches!(p.shape, Shape::Array(_))) {
                        out.push(repeated(p, times));
                        continue;
                    }
                    match p.json {
                        true => pairs
                            .iter()
                            .find(|(k, _)| *k == p.name)
                            .map(|(_, v)| json_value(v)),
                        false => params::query(pairs, &p.name, p.style, p.explode, &p.shape),
                    }
                }
                In::Header => {
                    let all = req.headers.get_all(p.name.as_str());
                    let times = all.iter().count();
                    if times > 1 {
                        out.push(repeated(p, times));
                        continue;
                    }
                    all.iter()
                        .next()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                        .map(|v| match p.json {
                            true => json_value(&v),
                            false => params::single(&v, p.style, p.explode, &p.shape),
                        })
                }
                In::Cookie => params::cookie(
                    req.headers
                        .get_all(http::header::COOKIE)
                        .iter()
                        .map(|v| v.as_bytes()),
                    &p.name,
                )
                .map(|v| match p.json {
                    true => json_value(&v),
                    false => params::single(&v, Style::Simple, p.explode, &p.shape),
                }),
            };
            let prefix = format!("/{}", escape(&p.name));
            match value {
                None if p.required => out.push(Violation {
                    at: p.at.as_str(),
                    name: Some(p.name.clone()),
                    pointer: prefix,
                    detail: format!("the {} parameter {:?} is required", p.at.as_str(), p.name),
                }),
                None => {}
                Some(v) => {
                    if let Some(s) = &p.schema {
                        s.check(&v, p.at.as_str(), Some(&p.name), &prefix, &mut out);
                    }
                }
            }
        }
        if let Some(body) = &self.body {
            self.check_body(body, req, &mut out);
        }
        out.truncate(MAX_ERRORS);
        out
    }

    fn check_body(&self, body: &Body, req: &Request<'_>, out: &mut Vec<Violation>) {
        let empty = !req.has_body || req.body.is_some_and(<[u8]>::is_empty);
        if empty {
            if body.required {
                out.push(Violation {
                    at: "body",
                    name: None,
                    pointer: String::new(),
                    detail: "a request body is required".into(),
                });
            }
            return;
        }
        if body.media.is_empty() {
            return;
        }
        let ct = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(essence);
        let takes = || {
            body.media
                .iter()
                .map(|m| m.range.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(ct) = ct else {
            out.push(Violation {
                at: "header",
                name: Some("content-type".into()),
                pointer: "/content-type".into(),
                detail: format!("Content-Type is missing; this operation takes {}", takes()),
            });
            return;
        };
        let Some(media) = chosen(&body.media, &ct) else {
            out.push(Violation {
                at: "header",
                name: Some("content-type".into()),
                pointer: "/content-type".into(),
                detail: format!(
                    "Content-Type {ct} is not accepted; this operation takes {}",
                    takes()
                ),
            });
            return;
        };
        let (Some(schema), Some(bytes)) = (&media.schema, req.body) else {
            return;
        };
        if !is_json(&ct) && !media.json {
            return;
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => schema.check(&v, "body", None, "", out),
            Err(e) => out.push(Violation {
                at: "body",
                name: None,
                pointer: String::new(),
                detail: format!("the body is not valid JSON: {e}"),
            }),
        }
    }

    /// The problems of an answer: an undocumented status, an undocumented media type, a JSON
    /// body that does not match (the body only when given).
    pub fn check_response(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        let Some(responses) = &self.responses else {
            return out;
        };
        let exact = status.to_string();
        let class = format!("{}XX", status / 100);
        let found = ["exact", "class", "default"].iter().find_map(|k| {
            let want = match *k {
                "exact" => exact.as_str(),
                "class" => class.as_str(),
                _ => "DEFAULT",
            };
            responses.0.iter().find(|(s, _)| s == want)
        });
        let v = |detail: String| Violation {
            at: "response",
            name: None,
            pointer: String::new(),
            detail,
        };
        let Some((_, media)) = found else {
            out.push(v(format!(
                "status {status} is not documented for this operation"
            )));
            return out;
        };
        if media.is_empty() {
            return out;
        }
        let Some(ct) = content_type.map(essence) else {
            if body.is_some_and(|b| !b.is_empty()) {
                out.push(v("the answer has a body but no Content-Type".into()));
            }
            return out;
        };
        let Some(m) = chosen(media, &ct) else {
            out.push(v(format!(
                "Content-Type {ct} is not documented for status {status}"
            )));
            return out;
        };
        if let (Some(schema), Some(bytes), true) = (&m.schema, body, is_json(&ct)) {
            match serde_json::from_slice::<Value>(bytes) {
                Ok(value) => schema.check(&value, "response", None, "", &mut out),
                Err(e) => out.push(v(format!("the body is not valid JSON: {e}"))),
            }
        }
        out.truncate(MAX_ERRORS);
        out
    }

    /// Whether answers are checked (compiled with responses).
    pub fn checks_responses(&self) -> bool {
        self.responses.is_some()
    }
}

#[cfg(test)]
#[path = "contract_tests.rs"]
mod tests;

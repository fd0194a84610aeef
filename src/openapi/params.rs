//! Parameter values as JSON, the way the spec serialises them (`style`, `explode`), so their
//! schemas can check them: a query `ids=1&ids=2` (form, exploded) or `ids=1,2` (form, not
//! exploded) or `ids=1|2` (pipeDelimited) becomes `[1, 2]` when the schema says an array of
//! integers. Values are typed by the schema's `type` (a number that does not parse stays a
//! string, so the schema reports the wrong type). Objects: `form` exploded takes the
//! properties as separate query keys, `deepObject` takes `name[prop]=v`, the others
//! `k,v,k2,v2` (or `k=v,k2=v2` for exploded `simple`).

use serde_json::{Map, Value};

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
    Cookie,
}

impl In {
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Cookie => "cookie",
        }
    }

    pub fn parse(s: &str) -> Option<In> {
        Some(match s {
            "path" => In::Path,
            "query" => In::Query,
            "header" => In::Header,
            "cookie" => In::Cookie,
            _ => return None,
        })
    }
}

/// The serialisation styles of OpenAPI 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Simple,
    Label,
    Matrix,
    Form,
    SpaceDelimited,
    PipeDelimited,
    DeepObject,
}

impl Style {
    /// The style named in the spec, or the default of the location.
    pub fn of(name: Option<&str>, at: In) -> Option<Style> {
        Some(match name {
            None => match at {
                In::Path | In::Header => Style::Simple,
                In::Query | In::Cookie => Style::Form,
            },
            Some("simple") => Style::Simple,
            Some("label") => Style::Label,
            Some("matrix") => Style::Matrix,
            Some("form") => Style::Form,
            Some("spaceDelimited") => Style::SpaceDelimited,
            Some("pipeDelimited") => Style::PipeDelimited,
            Some("deepObject") => Style::DeepObject,
            Some(_) => return None,
        })
    }
}

/// The shape of a parameter's schema, enough to type its values.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A primitive of this JSON type (`string` when unknown).
    Scalar(&'static str),
    Array(&'static str),
    /// An object: its properties' types.
    Object(Vec<(String, &'static str)>),
}

/// The type of `schema`, through `allOf`/`oneOf`/`anyOf` (the first member with a type).
fn type_of(schema: &Value, doc: &Value) -> &'static str {
    let mut todo = vec![(schema, 0)];
    while let Some((s, depth)) = todo.pop() {
        let s = deref(s, doc);
        if s.get("type").is_some() {
            return json_type(s);
        }
        if depth < 8 {
            for k in ["anyOf", "oneOf", "allOf"] {
                if let Some(Value::Array(members)) = s.get(k) {
                    todo.extend(members.iter().rev().map(|m| (m, depth + 1)));
                }
            }
        }
    }
    "string"
}

fn json_type(schema: &Value) -> &'static str {
    let t = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // 3.1 `["integer", "null"]`: the first non-null.
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    };
    match t {
        "integer" => "integer",
        "number" => "number",
        "boolean" => "boolean",
        "array" => "array",
        "object" => "object",
        _ => "string",
    }
}

impl Shape {
    /// The shape of `schema` (its `$ref`s followed in `doc`).
    pub fn of(schema: &Value, doc: &Value) -> Shape {
        let s = deref(schema, doc);
        match type_of(s, doc) {
            "array" => Shape::Array(type_of(s.get("items").unwrap_or(&Value::Null), doc)),
            "object" => Shape::Object(
                s.get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), type_of(v, doc)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            t => Shape::Scalar(t),
        }
    }
}

/// `schema` through its local `$ref`s.
pub fn deref<'a>(schema: &'a Value, doc: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..16 {
        match s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| doc.pointer(p))
        {
            Some(t) => s = t,
            None => break,
        }
    }
    s
}

/// One raw value typed as `t`.
pub fn scalar(raw: &str, t: &str) -> Value {
    match t {
        "integer" => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(raw.into())),
        "number" => raw
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(|f| {
                raw.parse::<i64>()
                    .map(Value::from)
                    .ok()
                    .or_else(|| serde_json::Number::from_f64(f).map(Value::Number))
            })
            .unwrap_or_else(|| Value::String(raw.into())),
        "boolean" => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.into()),
        },
        _ => Value::String(raw.into()),
    }
}

fn delimiter(style: Style) -> char {
    match style {
        Style::SpaceDelimited => ' ',
        Style::PipeDelimited => '|',
        _ => ',',
    }
}

/// A path, header or cookie value (one string) as JSON.
pub fn single(raw: &str, style: Style, explode: bool, shape: &Shape) -> Value {
    // label: ".a.b" (exploded) or ".a,b"; matrix: ";id=a;id=b" or ";id=a,b".
    let (body, sep) = match style {
        Style::Label => (
            raw.strip_prefix('.').unwrap_or(raw),
            if explode { '.' } else { ',' },
        ),
        Style::Matrix => {
            let body = raw.strip_prefix(';').unwrap_or(raw);
            let body = body.split_once('=').map_or(body, |(_, v)| v);
            (body, if explode { ';' } else { ',' })
        }
        _ => (raw, ','),
    };
    match shape {
        Shape::Scalar(t) => scalar(body, t),
        Shape::Array(t) => Value::Array(
            body.split(sep)
                .map(|part| {
                    // matrix exploded repeats `name=`
                    let part = if style == Style::Matrix {
                        part.split_once('=').map_or(part, |(_, v)| v)
                    } else {
                        part
                    };
                    scalar(part, t)
                })
                .collect(),
        ),
        Shape::Object(props) => {
            let mut m = Map::new();
            if explode {
                for pair in body.split(sep) {
                    if let Some((k, v)) = pair.split_once('=') {
                        m.insert(k.into(), scalar(v, prop_type(props, k)));
                    }
                }
            } else {
                let parts: Vec<&str> = body.split(sep).collect();
                for kv in parts.chunks(2) {
                    if let [k, v] = kv {
                        m.insert((*k).into(), scalar(v, prop_type(props, k)));
                    }
                }
            }
            Value::Object(m)
        }
    }
}

fn prop_type(props: &[(String, &'static str)], name: &str) -> &'static str {
    props
        .iter()
        .find(|(k, _)| k == name)
        .map_or("string", |(_, t)| *t)
}

/// A query parameter from the request's decoded pairs; `None` when absent.
pub fn query(
    pairs: &[(String, String)],
    name: &str,
    style: Style,
    explode: bool,
    shape: &Shape,
) -> Option<Value> {
    let values = || pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    match shape {
        Shape::Scalar(t) => values().next().map(|v| scalar(v, t)),
        Shape::Array(t) => {
            if explode && style == Style::Form {
                let all: Vec<Value> = values().map(|v| scalar(v, t)).collect();
                (!all.is_empty()).then_some(Value::Array(all))
            } else {
                let v = values().next()?;
                Some(Value::Array(
                    v.split(delimiter(style)).map(|p| scalar(p, t)).collect(),
                ))
            }
        }
        Shape::Object(props) => match style {
            Style::DeepObject => {
                let prefix = format!("{name}[");
                let mut m = Map::new();
                for (k, v) in pairs {
                    if let Some(p) = k.strip_prefix(&prefix).and_then(|r| r.strip_suffix(']')) {
                        m.insert(p.into(), scalar(v, prop_type(props, p)));
                    }
                }
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Style::Form if explode => {
                let mut m = Map::new();
                for (k, t) in props {
                    if let Some((_, v)) = pairs.iter().find(|(q, _)| q == k) {
                        m.insert(k.clone(), scalar(v, t));
                    }
                }
                (!m.is_empty()).then_some(Value::Object(m))
            }
            _ => {
                let v = values().next()?;
                Some(single(v, Style::Simple, false, shape))
            }
        },
    }
}

/// The decoded `name=value` pairs of a query string (`+` is a space).
pub fn query_pairs(query: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(query)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The value of cookie `name` in the `Cookie` headers.
pub fn cookie<'a>(headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<String> {
    for h in headers {
        let text = String::from_utf8_lossy(h);
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(q.as_bytes())
    }

    #[test]
    fn query_styles() {
        let ints = Shape::Array("integer");
        let p = pairs("ids=1&ids=2&x=a+b");
        assert_eq!(
            query(&p, "ids", Style::Form, true, &ints),
            Some(json!([1, 2]))
        );
        assert_eq!(
            query(&pairs("ids=1,x"), "ids", Style::Form, false, &ints),
            Some(json!([1, "x"]))
        );
        assert_eq!(
            query(&pairs("ids=1|2"), "ids", Style::PipeDelimited, false, &ints),
            Some(json!([1, 2]))
        );
        assert_eq!(
            query(
                &pairs("ids=1%202"),
                "ids",
                Style::SpaceDelimited,
                false,
                &ints
            ),
            Some(json!([1, 2]))
        );
        assert_eq!(
            query(&p, "x", Style::Form, true, &Shape::Scalar("string")),
            Some(json!("a b"))
        );
        assert_eq!(query(&p, "missing", Style::Form, true, &ints), None);
        let obj = Shape::Object(vec![("lat".into(), "number"), ("tag".into(), "string")]);
        assert_eq!(
            query(
                &pairs("at[lat]=1.5&at[tag]=x"),
                "at",
                Style::DeepObject,
                true,
                &obj
            ),
            Some(json!({ "lat": 1.5, "tag": "x" }))
        );
        assert_eq!(
            query(&pairs("lat=2&tag=y"), "at", Style::Form, true, &obj),
            Some(json!({ "lat": 2, "tag": "y" }))
        );
        assert_eq!(
            query(&pairs("at=lat,3,tag,z"), "at", Style::Form, false, &obj),
            Some(json!({ "lat": 3, "tag": "z" }))
        );
    }

    #[test]
    fn path_and_header_styles() {
        let ints = Shape::Array("integer");
        assert_eq!(single("1,2", Style::Simple, false, &ints), json!([1, 2]));
        assert_eq!(single(".1.2", Style::Label, true, &ints), json!([1, 2]));
        assert_eq!(
            single(";id=1,2", Style::Matrix, false, &ints),
            json!([1, 2])
        );
        assert_eq!(
            single(";id=1;id=2", Style::Matrix, true, &ints),
            json!([1, 2])
        );
        assert_eq!(
            single("7", Style::Simple, false, &Shape::Scalar("integer")),
            json!(7)
        );
        assert_eq!(
            single("x7", Style::Simple, false, &Shape::Scalar("integer")),
            json!("x7")
        );
        assert_eq!(
            single("true", Style::Simple, false, &Shape::Scalar("boolean")),
            json!(true)
        );
        let obj = Shape::Object(vec![("n".into(), "integer")]);
        assert_eq!(
            single("n=1,m=x", Style::Simple, true, &obj),
            json!({ "n": 1, "m": "x" })
        );
        assert_eq!(single("n,1", Style::Simple, false, &obj), json!({ "n": 1 }));
    }

    #[test]
    fn cookies() {
        let h: Vec<&[u8]> = vec![b"a=1; session=xyz", b"b=2"];
        assert_eq!(cookie(h.iter().copied(), "session"), Some("xyz".into()));
        assert_eq!(cookie(h.iter().copied(), "b"), Some("2".into()));
        assert_eq!(cookie(h.iter().copied(), "c"), None);
    }
}

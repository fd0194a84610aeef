//! One OpenAPI document file as JSON, with where each node was: YAML (1.2) and JSON files are
//! read by `saphyr` with position markers, turned into a `serde_json::Value`, and every node's
//! JSON pointer is mapped to its line and column, so that a problem anywhere in a spec can be
//! reported as `file:line:col` with its pointer.
//!
//! A member's position is its key's. YAML aliases are resolved by the parser (the value is
//! copied). Refused: several documents in one file, duplicate keys, keys that are not scalars,
//! and non-finite numbers.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// A parsed file: its value and the line and column (1-based) of each pointer.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub value: Value,
    positions: HashMap<String, (usize, usize)>,
}

/// A problem in a file, at a line and column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line_col: Option<(usize, usize)>,
    pub message: String,
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Source {
    /// Parses `text` (YAML or JSON).
    pub fn parse(text: &str) -> Result<Source, ParseError> {
        let docs = MarkedYaml::load_from_str(text).map_err(|e| ParseError {
            line_col: Some((e.marker().line(), e.marker().col() + 1)),
            message: e.info().to_string(),
        })?;
        let mut docs = docs.into_iter();
        let Some(root) = docs.next() else {
            return Err(ParseError {
                line_col: None,
                message: "the file is empty".into(),
            });
        };
        if let Some(second) = docs.next() {
            return Err(ParseError {
                line_col: Some(at(&second)),
                message: "more than one YAML document in the file".into(),
            });
        }
        let mut positions = HashMap::new();
        let value = convert(&root, String::new(), &mut positions)?;
        Ok(Source { value, positions })
    }

    /// Where the node at `pointer` (or its nearest parent that is known) starts.
    pub fn line_col(&self, pointer: &str) -> Option<(usize, usize)> {
        let mut p = pointer;
        loop {
            if let Some(lc) = self.positions.get(p) {
                return Some(*lc);
            }
            p = &p[..p.rfind('/')?];
        }
    }
}

fn at(node: &MarkedYaml<'_>) -> (usize, usize) {
    (node.span.start.line(), node.span.start.col() + 1)
}

fn scalar(s: &Scalar<'_>, node: &MarkedYaml<'_>) -> Result<Value, ParseError> {
    Ok(match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => match Number::from_f64(f.into_inner()) {
            Some(n) => Value::Number(n),
            None => {
                return Err(ParseError {
                    line_col: Some(at(node)),
                    message: "a number that is not finite (.inf or .nan) has no JSON form".into(),
                })
            }
        },
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

/// A mapping key as text (OpenAPI keys such as response codes may be written as numbers).
fn key_text(key: &MarkedYaml<'_>) -> Result<String, ParseError> {
    let refuse = || ParseError {
        line_col: Some(at(key)),
        message: "a mapping key must be a string or a number".into(),
    };
    match &key.data {
        YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Ok(i.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Ok(b.to_string()),
        YamlData::Value(Scalar::Null) => Ok("null".into()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Ok(f.to_string()),
        YamlData::Representation(s, _, _) => Ok(s.to_string()),
        YamlData::Tagged(_, inner) => key_text(inner),
        _ => Err(refuse()),
    }
}

fn convert(
    node: &MarkedYaml<'_>,
    pointer: String,
    positions: &mut HashMap<String, (usize, usize)>,
) -> Result<Value, ParseError> {
    positions.insert(pointer.clone(), at(node));
    match &node.data {
        YamlData::Value(s) => scalar(s, node),
        YamlData::Representation(s, _, _) => Ok(Value::String(s.to_string())),
        YamlData::Tagged(_, inner) => convert(inner, pointer, positions),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(item, format!("{pointer}/{i}"), positions)?);
            }
            Ok(Value::Array(out))
        }
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = key_text(k)?;
                let child = format!("{pointer}/{}", escape(&key));
                let value = convert(v, child.clone(), positions)?;
                // A member is where its key is.
                positions.insert(child, at(k));
                if out.insert(key, value).is_some() {
                    return Err(ParseError {
                        line_col: Some(at(k)),
                        message: "duplicated key in mapping".into(),
                    });
                }
            }
            Ok(Value::Object(out))
        }
        YamlData::Alias(_) => Err(ParseError {
            line_col: Some(at(node)),
            message: "a YAML alias that cannot be resolved".into(),
        }),
        YamlData::BadValue => Err(ParseError {
            line_col: Some(at(node)),
            message: "a value that cannot be read".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_values_and_positions() {
        let yaml = "openapi: 3.0.3\npaths:\n  /orders/{id}:\n    get:\n      responses:\n        200:\n          description: ok\n";
        let s = Source::parse(yaml).expect("yaml");
        assert_eq!(s.value["openapi"], "3.0.3");
        assert_eq!(
            s.value["paths"]["/orders/{id}"]["get"]["responses"]["200"]["description"],
            "ok"
        );
        assert_eq!(
            s.line_col("/paths/~1orders~1{id}/get"),
            Some((4, 5)),
            "the key"
        );
        assert_eq!(
            s.line_col("/paths/~1orders~1{id}/get/nothing/here"),
            Some((4, 5)),
            "the nearest known parent"
        );
        let json = "{\n  \"openapi\": \"3.1.0\",\n  \"info\": {\"title\": \"T\", \"n\": 1.5}\n}";
        let s = Source::parse(json).expect("json");
        assert_eq!(s.value["info"]["n"], 1.5);
        assert_eq!(s.line_col("/info/title").map(|p| p.0), Some(3));
    }

    #[test]
    fn bad_files_say_where() {
        let e = Source::parse("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(e.line_col.map(|p| p.0), Some(2));
        let e = Source::parse("a: [1,\n").expect_err("syntax");
        assert!(e.line_col.is_some());
        let s = Source::parse("a: &x 1\nb: *x\n").expect("aliases resolve");
        assert_eq!(s.value["b"], 1);
        assert!(Source::parse("a: 1\n---\nb: 2\n").is_err());
        assert!(Source::parse("").is_err());
    }
}

//! The operations of a spec: every `paths` entry (a path item, possibly a `$ref`) and each of
//! its methods, with the security requirements that apply (the operation's `security`, else the
//! document's). Path templates are checked: they start with `/`, their `{name}` segments are
//! whole segments, and two templates that differ only in parameter names are refused (OpenAPI
//! calls them identical).

use super::refs::follow;
use super::source::{escape, Source};
use super::SpecError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The methods a path item may have operations for.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One security requirement: scheme name -> scopes (all of them must be met).
pub type Requirement = BTreeMap<String, Vec<String>>;

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub method: http::Method,
    /// The path template, as in the spec (`/orders/{id}`).
    pub path: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
    pub deprecated: bool,
    /// The JSON pointer of the operation in the root document.
    pub pointer: String,
    /// Alternatives (any one suffices); empty: no security; `None` never (resolved here).
    pub security: Vec<Requirement>,
    /// The operation itself says callers need no credential (`security: []`, or an empty
    /// alternative `{}`); a document without any security says nothing.
    pub anonymous: bool,
}

impl Operation {
    /// `#/paths/...` for messages.
    pub fn pointer_text(&self) -> String {
        format!("#{}", self.pointer)
    }
}

fn requirements(v: &Value) -> Vec<Requirement> {
    v.as_array()
        .map(|alts| {
            alts.iter()
                .filter_map(Value::as_object)
                .map(|req| {
                    req.iter()
                        .map(|(scheme, scopes)| {
                            let scopes = scopes
                                .as_array()
                                .map(|s| {
                                    s.iter()
                                        .filter_map(Value::as_str)
                                        .map(String::from)
                                        .collect()
                                })
                                .unwrap_or_default();
                            (scheme.clone(), scopes)
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The template with its parameter names erased (`/a/{}`), to find identical templates.
pub fn shape(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('{');
            }
            '}' => {
                in_param = false;
                out.push('}');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether each `{name}` is a whole path segment with a name.
fn template_ok(t: &str) -> bool {
    t.starts_with('/')
        && t.split('/').all(|seg| {
            let braces = seg.matches('{').count() + seg.matches('}').count();
            braces == 0
                || (braces == 2 && seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2)
        })
}

/// The operations of the root document.
pub fn collect(
    docs: &BTreeMap<PathBuf, Source>,
    root: &Path,
    shown: &Path,
) -> Result<Vec<Operation>, Vec<SpecError>> {
    let Some(src) = docs.get(root) else {
        return Ok(Vec::new());
    };
    let mut errors = Vec::new();
    let err = |pointer: String, message: String| SpecError {
        file: shown.to_path_buf(),
        line_col: src.line_col(&pointer),
        pointer,
        message,
    };
    let global = src
        .value
        .get("security")
        .map(requirements)
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut shapes: HashMap<String, String> = HashMap::new();
    let Some(paths) = src.value.get("paths").and_then(Value::as_object) else {
        if src.value.get("paths").is_some_and(|p| !p.is_null()) {
            errors.push(err("/paths".into(), "`paths` must be a mapping".into()));
            return Err(errors);
        }
        return Ok(out);
    };
    for (template, item) in paths {
        let pointer = format!("/paths/{}", escape(template));
        if template.starts_with("x-") {
            continue;
        }
        if !template_ok(template) {
            errors.push(err(
                pointer,
                "a path template starts with / and its {parameters} are whole segments".into(),
            ));
            continue;
        }
        if let Some(other) = shapes.insert(shape(template), template.clone()) {
            errors.push(err(
                pointer,
                format!("{template:?} and {other:?} differ only in parameter names (OpenAPI calls them identical)"),
            ));
            continue;
        }
        let Some((_, item)) = follow(docs, root, item) else {
            continue; // a broken $ref: reported by the reference check
        };
        let Some(item) = item.as_object() else {
            errors.push(err(pointer, "a path item must be a mapping".into()));
            continue;
        };
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let op_pointer = format!("{pointer}/{m}");
            let Some(op) = op.as_object() else {
                errors.push(err(op_pointer, "an operation must be a mapping".into()));
                continue;
            };
            let method = http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .unwrap_or(http::Method::GET);
            out.push(Operation {
                method,
                path: template.clone(),
                operation_id: op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(String::from),
                summary: op.get("summary").and_then(Value::as_str).map(String::from),
                deprecated: op
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                pointer: op_pointer,
                security: op
                    .get("security")
                    .map_or_else(|| global.clone(), requirements),
                anonymous: op.get("security").is_some_and(|s| {
                    s.as_array().is_some_and(|alts| {
                        alts.is_empty()
                            || alts
                                .iter()
                                .any(|a| a.as_object().is_some_and(|m| m.is_empty()))
                    })
                }),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::write;
    use super::*;

    #[test]
    fn operations_with_their_security() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "o.json",
            r#"{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
              "security": [{"key": []}],
              "paths": {
                "/orders": {"get": {"operationId": "list", "responses": {}},
                            "post": {"security": [{"oauth": ["orders:write"]}], "responses": {}}},
                "/orders/{id}": {"get": {"deprecated": true, "security": [], "responses": {}}},
                "x-internal": {}
              }}"#,
        );
        let spec = load(Path::new("o.json"), Some(dir.path())).expect("loads");
        let ops: Vec<(String, String)> = spec
            .operations
            .iter()
            .map(|o| (o.method.to_string(), o.path.clone()))
            .collect();
        assert_eq!(
            ops,
            [
                ("GET".to_string(), "/orders".to_string()),
                ("POST".into(), "/orders".into()),
                ("GET".into(), "/orders/{id}".into())
            ]
        );
        assert_eq!(spec.operations[0].operation_id.as_deref(), Some("list"));
        assert_eq!(spec.operations[0].security[0]["key"], Vec::<String>::new());
        assert_eq!(spec.operations[1].security[0]["oauth"], ["orders:write"]);
        assert!(spec.operations[2].security.is_empty() && spec.operations[2].deprecated);
    }

    #[test]
    fn bad_templates_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "t.yaml",
            "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /a/{id}: {}\n  /a/{name}: {}\n  /b/x{id}: {}\n  c: {}\n",
        );
        let e = load(Path::new("t.yaml"), Some(dir.path())).expect_err("refused");
        assert_eq!(e.len(), 3, "{e:#?}");
        assert_eq!(e[0].line_col, Some((5, 3)));
        assert_eq!(shape("/a/{id}/b/{x}"), "/a/{}/b/{}");
    }
}

//! The schemas of a spec as JSON Schema 2020-12, the one dialect the validator runs: what the
//! OpenAPI 3.0 dialect means is rewritten into it, and what only holds in one direction of a
//! message (`readOnly`, `writeOnly`) or only as a hint (`discriminator`) is made explicit.
//!
//! - 3.0 only: `nullable: true` adds `"null"` to `type` (and to `enum`), only where `type` is
//!   set (3.0.3); boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric 2020-12
//!   keywords; a `$ref`'s sibling keywords are dropped (3.0 ignores them).
//! - Requests: a `readOnly` property is taken out of `required` and refused when sent
//!   (keyword [`READ_ONLY`]); responses: the same for `writeOnly` ([`WRITE_ONLY`]).
//! - `discriminator` beside `oneOf`/`anyOf`: the property is required, its value must be one
//!   of the mapping's, and the value selects the one schema the instance is checked against
//!   (what ajv's `discriminator` option does); the `oneOf`/`anyOf` is replaced. The implicit
//!   mapping is each `$ref`'s last segment. (A discriminator on a base schema used through
//!   `allOf` only documents: no dispatch.)
//!
//! Schemas are found by walking from the places that hold one (parameters, media types,
//! headers, components) through the keywords that hold subschemas and through `$ref`s, so a
//! schema reached from a sibling file is rewritten like the others. Works on the bundled
//! document (`super::bundle`), whose references are all local.

use super::source::escape;
use super::Version;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// Custom keyword: the property is read-only and must not be sent in a request.
pub const READ_ONLY: &str = "x-turnpike-read-only";
/// Custom keyword: the property is write-only and must not appear in a response.
pub const WRITE_ONLY: &str = "x-turnpike-write-only";

/// Which message the schemas check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Keywords whose value is one subschema.
const ONE: [&str; 10] = [
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
];
/// Keywords whose value is a list of subschemas.
const LIST: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value maps names to subschemas.
const MAP: [&str; 5] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

/// Rewrites every schema of the bundled document `doc` for `direction`.
pub fn rewrite(doc: &Value, version: Version, direction: Direction) -> Value {
    let mut out = doc.clone();
    let mut roots = Vec::new();
    roots_of(doc, &mut roots);
    let mut w = Walker {
        source: doc,
        version,
        direction,
        seen: HashSet::new(),
        pending: roots,
    };
    while let Some(pointer) = w.pending.pop() {
        // A schema inside one already rewritten was rewritten with it.
        let inside = w
            .seen
            .iter()
            .any(|s| pointer.starts_with(s.as_str()) && pointer[s.len()..].starts_with('/'));
        if inside || !w.seen.insert(pointer.clone()) {
            continue;
        }
        let Some(schema) = doc.pointer(&pointer) else {
            continue;
        };
        let new = w.schema(schema);
        if let Some(slot) = out.pointer_mut(&pointer) {
            *slot = new;
        }
    }
    out
}

/// The pointers of the schemas the document holds outside other schemas.
fn roots_of(doc: &Value, out: &mut Vec<String>) {
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for k in schemas.keys() {
            out.push(format!("/components/schemas/{}", escape(k)));
        }
    }
    // Parameters, media types and headers anywhere outside schemas hold `schema`.
    fn find(v: &Value, pointer: &str, out: &mut Vec<String>) {
        let Value::Object(map) = v else {
            if let Value::Array(items) = v {
                for (i, item) in items.iter().enumerate() {
                    find(item, &format!("{pointer}/{i}"), out);
                }
            }
            return;
        };
        for (k, child) in map {
            let here = format!("{pointer}/{}", escape(k));
            match k.as_str() {
                "schema" => out.push(here),
                "schemas" if pointer == "/components" => {}
                "example" | "examples" | "default" => {}
                _ => find(child, &here, out),
            }
        }
    }
    find(doc, "", out);
}

struct Walker<'a> {
    source: &'a Value,
    version: Version,
    direction: Direction,
    seen: HashSet<String>,
    /// Pointers of schemas a `$ref` reached, still to rewrite in place.
    pending: Vec<String>,
}

impl Walker<'_> {
    /// The rewritten copy of one schema (its subschemas included; `$ref` targets are queued).
    fn schema(&mut self, v: &Value) -> Value {
        let Value::Object(map) = v else {
            return v.clone();
        };
        if let Some(Value::String(r)) = map.get("$ref") {
            if let Some(p) = r.strip_prefix('#') {
                self.pending.push(p.to_string());
            }
            if self.version == Version::V30 {
                return json!({ "$ref": r });
            }
        }
        let mut out = Map::new();
        for (k, child) in map {
            let new = if ONE.contains(&k.as_str()) {
                self.schema(child)
            } else if LIST.contains(&k.as_str()) {
                match child {
                    Value::Array(items) => {
                        Value::Array(items.iter().map(|s| self.schema(s)).collect())
                    }
                    other => other.clone(),
                }
            } else if MAP.contains(&k.as_str()) {
                match child {
                    Value::Object(m) => Value::Object(
                        m.iter()
                            .map(|(name, s)| (name.clone(), self.schema(s)))
                            .collect(),
                    ),
                    other => other.clone(),
                }
            } else {
                child.clone()
            };
            out.insert(k.clone(), new);
        }
        if self.version == Version::V30 {
            dialect_30(&mut out);
        }
        self.direction_only(&mut out);
        discriminate(&mut out);
        Value::Object(out)
    }

    /// Whether a property schema (through its `$ref`s) is marked `key: true`.
    fn marked(&self, v: &Value, key: &str) -> bool {
        let mut v = v;
        for _ in 0..16 {
            if v.get(key).and_then(Value::as_bool) == Some(true) {
                return true;
            }
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.source.pointer(p)) {
                    Some(t) => v = t,
                    None => return false,
                },
                None => return false,
            }
        }
        false
    }

    /// `readOnly` properties of a request (`writeOnly` of a response): not required, and
    /// refused when present.
    fn direction_only(&self, out: &mut Map<String, Value>) {
        let (key, keyword) = match self.direction {
            Direction::Request => ("readOnly", READ_ONLY),
            Direction::Response => ("writeOnly", WRITE_ONLY),
        };
        let own: Vec<String> = match out.get("properties") {
            Some(Value::Object(props)) => props
                .iter()
                .filter(|(_, s)| self.marked(s, key))
                .map(|(n, _)| n.clone())
                .collect(),
            _ => Vec::new(),
        };
        // Names marked in `allOf` members count for this object's `required` too.
        let mut marked = own.clone();
        if let Some(Value::Array(members)) = out.get("allOf") {
            for m in members {
                self.marked_names(m, key, keyword, 0, &mut marked);
            }
        }
        if marked.is_empty() {
            return;
        }
        if let Some(Value::Array(req)) = out.get_mut("required") {
            req.retain(|r| !r.as_str().is_some_and(|r| marked.iter().any(|m| m == r)));
        }
        if let Some(Value::Object(props)) = out.get_mut("properties") {
            for name in own {
                props.insert(name, json!({ keyword: true }));
            }
        }
    }

    /// The property names `v` (through `$ref`s and `allOf`) marks `key` (or, already
    /// rewritten, `keyword`).
    fn marked_names(
        &self,
        v: &Value,
        key: &str,
        keyword: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        if depth > 8 {
            return;
        }
        let v = match v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| self.source.pointer(p))
        {
            Some(t) => t,
            None => v,
        };
        if let Some(Value::Object(props)) = v.get("properties") {
            for (n, s) in props {
                let on = self.marked(s, key) || s.get(keyword) == Some(&Value::Bool(true));
                if on && !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        if let Some(Value::Array(members)) = v.get("allOf") {
            for m in members {
                self.marked_names(m, key, keyword, depth + 1, out);
            }
        }
    }
}

/// The OpenAPI 3.0 keywords whose meaning differs from 2020-12.
fn dialect_30(out: &mut Map<String, Value>) {
    if out.remove("nullable").and_then(|v| v.as_bool()) == Some(true) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                if !values.contains(&Value::Null) {
                    values.push(Value::Null);
                }
            }
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(on)) = out.get(flag).cloned() {
            out.remove(flag);
            if on {
                if let Some(b) = out.remove(bound) {
                    out.insert(flag.into(), b);
                }
            }
        }
    }
}

/// `discriminator` beside `oneOf`/`anyOf`: dispatch on the property's value.
fn discriminate(out: &mut Map<String, Value>) {
    let Some(prop) = out
        .get("discriminator")
        .and_then(|d| d.get("propertyName"))
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return;
    };
    let Some(key) = ["oneOf", "anyOf"]
        .into_iter()
        .find(|k| out.contains_key(*k))
    else {
        return;
    };
    let Some(Value::Array(options)) = out.get(key) else {
        return;
    };
    // value -> reference, the explicit mapping first, then each option's last segment.
    let mut mapping: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(m)) = out.get("discriminator").and_then(|d| d.get("mapping")) {
        for (value, target) in m {
            if let Some(t) = target.as_str() {
                let r = if t.starts_with('#') || t.contains('/') {
                    t.to_string()
                } else {
                    format!("#/components/schemas/{}", escape(t))
                };
                mapping.push((value.clone(), r));
            }
        }
    }
    for o in options {
        let Some(r) = o.get("$ref").and_then(Value::as_str) else {
            continue;
        };
        if mapping.iter().any(|(_, t)| t == r) {
            continue;
        }
        if let Some(name) = r.rsplit('/').next() {
            let name = name.replace("~1", "/").replace("~0", "~");
            if !mapping.iter().any(|(v, _)| *v == name) {
                mapping.push((name, r.to_string()));
            }
        }
    }
    if mapping.is_empty() {
        return;
    }
    let values: Vec<Value> = mapping.iter().map(|(v, _)| json!(v)).collect();
    let mut all = vec![json!({
        "required": [prop.clone()],
        "properties": { prop.clone(): { "enum": values } },
    })];
    for (value, target) in &mapping {
        all.push(json!({
            "if": { "properties": { prop.clone(): { "const": value } } },
            "then": { "$ref": target },
        }));
    }
    out.remove(key);
    match out.get_mut("allOf") {
        Some(Value::Array(existing)) => existing.extend(all),
        _ => {
            out.insert("allOf".into(), Value::Array(all));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(schemas: Value) -> Value {
        json!({ "openapi": "3.0.3", "components": { "schemas": schemas } })
    }

    #[test]
    fn nullable_and_exclusive_bounds_of_3_0() {
        let d = doc(json!({
            "A": { "type": "string", "nullable": true, "enum": ["x"] },
            "B": { "type": "integer", "minimum": 1, "exclusiveMinimum": true,
                   "maximum": 9, "exclusiveMaximum": false },
            "C": { "allOf": [{ "$ref": "#/components/schemas/A" }], "nullable": true },
            "D": { "$ref": "#/components/schemas/A", "description": "dropped in 3.0" }
        }));
        let r = rewrite(&d, Version::V30, Direction::Request);
        let s = &r["components"]["schemas"];
        assert_eq!(s["A"]["type"], json!(["string", "null"]));
        assert_eq!(s["A"]["enum"], json!(["x", null]));
        assert_eq!(s["B"]["exclusiveMinimum"], json!(1));
        assert!(s["B"].get("minimum").is_none());
        assert_eq!(s["B"]["maximum"], json!(9));
        assert!(s["B"].get("exclusiveMaximum").is_none());
        // No type beside nullable: nothing is added (3.0.3).
        assert!(s["C"].get("type").is_none());
        assert_eq!(s["D"], json!({ "$ref": "#/components/schemas/A" }));
        // 3.1 keeps $ref siblings and ignores nullable.
        let r = rewrite(&d, Version::V31, Direction::Request);
        assert_eq!(r["components"]["schemas"]["A"]["type"], "string");
        assert_eq!(
            r["components"]["schemas"]["D"]["description"],
            "dropped in 3.0"
        );
    }

    #[test]
    fn read_only_and_write_only_by_direction() {
        let d = doc(json!({
            "Id": { "type": "string", "readOnly": true },
            "Order": {
                "type": "object",
                "required": ["id", "qty", "secret"],
                "properties": {
                    "id": { "$ref": "#/components/schemas/Id" },
                    "qty": { "type": "integer" },
                    "secret": { "type": "string", "writeOnly": true }
                }
            }
        }));
        let req = rewrite(&d, Version::V30, Direction::Request);
        let o = &req["components"]["schemas"]["Order"];
        assert_eq!(o["required"], json!(["qty", "secret"]));
        assert_eq!(o["properties"]["id"], json!({ READ_ONLY: true }));
        let resp = rewrite(&d, Version::V30, Direction::Response);
        let o = &resp["components"]["schemas"]["Order"];
        assert_eq!(o["required"], json!(["id", "qty"]));
        assert_eq!(o["properties"]["secret"], json!({ WRITE_ONLY: true }));
    }

    #[test]
    fn discriminator_dispatches() {
        let d = doc(json!({
            "Pet": {
                "oneOf": [
                    { "$ref": "#/components/schemas/Cat" },
                    { "$ref": "#/components/schemas/Dog" }
                ],
                "discriminator": { "propertyName": "kind", "mapping": { "dog": "Dog" } }
            },
            "Cat": { "type": "object" },
            "Dog": { "type": "object" }
        }));
        let r = rewrite(&d, Version::V30, Direction::Request);
        let p = &r["components"]["schemas"]["Pet"];
        assert!(p.get("oneOf").is_none());
        assert_eq!(
            p["allOf"][0]["properties"]["kind"]["enum"],
            json!(["dog", "Cat"])
        );
        assert_eq!(
            p["allOf"][1]["then"]["$ref"],
            json!("#/components/schemas/Dog")
        );
        assert_eq!(p["allOf"][2]["if"]["properties"]["kind"]["const"], "Cat");
    }

    #[test]
    fn schemas_of_operations_and_sibling_targets_are_rewritten() {
        let d = json!({
            "openapi": "3.0.3",
            "paths": { "/a": { "post": { "requestBody": { "content": { "application/json": {
                "schema": { "type": "object", "properties": {
                    "n": { "type": "string", "nullable": true },
                    "x": { "$ref": "#/components/x-turnpike-bundled/other" } } } } } } } } },
            "components": { "x-turnpike-bundled": { "other": { "type": "integer", "nullable": true } } }
        });
        let r = rewrite(&d, Version::V30, Direction::Request);
        let s = r
            .pointer("/paths/~1a/post/requestBody/content/application~1json/schema")
            .cloned()
            .unwrap_or_default();
        assert_eq!(s["properties"]["n"]["type"], json!(["string", "null"]));
        assert_eq!(
            r["components"]["x-turnpike-bundled"]["other"]["type"],
            json!(["integer", "null"])
        );
    }

    #[test]
    fn read_only_through_all_of_is_not_required_in_requests() {
        let d = doc(json!({
            "Base": { "type": "object", "properties": { "id": { "type": "string", "readOnly": true } } },
            "Order": {
                "allOf": [{ "$ref": "#/components/schemas/Base" }],
                "required": ["id", "qty"],
                "properties": { "qty": { "type": "integer" } }
            }
        }));
        let req = rewrite(&d, Version::V30, Direction::Request);
        assert_eq!(
            req["components"]["schemas"]["Order"]["required"],
            json!(["qty"])
        );
        let resp = rewrite(&d, Version::V30, Direction::Response);
        assert_eq!(
            resp["components"]["schemas"]["Order"]["required"],
            json!(["id", "qty"])
        );
    }
}

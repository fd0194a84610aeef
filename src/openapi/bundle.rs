//! One self-contained document from a spec (what the catalogue serves as `openapi.json`): the
//! root document with every value another file provided copied into it, and every reference
//! made local. A value at `/components/<kind>/<Name>` of a sibling file keeps that place (with
//! a suffix when the root already has the name); anything else goes under
//! `/components/x-turnpike-bundled/`. The `servers` can be replaced by the gateway's public URL.

use super::refs::{is_data, split, target};
use super::source::escape;
use super::Spec;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

struct Bundler<'a> {
    spec: &'a Spec,
    /// (file, pointer) -> local pointer.
    placed: HashMap<(PathBuf, String), String>,
    taken: HashSet<String>,
    extra: Vec<(String, Value)>,
}

impl Bundler<'_> {
    fn local_for(&mut self, file: &Path, pointer: &str) -> String {
        if let Some(p) = self.placed.get(&(file.to_path_buf(), pointer.to_string())) {
            return p.clone();
        }
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let parts: Vec<&str> = pointer.split('/').collect();
        let wanted = match parts.as_slice() {
            ["", "components", kind, name] => format!("/components/{kind}/{name}"),
            _ => format!(
                "/components/x-turnpike-bundled/{}",
                escape(&format!("{stem}{pointer}"))
            ),
        };
        let mut chosen = wanted.clone();
        let mut n = 2;
        while self.taken.contains(&chosen) || self.spec.root_value().pointer(&chosen).is_some() {
            chosen = format!("{wanted}_{n}");
            n += 1;
        }
        self.taken.insert(chosen.clone());
        self.placed
            .insert((file.to_path_buf(), pointer.to_string()), chosen.clone());
        let mut value = self
            .spec
            .documents
            .get(file)
            .and_then(|d| d.value.pointer(pointer))
            .cloned()
            .unwrap_or(Value::Null);
        self.rewrite(&mut value, file);
        self.extra.push((chosen.clone(), value));
        chosen
    }

    /// A discriminator mapping value (a reference, or a schema name of the document `doc`) as a
    /// reference into the bundle; `None` leaves it as it is.
    fn mapping_target(&mut self, t: &str, doc: &Path) -> Option<String> {
        if t.contains('#') || t.contains('/') {
            let (file, fragment) = split(t).ok()?;
            let file_path = target(doc, &file);
            return Some(if file_path == self.spec.root {
                format!("#{fragment}")
            } else {
                format!("#{}", self.local_for(&file_path, &fragment))
            });
        }
        if doc == self.spec.root {
            return None;
        }
        let pointer = format!("/components/schemas/{}", escape(t));
        self.spec.documents.get(doc)?.value.pointer(&pointer)?;
        Some(format!("#{}", self.local_for(doc, &pointer)))
    }

    /// Makes every reference in `v` (from the document `doc`) point into the bundle.
    fn rewrite(&mut self, v: &mut Value, doc: &Path) {
        self.rewrite_in(v, doc, "");
    }

    fn rewrite_in(&mut self, v: &mut Value, doc: &Path, parent_key: &str) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    if let Ok((file, fragment)) = split(r) {
                        let t = target(doc, &file);
                        let local = if t == self.spec.root {
                            fragment
                        } else {
                            self.local_for(&t, &fragment)
                        };
                        map.insert("$ref".into(), Value::String(format!("#{local}")));
                    }
                }
                if parent_key == "discriminator" {
                    if let Some(Value::Object(mapping)) = map.get_mut("mapping") {
                        for target in mapping.values_mut() {
                            if let Value::String(t) = target {
                                if let Some(local) = self.mapping_target(t, doc) {
                                    *t = local;
                                }
                            }
                        }
                    }
                }
                for (k, child) in map.iter_mut() {
                    if k != "$ref" && k != "mapping" && !is_data(k, parent_key) {
                        self.rewrite_in(child, doc, k);
                    }
                }
            }
            Value::Array(items) => {
                for i in items.iter_mut() {
                    self.rewrite_in(i, doc, parent_key);
                }
            }
            _ => {}
        }
    }
}

/// Sets `value` at `pointer` in `root`, creating the objects on the way.
fn put(root: &mut Value, pointer: &str, value: Value) {
    let mut at = root;
    let keys: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|k| k.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else { return };
        if i + 1 == keys.len() {
            map.insert(k.clone(), value);
            return;
        }
        at = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// The spec as one document; with `server`, its `servers` are that URL alone.
pub fn bundled(spec: &Spec, server: Option<&str>) -> Value {
    let mut root = spec.root_value().clone();
    let mut b = Bundler {
        spec,
        placed: HashMap::new(),
        taken: HashSet::new(),
        extra: Vec::new(),
    };
    b.rewrite(&mut root, &spec.root.clone());
    for (pointer, value) in std::mem::take(&mut b.extra) {
        put(&mut root, &pointer, value);
    }
    if let (Some(url), Value::Object(map)) = (server, &mut root) {
        map.insert("servers".into(), json!([{ "url": url }]));
    }
    root
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::write;
    use super::*;

    #[test]
    fn sibling_values_come_in_and_references_become_local() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "root.yaml",
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\nservers: [{url: 'https://internal'}]\npaths:\n  /orders:\n    $ref: 'paths.yaml#/orders'\ncomponents:\n  schemas:\n    Order: {type: string}\n",
        );
        write(
            dir.path(),
            "paths.yaml",
            "orders:\n  get:\n    responses:\n      '200':\n        description: ok\n        content:\n          application/json:\n            schema: {$ref: 'models.yaml#/components/schemas/Order'}\n",
        );
        write(
            dir.path(),
            "models.yaml",
            "components:\n  schemas:\n    Order:\n      type: object\n      properties:\n        next: {$ref: '#/components/schemas/Order'}\n",
        );
        let spec = load(Path::new("root.yaml"), Some(dir.path())).expect("loads");
        let doc = bundled(&spec, Some("https://api.example.com/orders/v1"));
        assert_eq!(
            doc["servers"],
            json!([{"url": "https://api.example.com/orders/v1"}])
        );
        let item = &doc["paths"]["/orders"]["$ref"];
        assert_eq!(item, "#/components/x-turnpike-bundled/paths~1orders");
        let schema = &doc["components"]["x-turnpike-bundled"]["paths/orders"]["get"]["responses"]
            ["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            schema["$ref"], "#/components/schemas/Order_2",
            "the root has an Order"
        );
        let order = &doc["components"]["schemas"]["Order_2"];
        assert_eq!(
            order["properties"]["next"]["$ref"],
            "#/components/schemas/Order_2"
        );
        assert_eq!(doc["components"]["schemas"]["Order"]["type"], "string");
        // Every reference in the bundle resolves within it.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|c| refs(c, out));
                }
                Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert_eq!(all.len(), 3);
        for r in all {
            let p = r.strip_prefix('#').expect("local");
            assert!(doc.pointer(p).is_some(), "{r} resolves in the bundle");
        }
    }

    #[test]
    fn discriminator_mappings_follow_their_schemas() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "root.yaml",
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: 'pets.yaml#/components/schemas/Pet'}\n      responses: {'200': {description: ok}}\n",
        );
        write(
            dir.path(),
            "pets.yaml",
            "components:\n  schemas:\n    Pet:\n      oneOf: [{$ref: '#/components/schemas/Dog'}, {$ref: 'cats.yaml#/Cat'}]\n      discriminator:\n        propertyName: kind\n        mapping: {dog: Dog, cat: 'cats.yaml#/Cat'}\n    Dog: {type: object, properties: {bark: {type: boolean}}}\n",
        );
        write(dir.path(), "cats.yaml", "Cat: {type: object}\n");
        let spec = load(Path::new("root.yaml"), Some(dir.path())).expect("loads");
        let b = bundled(&spec, None);
        let mapping = &b["components"]["schemas"]["Pet"]["discriminator"]["mapping"];
        assert_eq!(mapping["dog"], "#/components/schemas/Dog");
        let cat = mapping["cat"].as_str().unwrap_or("");
        assert!(cat.starts_with("#/components/x-turnpike-bundled/"), "{cat}");
        assert_eq!(
            b["components"]["schemas"]["Pet"]["oneOf"][1]["$ref"].as_str(),
            Some(cat)
        );
        // And the contract compiles with the mapping.
        assert!(super::super::contract::Contract::compile(&spec, false).is_ok());
    }
}

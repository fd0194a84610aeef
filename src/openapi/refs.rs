//! `$ref`s of a spec: every file they name is loaded (relative to the file that refers to it),
//! every reference is checked to resolve, and `follow` walks one. Remote references are
//! refused; a fragment must be a JSON pointer (`#/components/schemas/Order`). Values that are
//! data, not schema (`example`, `enum`, `const`, `default`, an Example Object's `value`), are
//! not searched for references.

use super::source::{escape, Source};
use super::SpecError;
use crate::text::percent_decode;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// At most this many files in one spec.
const MAX_FILES: usize = 256;
/// References followed in a chain (`$ref` to a `$ref` ...).
const MAX_CHAIN: usize = 32;

/// Whether a member named `key` holds data rather than schema (not searched for references),
/// unless it is a property name (`parent_key` is `properties`).
pub fn is_data(key: &str, parent_key: &str) -> bool {
    matches!(key, "example" | "enum" | "const" | "default") && parent_key != "properties"
}

/// A reference split into its file (empty: the same document) and its JSON pointer.
pub fn split(reference: &str) -> Result<(String, String), String> {
    let (file, fragment) = reference.split_once('#').unwrap_or((reference, ""));
    if file.contains("://") || file.starts_with("//") || file.starts_with("urn:") {
        return Err(format!(
            "remote $ref {reference:?} is refused: specs are read from local files only (nothing is fetched at load or per request)"
        ));
    }
    let pointer = percent_decode(fragment);
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "$ref {reference:?}: only JSON-pointer fragments (#/...) are supported"
        ));
    }
    Ok((percent_decode(file), pointer))
}

/// Every `$ref` in `value`: (pointer of the `$ref` member, the reference).
fn collect(value: &Value, pointer: &str, parent_key: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{pointer}/{}", escape(k));
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((here, r.to_string()));
                    }
                    continue;
                }
                if is_data(k, parent_key) {
                    continue;
                }
                if k == "examples" && parent_key != "properties" {
                    // A schema's `examples` (3.1) is data; a media type's is a map of Example
                    // Objects (or references to them), whose `value` is data.
                    if let Value::Object(named) = v {
                        for (name, ex) in named {
                            if let Some(r) = ex.get("$ref").and_then(Value::as_str) {
                                let at = format!("{here}/{}/$ref", escape(name));
                                out.push((at, r.to_string()));
                            }
                        }
                    }
                    continue;
                }
                collect(v, &here, k, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, &format!("{pointer}/{i}"), parent_key, out);
            }
        }
        _ => {}
    }
}

/// The file a reference from `from` names.
pub fn target(from: &Path, file: &str) -> PathBuf {
    if file.is_empty() {
        return from.to_path_buf();
    }
    let joined = from.parent().unwrap_or(Path::new(".")).join(file);
    joined.canonicalize().unwrap_or(joined)
}

/// A file to load: its path, its name as shown, and the `$ref` that named it (pointer, place).
type ToLoad = (PathBuf, PathBuf, String, Option<(usize, usize)>);

/// Loads every file the spec refers to and checks every reference; the documents by
/// canonical path, or every problem found. `shown` is the root file as configured.
pub fn resolve_all(
    root: PathBuf,
    source: Source,
    shown: &Path,
) -> Result<BTreeMap<PathBuf, Source>, Vec<SpecError>> {
    let mut names: HashMap<PathBuf, PathBuf> = HashMap::new();
    names.insert(root.clone(), shown.to_path_buf());
    let mut docs = BTreeMap::new();
    docs.insert(root.clone(), source);
    let mut queue = vec![root];
    let mut errors = Vec::new();
    let mut checks: Vec<(PathBuf, String, PathBuf, String, String)> = Vec::new();
    while let Some(doc) = queue.pop() {
        let mut found = Vec::new();
        if let Some(s) = docs.get(&doc) {
            collect(&s.value, "", "", &mut found);
        }
        let shown_doc = names.get(&doc).cloned().unwrap_or_else(|| doc.clone());
        let here = |pointer: &str| docs.get(&doc).and_then(|s| s.line_col(pointer));
        let mut load: Vec<ToLoad> = Vec::new();
        for (pointer, reference) in found {
            match split(&reference) {
                Err(message) => errors.push(SpecError {
                    file: shown_doc.clone(),
                    line_col: here(&pointer),
                    pointer,
                    message,
                }),
                Ok((file, fragment)) => {
                    let t = target(&doc, &file);
                    if !docs.contains_key(&t) && !load.iter().any(|l| l.0 == t) {
                        let name = shown_doc.parent().unwrap_or(Path::new("")).join(&file);
                        load.push((t.clone(), name, pointer.clone(), here(&pointer)));
                    }
                    checks.push((doc.clone(), pointer, t, fragment, reference));
                }
            }
        }
        for (path, name, from_pointer, line_col) in load {
            if docs.len() >= MAX_FILES {
                errors.push(SpecError {
                    file: shown_doc.clone(),
                    line_col,
                    pointer: from_pointer,
                    message: format!("more than {MAX_FILES} files in one spec"),
                });
                break;
            }
            match std::fs::read_to_string(&path) {
                Err(e) => errors.push(SpecError {
                    file: shown_doc.clone(),
                    line_col,
                    pointer: from_pointer,
                    message: format!("$ref to {}: cannot read the file: {e}", name.display()),
                }),
                Ok(text) => match Source::parse(&text) {
                    Err(e) => errors.push(SpecError {
                        file: name.clone(),
                        line_col: e.line_col,
                        pointer: String::new(),
                        message: e.message,
                    }),
                    Ok(s) => {
                        docs.insert(path.clone(), s);
                        names.insert(path.clone(), name);
                        queue.push(path);
                    }
                },
            }
        }
    }
    for (doc, pointer, t, fragment, reference) in checks {
        let Some(target_doc) = docs.get(&t) else {
            continue; // its file could not be read: already reported
        };
        if target_doc.value.pointer(&fragment).is_none() {
            let s = docs.get(&doc);
            errors.push(SpecError {
                file: names.get(&doc).cloned().unwrap_or(doc.clone()),
                line_col: s.and_then(|s| s.line_col(&pointer)),
                pointer,
                message: format!("$ref {reference:?} does not resolve"),
            });
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Follows `value` through its `$ref`s (from the document `doc`): the document and value it
/// ends at. `None` for a reference that does not resolve or a chain that is too long.
pub fn follow<'a>(
    docs: &'a BTreeMap<PathBuf, Source>,
    doc: &Path,
    value: &'a Value,
) -> Option<(PathBuf, &'a Value)> {
    let mut doc = doc.to_path_buf();
    let mut value = value;
    for _ in 0..MAX_CHAIN {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return Some((doc, value));
        };
        let (file, fragment) = split(reference).ok()?;
        let t = target(&doc, &file);
        value = docs.get(&t)?.value.pointer(&fragment)?;
        doc = t;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tests::write;
    use super::super::{load, SpecError};
    use std::path::Path;

    fn errors(dir: &Path, file: &str) -> Vec<SpecError> {
        load(Path::new(file), Some(dir)).expect_err("refused")
    }

    #[test]
    fn sibling_files_load_and_cycles_are_fine() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "root.yaml",
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /orders:\n    $ref: 'paths.yaml#/orders'\ncomponents:\n  schemas:\n    Node:\n      type: object\n      properties:\n        next: {$ref: '#/components/schemas/Node'}\n        example: {$ref: '#/components/schemas/Node'}\n      example: {$ref: 'not checked: data'}\n",
        );
        write(
            dir.path(),
            "paths.yaml",
            "orders:\n  get:\n    responses:\n      '200':\n        description: ok\n        content:\n          application/json:\n            schema: {$ref: 'root.yaml#/components/schemas/Node'}\n",
        );
        let spec = load(Path::new("root.yaml"), Some(dir.path())).expect("loads");
        assert_eq!(spec.documents.len(), 2);
        assert_eq!(spec.operations.len(), 1);
        assert_eq!(spec.operations[0].path, "/orders");
    }

    #[test]
    fn remote_and_broken_refs_are_refused_with_places() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "r.yaml",
            "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\ncomponents:\n  schemas:\n    A:\n      $ref: 'https://example.com/a.yaml#/A'\n    B:\n      $ref: '#/components/schemas/Missing'\n    C:\n      $ref: 'gone.yaml#/C'\n    D:\n      $ref: 'other.json#/nope'\n",
        );
        write(dir.path(), "other.json", "{\"yes\": 1}");
        let e = errors(dir.path(), "r.yaml");
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(e.len(), 4, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("r.yaml:7:7 at #/components/schemas/A/$ref: remote $ref")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("r.yaml:9:7 at #/components/schemas/B/$ref: $ref \"#/components/schemas/Missing\" does not resolve")), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l
                .contains("#/components/schemas/C/$ref: $ref to gone.yaml: cannot read the file")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(
                "#/components/schemas/D/$ref: $ref \"other.json#/nope\" does not resolve"
            )),
            "{lines:#?}"
        );
    }
}

//! OpenAPI documents (`[apis.catalog] openapi = "specs/orders-v1.yaml"`): loading, reference
//! checks and the operations a spec describes. This module owns reading a spec; the config
//! loader calls `load` for every API that names one, so a spec that does not parse or does not
//! resolve refuses start and reload with its file, line and JSON pointer.
//!
//! - OpenAPI 3.0.x and 3.1.x, YAML or JSON (`source`).
//! - `$ref`s (`refs`): within the document, and to sibling files by relative path (loaded once
//!   each); a remote reference (`http://`, `https://`, `//host`) is refused: nothing is fetched
//!   at load or per request. Every reference must resolve. Cycles are allowed (recursive
//!   schemas): references are checked, not inlined.
//! - Operations (`operations`): every path and method, with the parameters of the path item and
//!   of the operation, and the security requirements that apply.

pub mod bundle;
pub mod contract;
pub mod diff;
pub mod import;
pub mod mock;
pub mod operations;
pub mod params;
pub mod refs;
pub mod routes;
pub mod schema;
pub mod source;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use operations::Operation;
use source::Source;

/// The OpenAPI major.minor a document declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V30,
    V31,
}

/// A loaded spec: the root document, the files it refers to, and its operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The root file, as configured (relative to the config file's directory).
    pub file: PathBuf,
    pub version: Version,
    /// Every file loaded, by canonical path; the root's is `root`.
    pub documents: BTreeMap<PathBuf, Source>,
    pub root: PathBuf,
    pub operations: Vec<Operation>,
}

/// A problem in a spec: the file, where in it, the JSON pointer, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub line_col: Option<(usize, usize)>,
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if !self.pointer.is_empty() {
            write!(f, " at #{}", self.pointer)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The specs of a config's APIs, by API index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded(pub BTreeMap<usize, Arc<Spec>>);

impl Loaded {
    pub fn of(&self, api: usize) -> Option<&Spec> {
        self.0.get(&api).map(|s| &**s)
    }
}

/// Loads the spec of every API that names one (`[apis.catalog] openapi`, relative to `base`,
/// the config file's directory) into `cfg.specs`; a problem per spec error, at the API's
/// `catalog.openapi` key with the spec's file, line and pointer in its message.
pub fn attach(
    cfg: &mut crate::config::file::FileConfig,
    base: Option<&Path>,
) -> Vec<crate::config::error::Problem> {
    let mut problems = Vec::new();
    let mut loaded = BTreeMap::new();
    for (i, api) in cfg.apis.iter().enumerate() {
        let key = format!("apis[{i}].catalog.openapi");
        let Some(file) = api.catalog.as_ref().and_then(|c| c.openapi.as_deref()) else {
            if api.openapi.is_some() {
                problems.push(crate::config::error::Problem::at(
                    format!("apis[{i}].openapi"),
                    "needs an OpenAPI document: set [apis.catalog] openapi",
                ));
            }
            continue;
        };
        match load(Path::new(file), base) {
            Ok(spec) => {
                loaded.insert(i, Arc::new(spec));
            }
            Err(errors) => problems.extend(
                errors
                    .into_iter()
                    .map(|e| crate::config::error::Problem::at(key.clone(), e.to_string())),
            ),
        }
    }
    cfg.specs = Loaded(loaded);
    problems
}

impl Spec {
    /// The root document's value.
    pub fn root_value(&self) -> &Value {
        self.documents
            .get(&self.root)
            .map_or(&Value::Null, |s| &s.value)
    }
}

/// Reads a file of a spec.
fn read(path: &Path, shown: &Path) -> Result<Source, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: shown.to_path_buf(),
        line_col: None,
        pointer: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    Source::parse(&text).map_err(|e| SpecError {
        file: shown.to_path_buf(),
        line_col: e.line_col,
        pointer: String::new(),
        message: e.message,
    })
}

/// Loads the spec at `file` (relative paths from `base`, the config file's directory): every
/// problem found, or the spec.
pub fn load(file: &Path, base: Option<&Path>) -> Result<Spec, Vec<SpecError>> {
    let path = match base {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    };
    let root_source = read(&path, file).map_err(|e| vec![e])?;
    let version = match root_source.value.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v == "3.0" => Version::V30,
        Some(v) if v.starts_with("3.1.") || v == "3.1" => Version::V31,
        other => {
            let message = match (other, root_source.value.get("swagger")) {
                (_, Some(_)) => "Swagger 2.0 is not supported: convert it to OpenAPI 3 (for example with swagger2openapi)".to_string(),
                (Some(v), None) => format!("OpenAPI {v} is not supported (3.0.x and 3.1.x are)"),
                (None, None) => "not an OpenAPI document: no `openapi` version field".to_string(),
            };
            return Err(vec![SpecError {
                file: file.to_path_buf(),
                line_col: root_source.line_col("/openapi"),
                pointer: "/openapi".into(),
                message,
            }]);
        }
    };
    let root = path.canonicalize().unwrap_or(path.clone());
    let documents = refs::resolve_all(root.clone(), root_source, file)?;
    let operations = operations::collect(&documents, &root, file)?;
    Ok(Spec {
        file: file.to_path_buf(),
        version,
        documents,
        root,
        operations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn versions_and_non_openapi_files() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "s.yaml", "swagger: '2.0'\ninfo: {title: x}\n");
        let e = load(Path::new("s.yaml"), Some(dir.path())).expect_err("swagger");
        assert!(e[0].message.contains("Swagger 2.0"), "{}", e[0]);
        write(dir.path(), "v.yaml", "openapi: 4.0.0\n");
        let e = load(Path::new("v.yaml"), Some(dir.path())).expect_err("4.0");
        assert_eq!(
            e[0].to_string(),
            "v.yaml:1:1 at #/openapi: OpenAPI 4.0.0 is not supported (3.0.x and 3.1.x are)"
        );
        let e = load(Path::new("missing.yaml"), Some(dir.path())).expect_err("missing");
        assert!(e[0].message.starts_with("cannot read the file"));
    }
}

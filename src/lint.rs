//! `turnpike lint -c FILE [--format text|json|sarif]`: every problem of a config file and every
//! governance finding, each with its rule id, severity, key path and line, for CI pipelines.
//! Exits 1 when any finding is an error: what `run`, `check` and a reload would refuse (the
//! file is parsed, validated and compiled as they do). SARIF 2.1.0 so
//! that code-review tools show the findings on the lines of the file.

use crate::config::error::Problem;
use crate::config::governance::{self, Finding, Severity};
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitCode;

/// A finding placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// A governance rule, or `config` for a problem that any run would refuse.
    pub rule: &'static str,
    pub severity: Severity,
    pub key_path: String,
    pub line_col: Option<(usize, usize)>,
    pub message: String,
}

/// Every finding of the file at `path`, in the order they were found.
pub fn findings(path: &Path) -> Vec<Placed> {
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return vec![Placed {
                rule: "config",
                severity: Severity::Error,
                key_path: String::new(),
                line_col: None,
                message: format!("cannot read the file: {e}"),
            }]
        }
    };
    let from_problem = |p: Problem| Placed {
        rule: "config",
        severity: Severity::Error,
        key_path: p.key_path,
        line_col: p.line_col,
        message: p.message,
    };
    let mut cfg = match crate::config::parse_syntax(&src, path) {
        Ok(c) => c,
        Err(e) => return e.problems.into_iter().map(from_problem).collect(),
    };
    let specs = crate::openapi::attach(&mut cfg, path.parent());
    let rules = governance::evaluate(&cfg);
    let mut base = specs;
    base.extend(crate::config::validate::validate_base(&cfg));
    if base.is_empty() {
        // What only compiling finds (plans, JWT settings, TLS and token files, pools): a file
        // lint passes is one run, check and reload accept, governance warnings aside.
        if let Err(problems) = crate::config::compile::compile(&cfg, None, 1) {
            base = problems;
        }
    }
    let mut out: Vec<Placed> = crate::config::with_lines(&src, base)
        .into_iter()
        .map(from_problem)
        .collect();
    out.extend(rules.into_iter().map(|f| place(&src, f)));
    out
}

fn place(src: &str, f: Finding) -> Placed {
    let line_col =
        crate::config::spans::locate_key(src, &f.key_path).map(|(line, col, _)| (line, col));
    Placed {
        rule: f.rule,
        severity: f.severity,
        key_path: f.key_path,
        line_col,
        message: f.message,
    }
}

/// The governance warnings of a file that loads, as `check` prints them.
pub fn warnings(path: &Path) -> Vec<String> {
    findings(path)
        .into_iter()
        .filter(|f| f.severity == Severity::Warn)
        .map(|f| text_line(path, &f))
        .collect()
}

fn text_line(path: &Path, f: &Placed) -> String {
    let at = f
        .line_col
        .map(|(l, c)| format!("{l}:{c}:"))
        .unwrap_or_default();
    let key = if f.key_path.is_empty() {
        String::new()
    } else {
        format!(" {}:", f.key_path)
    };
    let level = if f.severity == Severity::Error {
        "error"
    } else {
        "warning"
    };
    format!(
        "{}:{at} {level}[{}]{key} {}",
        path.display(),
        f.rule,
        f.message
    )
}

pub fn json_report(path: &Path, found: &[Placed]) -> Value {
    let count = |s: Severity| found.iter().filter(|f| f.severity == s).count();
    json!({
        "file": path.display().to_string(),
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warn),
        "findings": found.iter().map(|f| json!({
            "rule": f.rule,
            "severity": f.severity.as_str(),
            "key_path": f.key_path,
            "line": f.line_col.map(|(l, _)| l),
            "column": f.line_col.map(|(_, c)| c),
            "message": f.message,
        })).collect::<Vec<_>>(),
    })
}

/// A SARIF 2.1.0 log with one run: the rules that exist and a result per finding.
pub fn sarif_report(path: &Path, found: &[Placed]) -> Value {
    let mut rules = vec![json!({
        "id": "config",
        "shortDescription": { "text": "The config file is valid (what run and reload check)" },
        "defaultConfiguration": { "level": "error" },
    })];
    rules.extend(
        governance::RULES
            .iter()
            .map(|(id, what)| json!({ "id": id, "shortDescription": { "text": what } })),
    );
    let uri = file_uri(path);
    let results: Vec<Value> = found
        .iter()
        .map(|f| {
            let mut location =
                json!({ "physicalLocation": { "artifactLocation": { "uri": uri } } });
            if let Some((line, col)) = f.line_col {
                location["physicalLocation"]["region"] =
                    json!({ "startLine": line, "startColumn": col });
            }
            if !f.key_path.is_empty() {
                location["logicalLocations"] =
                    json!([{ "fullyQualifiedName": f.key_path, "kind": "member" }]);
            }
            json!({
                "ruleId": f.rule,
                "level": if f.severity == Severity::Error { "error" } else { "warning" },
                "message": { "text": f.message },
                "locations": [location],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "turnpike",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

/// A SARIF artifact location: a relative path stays relative (to the directory lint ran in, as
/// code-review tools resolve it against the checkout), an absolute one becomes a `file://`
/// URI; bytes outside the unreserved set are percent-encoded.
fn file_uri(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    let mut out = String::new();
    if path.is_absolute() {
        out.push_str("file://");
    }
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The command: prints the findings in `format` and exits 1 when any is an error.
pub fn run(path: &Path, format: &str) -> ExitCode {
    let found = findings(path);
    // Written at once; a reader that goes away early (`| head`) is not an error of ours.
    let print = |text: String| {
        use std::io::Write;
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    };
    match format {
        "text" => {
            print(found.iter().map(|f| text_line(path, f) + "\n").collect());
            let errors = found
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            eprintln!(
                "{}: {errors} error(s), {} warning(s)",
                path.display(),
                found.len() - errors
            );
        }
        "json" => print(format!("{:#}\n", json_report(path, &found))),
        "sarif" => print(format!("{:#}\n", sarif_report(path, &found))),
        other => {
            eprintln!("--format {other:?}: text, json or sarif");
            return ExitCode::from(2);
        }
    }
    if found.iter().any(|f| f.severity == Severity::Error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

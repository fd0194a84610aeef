//! `turnpike test`: declarative policy test cases (TOML files of `[[case]]`), each run offline
//! on a fresh bench (fresh counters and guards), compared with what it expects. Exits non-zero
//! on any failed case, printing expected against actual.
//!
//! ```toml
//! [[case]]
//! name = "partners from outside the office get 403"
//! request = { method = "GET", url = "http://api.example.com/orders/v1/42", client_ip = "203.0.113.9", headers = { "x-api-key" = "{key:acme}" } }
//! expect = { status = 403, code = "forbidden", policy = "office-only" }
//! ```
//!
//! `{key:ID}` in a header value is a key that identifies consumer `ID` in this run only.

use super::{Bench, Simulate, Simulated};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub client_ip: Option<IpAddr>,
    pub body_size: Option<u64>,
    /// The request body (checked by validate policies).
    pub body: Option<String>,
}

fn get() -> String {
    "GET".into()
}

/// What a case expects; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The gateway's own answer (a request that goes upstream has none: use `proxied`).
    pub status: Option<u16>,
    pub code: Option<String>,
    /// The refusing policy; `""` expects no refusal by a policy.
    pub policy: Option<String>,
    /// Whether the request goes to the upstream.
    pub proxied: Option<bool>,
    pub upstream: Option<ExpectUpstream>,
    #[serde(default)]
    pub answer_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub answer_headers_absent: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectUpstream {
    pub method: Option<String>,
    /// Path and query as the upstream receives them.
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_absent: Vec<String>,
}

/// The outcome of one case.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    pub failures: Vec<String>,
    pub actual: Option<Simulated>,
}

/// Compares an outcome with what the case expects; one line per difference.
pub fn compare(e: &Expect, a: &Simulated) -> Vec<String> {
    let mut out = Vec::new();
    let shown = |s: &Option<u16>| match s {
        Some(s) => s.to_string(),
        None => "none (the request goes to the upstream)".to_string(),
    };
    if let Some(s) = e.status {
        if a.status != Some(s) {
            out.push(format!("status: expected {s}, got {}", shown(&a.status)));
        }
    }
    if let Some(c) = &e.code {
        if a.code.as_deref() != Some(c.as_str()) {
            out.push(format!(
                "code: expected {c:?}, got {:?}",
                a.code.as_deref().unwrap_or("none")
            ));
        }
    }
    if let Some(p) = &e.policy {
        let got = a.policy.as_deref().unwrap_or("");
        if got != p {
            out.push(format!("policy: expected {p:?}, got {got:?}"));
        }
    }
    let proxied = a.upstream.is_some() && a.status.is_none();
    if let Some(want) = e.proxied {
        if want != proxied {
            out.push(format!(
                "proxied: expected {want}, got {proxied}{}",
                a.code
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(u) = &e.upstream {
        match &a.upstream {
            None => out.push(format!(
                "upstream: expected a request to the upstream, got the answer {}",
                shown(&a.status)
            )),
            Some(got) => {
                if let Some(m) = &u.method {
                    if !m.eq_ignore_ascii_case(&got.method) {
                        out.push(format!("upstream.method: expected {m}, got {}", got.method));
                    }
                }
                if let Some(p) = &u.path {
                    if *p != got.path {
                        out.push(format!("upstream.path: expected {p:?}, got {:?}", got.path));
                    }
                }
                for (n, v) in &u.headers {
                    match got.header(n) {
                        Some(g) if g == v => {}
                        g => out.push(format!("upstream.headers.{n}: expected {v:?}, got {g:?}")),
                    }
                }
                for n in &u.headers_absent {
                    if let Some(g) = got.header(n) {
                        out.push(format!("upstream.headers_absent: {n} is present ({g:?})"));
                    }
                }
            }
        }
    }
    let answer = |n: &str| {
        a.answer_headers
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    for (n, v) in &e.answer_headers {
        match answer(n) {
            Some(g) if g == v => {}
            g => out.push(format!("answer_headers.{n}: expected {v:?}, got {g:?}")),
        }
    }
    for n in &e.answer_headers_absent {
        if let Some(g) = answer(n) {
            out.push(format!("answer_headers_absent: {n} is present ({g:?})"));
        }
    }
    out
}

/// Replaces `{key:ID}` in header values with a key of consumer `ID`.
pub fn with_keys<'a>(
    bench: &mut Bench,
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, v) in headers {
        let mut value = v.clone();
        while let Some(start) = value.find("{key:") {
            let Some(len) = value[start..].find('}') else {
                return Err(format!("header {n}: unclosed {{key:...}}"));
            };
            let id = value[start + 5..start + len].to_string();
            let key = bench.test_key(&id)?;
            value.replace_range(start..start + len + 1, &key);
        }
        out.push((n.clone(), value));
    }
    Ok(out)
}

/// Runs every case of every file.
pub async fn run_files(config: &Path, files: &[PathBuf]) -> Result<Vec<CaseResult>, String> {
    // The config is checked once, before any case.
    Bench::open(config)?;
    let mut results = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let parsed: CaseFile = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            format!("{}{at}: {}", file.display(), e.message())
        })?;
        if parsed.case.is_empty() {
            return Err(format!("{}: no [[case]] in the file", file.display()));
        }
        for case in parsed.case {
            let mut bench = Bench::open(config)?;
            let outcome = match with_keys(&mut bench, &case.request.headers) {
                Err(e) => Err(e),
                Ok(headers) => {
                    let req = Simulate {
                        method: case.request.method.clone(),
                        url: case.request.url.clone(),
                        headers,
                        client_ip: case.request.client_ip,
                        body_size: case.request.body_size,
                        body: case.request.body.clone(),
                    };
                    bench.run(&req).await
                }
            };
            let (failures, actual) = match outcome {
                Ok(a) => (compare(&case.expect, &a), Some(a)),
                Err(e) => (vec![format!("the request could not be run: {e}")], None),
            };
            results.push(CaseResult {
                file: file.display().to_string(),
                name: case.name,
                passed: failures.is_empty(),
                failures,
                actual,
            });
        }
    }
    Ok(results)
}

/// `turnpike test`.
pub fn run(config: &Path, files: &[PathBuf], json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let results = match runtime.block_on(run_files(config, files)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let failed = results.iter().filter(|r| !r.passed).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    } else {
        for r in &results {
            if r.passed {
                println!("ok    {}: {}", r.file, r.name);
            } else {
                println!("FAIL  {}: {}", r.file, r.name);
                for f in &r.failures {
                    println!("      {f}");
                }
            }
        }
        println!("{} passed, {failed} failed", results.len() - failed);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

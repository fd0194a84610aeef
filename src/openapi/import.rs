//! `turnpike openapi import SPEC --name NAME --upstream UP [--base-path /p]`: the config of an
//! API described by a spec, printed to paste (no file is edited). What the spec says becomes
//! config: `info` the catalogue entry (title, summary, and a team with the contact), the
//! routes (`[apis.openapi] routes = true`: the spec's, listed in a comment with their methods
//! and scopes), an API-key security scheme the key settings; OAuth 2 / OpenID Connect schemes
//! need JWT settings the spec cannot give (issuer, audience, key source): a comment says so.

use super::Spec;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).map(str::trim)
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What `import` was asked for.
pub struct Import<'a> {
    /// The spec's path as it goes into `[apis.catalog] openapi`.
    pub spec_path: &'a str,
    pub name: &'a str,
    pub upstream: &'a str,
    pub base_path: Option<&'a str>,
}

/// The base path from the spec's first server URL (`https://h/orders/v1` -> `/orders/v1`).
fn server_path(doc: &Value) -> Option<String> {
    let url = doc.pointer("/servers/0/url")?.as_str()?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = if url.contains("://") {
        rest.find('/').map_or("", |i| &rest[i..])
    } else {
        rest
    };
    let path = path.trim_end_matches('/');
    (path.starts_with('/') && !path.contains('{')).then(|| path.to_string())
}

/// The config text.
pub fn render(spec: &Spec, args: &Import<'_>) -> String {
    let doc = spec.root_value();
    let info = doc.get("info").cloned().unwrap_or(Value::Null);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# From {} by `turnpike openapi import` ({} operations). Paste into the config; add\n# [upstreams.{}] if it is new.",
        args.spec_path,
        spec.operations.len(),
        args.upstream
    );
    let team = format!("{}-owners", args.name);
    let contact = info
        .get("contact")
        .filter(|c| text(c, "email").is_some() || text(c, "url").is_some());
    if let Some(c) = contact {
        let bare = team
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let key = if bare { team.clone() } else { quote(&team) };
        let _ = writeln!(out, "\n[teams.{key}]");
        let _ = writeln!(
            out,
            "name = {}",
            quote(text(c, "name").unwrap_or(args.name))
        );
        let mut fields = Vec::new();
        for k in ["name", "email", "url"] {
            if let Some(v) = text(c, k) {
                fields.push(format!("{k} = {}", quote(v)));
            }
        }
        let _ = writeln!(out, "contacts = [{{ {} }}]", fields.join(", "));
    }
    let base = args
        .base_path
        .map(String::from)
        .or_else(|| server_path(doc))
        .unwrap_or_else(|| format!("/{}", args.name));
    let _ = writeln!(out, "\n[[apis]]");
    let _ = writeln!(out, "name = {}", quote(args.name));
    let _ = writeln!(out, "base_path = {}", quote(&base));
    let _ = writeln!(out, "upstream = {}", quote(args.upstream));
    let _ = writeln!(out, "[apis.catalog]");
    if let Some(t) = text(&info, "title") {
        let _ = writeln!(out, "title = {}", quote(t));
    }
    let summary = text(&info, "summary").or_else(|| {
        text(&info, "description").and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty()))
    });
    if let Some(s) = summary {
        let s: String = s.chars().take(200).collect();
        let _ = writeln!(out, "summary = {}", quote(&s));
    }
    if contact.is_some() {
        let _ = writeln!(out, "owner = {}", quote(&team));
    }
    let _ = writeln!(out, "openapi = {}", quote(args.spec_path));

    // Security schemes the operations use.
    let schemes = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object);
    let used: Vec<&str> = {
        let mut u: Vec<&str> = spec
            .operations
            .iter()
            .flat_map(|o| o.security.iter().flat_map(|r| r.keys().map(String::as_str)))
            .collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    let scheme = |name: &str| schemes.and_then(|s| s.get(name));
    let api_key = used.iter().filter_map(|n| scheme(n)).find(|s| {
        text(s, "type") == Some("apiKey") && matches!(text(s, "in"), Some("header") | Some("query"))
    });
    let oauth: Vec<&str> = used
        .iter()
        .copied()
        .filter(|n| {
            scheme(n)
                .is_some_and(|s| matches!(text(s, "type"), Some("oauth2") | Some("openIdConnect")))
        })
        .collect();
    if let Some(k) = api_key {
        let _ = writeln!(
            out,
            "[apis.auth]\nmethods = [\"api_key\"]\n[apis.auth.api_key]"
        );
        let name = text(k, "name").unwrap_or("X-API-Key");
        match text(k, "in") {
            Some("query") => {
                let _ = writeln!(out, "query_param = {}", quote(name));
            }
            _ => {
                let _ = writeln!(out, "header = {}", quote(name));
            }
        }
    }
    for n in &oauth {
        let _ = writeln!(
            out,
            "# The spec's {} scheme {n:?} grants scopes: add \"jwt\" to [apis.auth] methods with\n# [apis.auth.jwt] issuer, audience and a key source, and the routes get their scopes.",
            scheme(n).and_then(|s| text(s, "type")).unwrap_or("oauth2")
        );
    }

    // The routes are the spec's (kept in step with it); listed for reference.
    let _ = writeln!(
        out,
        "[apis.openapi]\nroutes = true\n# The spec's routes (a [[apis.routes]] with the same path adds policies, limits or a cache):"
    );
    let mut by_path: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for op in &spec.operations {
        let e = by_path.entry(op.path.as_str()).or_default();
        e.0.push(op.method.to_string());
        for req in &op.security {
            for (s, scopes) in req {
                if oauth.contains(&s.as_str()) {
                    for sc in scopes {
                        if !e.1.contains(sc) {
                            e.1.push(sc.clone());
                        }
                    }
                }
            }
        }
    }
    for (path, (methods, scopes)) in by_path {
        let _ = write!(out, "#   {} {path}", methods.join(", "));
        if !scopes.is_empty() {
            let _ = write!(out, "  (scopes {})", scopes.join(" "));
        }
        out.push('\n');
    }
    out
}

/// Runs `turnpike openapi import`: the text on standard output, or the spec's problems.
pub fn run(spec_path: &std::path::Path, args: &Import<'_>) -> std::process::ExitCode {
    match super::load(spec_path, None) {
        Ok(spec) => {
            print!("{}", render(&spec, args));
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            std::process::ExitCode::from(2)
        }
    }
}

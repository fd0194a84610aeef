//! The routes an API gets from its spec (`[apis.openapi] routes = true`), and the drift
//! between a spec and hand-written routes (governance rule `openapi_drift`).
//!
//! A derived route is one per path template of the spec, with the methods of its operations
//! (`HEAD` comes with `GET`, as for hand-written routes). Scopes come from the operations'
//! security when every operation of the template asks for the same single requirement of an
//! `oauth2` or `openIdConnect` scheme (what `[apis.auth]` JWT scopes can enforce); anything
//! else is left to the API's `[apis.auth]`. A template whose every operation says
//! `security: []` (or allows the empty alternative `{}`) is `anonymous`: no credential is asked
//! there even on an API with `[apis.auth]` (a document that declares no security says nothing,
//! and the API's auth applies). A hand-written `[[apis.routes]]` with the same
//! path keeps its own settings (policies, scopes, limits, cache, answer) and, when it lists no
//! methods, gets the spec's.

use super::Spec;
use crate::config::file::{ApiSection, RouteSection};
use serde_json::Value;
use std::collections::BTreeMap;

/// The scopes a requirement asks for, when it is a single OAuth 2 / OpenID Connect scheme.
fn scopes_of(spec: &Spec, security: &[super::operations::Requirement]) -> Option<Vec<String>> {
    let [only] = security else { return None };
    let mut schemes = only.iter();
    let (name, scopes) = schemes.next()?;
    if schemes.next().is_some() {
        return None;
    }
    let kind = spec
        .root_value()
        .pointer(&format!(
            "/components/securitySchemes/{}/type",
            super::source::escape(name)
        ))
        .and_then(Value::as_str)?;
    matches!(kind, "oauth2" | "openIdConnect").then(|| scopes.clone())
}

/// A template's methods, the scopes each of its operations asks for (when expressible), and
/// whether every operation is anonymous.
type PathOps = (Vec<String>, Vec<Option<Vec<String>>>, bool);

/// The API's routes: (index of the hand-written route, if any; the route).
pub fn effective(api: &ApiSection, spec: Option<&Spec>) -> Vec<(Option<usize>, RouteSection)> {
    let written = api
        .routes
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| (Some(i), r));
    let derive = api.openapi.as_ref().is_some_and(|o| o.routes);
    let Some(spec) = spec.filter(|_| derive) else {
        return written.collect();
    };
    // Scopes are enforced by JWT auth only.
    let jwt = api.auth.as_ref().is_some_and(|a| {
        a.methods
            .iter()
            .any(|m| matches!(m, crate::config::file::AuthMethod::Jwt))
    });
    let mut by_path: BTreeMap<&str, PathOps> = BTreeMap::new();
    for op in &spec.operations {
        let e = by_path
            .entry(op.path.as_str())
            .or_insert_with(|| (Vec::new(), Vec::new(), true));
        e.0.push(op.method.to_string());
        e.1.push(scopes_of(spec, &op.security).filter(|_| jwt));
        e.2 &= op.anonymous;
    }
    let mut out: Vec<(Option<usize>, RouteSection)> = Vec::new();
    for (path, (methods, scopes, anonymous)) in by_path {
        let same_scopes = scopes
            .first()
            .cloned()
            .flatten()
            .filter(|first| scopes.iter().all(|s| s.as_ref() == Some(first)))
            .unwrap_or_default();
        match api.routes.iter().position(|r| r.path == path) {
            Some(i) => {
                let mut r = api.routes[i].clone();
                if r.methods.is_empty() {
                    r.methods = methods;
                }
                out.push((Some(i), r));
            }
            None => out.push((
                None,
                RouteSection {
                    path: path.to_string(),
                    methods,
                    max_body: None,
                    respond: None,
                    scopes: same_scopes,
                    cache: None,
                    policies: Vec::new(),
                    mock: false,
                    anonymous,
                },
            )),
        }
    }
    // Hand-written routes the spec does not have stay (and are drift).
    for (i, r) in api.routes.iter().enumerate() {
        if !out.iter().any(|(w, _)| *w == Some(i)) {
            out.push((Some(i), r.clone()));
        }
    }
    out
}

/// Where the spec and the hand-written routes disagree: operations no route serves, and
/// routes (or their methods) no operation describes. Each as (key path, message).
pub fn drift(api_index: usize, api: &ApiSection, spec: &Spec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let derived = api.openapi.as_ref().is_some_and(|o| o.routes);
    let serves = |r: &RouteSection, m: &str| {
        r.methods.is_empty()
            || r.methods.iter().any(|x| x.eq_ignore_ascii_case(m))
            || (m == "HEAD" && r.methods.iter().any(|x| x.eq_ignore_ascii_case("GET")))
    };
    if !derived && !api.routes.is_empty() {
        for op in &spec.operations {
            let m = op.method.as_str();
            if !api.routes.iter().any(|r| r.path == op.path && serves(r, m)) {
                out.push((
                    format!("apis[{api_index}].catalog.openapi"),
                    format!(
                        "{m} {} is in the spec ({}) but no route serves it",
                        op.path,
                        op.pointer_text()
                    ),
                ));
            }
        }
    }
    for (r, route) in api.routes.iter().enumerate() {
        let ops: Vec<&str> = spec
            .operations
            .iter()
            .filter(|o| o.path == route.path)
            .map(|o| o.method.as_str())
            .collect();
        let key = format!("apis[{api_index}].routes[{r}]");
        if ops.is_empty() {
            out.push((
                key,
                format!("route {} is not in the API's OpenAPI document", route.path),
            ));
            continue;
        }
        for m in &route.methods {
            let m = m.to_ascii_uppercase();
            let described = ops.contains(&m.as_str()) || (m == "HEAD" && ops.contains(&"GET"));
            if !described {
                out.push((
                    key.clone(),
                    format!(
                        "{m} {} is routed but not in the API's OpenAPI document",
                        route.path
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::FileConfig;

    const SPEC: &str = r#"{"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
      "components": {"securitySchemes": {
        "oauth": {"type": "oauth2", "flows": {}},
        "key": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
      "paths": {
        "/orders": {
          "get": {"security": [{"oauth": ["orders:read"]}], "responses": {}},
          "post": {"security": [{"oauth": ["orders:read"]}], "responses": {}}},
        "/orders/{id}": {
          "get": {"security": [{"key": []}], "responses": {}}}}}"#;

    fn cfg(extra: &str) -> FileConfig {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("s.json"), SPEC).expect("write");
        let text = format!(
            "[[apis]]\nname = \"o\"\nbase_path = \"/o\"\nupstream = \"u\"\n[apis.catalog]\nopenapi = \"s.json\"\n{extra}"
        );
        let mut cfg: FileConfig = toml::from_str(&text).expect("toml");
        let problems = crate::openapi::attach(&mut cfg, Some(dir.path()));
        assert!(problems.is_empty(), "{problems:?}");
        cfg
    }

    #[test]
    fn routes_come_from_the_spec_and_merge_with_written_ones() {
        let c = cfg("[apis.auth]\nmethods = [\"jwt\"]\n[apis.openapi]\nroutes = true\n[[apis.routes]]\npath = \"/orders/{id}\"\npolicies = [\"p\"]\n[[apis.routes]]\npath = \"/extra\"\n");
        let routes = effective(&c.apis[0], c.specs.of(0));
        type Row<'a> = (Option<usize>, &'a str, Vec<String>, Vec<String>);
        let got: Vec<Row<'_>> = routes
            .iter()
            .map(|(i, r)| (*i, r.path.as_str(), r.methods.clone(), r.scopes.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    None,
                    "/orders",
                    vec!["GET".into(), "POST".into()],
                    vec!["orders:read".into()]
                ),
                (Some(0), "/orders/{id}", vec!["GET".into()], vec![]),
                (Some(1), "/extra", vec![], vec![]),
            ]
        );
        assert_eq!(routes[1].1.policies, ["p"]);
        let drift = drift(0, &c.apis[0], c.specs.of(0).expect("spec"));
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0].0, "apis[0].routes[1]");
    }

    #[test]
    fn without_jwt_or_the_flag_nothing_is_derived() {
        let c = cfg("[apis.openapi]\nroutes = true\n");
        let routes = effective(&c.apis[0], c.specs.of(0));
        assert!(
            routes.iter().all(|(_, r)| r.scopes.is_empty()),
            "no JWT auth, no scopes"
        );
        let c = cfg("[[apis.routes]]\npath = \"/orders\"\nmethods = [\"GET\"]\n");
        assert_eq!(effective(&c.apis[0], c.specs.of(0)).len(), 1);
        let drift: Vec<String> = drift(0, &c.apis[0], c.specs.of(0).expect("spec"))
            .into_iter()
            .map(|d| d.1)
            .collect();
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert!(drift[0].starts_with("POST /orders is in the spec"));
        assert!(drift[1].starts_with("GET /orders/{id} is in the spec"));
    }
}

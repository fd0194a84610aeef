//! The catalogue as the admin API (`GET /catalog`, `/catalog/apis/{name}`,
//! `/catalog/teams/{id}`) and `turnpike catalog` show it: one entry per `[[apis]]` of the
//! running config, so it never drifts from what is routed. Listing filters by owner, tag,
//! lifecycle, audience, classification and a text search, in a stable order (name, then
//! version) with keyset pagination (`after` is the last entry's `name/version`).

use crate::config::catalog::{api_ref, CatalogSection};
use crate::config::file::{ApiSection, FileConfig};
use serde_json::{json, Value};

/// What a listing asks for; every filter is optional and they all apply.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub owner: Option<String>,
    pub tag: Option<String>,
    pub lifecycle: Option<String>,
    pub audience: Option<String>,
    pub classification: Option<String>,
    /// Words that must all appear (without case) in the name, title, summary or tags.
    pub q: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// One entry as the API shows it.
pub fn entry(api: &ApiSection) -> Value {
    let c = api.catalog.clone().unwrap_or_default();
    json!({
        "name": api.name,
        "version": api.version,
        "ref": api_ref(&api.name, api.version.as_deref()),
        "base_path": api.base_path,
        "hosts": api.hosts,
        "title": c.title,
        "summary": c.summary,
        "owner": c.owner,
        "kind": c.kind.map(|k| k.as_str()),
        "audience": c.audience.map(|a| a.as_str()),
        "classification": c.classification.map(|k| k.as_str()),
        "tags": c.tags,
        "docs_url": c.docs_url,
        "openapi": c.openapi,
        "lifecycle": c.lifecycle.as_str(),
        "deprecated_at": c.deprecated_at,
        "sunset_at": c.sunset_at,
        "successor": c.successor,
        "migration_url": c.migration_url,
        "auth": api.auth.is_some(),
    })
}

fn matches(api: &ApiSection, c: &CatalogSection, q: &Query) -> bool {
    let same =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
    if !same(&q.owner, c.owner.as_deref())
        || !same(&q.lifecycle, Some(c.lifecycle.as_str()))
        || !same(&q.audience, c.audience.map(|a| a.as_str()))
        || !same(&q.classification, c.classification.map(|k| k.as_str()))
    {
        return false;
    }
    if q.tag.as_ref().is_some_and(|t| !c.tags.contains(t)) {
        return false;
    }
    if let Some(text) = &q.q {
        let hay = format!(
            "{} {} {} {} {}",
            api.name,
            api.version.as_deref().unwrap_or(""),
            c.title.as_deref().unwrap_or(""),
            c.summary.as_deref().unwrap_or(""),
            c.tags.join(" ")
        )
        .to_lowercase();
        if !text
            .split_whitespace()
            .all(|w| hay.contains(&w.to_lowercase()))
        {
            return false;
        }
    }
    true
}

/// The APIs in catalogue order: by name, then version (none first).
fn ordered(file: &FileConfig) -> Vec<&ApiSection> {
    let mut apis: Vec<&ApiSection> = file.apis.iter().collect();
    apis.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    apis
}

/// One page of the listing: `{"items": [...], "next": "name/version" or null}`.
pub fn list(file: &FileConfig, q: &Query) -> Value {
    let limit = q.limit.max(1);
    let mut items = Vec::new();
    let mut next = Value::Null;
    let mut past_cursor = q.after.is_none();
    for api in ordered(file) {
        let me = api_ref(&api.name, api.version.as_deref());
        if !past_cursor {
            past_cursor = q.after.as_deref() == Some(me.as_str());
            continue;
        }
        let c = api.catalog.clone().unwrap_or_default();
        if !matches(api, &c, q) {
            continue;
        }
        if items.len() == limit {
            next = json!(items
                .last()
                .and_then(|i: &Value| i["ref"].as_str())
                .unwrap_or_default());
            break;
        }
        items.push(entry(api));
    }
    json!({ "items": items, "next": next })
}

/// The API `name` at `version` (`None`: the API without a version).
pub fn find<'a>(file: &'a FileConfig, name: &str, version: Option<&str>) -> Option<&'a ApiSection> {
    file.apis
        .iter()
        .find(|a| a.name == name && a.version.as_deref() == version)
}

/// Every version of the API `name`, or None when there is none.
pub fn versions(file: &FileConfig, name: &str) -> Option<Value> {
    let all: Vec<Value> = ordered(file)
        .into_iter()
        .filter(|a| a.name == name)
        .map(entry)
        .collect();
    (!all.is_empty()).then(|| json!({ "name": name, "versions": all }))
}

/// A team, its contacts and the APIs it owns, or None when there is no such team.
pub fn team(file: &FileConfig, id: &str) -> Option<Value> {
    let t = file.teams.get(id)?;
    let owned: Vec<Value> = ordered(file)
        .into_iter()
        .filter(|a| a.catalog.as_ref().and_then(|c| c.owner.as_deref()) == Some(id))
        .map(|a| json!(api_ref(&a.name, a.version.as_deref())))
        .collect();
    Some(json!({
        "id": id,
        "name": t.name,
        "contacts": t.contacts.iter().map(|c| json!({
            "name": c.name, "email": c.email, "url": c.url,
        })).collect::<Vec<_>>(),
        "apis": owned,
    }))
}

/// Where a version stands at `now`: its lifecycle, how the gateway answers it (`served`,
/// `retired`: 410 `api_retired`, `brownout`: 410 `api_brownout` until a time), the headers its
/// answers carry and the days left to its sunset.
pub fn standing(c: &CatalogSection, now: i64) -> Value {
    let compiled = crate::policy::lifecycle::Lifecycle::compile(c, None);
    let (answers, until) = compiled
        .as_ref()
        .map_or(("served", None), |l| l.answers_at(now));
    let sunset = c.sunset_at.as_deref().and_then(crate::clock::parse_rfc3339);
    json!({
        "lifecycle": c.lifecycle.as_str(),
        "answers": answers,
        "brownout_until": until.map(crate::clock::rfc3339),
        "headers": compiled.as_ref().map(|l| l.header_names()).unwrap_or_default(),
        "days_to_sunset": sunset.filter(|s| *s > now).map(|s| (s - now) / 86_400),
    })
}

/// The plans a version's consumers may be on, with the numbers that apply on this API (the
/// plan's, or the API's own `[apis.plans.NAME]`).
fn plans(file: &FileConfig, api: &ApiSection) -> Vec<Value> {
    file.plans
        .iter()
        .map(|(name, p)| {
            let o = api.plans.get(name);
            json!({
                "plan": name,
                "rate": o.and_then(|o| o.rate.clone()).or_else(|| p.rate.clone()),
                "burst": o.and_then(|o| o.burst).or(p.burst),
                "quotas": o.and_then(|o| o.quotas.clone()).unwrap_or_else(|| p.quotas.clone()),
                "overridden": o.is_some(),
            })
        })
        .collect()
}

/// One version in full: its entry, routes, plans, where it stands at `now`, and what the
/// caller measured (`upstream`: the pool's targets and their health; `usage`: the last 24 h).
pub fn detail(
    file: &FileConfig,
    api: &ApiSection,
    now: i64,
    upstream: Value,
    usage: Value,
) -> Value {
    let c = api.catalog.clone().unwrap_or_default();
    let base = api.base_path.trim_end_matches('/');
    let mut routes: Vec<Value> = api
        .routes
        .iter()
        .map(|r| {
            json!({
                "path": format!("{base}{}", r.path),
                "methods": r.methods,
                "scopes": r.scopes,
                "policies": r.policies,
                "static": r.respond.is_some(),
                "catch_all": false,
            })
        })
        .collect();
    if routes.is_empty() {
        // No routes: everything under the base path, every method.
        routes.push(json!({
            "path": if base.is_empty() { "/" } else { base },
            "methods": [], "scopes": [], "policies": [],
            "static": api.respond.is_some(), "catch_all": true,
        }));
    }
    let team = c.owner.as_deref().and_then(|o| team(file, o));
    json!({
        "entry": entry(api),
        "owner_team": team,
        "routes": routes,
        "policies": api.policies,
        "auth": api.auth.as_ref().map(|a| json!({
            "methods": a.methods.iter().map(|m| match m {
                crate::config::file::AuthMethod::ApiKey => "api_key",
                crate::config::file::AuthMethod::Jwt => "jwt",
            }).collect::<Vec<_>>(),
            "allow_groups": a.allow_groups,
        })),
        "plans": if api.auth.is_some() { plans(file, api) } else { Vec::new() },
        "status": standing(&c, now),
        "upstream": upstream,
        "usage_24h": usage,
    })
}

/// The catalogue as a table for the command line.
pub fn table(file: &FileConfig) -> String {
    let mut out = format!(
        "{:<28} {:<11} {:<20} {:<9} {:<13} {}\n",
        "api", "lifecycle", "owner", "audience", "class", "title"
    );
    for api in ordered(file) {
        let c = api.catalog.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<28} {:<11} {:<20} {:<9} {:<13} {}\n",
            api_ref(&api.name, api.version.as_deref()),
            c.lifecycle.as_str(),
            c.owner.as_deref().unwrap_or("-"),
            c.audience.map_or("-", |a| a.as_str()),
            c.classification.map_or("-", |k| k.as_str()),
            c.title.as_deref().unwrap_or(""),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[teams.ops]
name = "Ops"
contacts = [{ email = "ops@example.com" }]

[[apis]]
name = "orders"
version = "v2"
base_path = "/orders/v2"
[apis.respond]
body = "x"
[apis.catalog]
title = "Orders"
summary = "Create and track orders"
owner = "ops"
audience = "partner"
tags = ["erp"]

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders/v1"
[apis.respond]
body = "x"
[apis.catalog]
title = "Orders"
owner = "ops"
lifecycle = "deprecated"
deprecated_at = "2026-01-01T00:00:00Z"
successor = "orders/v2"
tags = ["erp"]

[[apis]]
name = "billing"
base_path = "/billing"
[apis.respond]
body = "x"
[apis.catalog]
title = "Invoices"
audience = "internal"
classification = "confidential"
"#;

    fn refs(v: &Value) -> Vec<String> {
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["ref"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn listing_filters_and_pages_in_name_order() {
        let file: FileConfig = toml::from_str(CFG).expect("config");
        let all = |q: Query| list(&file, &Query { limit: 50, ..q });
        assert_eq!(
            refs(&all(Query::default())),
            ["billing", "orders/v1", "orders/v2"]
        );
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            refs(&all(q))
        };
        assert_eq!(
            q(|q| q.owner = Some("ops".into())),
            ["orders/v1", "orders/v2"]
        );
        assert_eq!(
            q(|q| q.lifecycle = Some("deprecated".into())),
            ["orders/v1"]
        );
        assert_eq!(q(|q| q.audience = Some("internal".into())), ["billing"]);
        assert_eq!(
            q(|q| q.classification = Some("confidential".into())),
            ["billing"]
        );
        assert_eq!(
            q(|q| q.tag = Some("erp".into())),
            ["orders/v1", "orders/v2"]
        );
        assert_eq!(q(|q| q.q = Some("TRACK orders".into())), ["orders/v2"]);
        assert_eq!(q(|q| q.q = Some("invoices".into())), ["billing"]);
        // Pages of one: each names the next.
        let first = list(
            &file,
            &Query {
                limit: 1,
                ..Default::default()
            },
        );
        assert_eq!(refs(&first), ["billing"]);
        assert_eq!(first["next"], "billing");
        let second = list(
            &file,
            &Query {
                limit: 1,
                after: Some("billing".into()),
                ..Default::default()
            },
        );
        assert_eq!(refs(&second), ["orders/v1"]);
        assert_eq!(second["next"], "orders/v1");
        let last = list(
            &file,
            &Query {
                limit: 1,
                after: Some("orders/v2".into()),
                ..Default::default()
            },
        );
        assert_eq!(refs(&last), Vec::<String>::new());
        assert_eq!(last["next"], Value::Null);
    }

    #[test]
    fn versions_and_teams() {
        let file: FileConfig = toml::from_str(CFG).expect("config");
        let v = versions(&file, "orders").expect("orders");
        assert_eq!(v["versions"][0]["version"], "v1");
        assert_eq!(v["versions"][0]["lifecycle"], "deprecated");
        assert_eq!(v["versions"][1]["audience"], "partner");
        assert!(versions(&file, "nope").is_none());
        let t = team(&file, "ops").expect("team");
        assert_eq!(t["apis"], json!(["orders/v1", "orders/v2"]));
        assert_eq!(t["contacts"][0]["email"], "ops@example.com");
        assert!(team(&file, "nobody").is_none());
        assert!(table(&file)
            .lines()
            .nth(2)
            .is_some_and(|l| l.starts_with("orders/v1") && l.contains("deprecated")));
    }
}

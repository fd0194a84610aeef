//! Admin routes over the catalogue: `GET /catalog` (filters and keyset pagination),
//! `GET /catalog/apis/{name}` (every version), `GET /catalog/teams/{id}`, and
//! `GET /catalog/shadow` (requests that matched no route, by path shape),
//! `GET /catalog/apis/{name}/{version}` (one version in full, with its upstream's health and
//! the last 24 hours of traffic), `GET /catalog/apis/{name}/{version}/consumers?since=30d`, who still calls an API version
//! (`-` as the version of an API without one), from the usage rollups with the ones waiting in
//! memory written first.

use super::{blocking, json_response, problem, query_param, Answer};
use crate::analytics::callers;
use crate::reply::Code;
use crate::state::Shared;
use crate::store::usage::{DAY, HOUR};
use serde_json::json;
use std::sync::Arc;

/// The window when `since` is not given.
const DEFAULT_SINCE: i64 = 30 * 86_400;

pub async fn handle(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    query: Option<&str>,
    rid: &str,
) -> Answer {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        ("GET", ["catalog"]) => list(shared, query, rid),
        ("GET", ["catalog", "shadow"]) => shadow(shared, query, rid).await,
        (_, ["catalog", "shadow"]) => problem(Code::MethodNotAllowed, "use GET", rid),
        ("GET", ["catalog", "apis", name]) => {
            match crate::catalogue::versions(&shared.snapshot().file, name) {
                Some(v) => json_response(200, v, "application/json", rid),
                None => problem(
                    Code::NotFound,
                    &format!("no API {name:?} in the catalogue"),
                    rid,
                ),
            }
        }
        ("GET", ["catalog", "teams", id]) => {
            match crate::catalogue::team(&shared.snapshot().file, id) {
                Some(v) => json_response(200, v, "application/json", rid),
                None => problem(Code::NotFound, &format!("no team {id:?}"), rid),
            }
        }
        ("GET", ["catalog", "apis", name, version]) => detail(shared, name, version, rid).await,
        (
            _,
            ["catalog"]
            | ["catalog", "apis", _]
            | ["catalog", "apis", _, _]
            | ["catalog", "teams", _],
        ) => problem(Code::MethodNotAllowed, "use GET", rid),
        ("GET", ["catalog", "apis", name, version, "openapi.json"]) => {
            openapi(shared, name, version, rid)
        }
        (_, ["catalog", "apis", _, _, "openapi.json"]) => {
            problem(Code::MethodNotAllowed, "use GET", rid)
        }
        ("GET", ["catalog", "apis", name, version, "consumers"]) => {
            consumers(shared, name, version, query, rid).await
        }
        (_, ["catalog", "apis", _, _, "consumers"]) => {
            problem(Code::MethodNotAllowed, "use GET", rid)
        }
        _ => problem(Code::RouteNotFound, "no such admin route", rid),
    }
}

fn list(shared: &Arc<Shared>, query: Option<&str>, rid: &str) -> Answer {
    let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => crate::catalogue::DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=crate::catalogue::MAX_LIMIT).contains(&n) => n,
        Some(_) => return problem(Code::InvalidRequest, "limit must be from 1 to 500", rid),
    };
    let q = crate::catalogue::Query {
        owner: query_param(query, "owner"),
        tag: query_param(query, "tag"),
        lifecycle: query_param(query, "lifecycle"),
        audience: query_param(query, "audience"),
        classification: query_param(query, "classification"),
        q: query_param(query, "q"),
        after: query_param(query, "after"),
        limit,
    };
    let body = crate::catalogue::list(&shared.snapshot().file, &q);
    json_response(200, body, "application/json", rid)
}

/// 503 `store_unavailable` for a usage read that failed (logged as `what`).
fn unreadable(what: &str, e: &crate::store::StoreError, rid: &str) -> Answer {
    log::warn!("{what}: {e}");
    problem(
        Code::StoreUnavailable,
        "the usage store cannot be read right now",
        rid,
    )
}

/// The API `name` at `version` (`-`: the API without a version), or the 404 answer.
fn version_of<'a>(
    snapshot: &'a crate::state::Snapshot,
    name: &str,
    version: &str,
    rid: &str,
) -> Result<&'a crate::config::file::ApiSection, Box<Answer>> {
    let wanted = Some(version).filter(|v| *v != "-");
    crate::catalogue::find(&snapshot.file, name, wanted).ok_or_else(|| {
        Box::new(problem(
            Code::NotFound,
            &format!("no API {name}/{version} in the running config (\"-\" for no version)"),
            rid,
        ))
    })
}

/// `GET /catalog/apis/{name}/{version}/openapi.json`: the version's OpenAPI document as one
/// JSON document (sibling files bundled in), with `servers` set to `[catalog] public_url` plus
/// the API's base path when that is configured.
fn openapi(shared: &Arc<Shared>, name: &str, version: &str, rid: &str) -> Answer {
    let snapshot = shared.snapshot();
    let file = &snapshot.file;
    let wanted = Some(version).filter(|v| *v != "-");
    let Some(i) = file
        .apis
        .iter()
        .position(|a| a.name == name && a.version.as_deref() == wanted)
    else {
        return match version_of(&snapshot, name, version, rid) {
            Ok(_) => problem(Code::NotFound, "no such API", rid),
            Err(answer) => *answer,
        };
    };
    let Some(spec) = file.specs.of(i) else {
        return problem(
            Code::NotFound,
            &format!("{name}/{version} has no OpenAPI document ([apis.catalog] openapi)"),
            rid,
        );
    };
    let server = file
        .catalog
        .public_url
        .as_deref()
        .map(|u| format!("{}{}", u.trim_end_matches('/'), file.apis[i].base_path));
    let doc = crate::openapi::bundle::bundled(spec, server.as_deref());
    json_response(200, doc, "application/json", rid)
}

/// `GET /catalog/apis/{name}/{version}`: the entry, routes, plans, where it stands, its
/// upstream's health and the last 24 hours from the usage rollups (hour rows, so the window
/// starts at the top of the hour 24 hours ago).
async fn detail(shared: &Arc<Shared>, name: &str, version: &str, rid: &str) -> Answer {
    let snapshot = shared.snapshot();
    let api = match version_of(&snapshot, name, version, rid) {
        Ok(api) => api,
        Err(answer) => return *answer,
    };
    let now = crate::clock::now();
    let upstream = api
        .upstream
        .as_deref()
        .and_then(|u| snapshot.pools.get(u))
        .map_or(serde_json::Value::Null, |p| {
            super::pool_json(p, std::time::Instant::now())
        });
    let from = (now - DAY) - (now - DAY).rem_euclid(HOUR);
    let (s, api_name) = (shared.clone(), api.name.clone());
    let v = api.version.clone().unwrap_or_default();
    let totals = blocking(move || {
        s.analytics.flush_usage(s.identity.store())?;
        s.usage().api_totals(HOUR, from, now + 1, &api_name, &v)
    })
    .await;
    let usage = match totals {
        Ok(t) => json!({
            "scope": shared.usage().scope(),
            "from": crate::clock::rfc3339(from),
            "to": crate::clock::rfc3339(now),
            "requests": t.requests,
            "errors": t.errors,
            "error_rate": if t.requests == 0 { 0.0 } else { t.errors as f64 / t.requests as f64 },
            "p95_ms": t.latency.quantile(0.95).map(|us| (us / 10.0).round() / 100.0),
        }),
        Err(e) => return unreadable("catalogue usage read failed", &e, rid),
    };
    let body = crate::catalogue::detail(&snapshot.file, api, now, upstream, usage);
    json_response(200, body, "application/json", rid)
}

/// `GET /catalog/shadow?since=7d&host=&limit=100`: requests that matched no route, by host,
/// method and path shape, most requests first, with first and last seen and the top callers
/// (the pending ones written first). Days are whole UTC days: the window starts at the
/// beginning of its first day.
async fn shadow(shared: &Arc<Shared>, query: Option<&str>, rid: &str) -> Answer {
    let window = match since_or(query_param(query, "since").as_deref(), 7 * DAY) {
        Ok(w) => w,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1_000).contains(&n) => n,
        Some(_) => return problem(Code::InvalidRequest, "limit must be from 1 to 1000", rid),
    };
    let host = query_param(query, "host").map(|h| crate::analytics::shadow::host_of(&h));
    let now = crate::clock::now();
    let from = (now - window) - (now - window).rem_euclid(DAY);
    let s = shared.clone();
    let retention = i64::try_from(shared.snapshot().file.catalog.shadow_retention.0.as_secs())
        .unwrap_or(i64::MAX / 2);
    let found = blocking(move || {
        let store = s.identity.store();
        s.analytics.flush_usage(store)?;
        if let Some(c) = s.cluster.as_deref() {
            let fleet = |e: crate::cluster::CallError| {
                crate::store::StoreError::Redis(format!("fleet shadow endpoints: {e}"))
            };
            use crate::cluster::shadow::{count, list};
            let shapes = list(c, from, host.as_deref(), limit, retention, now).map_err(fleet)?;
            let (tracked, evicted) = count(c).map_err(fleet)?;
            return Ok((shapes, tracked, Some(evicted)));
        }
        store.read(|c| {
            Ok((
                crate::store::shadow::list(c, from, host.as_deref(), limit)?,
                crate::store::shadow::count(c)?,
                None,
            ))
        })
    })
    .await;
    let (shapes, tracked, fleet_evicted) = match found {
        Ok(f) => f,
        Err(e) => return unreadable("shadow endpoints read failed", &e, rid),
    };
    let snapshot = shared.snapshot();
    let rfc = crate::clock::rfc3339;
    let items: Vec<serde_json::Value> = shapes
        .iter()
        .map(|s| {
            json!({
                "host": s.host,
                "method": s.method,
                "shape": s.shape,
                "first_seen": rfc(s.first_seen),
                "last_seen": rfc(s.last_seen),
                "requests": s.requests,
                "top_callers": s.top.iter().map(|(who, n)| {
                    let (kind, id) = who.split_once(':').unwrap_or(("unknown", ""));
                    json!({ "kind": kind, "id": id, "requests": n })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let m = &shared.analytics.metrics;
    let body = json!({
        "from": rfc(from),
        "to": rfc(now),
        "enabled": snapshot.file.catalog.shadow,
        "scope": shared.usage().scope(),
        "shapes_tracked": tracked,
        "shapes_cap": snapshot.file.catalog.shadow_shapes,
        // The fleet's count with a fleet (this node's is in its metrics), else this node's.
        "evicted_total": fleet_evicted.unwrap_or_else(|| m.shadow_evicted.get()),
        "items": items,
    });
    json_response(200, body, "application/json", rid)
}

/// `since` as seconds: a duration such as `30d` or `12h`, at most 400 days.
pub fn since_seconds(text: Option<&str>) -> Result<i64, String> {
    since_or(text, DEFAULT_SINCE)
}

fn since_or(text: Option<&str>, default: i64) -> Result<i64, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = crate::config::units::parse_duration(text)?;
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if secs == 0 || secs > callers::MAX_WINDOW {
        return Err("since must be from 1s to 400d".into());
    }
    Ok(secs)
}

async fn consumers(
    shared: &Arc<Shared>,
    name: &str,
    version: &str,
    query: Option<&str>,
    rid: &str,
) -> Answer {
    let snapshot = shared.snapshot();
    let api = match version_of(&snapshot, name, version, rid) {
        Ok(api) => api,
        Err(answer) => return *answer,
    };
    let window = match since_seconds(query_param(query, "since").as_deref()) {
        Ok(w) => w,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    let version = api.version.clone().unwrap_or_default();
    let (s, api_name, v) = (shared.clone(), api.name.clone(), version.clone());
    let now = crate::clock::now();
    let report = blocking(move || {
        let store = s.identity.store();
        s.analytics.flush_usage(store)?;
        let mut report = callers::gather(&s.usage(), &api_name, &v, window, now)?;
        report.notices = store.read(|c| crate::store::notices::of_api(c, &api_name, &v))?;
        Ok(report)
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => return unreadable("callers report failed", &e, rid),
    };
    let lifecycle = callers::lifecycle(api.catalog.as_ref());
    let contacts_of = |id: &str| {
        callers::contacts(
            shared
                .identity
                .consumer(&snapshot.identities, id)
                .as_deref(),
        )
    };
    let body = callers::to_json(&api.name, &version, &lifecycle, &report, contacts_of);
    json_response(200, body, "application/json", rid)
}

//! Admin routes over the catalogue: `GET /catalog` (filters and keyset pagination),
//! `GET /catalog/apis/{name}` (every version), `GET /catalog/teams/{id}`, and
//! `GET /catalog/apis/{name}/{version}/consumers?since=30d`, who still calls an API version
//! (`-` as the version of an API without one), from the usage rollups with the ones waiting in
//! memory written first.

use super::{blocking, json_response, problem, query_param, Answer};
use crate::analytics::callers;
use crate::reply::Code;
use crate::state::Shared;
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
        (_, ["catalog"] | ["catalog", "apis", _] | ["catalog", "teams", _]) => {
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

/// `since` as seconds: a duration such as `30d` or `12h`, at most 400 days.
pub fn since_seconds(text: Option<&str>) -> Result<i64, String> {
    let Some(text) = text else {
        return Ok(DEFAULT_SINCE);
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
    let wanted = Some(version).filter(|v| *v != "-");
    let Some(api) = crate::catalogue::find(&snapshot.file, name, wanted) else {
        return problem(
            Code::NotFound,
            &format!("no API {name}/{version} in the running config (\"-\" for no version)"),
            rid,
        );
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
        store.read(|c| callers::gather(c, &api_name, &v, window, now))
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            log::warn!("callers report failed: {e}");
            return problem(
                Code::StoreUnavailable,
                "the usage store cannot be read right now",
                rid,
            );
        }
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

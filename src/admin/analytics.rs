//! Admin routes over analytics: `GET /metrics` (Prometheus text), `GET /analytics/usage`
//! (JSON, or CSV with `Accept: text/csv`), `GET /analytics/top` and `GET /analytics/alerts`.

use super::{blocking, json_response, problem, problem_or_json, query_param as param, Answer};
use crate::analytics::report::{self, Ask};
use crate::reply::Code;
use crate::state::Shared;
use crate::store::usage::{Filter, UsageRow};
use serde_json::json;
use std::sync::Arc;

fn ask(query: Option<&str>) -> Ask {
    Ask {
        api: param(query, "api"),
        consumer: param(query, "consumer"),
        from: param(query, "from"),
        to: param(query, "to"),
        granularity: param(query, "granularity"),
    }
}

pub fn metrics(shared: &Shared, rid: &str) -> Answer {
    let body = shared.analytics.metrics.render(shared);
    problem_or_json(200, body, "text/plain; version=0.0.4; charset=utf-8", rid)
}

/// The rows of a question, with the rollups waiting in memory written first (both on the
/// blocking pool).
async fn rows(shared: &Arc<Shared>, f: &Filter, rid: &str) -> Result<Vec<UsageRow>, Box<Answer>> {
    let (s, filter) = (shared.clone(), f.clone());
    let read = blocking(move || {
        s.analytics.flush_usage(s.identity.store())?;
        s.usage().query(&filter, MAX_ROWS + 1)
    })
    .await;
    let rows = read.map_err(|e| {
        log::warn!("usage query failed: {e}");
        Box::new(problem(
            Code::StoreUnavailable,
            "the usage store cannot be read right now",
            rid,
        ))
    })?;
    if rows.len() > MAX_ROWS {
        return Err(Box::new(problem(
            Code::InvalidRequest,
            &format!("more than {MAX_ROWS} rows: narrow the range or the filter, or ask for a coarser granularity"),
            rid,
        )));
    }
    Ok(rows)
}

/// The most rows one question may read.
const MAX_ROWS: usize = 100_000;

pub async fn usage(shared: &Arc<Shared>, query: Option<&str>, accept: &str, rid: &str) -> Answer {
    let f = match ask(query).filter(crate::clock::now(), 3_600, false) {
        Ok(f) => f,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    let rows = match rows(shared, &f, rid).await {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if accept.contains("text/csv") {
        let body = report::usage_csv(&rows).into_bytes();
        return problem_or_json(200, body, "text/csv; charset=utf-8", rid);
    }
    let mut body = report::usage_json(&f, &rows);
    body["scope"] = json!(shared.usage().scope());
    json_response(200, body, "application/json", rid)
}

pub async fn top(shared: &Arc<Shared>, query: Option<&str>, rid: &str) -> Answer {
    let by = param(query, "by").unwrap_or_else(|| "consumer".into());
    if by != "consumer" && by != "api" {
        return problem(Code::InvalidRequest, "by must be consumer or api", rid);
    }
    let metric = param(query, "metric").unwrap_or_else(|| "requests".into());
    if !matches!(metric.as_str(), "requests" | "errors" | "latency") {
        return problem(
            Code::InvalidRequest,
            "metric must be requests, errors or latency",
            rid,
        );
    }
    let limit = match param(query, "limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return problem(Code::InvalidRequest, "limit must be from 1 to 1000", rid),
    };
    let f = match ask(query).filter(crate::clock::now(), 86_400, true) {
        Ok(f) => f,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    match rows(shared, &f, rid).await {
        Ok(rows) => {
            let mut body = report::top_json(&f, &rows, &by, &metric, limit);
            body["scope"] = json!(shared.usage().scope());
            json_response(200, body, "application/json", rid)
        }
        Err(answer) => *answer,
    }
}

pub fn alerts(shared: &Shared, query: Option<&str>, rid: &str) -> Answer {
    let since = match param(query, "since").map(|s| report::parse_time(&s)) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            return problem(
                Code::InvalidRequest,
                "since must be RFC 3339 or Unix seconds",
                rid,
            )
        }
    };
    let list: Vec<_> = shared
        .analytics
        .alerts()
        .into_iter()
        .filter(|a| {
            since.is_none_or(|s| crate::clock::parse_rfc3339(&a.time).is_some_and(|t| t >= s))
        })
        .collect();
    json_response(200, json!({ "alerts": list }), "application/json", rid)
}

//! Admin API for consumers and their API keys, and the audit log listing:
//!
//! - `POST /consumers`, `GET /consumers?limit=&after=`, `GET|PATCH|DELETE /consumers/{id}`
//! - `POST|GET /consumers/{id}/keys`, `POST /consumers/{id}/keys/{key_id}/rotate`,
//!   `DELETE /consumers/{id}/keys/{key_id}`
//! - `GET /audit?limit=&after=`
//!
//! Bodies are JSON objects with known fields only. Every change goes to the store in one
//! transaction with its audit entry, then to the in-memory index before the answer is sent,
//! so a revoked key stops working on every worker when the DELETE returns. A key's secret
//! appears exactly once: in the answer that created it.

use super::{blocking, json_response, problem, query_param, Answer};
use crate::config::file::ConsumerSection;
use crate::config::identity::{is_consumer_id, is_label};
use crate::identity::records::Records;
use crate::identity::Identity;
use crate::reply::Code;
use crate::state::Shared;
use crate::store::consumers::{self as rows, ConsumerPatch, NewConsumer};
use crate::store::StoreError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

/// One admin request for this module, already authorised.
pub struct Call<'a> {
    pub method: &'a str,
    pub segments: Vec<&'a str>,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub actor: &'a str,
    pub rid: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConsumer {
    id: String,
    plan: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchConsumer {
    #[serde(default, deserialize_with = "present")]
    plan: Option<Option<String>>,
    groups: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    metadata: Option<Map<String, Value>>,
}

/// Tells `"plan": null` (clear it) from a missing `plan` (leave it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    label: Option<String>,
    /// RFC 3339 time.
    expires_at: Option<String>,
    /// Or a duration from now, e.g. "90d".
    expires_in: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    /// How long the old key keeps working (default `[keys] rotation_grace`).
    grace: Option<String>,
}

fn page_limit(query: Option<&str>) -> Result<i64, String> {
    match query_param(query, "limit") {
        None => Ok(DEFAULT_PAGE),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(format!("limit must be a number from 1 to {MAX_PAGE}")),
        },
    }
}

fn body<'a, T: Deserialize<'a> + Default>(bytes: &'a [u8], empty_ok: bool) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err("a JSON object is required".into())
        };
    }
    serde_json::from_slice(bytes).map_err(|e| super::json_error(&e))
}

fn check_labels(what: &str, values: &[String]) -> Result<(), String> {
    for v in values {
        if !is_label(v) {
            return Err(format!(
                "{what}: {v:?} must be visible ASCII without ',', '\"' or '\\' (at most 128)"
            ));
        }
    }
    Ok(())
}

fn store_error(e: StoreError, rid: &str) -> Answer {
    match e {
        StoreError::NotFound(what) => problem(Code::NotFound, &format!("{what} not found"), rid),
        StoreError::Conflict(why) => problem(Code::Conflict, &why, rid),
        e @ (StoreError::Redis(_) | StoreError::RedisCall(_)) => {
            log::error!("admin store operation failed: {e}");
            problem(
                Code::StoreUnavailable,
                "the shared store (redis) did not answer; look before trying again (the change may or may not have been made)",
                rid,
            )
        }
        other => {
            log::error!("admin store operation failed: {other}");
            problem(
                Code::InternalError,
                "the store could not complete the change",
                rid,
            )
        }
    }
}

/// Runs one of the identity's operations (`identity::ops`) off the async workers.
async fn change<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Identity) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let identity = shared.identity.clone();
    blocking(move || f(&identity)).await
}

/// Runs a read of the store off the async workers.
async fn read<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(Records<'_>) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let identity = shared.identity.clone();
    blocking(move || f(identity.records())).await
}

fn consumer_json(c: &rows::ConsumerRow, source: &str) -> Value {
    json!({
        "id": c.id,
        "plan": c.plan,
        "groups": c.groups,
        "scopes": c.scopes,
        "metadata": c.metadata,
        "source": source,
        "created_at": crate::clock::rfc3339(c.created_at),
        "updated_at": crate::clock::rfc3339(c.updated_at),
    })
}

/// A consumer of the config file, with its key labels (never digests).
fn config_consumer_value(c: &ConsumerSection) -> Value {
    json!({
        "id": c.id,
        "plan": c.plan,
        "groups": c.groups,
        "scopes": c.scopes,
        "metadata": serde_json::to_value(&c.metadata).unwrap_or(Value::Null),
        "source": "config",
        "keys": c.keys.iter().map(|k| json!({"label": k.label, "expires_at": k.expires_at})).collect::<Vec<_>>(),
    })
}

fn config_consumer_json(shared: &Shared, id: &str) -> Option<Value> {
    let snapshot = shared.snapshot();
    let c = snapshot.file.consumers.iter().find(|c| c.id == id)?;
    Some(config_consumer_value(c))
}

/// Once the config has plans, a consumer's plan must be one of them, and a consumer needs one
/// unless `[consumer_defaults] plan` names the plan of consumers without one.
fn known_plan(shared: &Shared, plan: Option<&str>) -> Result<(), String> {
    crate::config::identity::plan_for_new_consumer(&shared.snapshot().file, plan)
        .map_err(|why| format!("plan: {why}"))
}

fn is_config_consumer(shared: &Shared, id: &str) -> bool {
    shared.snapshot().identities.consumers.contains_key(id)
}

fn read_only(id: &str, rid: &str) -> Answer {
    problem(
        Code::Conflict,
        &format!("consumer {id} is defined in the config file: change it there"),
        rid,
    )
}

pub async fn handle(shared: &Arc<Shared>, call: Call<'_>) -> Answer {
    let rid = call.rid;
    match (call.method, call.segments.as_slice()) {
        ("GET", ["audit"]) => list_audit(shared, &call).await,
        ("POST", ["consumers"]) => create_consumer(shared, &call).await,
        ("GET", ["consumers"]) => list_consumers(shared, &call).await,
        ("GET", ["consumers", id]) => get_consumer(shared, id, rid).await,
        ("PATCH", ["consumers", id]) => patch_consumer(shared, id, &call).await,
        ("DELETE", ["consumers", id]) => delete_consumer(shared, id, &call).await,
        ("POST", ["consumers", id, "keys"]) => create_key(shared, id, &call).await,
        ("GET", ["consumers", id, "keys"]) => list_keys(shared, id, rid).await,
        ("POST", ["consumers", id, "keys", key_id, "rotate"]) => {
            rotate_key(shared, id, key_id, &call).await
        }
        ("DELETE", ["consumers", id, "keys", key_id]) => {
            revoke_key(shared, id, key_id, &call).await
        }
        ("GET", ["consumers", id, "usage"]) => usage(shared, id, rid),
        ("POST", ["consumers", id, "usage", "reset"]) => reset_usage(shared, id, &call).await,
        (_, ["audit"]) => problem(Code::MethodNotAllowed, "use GET", rid),
        (_, ["consumers"]) => problem(Code::MethodNotAllowed, "use GET or POST", rid),
        (_, ["consumers", _]) => problem(Code::MethodNotAllowed, "use GET, PATCH or DELETE", rid),
        (_, ["consumers", _, "keys"]) => problem(Code::MethodNotAllowed, "use GET or POST", rid),
        (_, ["consumers", _, "keys", _]) => problem(Code::MethodNotAllowed, "use DELETE", rid),
        (_, ["consumers", _, "keys", _, "rotate"] | ["consumers", _, "usage", "reset"]) => {
            problem(Code::MethodNotAllowed, "use POST", rid)
        }
        (_, ["consumers", _, "usage"]) => problem(Code::MethodNotAllowed, "use GET", rid),
        _ => problem(Code::RouteNotFound, "no such admin route", rid),
    }
}

async fn create_consumer(shared: &Arc<Shared>, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    let input: CreateConsumer = match serde_json::from_slice(call.body) {
        Ok(v) => v,
        Err(e) => return problem(Code::InvalidRequest, &super::json_error(&e), rid),
    };
    if !is_consumer_id(&input.id) {
        return problem(
            Code::InvalidRequest,
            "id: letters, digits, '-', '_', '.', '@' and ':' (1 to 128)",
            rid,
        );
    }
    if let Err(e) = check_labels("groups", &input.groups)
        .and(check_labels("scopes", &input.scopes))
        .and(check_labels("plan", input.plan.as_slice()))
    {
        return problem(Code::InvalidRequest, &e, rid);
    }
    if let Err(e) = known_plan(shared, input.plan.as_deref()) {
        return problem(Code::InvalidRequest, &e, rid);
    }
    if is_config_consumer(shared, &input.id) {
        return problem(
            Code::Conflict,
            &format!("consumer {} is defined in the config file", input.id),
            rid,
        );
    }
    let actor = call.actor.to_string();
    let result = change(shared, move |identity| {
        identity.create_consumer(
            &actor,
            NewConsumer {
                id: input.id,
                plan: input.plan,
                groups: input.groups,
                scopes: input.scopes,
                metadata: input.metadata,
            },
        )
    })
    .await;
    match result {
        Ok(row) => json_response(201, consumer_json(&row, "store"), "application/json", rid),
        Err(e) => store_error(e, rid),
    }
}

async fn list_consumers(shared: &Arc<Shared>, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    let limit = match page_limit(call.query) {
        Ok(l) => l,
        Err(e) => return problem(Code::InvalidRequest, &e, rid),
    };
    let after = query_param(call.query, "after").unwrap_or_default();
    let after_db = after.clone();
    let stored = match read(shared, move |r| r.list_consumers(&after_db, limit)).await {
        Ok(r) => r,
        Err(e) => return store_error(e, rid),
    };
    // Merge the config's consumers in, by id, so one cursor pages through both.
    let snapshot = shared.snapshot();
    let mut items: Vec<(String, Value)> = stored
        .iter()
        .map(|c| (c.id.clone(), consumer_json(c, "store")))
        .collect();
    for c in snapshot.file.consumers.iter().filter(|c| c.id > after) {
        items.push((c.id.clone(), config_consumer_value(c)));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.truncate(limit as usize);
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.0.clone()))
        .flatten();
    json_response(
        200,
        json!({ "items": items.into_iter().map(|i| i.1).collect::<Vec<_>>(), "next": next }),
        "application/json",
        rid,
    )
}

async fn get_consumer(shared: &Arc<Shared>, id: &str, rid: &str) -> Answer {
    if let Some(v) = config_consumer_json(shared, id) {
        return json_response(200, v, "application/json", rid);
    }
    let key = id.to_string();
    match read(shared, move |r| r.get_consumer(&key)).await {
        Ok(Some(row)) => json_response(200, consumer_json(&row, "store"), "application/json", rid),
        Ok(None) => problem(Code::NotFound, &format!("consumer {id} not found"), rid),
        Err(e) => store_error(e, rid),
    }
}

async fn patch_consumer(shared: &Arc<Shared>, id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    if is_config_consumer(shared, id) {
        return read_only(id, rid);
    }
    let input: PatchConsumer = match serde_json::from_slice(call.body) {
        Ok(v) => v,
        Err(e) => return problem(Code::InvalidRequest, &super::json_error(&e), rid),
    };
    if let Err(e) = check_labels("groups", input.groups.as_deref().unwrap_or_default())
        .and(check_labels(
            "scopes",
            input.scopes.as_deref().unwrap_or_default(),
        ))
        .and(check_labels(
            "plan",
            input.plan.clone().flatten().as_slice(),
        ))
        .and(match &input.plan {
            Some(plan) => known_plan(shared, plan.as_deref()),
            None => Ok(()),
        })
    {
        return problem(Code::InvalidRequest, &e, rid);
    }
    let actor = call.actor.to_string();
    let key = id.to_string();
    let result = change(shared, move |identity| {
        identity.update_consumer(
            &actor,
            &key,
            ConsumerPatch {
                plan: input.plan,
                groups: input.groups,
                scopes: input.scopes,
                metadata: input.metadata,
            },
        )
    })
    .await;
    match result {
        Ok(row) => json_response(200, consumer_json(&row, "store"), "application/json", rid),
        Err(e) => store_error(e, rid),
    }
}

async fn delete_consumer(shared: &Arc<Shared>, id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    if is_config_consumer(shared, id) {
        return read_only(id, rid);
    }
    let actor = call.actor.to_string();
    let key = id.to_string();
    let result = change(shared, move |identity| {
        identity.delete_consumer(&actor, &key)
    })
    .await;
    match result {
        Ok(()) => super::no_content(rid),
        Err(e) => store_error(e, rid),
    }
}

async fn create_key(shared: &Arc<Shared>, id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    if is_config_consumer(shared, id) {
        return read_only(id, rid);
    }
    let input: CreateKey = match body(call.body, true) {
        Ok(v) => v,
        Err(e) => return problem(Code::InvalidRequest, &e, rid),
    };
    if let Some(label) = &input.label {
        if label.is_empty() || label.len() > 200 || label.chars().any(char::is_control) {
            return problem(
                Code::InvalidRequest,
                "label: 1 to 200 characters, no control characters",
                rid,
            );
        }
    }
    let now = crate::clock::now();
    let expires_at = match (&input.expires_at, &input.expires_in) {
        (Some(_), Some(_)) => {
            return problem(
                Code::InvalidRequest,
                "give expires_at or expires_in, not both",
                rid,
            )
        }
        (Some(t), None) => match crate::clock::parse_rfc3339(t) {
            Some(t) if t > now => Some(t),
            Some(_) => return problem(Code::InvalidRequest, "expires_at is in the past", rid),
            None => {
                return problem(
                    Code::InvalidRequest,
                    "expires_at: expected an RFC 3339 time such as 2027-01-01T00:00:00Z",
                    rid,
                )
            }
        },
        (None, Some(d)) => match crate::config::units::parse_duration(d) {
            Ok(d) if !d.is_zero() => Some(now.saturating_add(d.as_secs() as i64)),
            _ => {
                return problem(
                    Code::InvalidRequest,
                    "expires_in: expected a duration such as \"90d\"",
                    rid,
                )
            }
        },
        (None, None) => None,
    };
    let actor = call.actor.to_string();
    let key = id.to_string();
    let result = change(shared, move |identity| {
        identity.create_key(&actor, &key, input.label.as_deref(), expires_at)
    })
    .await;
    match result {
        Ok((row, new)) => {
            let mut v = row.summary(now);
            v["key"] = json!(new.secret);
            json_response(201, v, "application/json", rid)
        }
        Err(e) => store_error(e, rid),
    }
}

async fn list_keys(shared: &Arc<Shared>, id: &str, rid: &str) -> Answer {
    if let Some(v) = config_consumer_json(shared, id) {
        return json_response(
            200,
            json!({ "items": v["keys"], "source": "config" }),
            "application/json",
            rid,
        );
    }
    let key = id.to_string();
    let result = read(shared, move |r| {
        if r.get_consumer(&key)?.is_none() {
            return Err(StoreError::NotFound(format!("consumer {key}")));
        }
        r.list_keys(&key)
    })
    .await;
    let now = crate::clock::now();
    match result {
        Ok(keys) => json_response(
            200,
            json!({ "items": keys.iter().map(|k| k.summary(now)).collect::<Vec<_>>() }),
            "application/json",
            rid,
        ),
        Err(e) => store_error(e, rid),
    }
}

async fn rotate_key(shared: &Arc<Shared>, id: &str, key_id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    if is_config_consumer(shared, id) {
        return read_only(id, rid);
    }
    let input: RotateKey = match body(call.body, true) {
        Ok(v) => v,
        Err(e) => return problem(Code::InvalidRequest, &e, rid),
    };
    let grace = match input
        .grace
        .as_deref()
        .map(crate::config::units::parse_duration)
    {
        None => shared.snapshot().file.keys.rotation_grace.0,
        Some(Ok(d)) => d,
        Some(Err(_)) => {
            return problem(
                Code::InvalidRequest,
                "grace: expected a duration such as \"1h\" (\"0s\" ends the old key now)",
                rid,
            )
        }
    };
    let actor = call.actor.to_string();
    let (cid, kid) = (id.to_string(), key_id.to_string());
    let result = change(shared, move |identity| {
        identity.rotate_key(&actor, &cid, &kid, grace.as_secs() as i64)
    })
    .await;
    let now = crate::clock::now();
    match result {
        Ok((row, new, old)) => {
            let mut v = row.summary(now);
            v["key"] = json!(new.secret);
            v["replaces"] = old.summary(now);
            json_response(201, v, "application/json", rid)
        }
        Err(e) => store_error(e, rid),
    }
}

async fn revoke_key(shared: &Arc<Shared>, id: &str, key_id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    if is_config_consumer(shared, id) {
        return read_only(id, rid);
    }
    let actor = call.actor.to_string();
    let (cid, kid) = (id.to_string(), key_id.to_string());
    let result = change(shared, move |identity| {
        identity.revoke_key(&actor, &cid, &kid).map(|_| ())
    })
    .await;
    match result {
        Ok(()) => super::no_content(rid),
        Err(e) => store_error(e, rid),
    }
}

async fn list_audit(shared: &Arc<Shared>, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    let limit = match page_limit(call.query) {
        Ok(l) => l,
        Err(e) => return problem(Code::InvalidRequest, &e, rid),
    };
    let after = match query_param(call.query, "after").map(|v| v.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => return problem(Code::InvalidRequest, "after must be a sequence number", rid),
    };
    match read(shared, move |r| r.audit_page(after, limit)).await {
        Ok(entries) => {
            let next = (entries.len() as i64 == limit)
                .then(|| entries.last().map(|e| e.seq))
                .flatten();
            let items: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let mut v = json!(e);
                    v["at"] = json!(crate::clock::rfc3339(e.at));
                    v
                })
                .collect();
            json_response(
                200,
                json!({ "items": items, "next": next }),
                "application/json",
                rid,
            )
        }
        Err(e) => store_error(e, rid),
    }
}

/// The consumer's counts and what is left, in every scope it is counted in.
fn usage(shared: &Arc<Shared>, id: &str, rid: &str) -> Answer {
    let snapshot = shared.snapshot();
    match shared.identity.consumer(&snapshot.identities, id) {
        Some(c) => json_response(
            200,
            crate::limits::usage::consumer_usage(shared, &snapshot, &c),
            "application/json",
            rid,
        ),
        None => problem(Code::NotFound, &format!("consumer {id} not found"), rid),
    }
}

/// Forgets the consumer's quota counts (all scopes), in memory and in the store; audited.
async fn reset_usage(shared: &Arc<Shared>, id: &str, call: &Call<'_>) -> Answer {
    let rid = call.rid;
    let snapshot = shared.snapshot();
    if shared.identity.consumer(&snapshot.identities, id).is_none() {
        return problem(Code::NotFound, &format!("consumer {id} not found"), rid);
    }
    let shared2 = shared.clone();
    let actor = call.actor.to_string();
    let cid = id.to_string();
    let result = blocking(move || {
        let _no_flush = shared2.limiter.persist_lock();
        let n = shared2.identity.records().reset_counts(&actor, &cid)?;
        shared2.limiter.reset(&cid);
        Ok(n)
    })
    .await;
    match result {
        Ok(_) => usage(shared, id, rid),
        Err(e) => store_error(e, rid),
    }
}

//! What a consumer has used of its plan: for `GET /_turnpike/usage` (the caller, with its own
//! credentials) and the admin routes `GET /consumers/{id}/usage` and
//! `POST /consumers/{id}/usage/reset`.

use super::limiter::{limit_key, PolicyState};
use super::EndpointLimits;
use crate::identity::Consumer;
use crate::state::{Shared, Snapshot};
use serde_json::{json, Value};

fn policies_json(states: &[PolicyState], now: i64) -> Vec<Value> {
    states
        .iter()
        .map(|s| {
            json!({
                "policy": s.name,
                "limit": s.quota,
                "window_seconds": s.window_secs,
                "remaining": s.remaining,
                "reset_seconds": s.reset_secs,
                "resets_at": crate::clock::rfc3339(now + s.reset_secs as i64),
            })
        })
        .collect()
}

/// The usage of `consumer` under the limits of one API (`scope` names it in the answer).
pub fn scope_usage(
    shared: &Shared,
    consumer: &Consumer,
    limits: &EndpointLimits,
    scope: &str,
) -> Option<Value> {
    let plan = limits.plans.get(consumer.plan.as_deref()?)?;
    let key = limit_key(&consumer.id, limits.per_api.as_deref());
    let now_ns = crate::clock::now_ns();
    let states = shared.limiter.peek(&key, plan, now_ns);
    Some(json!({
        "scope": scope,
        "plan": plan.name,
        "policies": policies_json(&states, (now_ns / 1_000_000_000) as i64),
    }))
}

/// Every scope a consumer is counted in: all APIs counted together, and each API that counts
/// separately.
pub fn consumer_usage(shared: &Shared, snapshot: &Snapshot, consumer: &Consumer) -> Value {
    let mut scopes = Vec::new();
    let mut seen_shared = false;
    let mut seen_apis = std::collections::BTreeSet::new();
    // The shared count is reported with the config's plan numbers (APIs may override them).
    let global = EndpointLimits {
        per_api: None,
        plans: snapshot.plans.clone(),
    };
    for ep in &snapshot.endpoints {
        let Some(limits) = &ep.limits else { continue };
        // Only the APIs this consumer may call.
        if !ep.auth.as_ref().is_some_and(|a| a.allows(consumer)) {
            continue;
        }
        let (scope, limits) = match &limits.per_api {
            None if seen_shared => continue,
            None => {
                seen_shared = true;
                ("all APIs".to_string(), &global)
            }
            Some(api) if !seen_apis.insert(api.clone()) => continue,
            Some(api) => (api.clone(), &**limits),
        };
        if let Some(v) = scope_usage(shared, consumer, limits, &scope) {
            scopes.push(v);
        }
    }
    json!({
        "consumer": consumer.id,
        "plan": consumer.plan,
        "scopes": scopes,
    })
}

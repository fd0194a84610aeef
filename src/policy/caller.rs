//! The built-in steps about the caller, compiled from `[apis.limits] per_ip`, `[apis.auth]` and
//! the plans: the address's flood guard (Edge), identification behind the failed-
//! authentication guard (Identify), groups and scopes (Authorize) and the plan (Limit).

use super::Flow;
use crate::identity::{Consumer, Identity};
use crate::limits::ip::IpLimit;
use crate::reply::{Code, Reply};
use crate::state::Snapshot;
use pingora::http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;

/// A 429 answer of the limit named `name`: `Retry-After` and the RateLimit fields (policy,
/// state) of the limit.
pub fn limited(
    code: Code,
    name: &'static str,
    detail: impl Into<String>,
    retry_after_secs: u64,
    (policy, state): (String, String),
) -> Reply {
    let mut reply = Reply::new(code, detail);
    reply.limited = Some(name);
    reply
        .header("Retry-After", retry_after_secs.to_string())
        .header("RateLimit-Policy", policy)
        .header("RateLimit", state)
}

/// `[apis.limits] per_ip`.
pub fn per_ip(limit: &IpLimit, ip: Option<IpAddr>, flow: &mut Flow) -> Result<(), Reply> {
    let Some(ip) = ip else {
        return Ok(());
    };
    match limit.hit(&ip) {
        Ok(used) => {
            flow.ratelimit = Some(limit.headers("ip", used));
            Ok(())
        }
        Err(used) => Err(limited(
            Code::RateLimited,
            "per_ip",
            format!(
                "this address is over {} requests per {} s on this API",
                limit.spec.count, limit.spec.per_secs
            ),
            limit.spec.per_secs,
            limit.headers("ip", used),
        )),
    }
}

/// `[apis.auth]`: identifies the caller; an address with too many recent failures is not even
/// checked, and a wrong credential counts against its address.
pub async fn identify(
    snapshot: &Snapshot,
    identity: &Identity,
    policy: &crate::auth::AuthPolicy,
    req: &RequestHeader,
    ip: Option<IpAddr>,
    flow: &mut Flow,
) -> Result<(), Reply> {
    let guard = snapshot.auth_guard.as_ref().zip(ip);
    if let Some((g, ip)) = guard {
        if g.exhausted(&ip) {
            return Err(limited(
                Code::RateLimited,
                "auth_failures",
                "too many failed authentication attempts from this address; try again later",
                g.spec.per_secs,
                g.headers("auth-failures", g.spec.count),
            ));
        }
    }
    let outcome = crate::auth::authenticate(
        req,
        policy,
        &snapshot.identities,
        identity,
        crate::clock::now(),
    )
    .await;
    match outcome {
        Ok(consumer) => {
            flow.consumer = Some(with_default_plan(consumer, snapshot));
            Ok(())
        }
        Err(reply) => {
            if let (Some((g, ip)), true) = (guard, reply.bad_credential) {
                g.record(&ip);
            }
            Err(reply)
        }
    }
}

/// A consumer without a plan gets `[consumer_defaults] plan`, when there is one.
fn with_default_plan(consumer: Arc<Consumer>, snapshot: &Snapshot) -> Arc<Consumer> {
    match (&consumer.plan, &snapshot.file.consumer_defaults.plan) {
        (None, Some(plan)) => {
            let mut c = (*consumer).clone();
            c.plan = Some(plan.clone());
            Arc::new(c)
        }
        _ => consumer,
    }
}

/// The caller's plan; `Err` is the 429 (or 403, 503) answer. The RateLimit fields of the
/// plan (after a flood guard's, when one applied) become answer headers.
pub async fn plan(
    limits: &crate::limits::EndpointLimits,
    limiter: &crate::limits::limiter::Limiter,
    cluster: Option<&crate::cluster::Cluster>,
    flow: &mut Flow,
) -> Result<(), Reply> {
    let Some(consumer) = flow.consumer.clone() else {
        return Ok(());
    };
    let Some(plan_name) = &consumer.plan else {
        // An identified caller is never unlimited by accident.
        return Err(Reply::new(
            Code::NoPlan,
            "this consumer has no plan for this API; ask the API owner for one",
        ));
    };
    let Some(plan) = limits.plans.get(plan_name) else {
        // Checked at start and reload; a consumer written since with a plan that does not
        // exist is refused rather than left unlimited.
        log::warn!(
            "consumer {} has plan {plan_name:?}, which the config does not define",
            consumer.id
        );
        return Err(Reply::new(
            Code::Forbidden,
            "this consumer's plan is not available; contact the API owner",
        ));
    };
    let key = crate::limits::limiter::limit_key(&consumer.id, limits.per_api.as_deref());
    let verdict = crate::limits::decide(limiter, cluster, &key, plan)
        .await
        .map_err(|_| {
            Reply::new(
                Code::StoreUnavailable,
                "this plan's limits cannot be checked right now; try again shortly",
            )
            .header("Retry-After", "1")
        })?;
    let headers = (
        crate::limits::headers::policy(&verdict.policies),
        crate::limits::headers::state(&verdict.policies),
    );
    // Items of a flood guard that already applied come first.
    let headers = match flow.ratelimit.take() {
        Some((p, s)) if !verdict.policies.is_empty() => {
            (format!("{p}, {}", headers.0), format!("{s}, {}", headers.1))
        }
        Some(ip_only) if verdict.policies.is_empty() => ip_only,
        _ => headers,
    };
    let Some(denial) = verdict.denied else {
        flow.ratelimit = Some(headers);
        return Ok(());
    };
    use crate::limits::limiter::Denial;
    use crate::limits::spec::Period;
    let name = match &denial {
        Denial::Rate { .. } => "rate",
        Denial::Quota { period, .. } => match period {
            Period::Minute => "quota_minute",
            Period::Hour => "quota_hour",
            Period::Day => "quota_day",
            Period::Month => "quota_month",
        },
    };
    let (code, detail, retry) = match denial {
        Denial::Rate { retry_after_secs } => (
            Code::RateLimited,
            format!("the {} plan allows no more requests right now", plan.name),
            retry_after_secs,
        ),
        Denial::Quota {
            period,
            limit,
            retry_after_secs,
        } => (
            Code::QuotaExceeded,
            format!(
                "the {} plan's quota of {limit} requests per {period} is used up",
                plan.name
            ),
            retry_after_secs,
        ),
    };
    Err(limited(code, name, detail, retry, headers))
}

//! Plans, rate limits and quotas: the compiled plans of a config (`[plans.NAME]`, with per-API
//! overrides), the limiter that counts, the `RateLimit` headers, and the write-behind of quota
//! counters to the store.

pub mod conns;
pub mod headers;
pub mod ip;
pub mod limiter;
pub mod persist;
pub mod spec;
pub mod usage;

use crate::config::file::{ApiSection, Exactness, FileConfig, LimitsScope, PlanSection};
use limiter::Plan;
use spec::{parse_quota, parse_rate};
use std::collections::HashMap;
use std::sync::Arc;

/// Plans by name.
pub type Plans = HashMap<String, Arc<Plan>>;

/// What an endpoint limits: the plans that apply on its API and how callers are keyed.
#[derive(Debug)]
pub struct EndpointLimits {
    /// The API's name when it counts separately (`limits_scope = "consumer_api"`).
    pub per_api: Option<String>,
    pub plans: Arc<Plans>,
}

/// Largest count a plan may give: structured-field integers have at most 15 digits.
const MAX_COUNT: u64 = 999_999_999_999_999;

/// Builds one plan; errors are (key under the plan, message).
pub fn compile_plan(name: &str, p: &PlanSection) -> Result<Plan, (String, String)> {
    let too_big = |k: &str| (k.to_string(), format!("at most {MAX_COUNT}"));
    if p.burst.is_some_and(|b| b > MAX_COUNT) {
        return Err(too_big("burst"));
    }
    let rate = match &p.rate {
        None => {
            if p.burst.is_some() {
                return Err(("burst".into(), "burst needs a rate".into()));
            }
            None
        }
        Some(text) => {
            let r = parse_rate(text).map_err(|e| ("rate".to_string(), e))?;
            if r.count > MAX_COUNT {
                return Err(too_big("rate"));
            }
            let burst = p.burst.unwrap_or(r.count);
            if burst == 0 {
                return Err(("burst".into(), "burst must be at least 1".into()));
            }
            Some((r.interval_ns(), burst))
        }
    };
    let mut quotas = Vec::new();
    for (i, q) in p.quotas.iter().enumerate() {
        let q = parse_quota(q).map_err(|e| (format!("quotas[{i}]"), e))?;
        if q.limit > MAX_COUNT {
            return Err(too_big(&format!("quotas[{i}]")));
        }
        if quotas
            .iter()
            .any(|o: &spec::QuotaSpec| o.period == q.period)
        {
            return Err((
                format!("quotas[{i}]"),
                format!("a {} quota is already given", q.period),
            ));
        }
        quotas.push(q);
    }
    quotas.sort_by_key(|q| q.period);
    Ok(Plan {
        name: name.to_string(),
        rate,
        quotas,
        strict: p.exactness == Exactness::Strict,
        on_error: p.on_store_error,
    })
}

/// The config's plans; errors are (key path, message).
pub fn compile_plans(cfg: &FileConfig) -> Result<Plans, Vec<(String, String)>> {
    let mut plans = Plans::new();
    let mut problems = Vec::new();
    for (name, p) in &cfg.plans {
        match compile_plan(name, p) {
            Ok(plan) => {
                plans.insert(name.clone(), Arc::new(plan));
            }
            Err((k, m)) => problems.push((format!("plans.{name}.{k}"), m)),
        }
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(problems)
    }
}

/// The limits of one API: the config's plans with the API's overrides; `None` when nothing
/// can apply.
pub fn api_limits(
    i: usize,
    api: &ApiSection,
    plans: &Arc<Plans>,
    sections: &std::collections::BTreeMap<String, PlanSection>,
) -> Result<Option<Arc<EndpointLimits>>, Vec<(String, String)>> {
    if plans.is_empty() || api.auth.is_none() {
        return Ok(None);
    }
    let mut effective = plans.clone();
    let mut problems = Vec::new();
    if !api.plans.is_empty() {
        let mut merged: Plans = (**plans).clone();
        for (name, o) in &api.plans {
            let Some(base) = sections.get(name) else {
                problems.push((
                    format!("apis[{i}].plans.{name}"),
                    format!("no [plans.{name}] to override"),
                ));
                continue;
            };
            // One rate state per consumer: two rates on one shared count would mix.
            if (o.rate.is_some() || o.burst.is_some()) && api.limits_scope == LimitsScope::Consumer
            {
                problems.push((
                    format!("apis[{i}].plans.{name}"),
                    "a rate or burst override needs limits_scope = \"consumer_api\" on this API"
                        .into(),
                ));
                continue;
            }
            // Keys left out keep the plan's.
            let section = PlanSection {
                rate: o.rate.clone().or_else(|| base.rate.clone()),
                burst: o.burst.or(base.burst),
                quotas: o.quotas.clone().unwrap_or_else(|| base.quotas.clone()),
                exactness: base.exactness,
                on_store_error: base.on_store_error,
            };
            match compile_plan(name, &section) {
                Ok(plan) => {
                    merged.insert(name.clone(), Arc::new(plan));
                }
                Err((k, m)) => problems.push((format!("apis[{i}].plans.{name}.{k}"), m)),
            }
        }
        effective = Arc::new(merged);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let per_api = match api.limits_scope {
        LimitsScope::Consumer => None,
        LimitsScope::ConsumerApi => Some(match &api.version {
            Some(v) => format!("{}@{v}", api.name),
            None => api.name.clone(),
        }),
    };
    Ok(Some(Arc::new(EndpointLimits {
        per_api,
        plans: effective,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::OnStoreError;

    fn cfg(text: &str) -> FileConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const PLANS: &str = "[plans.free]\nrate = \"5/s\"\nburst = 10\nquotas = [\"450/hour\"]\n";

    fn limits_of(text: &str) -> Result<Option<Arc<EndpointLimits>>, Vec<(String, String)>> {
        let c = cfg(text);
        let plans = Arc::new(compile_plans(&c).unwrap_or_else(|e| panic!("{e:?}")));
        api_limits(0, &c.apis[0], &plans, &c.plans)
    }

    #[test]
    fn api_overrides_keep_what_they_leave_out() {
        let api = "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n";
        let auth = "[apis.auth]\nmethods = [\"api_key\"]\n";
        let l = limits_of(&format!(
            "{PLANS}{api}limits_scope = \"consumer_api\"\n{auth}[apis.plans.free]\nburst = 20\n"
        ))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap_or_else(|| panic!("limits"));
        let free = &l.plans["free"];
        assert_eq!(
            free.rate,
            Some((200_000_000, 20)),
            "the plan's rate, the API's burst"
        );
        assert_eq!(free.quotas.len(), 1, "the plan's quota");
        assert_eq!(l.per_api.as_deref(), Some("a"));
        let l = limits_of(&format!(
            "{PLANS}{api}{auth}[apis.plans.free]\nquotas = [\"100/hour\"]\n"
        ))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap_or_else(|| panic!("limits"));
        assert_eq!(l.plans["free"].quotas[0].limit, 100);
        assert_eq!(l.plans["free"].rate, Some((200_000_000, 10)));
        let e = limits_of(&format!(
            "{PLANS}{api}{auth}[apis.plans.free]\nrate = \"1/s\"\n"
        ))
        .err()
        .unwrap_or_default();
        assert!(e[0].1.contains("consumer_api"), "{e:?}");
        let e = limits_of(&format!(
            "{PLANS}{api}{auth}[apis.plans.gold]\nquotas = [\"1/hour\"]\n"
        ))
        .err()
        .unwrap_or_default();
        assert!(e[0].1.contains("no [plans.gold]"), "{e:?}");
        let big = compile_plan(
            "x",
            &PlanSection {
                rate: None,
                burst: None,
                quotas: vec!["1000000000000000/hour".into()],
                exactness: Exactness::Batched,
                on_store_error: OnStoreError::Local,
            },
        );
        assert!(big.is_err(), "over 15 digits cannot be sent in the headers");
    }
}

/// Why a plan could not be applied: the fleet's Redis is unreachable and the plan says
/// `on_store_error = "deny"`.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreUnavailable;

/// The plan's verdict for one request: in this process, or with the fleet's Redis when the
/// plan is strict or a quota has no lease left (see `cluster::counters`). One call: the round
/// trip, and the fallback when Redis does not answer, happen here.
pub async fn decide(
    limiter: &limiter::Limiter,
    cluster: Option<&crate::cluster::Cluster>,
    key: &str,
    plan: &Plan,
) -> Result<limiter::Verdict, StoreUnavailable> {
    use limiter::{Check, Mode};
    let Some(cluster) = cluster else {
        return Ok(limiter.check(key, plan, crate::clock::now_ns()));
    };
    let nodes = cluster.nodes;
    let now = crate::clock::now_ns();
    let mode = Mode::Cluster {
        nodes,
        up: cluster.is_up(),
    };
    let ask = match limiter.decide(key, plan, now, mode) {
        Check::Done(v) => return Ok(v),
        Check::Unavailable => return Err(StoreUnavailable),
        Check::Ask(ask) => ask,
    };
    if let Some(answer) = crate::cluster::counters::take(cluster, key, &ask).await {
        return Ok(limiter.answered(key, plan, now, nodes, &answer));
    }
    // Redis did not answer: the plan's on_store_error decides, now that Redis counts as down.
    let mode = Mode::Cluster { nodes, up: false };
    match limiter.decide(key, plan, crate::clock::now_ns(), mode) {
        Check::Done(v) => Ok(v),
        Check::Ask(_) | Check::Unavailable => Err(StoreUnavailable),
    }
}

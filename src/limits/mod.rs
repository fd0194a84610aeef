//! Plans, rate limits and quotas: the compiled plans of a config (`[plans.NAME]`, with per-API
//! overrides), the limiter that counts, the `RateLimit` headers, and the write-behind of quota
//! counters to the store.

pub mod headers;
pub mod ip;
pub mod limiter;
pub mod persist;
pub mod spec;
pub mod usage;

use crate::config::file::{ApiSection, FileConfig, LimitsScope, PlanSection};
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

/// Builds one plan; errors are (key under the plan, message).
pub fn compile_plan(name: &str, p: &PlanSection) -> Result<Plan, (String, String)> {
    let rate = match &p.rate {
        None => {
            if p.burst.is_some() {
                return Err(("burst".into(), "burst needs a rate".into()));
            }
            None
        }
        Some(text) => {
            let r = parse_rate(text).map_err(|e| ("rate".to_string(), e))?;
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
) -> Result<Option<Arc<EndpointLimits>>, Vec<(String, String)>> {
    if plans.is_empty() || api.auth.is_none() {
        return Ok(None);
    }
    let mut effective = plans.clone();
    let mut problems = Vec::new();
    if !api.plans.is_empty() {
        let mut merged: Plans = (**plans).clone();
        for (name, o) in &api.plans {
            let Some(base) = plans.get(name) else {
                problems.push((
                    format!("apis[{i}].plans.{name}"),
                    format!("no [plans.{name}] to override"),
                ));
                continue;
            };
            let section = PlanSection {
                rate: o.rate.clone(),
                burst: o.burst,
                quotas: o.quotas.clone().unwrap_or_default(),
            };
            match compile_plan(name, &section) {
                Ok(over) => {
                    let plan = Plan {
                        name: name.clone(),
                        rate: if o.rate.is_some() {
                            over.rate
                        } else {
                            base.rate
                        },
                        quotas: if o.quotas.is_some() {
                            over.quotas
                        } else {
                            base.quotas.clone()
                        },
                    };
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

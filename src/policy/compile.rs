//! Compiles `[policies.NAME]` and their attachments (`[server]`, `[[apis]]`,
//! `[[apis.routes]]`, `[groups.NAME]`) into a [`Catalog`] and each endpoint's [`Chain`]. Every
//! problem is reported with its key path: a key the kind does not take, a bad CIDR, regex,
//! origin or template, an unknown policy name, two single-instance policies on the same
//! requests, a route parameter the route does not have.

use super::edits::{HeaderEdits, Headers, Rewrite};
use super::template::Var;
use super::{Chain, Kind, Level, Policy, Stage, Step};
use crate::config::file::FileConfig;
use crate::config::policy::{PolicyKind, PolicySection};
use crate::route::{template_segments, Segment};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The named policies of a config, where the server and the groups attach them, and the
/// trusted proxies.
#[derive(Debug, Default)]
pub struct Catalog {
    pub named: BTreeMap<String, Arc<Policy>>,
    server: Vec<(String, Arc<Policy>)>,
    groups: HashMap<String, Vec<Arc<Policy>>>,
    pub trusted: super::ip::Ranges,
    /// The compiled contracts of the APIs that validate, by API index (None: it failed and
    /// was reported).
    contracts: std::sync::Mutex<HashMap<usize, Option<Arc<crate::openapi::contract::Contract>>>>,
}

/// A problem: key path and message.
pub type Found = (String, String);

impl Catalog {
    /// Whether any group has policies (most configs have none: no lookup per request).
    pub fn has_groups(&self) -> bool {
        self.groups.values().any(|g| !g.is_empty())
    }

    /// The policies of consumers in group `name`.
    pub fn group(&self, name: &str) -> &[Arc<Policy>] {
        self.groups.get(name).map_or(&[], |v| v.as_slice())
    }

    /// Compiles the policies and the server and group attachments of `file`.
    pub fn compile(file: &FileConfig, problems: &mut Vec<Found>) -> Catalog {
        let mut named = BTreeMap::new();
        for (name, p) in &file.policies {
            let key = format!("policies.{name}");
            if !valid_name(name) {
                problems.push((
                    key.clone(),
                    "a policy name is letters, digits, '-' and '_'".into(),
                ));
            }
            match kind(p) {
                Ok(kind) => {
                    named.insert(
                        name.clone(),
                        Arc::new(Policy {
                            name: Arc::from(name.as_str()),
                            kind,
                        }),
                    );
                }
                Err((k, m)) => problems.push((join(&key, &k), m)),
            }
        }
        let trusted = match super::ip::Ranges::parse(&file.server.trusted_proxies) {
            Ok(r) => r,
            Err((i, m)) => {
                problems.push((format!("server.trusted_proxies[{i}]"), m));
                super::ip::Ranges::default()
            }
        };
        let mut c = Catalog {
            named,
            server: Vec::new(),
            groups: HashMap::new(),
            trusted,
            contracts: Default::default(),
        };
        c.server = c.resolve("server.policies", &file.server.policies, file, problems);
        for (g, section) in &file.groups {
            let key = format!("groups.{g}.policies");
            let list = c.resolve(&key, &section.policies, file, problems);
            for (k, p) in &list {
                if matches!(p.kind, Kind::Validate(_)) {
                    problems.push((
                        k.clone(),
                        "a validate policy cannot be attached to a group: attach it to the server, an API or a route".into(),
                    ));
                }
                if p.kind.single() {
                    problems.push((
                        k.clone(),
                        format!(
                            "a {} policy cannot be attached to a group: a request has one, chosen by its API and route",
                            p.kind.as_str()
                        ),
                    ));
                }
                if templates(&p.kind)
                    .flat_map(|t| t.vars())
                    .any(|v| matches!(v, Var::Param(_)))
                {
                    problems.push((
                        k.clone(),
                        format!(
                            "policy {:?} uses a route parameter; a group spans routes",
                            &*p.name
                        ),
                    ));
                }
            }
            c.groups
                .insert(g.clone(), list.into_iter().map(|(_, p)| p).collect());
        }
        c
    }

    /// The policies a list names, with the key path of each entry.
    fn resolve(
        &self,
        key: &str,
        names: &[String],
        file: &FileConfig,
        problems: &mut Vec<Found>,
    ) -> Vec<(String, Arc<Policy>)> {
        let mut out: Vec<(String, Arc<Policy>)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let k = format!("{key}[{i}]");
            match self.named.get(n) {
                Some(p) if out.iter().any(|(_, q)| Arc::ptr_eq(p, q)) => {
                    problems.push((k, format!("policy {n:?} is listed twice")));
                }
                Some(p) => out.push((k, p.clone())),
                // A policy that failed to compile was already reported.
                None if file.policies.contains_key(n) => {}
                None => {
                    let known: Vec<&str> = file.policies.keys().map(String::as_str).collect();
                    problems.push((
                        k,
                        format!(
                            "no policy named {n:?}; defined: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        out
    }

    /// The chain of one endpoint: the server's, API's and route's policies and the built-in
    /// steps, in stage order. `api` is the API's index (None: the usage endpoint, which has
    /// only the server's), `route` the route's (None: an API without routes); `template` the
    /// endpoint's full path template.
    pub fn chain(
        &self,
        file: &FileConfig,
        api: Option<usize>,
        route: Option<usize>,
        template: &str,
        mut builtins: Vec<(Level, Arc<Policy>)>,
        problems: &mut Vec<Found>,
    ) -> Chain {
        if let Some(v) = api.and_then(|i| shorthand(file, i, route, problems)) {
            builtins.push((Level::Api, v));
        }
        let params: Vec<(usize, Arc<str>)> = template_segments(template)
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Segment::Param(n) => Some((i, Arc::from(n.as_str()))),
                Segment::Static(_) => None,
            })
            .collect();
        let mut attached: Vec<(Level, String, Arc<Policy>)> = self
            .server
            .iter()
            .map(|(k, p)| (Level::Server, k.clone(), p.clone()))
            .collect();
        let a = api.and_then(|i| Some((i, file.apis.get(i)?)));
        if let Some((api, a)) = a {
            let api_key = format!("apis[{api}].policies");
            for (k, p) in self.resolve(&api_key, &a.policies, file, problems) {
                attached.push((Level::Api, k, p));
            }
        }
        if let (Some(r), Some((api, a))) = (route, a) {
            if let Some(rs) = a.routes.get(r) {
                let key = format!("apis[{api}].routes[{r}].policies");
                for (k, p) in self.resolve(&key, &rs.policies, file, problems) {
                    if attached.iter().any(|(_, _, q)| Arc::ptr_eq(q, &p)) {
                        problems.push((
                            k,
                            format!("policy {:?} is already attached above this route", &*p.name),
                        ));
                        continue;
                    }
                    attached.push((Level::Route, k, p));
                }
            }
        }
        // One instance of single kinds per request.
        for (i, (_, k, p)) in attached.iter().enumerate() {
            if !p.kind.single() {
                continue;
            }
            if let Some((_, first, _)) = attached[..i].iter().find(|(_, _, q)| {
                std::mem::discriminant(&q.kind) == std::mem::discriminant(&p.kind)
            }) {
                problems.push((
                    k.clone(),
                    format!(
                        "a second {} policy on the same requests as {first}; a request has one",
                        p.kind.as_str()
                    ),
                ));
            }
        }
        // Route parameters must exist on this endpoint's template.
        for (_, k, p) in &attached {
            for v in templates(&p.kind).flat_map(|t| t.vars()) {
                if let Var::Param(n) = v {
                    if !params.iter().any(|(_, q)| &**q == n) {
                        problems.push((
                            k.clone(),
                            format!(
                                "policy {:?} uses the route parameter {n:?}, which {template} does not have",
                                &*p.name
                            ),
                        ));
                    }
                }
            }
        }
        let mut steps: Vec<Step> = Vec::new();
        let all = builtins
            .into_iter()
            .chain(attached.into_iter().map(|(l, _, p)| (l, p)));
        for (level, policy) in all {
            for &stage in policy.kind.stages() {
                steps.push(Step {
                    stage,
                    level,
                    policy: policy.clone(),
                });
            }
        }
        // Stable: within a stage and level, the order of the file.
        steps.sort_by_key(|s| (s.stage, s.level));
        let validates = steps.iter().any(|s| s.stage == Stage::Validate);
        let ops = match api {
            Some(i) if validates => self.operations(file, i, template, problems),
            _ => Vec::new(),
        };
        Chain {
            transforms: steps.iter().any(|s| s.stage == Stage::Transform),
            responds: steps.iter().any(|s| s.stage == Stage::Response),
            steps,
            params,
            ops,
        }
    }

    /// The operations of API `i`'s contract on the endpoint template `template` (compiled
    /// once per API; a spec that cannot be compiled is reported once).
    fn operations(
        &self,
        file: &FileConfig,
        i: usize,
        template: &str,
        problems: &mut Vec<Found>,
    ) -> Vec<Arc<crate::openapi::contract::OpCheck>> {
        let Some(spec) = file.specs.of(i) else {
            problems.push((
                format!("apis[{i}]"),
                "request validation needs the API's OpenAPI document: set [apis.catalog] openapi"
                    .into(),
            ));
            return Vec::new();
        };
        let mut cache = match self.contracts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let contract = cache.entry(i).or_insert_with(|| {
            match crate::openapi::contract::Contract::compile(spec, true) {
                Ok(c) => Some(Arc::new(c)),
                Err(errors) => {
                    problems.extend(
                        errors
                            .into_iter()
                            .map(|e| (format!("apis[{i}].catalog.openapi"), e.to_string())),
                    );
                    None
                }
            }
        });
        let Some(contract) = contract else {
            return Vec::new();
        };
        let base = match file.apis[i].base_path.as_str() {
            "/" => "",
            b => b,
        };
        let own = template.strip_prefix(base).unwrap_or(template);
        contract.on(&crate::openapi::operations::shape(own))
    }
}

/// The built-in validate step of `[apis.openapi] validate = "request"` (named `openapi`), or,
/// on a mocked API or route without it, the default one (named `mock`): mocks validate the
/// request first.
fn shorthand(
    file: &FileConfig,
    i: usize,
    route: Option<usize>,
    problems: &mut Vec<Found>,
) -> Option<Arc<Policy>> {
    let api = file.apis.get(i)?;
    let mocked = api.mocked()
        || route
            .and_then(|r| api.routes.get(r))
            .is_some_and(|r| r.mock);
    let step = |name: &str, v| {
        Some(Arc::new(Policy {
            name: Arc::from(name),
            kind: Kind::Validate(Arc::new(v)),
        }))
    };
    let Some(o) = api.openapi.as_ref().filter(|o| o.validate.is_some()) else {
        if let Some(o) = &api.openapi {
            if o.validate_keys() != Default::default() {
                problems.push((
                    format!("apis[{i}].openapi"),
                    "mode, max_validated_body, validate_responses and response_sample need validate = \"request\"".into(),
                ));
            }
        }
        return match mocked {
            true => super::validate::Validate::compile(&Default::default())
                .ok()
                .and_then(|v| step("mock", v)),
            false => None,
        };
    };
    match super::validate::Validate::compile(&o.validate_keys()) {
        Ok(v) => step("openapi", v),
        Err((k, m)) => {
            problems.push((format!("apis[{i}].openapi.{k}"), m));
            None
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn join(key: &str, sub: &str) -> String {
    if sub.is_empty() {
        key.to_string()
    } else {
        format!("{key}.{sub}")
    }
}

/// The templates a kind holds.
fn templates(kind: &Kind) -> Box<dyn Iterator<Item = &super::template::Template> + '_> {
    match kind {
        Kind::Headers(h) => Box::new(h.request.templates().chain(h.response.templates())),
        Kind::Rewrite(r) => Box::new(r.templates()),
        _ => Box::new(std::iter::empty()),
    }
}

/// The keys each kind takes.
fn keys_of(kind: PolicyKind) -> &'static [&'static str] {
    match kind {
        PolicyKind::Cors => &[
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "allow_credentials",
            "max_age",
        ],
        PolicyKind::IpFilter => &["allow", "deny"],
        PolicyKind::Headers => &["request", "response"],
        PolicyKind::Rewrite => &["path", "query"],
        PolicyKind::BodySize => &["max"],
        PolicyKind::Bot => &["deny_user_agents", "require_user_agent"],
        PolicyKind::JsonFields => &["remove", "unless_groups", "max_body"],
        PolicyKind::Validate => &[
            "mode",
            "max_validated_body",
            "validate_responses",
            "response_sample",
        ],
    }
}

/// Compiles one policy; `Err` is (key below the policy, message).
fn kind(p: &PolicySection) -> Result<Kind, Found> {
    let takes = keys_of(p.kind);
    if let Some(k) = p.present().into_iter().find(|k| !takes.contains(k)) {
        return Err((
            k.to_string(),
            format!(
                "not a key of kind {:?}; it takes: {}",
                p.kind.as_str(),
                takes.join(", ")
            ),
        ));
    }
    Ok(match p.kind {
        PolicyKind::Cors => Kind::Cors(super::cors::Cors::compile(p)?),
        PolicyKind::IpFilter => {
            let parse = |k: &str,
                         l: &Option<Vec<String>>|
             -> Result<Option<super::ip::Ranges>, Found> {
                l.as_ref()
                    .map(|l| super::ip::Ranges::parse(l).map_err(|(i, m)| (format!("{k}[{i}]"), m)))
                    .transpose()
            };
            let allow = parse("allow", &p.allow)?;
            let deny = parse("deny", &p.deny)?.unwrap_or_default();
            if allow.is_none() && deny.is_empty() {
                return Err((
                    "allow".into(),
                    "an ip_filter needs allow or deny ranges".into(),
                ));
            }
            Kind::IpFilter(super::ip::Filter { allow, deny })
        }
        PolicyKind::Headers => {
            let request = HeaderEdits::compile(&p.request, true)
                .map_err(|(k, m)| (join("request", &k), m))?;
            let response = HeaderEdits::compile(&p.response, false)
                .map_err(|(k, m)| (join("response", &k), m))?;
            if request.is_empty() && response.is_empty() {
                return Err((
                    "request".into(),
                    "a headers policy needs request or response edits".into(),
                ));
            }
            Kind::Headers(Headers { request, response })
        }
        PolicyKind::Rewrite => Kind::Rewrite(Rewrite::compile(&p.path, &p.query)?),
        PolicyKind::BodySize => match p.max {
            Some(m) if m.0 > 0 => Kind::BodySize(m.0),
            _ => {
                return Err((
                    "max".into(),
                    "a body_size policy needs max, e.g. \"1MiB\"".into(),
                ))
            }
        },
        PolicyKind::Bot => Kind::Bot(super::bot::Bot::compile(
            p.deny_user_agents.as_deref().unwrap_or_default(),
            p.require_user_agent.unwrap_or(false),
        )?),
        PolicyKind::JsonFields => Kind::JsonFields(super::json::JsonFields::compile(
            p.remove.as_deref().unwrap_or_default(),
            p.unless_groups.as_deref().unwrap_or_default(),
            p.max_body.map_or(super::json::DEFAULT_MAX_BODY, |s| s.0),
        )?),
        PolicyKind::Validate => Kind::Validate(Arc::new(super::validate::Validate::compile(
            &p.validate_keys(),
        )?)),
    })
}

/// Every policy problem of a config (for `validate`): the catalog and every endpoint's chain,
/// compiled and dropped.
pub fn check(file: &FileConfig) -> Vec<Found> {
    let mut problems = Vec::new();
    let catalog = Catalog::compile(file, &mut problems);
    for (i, api) in file.apis.iter().enumerate() {
        let base = if api.base_path == "/" {
            ""
        } else {
            api.base_path.as_str()
        };
        if api.routes.is_empty() {
            let t = if base.is_empty() { "/" } else { base };
            catalog.chain(file, Some(i), None, t, Vec::new(), &mut problems);
        }
        for (r, route) in api.routes.iter().enumerate() {
            let t = format!("{base}{}", route.path);
            catalog.chain(file, Some(i), Some(r), &t, Vec::new(), &mut problems);
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

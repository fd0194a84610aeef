//! The policy engine: every request runs one pipeline of policies in a fixed stage order.
//!
//! ```text
//!  request ──► Edge ──► Cors ──► Identify ──► Authorize ──► Limit ──► Transform ──► action ──► Response ──► answer
//!              lifecycle  cors     [apis.auth]  groups,       plans  ► Validate ► headers  proxy,  headers
//!              body_size
//!              ip_filter  (pre-    failed-auth  scopes                  (request)    respond,   (response)
//!              bot        flights) guard                                rewrite      usage      json_fields
//!              per_ip              + group policies of Edge kinds                               answer headers
//! ```
//!
//! The stage decides when a policy runs, never the order of names in the file; within a stage,
//! policies attached to the server run before the API's, the API's before the route's, and
//! those of the consumer's groups last. Group policies of Edge kinds run right after
//! identification (the consumer is not known before). OpenAPI request validation (`validate`)
//! is the Validate stage between Limit and Transform: the proxy runs it once the body it
//! needs is read (`run::validate`).
//!
//! Every kind is a variant of [`Kind`], run by one `match` in `run`; the identity and plan
//! steps of `[apis.auth]`, `[apis.limits]` and the plans are kinds like the others. A refusal
//! is a [`Reply`](crate::reply::Reply) naming the policy that refused (`by`). The same code
//! runs in the live gateway and in `turnpike explain` / `turnpike test` (`crate::policytest`).

pub mod bot;
pub mod caller;
pub mod compile;
pub mod cors;
pub mod edits;
pub mod ip;
pub mod json;
pub mod lifecycle;
pub mod run;
pub mod template;
pub mod validate;

use crate::identity::Consumer;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

/// The stages of the pipeline, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Edge,
    Cors,
    Identify,
    Authorize,
    Limit,
    Validate,
    Transform,
    Response,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Edge,
        Stage::Cors,
        Stage::Identify,
        Stage::Authorize,
        Stage::Limit,
        Stage::Validate,
        Stage::Transform,
        Stage::Response,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Edge => "edge",
            Stage::Cors => "cors",
            Stage::Identify => "identify",
            Stage::Authorize => "authorize",
            Stage::Limit => "limit",
            Stage::Validate => "validate",
            Stage::Transform => "transform",
            Stage::Response => "response",
        }
    }
}

/// Where a policy is attached; within a stage the levels run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Server,
    Api,
    Route,
    Group,
}

/// Every kind of policy.
#[derive(Debug)]
pub enum Kind {
    /// `[apis.catalog]` lifecycle: Deprecation, Sunset and Link on every answer, 410 once
    /// retired.
    Lifecycle(Arc<lifecycle::Lifecycle>),
    /// Bodies over this many bytes are refused (413).
    BodySize(u64),
    IpFilter(ip::Filter),
    Bot(bot::Bot),
    /// `[apis.limits] per_ip`: the API's flood guard per client address.
    PerIp(Arc<crate::limits::ip::IpLimit>),
    Cors(cors::Cors),
    /// `[apis.auth]`: who the caller is, behind the failed-authentication guard.
    Identify(Arc<crate::auth::AuthPolicy>),
    /// `[apis.auth] allow_groups` and the route's `scopes`.
    Authorize {
        auth: Arc<crate::auth::AuthPolicy>,
        scopes: Vec<String>,
    },
    /// The plans of the API (`[plans]`, `[apis.plans]`).
    Plan(Arc<crate::limits::EndpointLimits>),
    Headers(edits::Headers),
    Rewrite(edits::Rewrite),
    JsonFields(json::JsonFields),
    /// Requests checked against the API's OpenAPI document.
    Validate(Arc<validate::Validate>),
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Lifecycle(_) => "lifecycle",
            Kind::BodySize(_) => "body_size",
            Kind::IpFilter(_) => "ip_filter",
            Kind::Bot(_) => "bot",
            Kind::PerIp(_) => "per_ip",
            Kind::Cors(_) => "cors",
            Kind::Identify(_) => "identify",
            Kind::Authorize { .. } => "authorize",
            Kind::Plan(_) => "plan",
            Kind::Headers(_) => "headers",
            Kind::Rewrite(_) => "rewrite",
            Kind::JsonFields(_) => "json_fields",
            Kind::Validate(_) => "validate",
        }
    }

    /// The stages this kind runs in (a `headers` policy edits the request and the answer).
    pub fn stages(&self) -> &'static [Stage] {
        match self {
            Kind::Lifecycle(_)
            | Kind::BodySize(_)
            | Kind::IpFilter(_)
            | Kind::Bot(_)
            | Kind::PerIp(_) => &[Stage::Edge],
            Kind::Cors(_) => &[Stage::Cors],
            Kind::Identify(_) => &[Stage::Identify],
            Kind::Authorize { .. } => &[Stage::Authorize],
            Kind::Plan(_) => &[Stage::Limit],
            Kind::Headers(h) => match (h.request.is_empty(), h.response.is_empty()) {
                (false, false) => &[Stage::Transform, Stage::Response],
                (false, true) => &[Stage::Transform],
                _ => &[Stage::Response],
            },
            Kind::Rewrite(_) => &[Stage::Transform],
            // The request loses Accept-Encoding (Transform) so the answer can be edited.
            Kind::JsonFields(_) => &[Stage::Transform, Stage::Response],
            Kind::Validate(_) => &[Stage::Validate],
        }
    }

    /// Kinds of which a request may have only one.
    pub fn single(&self) -> bool {
        matches!(self, Kind::Cors(_) | Kind::Rewrite(_))
    }
}

/// A named policy (`[policies.NAME]`), or a built-in step named after its config key.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub kind: Kind,
}

/// One step of an endpoint's pipeline.
#[derive(Debug, Clone)]
pub struct Step {
    pub stage: Stage,
    pub level: Level,
    pub policy: Arc<Policy>,
}

/// The compiled pipeline of one endpoint: its steps in run order, and the positions of the
/// route's parameters in the path.
#[derive(Debug, Default)]
pub struct Chain {
    pub steps: Vec<Step>,
    /// `(segment index, name)` of each `{param}` of the route template.
    pub params: Vec<(usize, Arc<str>)>,
    /// Whether any step runs in Transform or Response (skips the work when none does).
    pub transforms: bool,
    pub responds: bool,
    /// The operations of the API's contract on this route (when a validate step applies).
    pub ops: Vec<Arc<crate::openapi::contract::OpCheck>>,
}

impl Chain {
    /// The validate step that decides for this endpoint (the most specific), if any.
    pub fn validation(&self) -> Option<&validate::Validate> {
        self.at(Stage::Validate)
            .filter_map(|s| match &s.policy.kind {
                Kind::Validate(v) => Some(&**v),
                _ => None,
            })
            .last()
    }

    /// The steps of one stage.
    pub fn at(&self, stage: Stage) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.stage == stage)
    }
}

/// What one step decided, for `turnpike explain` and `turnpike test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stage: Stage,
    pub policy: Arc<str>,
    pub kind: &'static str,
    pub decision: String,
}

/// The policy state of one request: set by the stages, read by the proxy.
#[derive(Debug, Default)]
pub struct Flow {
    /// The identified caller, on APIs with auth.
    pub consumer: Option<Arc<Consumer>>,
    /// Headers of every answer to this request (RateLimit fields, CORS), whether proxied,
    /// cached, static or a refusal.
    pub answer: Vec<(HeaderName, HeaderValue)>,
    /// `RateLimit-Policy` and `RateLimit` while the Limit stage builds them.
    pub ratelimit: Option<(String, String)>,
    /// The body limit of this request and the policy that set it, if a policy did.
    pub max_body: u64,
    pub max_body_by: Option<(Arc<str>, &'static str)>,
    /// A `cors` policy handled this request (the upstream's CORS headers are replaced).
    pub cors: bool,
    /// The policies of the consumer's groups (after identification).
    pub groups: Vec<Arc<Policy>>,
    /// The answer body being collected for `json_fields`.
    pub json: Option<run::JsonEdit>,
    /// What the Validate stage found (report mode) and the answer to check, if sampled.
    pub contract: validate::Outcome,
    /// What each step decided (only `turnpike explain` and `turnpike test` record).
    pub trace: Option<Vec<Event>>,
}

impl Flow {
    pub fn new(max_body: u64) -> Flow {
        Flow {
            max_body,
            ..Flow::default()
        }
    }

    /// Records a step's decision when tracing.
    pub fn note(&mut self, stage: Stage, policy: &Policy, decision: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(Event {
                stage,
                policy: policy.name.clone(),
                kind: policy.kind.as_str(),
                decision: decision(),
            });
        }
    }
}

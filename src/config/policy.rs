//! The file model of `[policies.NAME]` and `[groups.NAME]`. One flat table per policy with a
//! `kind`: TOML errors keep their line and column, and `crate::policy::compile` says which keys
//! a kind does not take. Meaning (CIDRs, regexes, templates, attachment) is checked there.

use super::units::{Dur, Size};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The kinds of policy a config may define (the built-in identity and plan steps are not
/// named here: `[apis.auth]` and the plans compile into them).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Cors,
    IpFilter,
    Headers,
    Rewrite,
    BodySize,
    Bot,
    JsonFields,
    Validate,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Cors => "cors",
            PolicyKind::IpFilter => "ip_filter",
            PolicyKind::Headers => "headers",
            PolicyKind::Rewrite => "rewrite",
            PolicyKind::BodySize => "body_size",
            PolicyKind::Bot => "bot",
            PolicyKind::JsonFields => "json_fields",
            PolicyKind::Validate => "validate",
        }
    }
}

/// `[policies.NAME]`: one named policy. Each kind reads its own keys; the others must be
/// absent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub kind: PolicyKind,
    // cors
    pub allow_origins: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<Dur>,
    // ip_filter
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    // headers
    pub request: Option<Edits>,
    pub response: Option<Edits>,
    // rewrite
    pub path: Option<String>,
    pub query: Option<Edits>,
    // body_size
    pub max: Option<Size>,
    // bot
    pub deny_user_agents: Option<Vec<String>>,
    pub require_user_agent: Option<bool>,
    // json_fields
    pub remove: Option<Vec<String>>,
    pub unless_groups: Option<Vec<String>>,
    /// The largest body `json_fields` reads to edit (larger ones are refused, never passed
    /// unedited).
    pub max_body: Option<Size>,
    // validate
    pub mode: Option<ValidateMode>,
    pub max_validated_body: Option<Size>,
    pub validate_responses: Option<ResponseMode>,
    pub response_sample: Option<f64>,
}

/// The keys of request validation against the API's OpenAPI document, of a `validate` policy
/// and of `[apis.openapi]` (each has them as its own keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidateKeys {
    /// `enforce` (default): a request that breaks the contract is refused (400
    /// `request_invalid`); `report`: logged and counted, and passed.
    pub mode: Option<ValidateMode>,
    /// The largest body read to be validated (default 1 MiB); larger ones get 413.
    pub max_validated_body: Option<Size>,
    /// `report`: answers are checked against the spec too (never refused), on a sample.
    pub validate_responses: Option<ResponseMode>,
    /// The share of answers checked (default 0.01).
    pub response_sample: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValidateMode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    #[default]
    Off,
    Report,
}

impl PolicySection {
    /// The validate keys of a `validate` policy.
    pub fn validate_keys(&self) -> ValidateKeys {
        ValidateKeys {
            mode: self.mode,
            max_validated_body: self.max_validated_body,
            validate_responses: self.validate_responses,
            response_sample: self.response_sample,
        }
    }

    /// The keys present beside `kind`, for the "not a key of this kind" check.
    pub fn present(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |on: bool, key: &'static str| {
            if on {
                out.push(key);
            }
        };
        add(self.allow_origins.is_some(), "allow_origins");
        add(self.allow_methods.is_some(), "allow_methods");
        add(self.allow_headers.is_some(), "allow_headers");
        add(self.expose_headers.is_some(), "expose_headers");
        add(self.allow_credentials.is_some(), "allow_credentials");
        add(self.max_age.is_some(), "max_age");
        add(self.allow.is_some(), "allow");
        add(self.deny.is_some(), "deny");
        add(self.request.is_some(), "request");
        add(self.response.is_some(), "response");
        add(self.path.is_some(), "path");
        add(self.query.is_some(), "query");
        add(self.max.is_some(), "max");
        add(self.deny_user_agents.is_some(), "deny_user_agents");
        add(self.require_user_agent.is_some(), "require_user_agent");
        add(self.remove.is_some(), "remove");
        add(self.unless_groups.is_some(), "unless_groups");
        add(self.max_body.is_some(), "max_body");
        add(self.mode.is_some(), "mode");
        add(self.max_validated_body.is_some(), "max_validated_body");
        add(self.validate_responses.is_some(), "validate_responses");
        add(self.response_sample.is_some(), "response_sample");
        out
    }
}

/// Names to remove and names to set (values may hold `{...}` templates).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// `[groups.NAME]`: settings of every consumer in a group.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// What the group is for (shown by the admin API and in `explain`).
    #[serde(default)]
    pub description: String,
    /// Policies of every request of a consumer in this group.
    #[serde(default)]
    pub policies: Vec<String>,
}

//! Governance rules over the catalogue (`[governance]`): each rule has a severity, `"error"`
//! (start and reload refuse the file, with key paths), `"warn"` (printed by `turnpike check` and
//! `turnpike lint`, listed in the admin `/status`) or `"off"`. A rule with parameters is a table
//! whose `severity`, when left out, is the rule's default, or `"warn"` for a rule that is off
//! by default: naming a rule turns it on.
//!
//! Rules about audiences and classifications apply to the APIs that state them in
//! `[apis.catalog]`; `owner_required` is the rule that makes every API say who it is for.
//!
//! Defaults (no `[governance]` at all): the two rules about exposure are errors
//! (`auth_required_for` confidential and restricted APIs, `restricted_not_public`); the lifecycle
//! rules warn (`min_deprecation_window` 30 days, `successor_required`, `unique_base_paths`);
//! the inventory rules that every API would trip on a first config are off (`owner_required`,
//! `contact_required_for`, `version_pattern`, `openapi_required_for`).

use super::catalog::{api_ref, Audience, Classification, Lifecycle};
use super::file::FileConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Off,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Off => "off",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

fn warn() -> Severity {
    Severity::Warn
}

fn error() -> Severity {
    Severity::Error
}

/// `{ severity, audiences }`: the rule applies to APIs whose audience is listed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudienceRule {
    #[serde(default = "warn")]
    pub severity: Severity,
    /// Left out: the rule's own default list.
    pub audiences: Option<Vec<Audience>>,
}

impl AudienceRule {
    fn off() -> Self {
        AudienceRule {
            severity: Severity::Off,
            audiences: None,
        }
    }
}

/// `{ severity, audiences, classifications }`: APIs matching either list need `[apis.auth]`.
/// Its severity stays `"error"` when the table leaves it out (the rule's own default).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    #[serde(default = "error")]
    pub severity: Severity,
    #[serde(default)]
    pub audiences: Vec<Audience>,
    #[serde(default = "sensitive")]
    pub classifications: Vec<Classification>,
}

fn sensitive() -> Vec<Classification> {
    vec![Classification::Confidential, Classification::Restricted]
}

impl Default for AuthRule {
    fn default() -> Self {
        AuthRule {
            severity: Severity::Error,
            audiences: Vec::new(),
            classifications: sensitive(),
        }
    }
}

/// `{ severity, pattern }`: versions must match the regular expression.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    #[serde(default = "warn")]
    pub severity: Severity,
    #[serde(default = "version_regex")]
    pub pattern: String,
}

fn version_regex() -> String {
    r"^v\d+$".into()
}

impl Default for PatternRule {
    fn default() -> Self {
        PatternRule {
            severity: Severity::Off,
            pattern: version_regex(),
        }
    }
}

/// `{ severity, days }`: the sunset comes at least `days` after the deprecation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    #[serde(default = "warn")]
    pub severity: Severity,
    #[serde(default = "thirty")]
    pub days: u32,
}

fn thirty() -> u32 {
    30
}

impl Default for WindowRule {
    fn default() -> Self {
        WindowRule {
            severity: Severity::Warn,
            days: thirty(),
        }
    }
}

/// `[governance]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceSection {
    /// Every API names an owner team (`[apis.catalog] owner`).
    pub owner_required: Severity,
    /// APIs for these audiences (default partner and public) have an owner team with a contact.
    pub contact_required_for: AudienceRule,
    /// APIs for these audiences or of these classifications have `[apis.auth]`.
    pub auth_required_for: AuthRule,
    /// A restricted API is internal only; a confidential one is not public.
    pub restricted_not_public: Severity,
    /// Versions match a pattern (default `^v\d+$`).
    pub version_pattern: PatternRule,
    /// `sunset_at` at least `days` after `deprecated_at`.
    pub min_deprecation_window: WindowRule,
    /// A deprecated API names its successor.
    pub successor_required: Severity,
    /// APIs for these audiences (default public) have an OpenAPI document.
    pub openapi_required_for: AudienceRule,
    /// No two APIs share a base path on the same hosts.
    pub unique_base_paths: Severity,
    /// The routes and the API's OpenAPI document agree (operations without a route, routes
    /// without an operation).
    pub openapi_drift: Severity,
    /// A reload (or `check --against`) that changes the spec of a `stable` API in a breaking
    /// way is refused: a breaking change is a new `version` entry.
    pub breaking_change_requires_new_version: Severity,
}

impl Default for GovernanceSection {
    fn default() -> Self {
        GovernanceSection {
            owner_required: Severity::Off,
            contact_required_for: AudienceRule::off(),
            auth_required_for: AuthRule::default(),
            restricted_not_public: Severity::Error,
            version_pattern: PatternRule::default(),
            min_deprecation_window: WindowRule::default(),
            successor_required: Severity::Warn,
            openapi_required_for: AudienceRule::off(),
            unique_base_paths: Severity::Warn,
            openapi_drift: Severity::Warn,
            breaking_change_requires_new_version: Severity::Error,
        }
    }
}

/// One rule broken at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub key_path: String,
    pub message: String,
}

/// Every rule, with what it asks (for `lint --format sarif` and the docs).
pub const RULES: [(&str, &str); 11] = [
    ("owner_required", "Every API names an owner team"),
    (
        "contact_required_for",
        "APIs for the listed audiences have an owner team with a contact",
    ),
    (
        "auth_required_for",
        "APIs for the listed audiences or of the listed classifications require authentication",
    ),
    (
        "restricted_not_public",
        "Restricted APIs are internal only and confidential APIs are not public",
    ),
    (
        "version_pattern",
        "API versions match the configured pattern",
    ),
    (
        "min_deprecation_window",
        "The sunset comes at least the configured number of days after the deprecation",
    ),
    ("successor_required", "A deprecated API names its successor"),
    (
        "openapi_required_for",
        "APIs for the listed audiences have an OpenAPI document",
    ),
    (
        "unique_base_paths",
        "No two APIs share a base path on the same hosts",
    ),
    (
        "openapi_drift",
        "The routes and the API's OpenAPI document describe the same operations",
    ),
    (
        "breaking_change_requires_new_version",
        "A stable API's spec changes in a breaking way only as a new version entry (on reload and check --against)",
    ),
];

/// `breaking_change_requires_new_version`: each `stable` API of `new` whose spec differs from
/// the same name and version's in `old` in a breaking way (`crate::openapi::diff`). A new
/// version entry has nothing to compare with, so it passes.
pub fn breaking_changes(old: &FileConfig, new: &FileConfig) -> Vec<Finding> {
    let severity = new.governance.breaking_change_requires_new_version;
    if severity == Severity::Off {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, api) in new.apis.iter().enumerate() {
        let stable = api
            .catalog
            .as_ref()
            .is_some_and(|c| c.lifecycle == super::catalog::Lifecycle::Stable);
        let Some(spec) = new.specs.of(i).filter(|_| stable) else {
            continue;
        };
        let Some(before) = old
            .apis
            .iter()
            .position(|a| a.name == api.name && a.version == api.version)
            .and_then(|j| old.specs.of(j))
        else {
            continue;
        };
        if before.documents == spec.documents {
            continue;
        }
        let breaking: Vec<String> = crate::openapi::diff::diff(before, spec)
            .into_iter()
            .filter(|c| c.breaking)
            .map(|c| format!("{} at #{}", c.kind, c.pointer))
            .collect();
        if breaking.is_empty() {
            continue;
        }
        let me = api_ref(&api.name, api.version.as_deref());
        let shown: Vec<&str> = breaking.iter().take(5).map(String::as_str).collect();
        out.push(Finding {
            rule: "breaking_change_requires_new_version",
            severity,
            key_path: format!("apis[{i}].catalog.openapi"),
            message: format!(
                "the spec of {me} (stable) changes in {} breaking way{}: {}{}; publish it as a new version entry",
                breaking.len(),
                if breaking.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if breaking.len() > shown.len() { ", ..." } else { "" }
            ),
        });
    }
    out
}

/// The checks of `[governance]` itself (a pattern that does not compile).
pub fn validate(g: &GovernanceSection) -> Vec<super::error::Problem> {
    let mut out = Vec::new();
    if let Err(e) = regex::Regex::new(&g.version_pattern.pattern) {
        out.push(super::error::Problem::at(
            "governance.version_pattern.pattern",
            format!("not a regular expression: {e}"),
        ));
    }
    out
}

/// Every finding of the rules that are not off, in the order of the APIs.
pub fn evaluate(cfg: &FileConfig) -> Vec<Finding> {
    let g = &cfg.governance;
    let mut out = Vec::new();
    let mut add = |rule: &'static str, severity: Severity, key_path: String, message: String| {
        if severity != Severity::Off {
            out.push(Finding {
                rule,
                severity,
                key_path,
                message,
            });
        }
    };
    let pattern = regex::Regex::new(&g.version_pattern.pattern).ok();
    let contact_for = g
        .contact_required_for
        .audiences
        .clone()
        .unwrap_or_else(|| vec![Audience::Partner, Audience::Public]);
    let openapi_for = g
        .openapi_required_for
        .audiences
        .clone()
        .unwrap_or_else(|| vec![Audience::Public]);
    for (i, api) in cfg.apis.iter().enumerate() {
        if let Some(spec) = cfg.specs.of(i) {
            for (key, message) in crate::openapi::routes::drift(i, api, spec) {
                add("openapi_drift", g.openapi_drift, key, message);
            }
        }
        let me = api_ref(&api.name, api.version.as_deref());
        let c = api.catalog.clone().unwrap_or_default();
        let at = |k: &str| format!("apis[{i}].catalog.{k}");
        if c.owner.is_none() {
            add(
                "owner_required",
                g.owner_required,
                at("owner"),
                format!("{me} has no owner team"),
            );
        }
        if c.audience.is_some_and(|a| contact_for.contains(&a)) {
            let team = c.owner.as_ref().and_then(|o| cfg.teams.get(o));
            if team.is_none_or(|t| t.contacts.is_empty()) {
                add(
                    "contact_required_for",
                    g.contact_required_for.severity,
                    at("owner"),
                    format!(
                        "{me} is for a {} audience and {}",
                        audience(c.audience),
                        if c.owner.is_some() {
                            "its owner team has no contact"
                        } else {
                            "has no owner team to contact"
                        }
                    ),
                );
            }
        }
        let auth = &g.auth_required_for;
        let by_audience = c.audience.filter(|a| auth.audiences.contains(a));
        let by_class = c
            .classification
            .filter(|k| auth.classifications.contains(k));
        if api.auth.is_none() && (by_audience.is_some() || by_class.is_some()) {
            let why = match by_class {
                Some(k) => format!("is {}", classification(Some(k))),
                None => format!("is for a {} audience", audience(by_audience)),
            };
            add(
                "auth_required_for",
                auth.severity,
                format!("apis[{i}]"),
                format!("{me} {why} and has no [apis.auth]"),
            );
        }
        let exposed = match (c.classification, c.audience) {
            (Some(Classification::Restricted), Some(a)) if a != Audience::Internal => true,
            (Some(Classification::Confidential), Some(Audience::Public)) => true,
            _ => false,
        };
        if exposed {
            add(
                "restricted_not_public",
                g.restricted_not_public,
                at("audience"),
                format!(
                    "{me} is {} but its audience is {}",
                    classification(c.classification),
                    audience(c.audience)
                ),
            );
        }
        if let (Some(v), Some(re)) = (&api.version, &pattern) {
            if !re.is_match(v) {
                add(
                    "version_pattern",
                    g.version_pattern.severity,
                    format!("apis[{i}].version"),
                    format!("{v:?} does not match {}", g.version_pattern.pattern),
                );
            }
        }
        let date = |d: &Option<String>| d.as_deref().and_then(crate::clock::parse_rfc3339);
        let days = g.min_deprecation_window.days;
        // A retired API's history cannot be changed any more: the rule is for what is planned.
        let retired = c.lifecycle == Lifecycle::Retired;
        if let (None, Some(_), false) = (date(&c.deprecated_at), date(&c.sunset_at), retired) {
            add(
                "min_deprecation_window",
                g.min_deprecation_window.severity,
                at("deprecated_at"),
                format!(
                    "{me} has a sunset and no deprecated_at: consumers get no notice before it"
                ),
            );
        }
        if let (Some(d), Some(s), false) = (date(&c.deprecated_at), date(&c.sunset_at), retired) {
            if s >= d && s - d < i64::from(days) * 86_400 {
                add(
                    "min_deprecation_window",
                    g.min_deprecation_window.severity,
                    at("sunset_at"),
                    format!(
                        "{me} is sunset {} days after its deprecation; at least {days} are asked",
                        (s - d) / 86_400
                    ),
                );
            }
        }
        // Deprecated by its lifecycle, or by a deprecated_at (the gateway then sends Deprecation).
        let deprecated = c.lifecycle == Lifecycle::Deprecated
            || (c.deprecated_at.is_some() && c.lifecycle != Lifecycle::Retired);
        if deprecated && c.successor.is_none() {
            add(
                "successor_required",
                g.successor_required,
                at("successor"),
                format!("{me} is deprecated and names no successor (name/version)"),
            );
        }
        if c.audience.is_some_and(|a| openapi_for.contains(&a)) && c.openapi.is_none() {
            add(
                "openapi_required_for",
                g.openapi_required_for.severity,
                at("openapi"),
                format!(
                    "{me} is for a {} audience and has no OpenAPI document",
                    audience(c.audience)
                ),
            );
        }
        for (j, other) in cfg.apis.iter().enumerate().take(i) {
            // Hosts compare as the router compares them: without case.
            let shared_hosts = api.hosts.is_empty()
                || other.hosts.is_empty()
                || api
                    .hosts
                    .iter()
                    .any(|h| other.hosts.iter().any(|o| o.eq_ignore_ascii_case(h)));
            if other.base_path == api.base_path && shared_hosts {
                add(
                    "unique_base_paths",
                    g.unique_base_paths,
                    format!("apis[{i}].base_path"),
                    format!(
                        "{me} has the base path {:?} of {} (apis[{j}])",
                        api.base_path,
                        api_ref(&other.name, other.version.as_deref())
                    ),
                );
                break;
            }
        }
    }
    out
}

fn audience(a: Option<Audience>) -> &'static str {
    a.map_or("unset", Audience::as_str)
}

fn classification(c: Option<Classification>) -> &'static str {
    c.map_or("unclassified", Classification::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(text: &str) -> Vec<(&'static str, Severity, String)> {
        let cfg: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        evaluate(&cfg)
            .into_iter()
            .map(|f| (f.rule, f.severity, f.key_path))
            .collect()
    }

    const TEAMS: &str = r#"
[teams.quiet]
name = "Quiet"
[teams.loud]
name = "Loud"
contacts = [{ email = "loud@example.com" }]
"#;

    fn api(extra: &str, catalog: &str) -> String {
        format!(
            "[[apis]]\nname = \"a\"\nversion = \"v1\"\nbase_path = \"/a/v1\"\n{extra}\n[apis.catalog]\n{catalog}\n"
        )
    }

    /// Each rule at `error` and at `warn`: one finding at the expected key path; `off`: none.
    #[test]
    fn every_rule_finds_what_it_names_at_its_severity() {
        let cases: [(&str, &str, &str, &str, &str); 9] = [
            ("owner_required", "owner_required = \"SEV\"", "", "", "apis[0].catalog.owner"),
            (
                "contact_required_for",
                "contact_required_for = { severity = \"SEV\" }",
                "",
                "owner = \"quiet\"\naudience = \"partner\"",
                "apis[0].catalog.owner",
            ),
            (
                "auth_required_for",
                "auth_required_for = { severity = \"SEV\", audiences = [\"public\"] }",
                "",
                "audience = \"public\"",
                "apis[0]",
            ),
            (
                "restricted_not_public",
                "restricted_not_public = \"SEV\"",
                "[apis.auth]\nmethods = [\"api_key\"]",
                "classification = \"restricted\"\naudience = \"partner\"",
                "apis[0].catalog.audience",
            ),
            (
                "version_pattern",
                "version_pattern = { severity = \"SEV\", pattern = '^v\\d+$' }",
                "",
                "",
                "apis[0].version",
            ),
            (
                "min_deprecation_window",
                "min_deprecation_window = { severity = \"SEV\", days = 90 }",
                "",
                "lifecycle = \"deprecated\"\ndeprecated_at = \"2027-01-01T00:00:00Z\"\nsunset_at = \"2027-02-01T00:00:00Z\"\nsuccessor = \"b/v2\"",
                "apis[0].catalog.sunset_at",
            ),
            (
                "successor_required",
                "successor_required = \"SEV\"",
                "",
                "lifecycle = \"deprecated\"\ndeprecated_at = \"2027-01-01T00:00:00Z\"",
                "apis[0].catalog.successor",
            ),
            (
                "openapi_required_for",
                "openapi_required_for = { severity = \"SEV\" }",
                "",
                "audience = \"public\"",
                "apis[0].catalog.openapi",
            ),
            (
                "unique_base_paths",
                "unique_base_paths = \"SEV\"",
                "",
                "",
                "apis[1].base_path",
            ),
        ];
        // Every rule off but the one under test.
        let all_off = "owner_required = \"off\"\ncontact_required_for = { severity = \"off\" }\nauth_required_for = { severity = \"off\" }\nrestricted_not_public = \"off\"\nversion_pattern = { severity = \"off\" }\nmin_deprecation_window = { severity = \"off\" }\nsuccessor_required = \"off\"\nopenapi_required_for = { severity = \"off\" }\nunique_base_paths = \"off\"\n";
        for (rule, setting, extra, catalog, path) in cases {
            let mut version = "v1";
            if rule == "version_pattern" {
                version = "1.0";
            }
            for (sev, want) in [
                ("error", Some(Severity::Error)),
                ("warn", Some(Severity::Warn)),
                ("off", None),
            ] {
                let rules: String = all_off
                    .lines()
                    .filter(|l| !l.starts_with(rule))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let mut text = format!(
                    "[governance]\n{rules}{}\n{TEAMS}\n{}",
                    setting.replace("SEV", sev),
                    api(extra, catalog).replace("\"v1\"", &format!("\"{version}\""))
                );
                if rule == "unique_base_paths" {
                    text.push_str("[[apis]]\nname = \"b\"\nbase_path = \"/a/v1\"\n");
                }
                let found = findings(&text);
                match want {
                    Some(s) => {
                        assert_eq!(found, vec![(rule, s, path.to_string())], "{rule} at {sev}")
                    }
                    None => assert!(found.is_empty(), "{rule} off: {found:?}"),
                }
            }
        }
    }

    #[test]
    fn the_defaults_guard_exposure_and_leave_inventory_alone() {
        // Confidential without auth: an error by default; no owner: nothing.
        let found = findings(&api("", "classification = \"confidential\""));
        assert_eq!(
            found,
            vec![("auth_required_for", Severity::Error, "apis[0]".into())]
        );
        let found = findings(&api(
            "[apis.auth]\nmethods = [\"api_key\"]",
            "classification = \"restricted\"\naudience = \"public\"",
        ));
        assert_eq!(
            found,
            vec![(
                "restricted_not_public",
                Severity::Error,
                "apis[0].catalog.audience".into()
            )]
        );
        // Confidential for partners is allowed; for the public it is not.
        let ok = api(
            "[apis.auth]\nmethods = [\"api_key\"]",
            "classification = \"confidential\"\naudience = \"partner\"",
        );
        assert!(findings(&ok).is_empty());
        assert!(findings(&api("", "")).is_empty());
        // A contact on the owner team satisfies contact_required_for.
        let text = format!(
            "[governance]\ncontact_required_for = {{ severity = \"error\" }}\n{TEAMS}\n{}",
            api("", "owner = \"loud\"\naudience = \"public\"")
        );
        assert!(findings(&text).is_empty());
        // Different hosts may share a base path; the same host in another case may not.
        let text = "[[apis]]\nname = \"a\"\nbase_path = \"/x\"\nhosts = [\"a.example.com\"]\n[[apis]]\nname = \"b\"\nbase_path = \"/x\"\nhosts = [\"b.example.com\"]\n";
        assert!(findings(text).is_empty());
        let text = text.replace("b.example.com", "A.Example.com");
        assert_eq!(
            findings(&text),
            vec![(
                "unique_base_paths",
                Severity::Warn,
                "apis[1].base_path".into()
            )]
        );
        // Naming auth_required_for keeps it an error.
        let text = format!(
            "[governance]\nauth_required_for = {{ audiences = [\"public\"] }}\n{}",
            api("", "audience = \"public\"")
        );
        assert_eq!(
            findings(&text),
            vec![("auth_required_for", Severity::Error, "apis[0]".into())]
        );
    }

    #[test]
    fn the_deprecation_window_counts_whole_days_and_needs_a_notice() {
        let window = |dep: Option<&str>, sunset: &str, lifecycle: &str| {
            let mut catalog = format!(
                "lifecycle = \"{lifecycle}\"\nsunset_at = \"{sunset}\"\nsuccessor = \"b/v1\"\n"
            );
            if let Some(d) = dep {
                catalog.push_str(&format!("deprecated_at = \"{d}\"\n"));
            }
            findings(&format!(
                "[governance]\nmin_deprecation_window = {{ severity = \"error\", days = 30 }}\n{}",
                api("", &catalog)
            ))
        };
        let d = Some("2027-01-01T00:00:00Z");
        assert!(
            window(d, "2027-01-31T00:00:00Z", "deprecated").is_empty(),
            "exactly 30 days"
        );
        assert_eq!(window(d, "2027-01-30T23:59:59Z", "deprecated").len(), 1);
        assert_eq!(
            window(None, "2027-01-31T00:00:00Z", "stable"),
            vec![(
                "min_deprecation_window",
                Severity::Error,
                "apis[0].catalog.deprecated_at".into()
            )]
        );
        assert!(
            window(d, "2027-01-02T00:00:00Z", "retired").is_empty(),
            "history is left alone"
        );
        // A deprecated_at makes an API deprecated for successor_required, whatever its lifecycle.
        let found = findings(&api("", "deprecated_at = \"2027-01-01T00:00:00Z\""));
        assert_eq!(
            found,
            vec![(
                "successor_required",
                Severity::Warn,
                "apis[0].catalog.successor".into()
            )]
        );
    }

    #[test]
    fn a_pattern_that_does_not_compile_is_a_problem() {
        let g = GovernanceSection {
            version_pattern: PatternRule {
                severity: Severity::Warn,
                pattern: "(".into(),
            },
            ..Default::default()
        };
        assert_eq!(
            validate(&g)[0].key_path,
            "governance.version_pattern.pattern"
        );
        assert!(validate(&GovernanceSection::default()).is_empty());
    }
}

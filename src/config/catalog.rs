//! The file model of the API catalogue: `[apis.catalog]` (what an API is, who owns it, where it
//! is in its lifecycle) and `[teams.ID]`, with their checks (key paths, every problem at once).

use super::error::Problem;
use super::file::FileConfig;
use serde::Deserialize;

/// Where an API is in its lifecycle.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Design,
    Beta,
    #[default]
    Stable,
    Deprecated,
    Retired,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Design => "design",
            Lifecycle::Beta => "beta",
            Lifecycle::Stable => "stable",
            Lifecycle::Deprecated => "deprecated",
            Lifecycle::Retired => "retired",
        }
    }
}

/// API-led layers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApiKind {
    System,
    Process,
    Experience,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Internal,
    Partner,
    Public,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::System => "system",
            ApiKind::Process => "process",
            ApiKind::Experience => "experience",
        }
    }
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Internal => "internal",
            Audience::Partner => "partner",
            Audience::Public => "public",
        }
    }
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }
}

/// `[apis.catalog]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    pub title: Option<String>,
    pub summary: Option<String>,
    /// A team id (`[teams.ID]`).
    pub owner: Option<String>,
    pub kind: Option<ApiKind>,
    pub audience: Option<Audience>,
    pub classification: Option<Classification>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub docs_url: Option<String>,
    /// An OpenAPI document (used by contract validation; optional here).
    pub openapi: Option<String>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// RFC 3339; a future date announces the deprecation ahead of time (RFC 9745).
    pub deprecated_at: Option<String>,
    /// RFC 3339; from then on the API answers 410 `api_retired`.
    pub sunset_at: Option<String>,
    /// `name/version` of another catalogue entry.
    pub successor: Option<String>,
    pub migration_url: Option<String>,
    /// Windows before the sunset in which the API answers 410 `api_brownout`:
    /// `"2027-05-01T10:00:00Z/PT1H"` (start and ISO 8601 duration: `PnD`, `PTnH`, `PTnM`, `PTnS`
    /// or combinations).
    #[serde(default)]
    pub brownouts: Vec<String>,
    /// A recurring brownout: `duration` out of every `every`, from `from`.
    pub brownout: Option<RecurringBrownout>,
    /// A `beta` API only for consumers in one of these groups (others get 403 `api_beta`).
    #[serde(default)]
    pub beta_groups: Vec<String>,
}

/// `brownout = { every = "1d", duration = "5m", from = "2027-05-01T00:00:00Z" }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecurringBrownout {
    pub every: super::units::Dur,
    pub duration: super::units::Dur,
    pub from: String,
}

/// A brownout window `START/DURATION` in Unix seconds (start, end).
pub fn parse_window(text: &str) -> Result<(i64, i64), String> {
    let bad = || format!("{text:?} is not START/DURATION such as \"2027-05-01T10:00:00Z/PT1H\"");
    let (start, duration) = text.split_once('/').ok_or_else(bad)?;
    let start = crate::clock::parse_rfc3339(start).ok_or_else(bad)?;
    let secs = iso_duration(duration).ok_or_else(bad)?;
    if secs <= 0 {
        return Err(bad());
    }
    Ok((start, start.saturating_add(secs)))
}

/// `P1D`, `PT1H30M`, `P1DT2H`, `PT45S`: seconds.
fn iso_duration(text: &str) -> Option<i64> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total: i64 = 0;
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        for ch in part.chars() {
            if ch.is_ascii_digit() {
                num.push(ch);
                continue;
            }
            let (_, mult) = units.iter().find(|(u, _)| *u == ch)?;
            let n: i64 = num.parse().ok()?;
            total = total.checked_add(n.checked_mul(*mult)?)?;
            num.clear();
        }
        num.is_empty().then_some(())
    };
    take(days, &[('D', 86_400), ('W', 7 * 86_400)])?;
    take(time, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    (text != "P" && text != "PT").then_some(total)
}

/// `[teams.ID]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub name: String,
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: Option<String>,
    pub email: Option<String>,
    pub url: Option<String>,
}

/// `name/version` (or `name` for an API without a version) of an API.
pub fn api_ref(name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{name}/{v}"),
        None => name.to_string(),
    }
}

/// `[catalog]`: the catalogue's own settings (entries are `[apis.catalog]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    /// Shadow endpoint discovery: requests that match no route, counted by path shape.
    #[serde(default = "yes")]
    pub shadow: bool,
    /// Distinct shapes kept (in memory between flushes, and in the store); the least-seen are
    /// evicted past it, and counted.
    #[serde(default = "default_shadow_shapes")]
    pub shadow_shapes: usize,
    /// How long shadow endpoint days are kept in the store.
    #[serde(default = "default_shadow_retention")]
    pub shadow_retention: super::units::Dur,
    /// Lifecycle notices: one JSON event per consumer that called a deprecated API version in
    /// the last 30 days, when it is deprecated and 30 and 7 days before its sunset.
    pub notify_webhook: Option<super::hidden::Hidden>,
    /// An environment variable holding the key that signs each notice
    /// (`X-Turnpike-Signature: sha256=HMAC`).
    pub notify_secret_env: Option<String>,
    /// How often due notices are looked for.
    #[serde(default = "default_notify_every")]
    pub notify_every: super::units::Dur,
    #[serde(default = "default_notify_timeout")]
    pub notify_timeout: super::units::Dur,
    /// Attempts after the first, with a doubling pause; a notice still not delivered is tried
    /// again at the next look.
    #[serde(default = "default_notify_retries")]
    pub notify_retries: u32,
    /// The gateway's public URL (`https://api.example.com`): the served OpenAPI documents'
    /// `servers` become it plus the API's base path.
    pub public_url: Option<String>,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            shadow: true,
            shadow_shapes: default_shadow_shapes(),
            shadow_retention: default_shadow_retention(),
            notify_webhook: None,
            notify_secret_env: None,
            notify_every: default_notify_every(),
            notify_timeout: default_notify_timeout(),
            notify_retries: default_notify_retries(),
            public_url: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_shadow_shapes() -> usize {
    10_000
}
fn default_shadow_retention() -> super::units::Dur {
    super::units::Dur(std::time::Duration::from_secs(30 * 86_400))
}
fn default_notify_every() -> super::units::Dur {
    super::units::Dur(std::time::Duration::from_secs(3_600))
}
fn default_notify_timeout() -> super::units::Dur {
    super::units::Dur(std::time::Duration::from_secs(5))
}
fn default_notify_retries() -> u32 {
    3
}

fn validate_settings(s: &CatalogSettings, out: &mut Vec<Problem>) {
    let mut add = |k: &str, m: &str| out.push(Problem::at(format!("catalog.{k}"), m));
    if !(1..=1_000_000).contains(&s.shadow_shapes) {
        add("shadow_shapes", "between 1 and 1000000");
    }
    if !(86_400..=400 * 86_400).contains(&s.shadow_retention.0.as_secs()) {
        add("shadow_retention", "from 1d to 400d");
    }
    if let Some(url) = &s.notify_webhook {
        let ok = url.expose().parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            add("notify_webhook", "an http:// or https:// URL");
        }
    }
    if let Some(var) = &s.notify_secret_env {
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            add(
                "notify_secret_env",
                "names an environment variable that is not set (or is empty)",
            );
        }
    }
    if s.notify_every.0 < std::time::Duration::from_secs(1) {
        add("notify_every", "at least 1s");
    }
    if s.notify_timeout.0 < std::time::Duration::from_millis(100) {
        add("notify_timeout", "at least 100ms");
    }
    if s.notify_retries > 20 {
        add("notify_retries", "at most 20");
    }
    if let Some(url) = &s.public_url {
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.query().is_none()
        });
        if !ok {
            add("public_url", "an http:// or https:// URL without a query");
        }
    }
}

/// Every problem of the catalogue entries, teams and `[catalog]` of `cfg`.
pub fn validate(cfg: &FileConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    validate_settings(&cfg.catalog, &mut out);
    let known: Vec<String> = cfg
        .apis
        .iter()
        .map(|a| api_ref(&a.name, a.version.as_deref()))
        .collect();
    for (id, team) in &cfg.teams {
        if team.name.trim().is_empty() {
            out.push(Problem::at(
                format!("teams.{id}.name"),
                "a team needs a name",
            ));
        }
        for (i, c) in team.contacts.iter().enumerate() {
            if c.email.is_none() && c.url.is_none() {
                out.push(Problem::at(
                    format!("teams.{id}.contacts[{i}]"),
                    "a contact needs an email or a url",
                ));
            }
            if c.email.as_deref().is_some_and(|e| !e.contains('@')) {
                out.push(Problem::at(
                    format!("teams.{id}.contacts[{i}].email"),
                    "not an email address",
                ));
            }
        }
    }
    for (i, api) in cfg.apis.iter().enumerate() {
        let Some(c) = &api.catalog else { continue };
        let key = |k: &str| format!("apis[{i}].catalog.{k}");
        if let Some(owner) = &c.owner {
            if !cfg.teams.contains_key(owner) {
                let teams: Vec<&str> = cfg.teams.keys().map(String::as_str).collect();
                out.push(Problem::at(
                    key("owner"),
                    format!(
                        "no team {owner:?}; defined: {}",
                        if teams.is_empty() {
                            "none ([teams.ID])".into()
                        } else {
                            teams.join(", ")
                        }
                    ),
                ));
            }
        }
        let date = |k: &str, v: &Option<String>, out: &mut Vec<Problem>| -> Option<i64> {
            let text = v.as_deref()?;
            let parsed = crate::clock::parse_rfc3339(text);
            if parsed.is_none() {
                out.push(Problem::at(
                    key(k),
                    format!("{text:?} is not an RFC 3339 time such as \"2027-06-30T00:00:00Z\""),
                ));
            }
            parsed
        };
        let deprecated = date("deprecated_at", &c.deprecated_at, &mut out);
        let sunset = date("sunset_at", &c.sunset_at, &mut out);
        if let (Some(d), Some(s)) = (deprecated, sunset) {
            if s < d {
                out.push(Problem::at(
                    key("sunset_at"),
                    "is before deprecated_at (RFC 9745: a resource is deprecated before its sunset)",
                ));
            }
        }
        if let Some(successor) = &c.successor {
            let me = api_ref(&api.name, api.version.as_deref());
            if *successor == me || !known.contains(successor) {
                out.push(Problem::at(
                    key("successor"),
                    format!(
                        "no other API {successor:?} (name/version); known: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        for (k, v) in [
            ("docs_url", &c.docs_url),
            ("migration_url", &c.migration_url),
        ] {
            if let Some(u) = v {
                let ok = (u.starts_with("https://") || u.starts_with("http://"))
                    && http::HeaderValue::from_str(u).is_ok()
                    && !u.contains(['<', '>', '"', ' ']);
                if !ok {
                    out.push(Problem::at(key(k), format!("{u:?} is not an http(s) URL")));
                }
            }
        }
        if c.lifecycle == Lifecycle::Design && api.upstream.is_some() {
            out.push(Problem::at(
                format!("apis[{i}].upstream"),
                "an API in design has no upstream yet: it is answered from its OpenAPI document's examples (mocks) or respond blocks",
            ));
        }
        if !c.brownouts.is_empty() || c.brownout.is_some() {
            if c.lifecycle != Lifecycle::Deprecated {
                out.push(Problem::at(
                    key("brownouts"),
                    "brownouts are for deprecated APIs (lifecycle = \"deprecated\")",
                ));
            }
            for (j, w) in c.brownouts.iter().enumerate() {
                if let Err(e) = parse_window(w) {
                    out.push(Problem::at(key(&format!("brownouts[{j}]")), e));
                }
            }
            if let Some(b) = &c.brownout {
                if b.duration.0 >= b.every.0 || b.duration.0.is_zero() {
                    out.push(Problem::at(
                        key("brownout.duration"),
                        "must be longer than 0 and shorter than every",
                    ));
                }
                if crate::clock::parse_rfc3339(&b.from).is_none() {
                    out.push(Problem::at(
                        key("brownout.from"),
                        format!("{:?} is not an RFC 3339 time", b.from),
                    ));
                }
            }
        }
        if !c.beta_groups.is_empty() {
            if c.lifecycle != Lifecycle::Beta {
                out.push(Problem::at(
                    key("beta_groups"),
                    "beta_groups are for APIs in beta (lifecycle = \"beta\")",
                ));
            }
            if api.auth.is_none() {
                out.push(Problem::at(
                    key("beta_groups"),
                    "beta_groups need [apis.auth]: consumers are known by their credentials",
                ));
            }
            for (j, g) in c.beta_groups.iter().enumerate() {
                if g.trim().is_empty() {
                    out.push(Problem::at(
                        key(&format!("beta_groups[{j}]")),
                        "an empty group name",
                    ));
                }
            }
        }
        if c.lifecycle == Lifecycle::Deprecated && c.deprecated_at.is_none() {
            out.push(Problem::at(
                key("deprecated_at"),
                "a deprecated API says since when (RFC 3339)",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brownout_windows() {
        assert_eq!(
            parse_window("2027-05-01T10:00:00Z/PT1H30M"),
            Ok((1_809_165_600, 1_809_165_600 + 5_400))
        );
        assert_eq!(iso_duration("P1DT2H"), Some(93_600));
        assert_eq!(iso_duration("PT45S"), Some(45));
        for bad in [
            "2027-05-01T10:00:00Z",
            "2027-05-01T10:00:00Z/1h",
            "x/PT1H",
            "2027-05-01T10:00:00Z/PT",
            "2027-05-01T10:00:00Z/PT1X",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}

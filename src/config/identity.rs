//! The identity part of the config: `[store]`, `[keys]`, `[[consumers]]`, `[apis.auth]` and
//! route `scopes`. Checks every problem with its key path, and compiles the config's
//! consumers and key digests and each API's auth policy.

use super::error::Problem;
use super::file::{ApiSection, AuthSection, ConsumerSection, FileConfig};
use crate::auth::AuthPolicy;
use crate::identity::key::from_hex;
use crate::identity::{ConfigIdentities, Consumer, KeyEntry};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Headers that cannot carry an API key: the gateway sets them, or they mean something else.
const RESERVED_KEY_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "x-consumer-id",
    "x-consumer-groups",
    "x-forwarded-for",
    "x-request-id",
    "traceparent",
    "cookie",
];

/// Consumer ids: what may appear in an URL path segment and a header without escaping.
pub fn is_consumer_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'))
}

/// Groups, scopes and plans: no commas or spaces (groups are sent comma-separated).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\\'))
}

fn labels(problems: &mut Vec<Problem>, key: &str, values: &[String], what: &str) {
    let mut seen = HashSet::new();
    for (i, value) in values.iter().enumerate() {
        if !is_label(value) {
            problems.push(Problem::at(
                format!("{key}[{i}]"),
                format!(
                    "{value:?}: {what} use visible ASCII without ',', '\"' or '\\' (at most 128)"
                ),
            ));
        } else if !seen.insert(value) {
            problems.push(Problem::at(
                format!("{key}[{i}]"),
                format!("{value:?} is listed twice"),
            ));
        }
    }
}

/// Every problem of the identity part of `cfg`.
pub fn validate(cfg: &FileConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if cfg.store.path.as_os_str().is_empty() {
        problems.push(Problem::at("store.path", "the store path is empty"));
    }
    let mut ids = HashMap::new();
    let mut digests = HashMap::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        consumer(&mut problems, i, c, &mut ids, &mut digests);
    }
    for (i, api) in cfg.apis.iter().enumerate() {
        api_auth(&mut problems, i, api);
    }
    problems
}

fn consumer(
    problems: &mut Vec<Problem>,
    i: usize,
    c: &ConsumerSection,
    ids: &mut HashMap<String, usize>,
    digests: &mut HashMap<[u8; 32], String>,
) {
    let key = format!("consumers[{i}]");
    if !is_consumer_id(&c.id) {
        problems.push(Problem::at(
            format!("{key}.id"),
            format!(
                "{:?}: consumer ids use letters, digits, '-', '_', '.', '@' and ':' (at most 128)",
                c.id
            ),
        ));
    } else if let Some(first) = ids.insert(c.id.clone(), i) {
        problems.push(Problem::at(
            format!("{key}.id"),
            format!(
                "consumer {:?} is already defined by consumers[{first}]",
                c.id
            ),
        ));
    }
    if let Some(plan) = &c.plan {
        if !is_label(plan) {
            problems.push(Problem::at(
                format!("{key}.plan"),
                format!("{plan:?} is not a valid plan name"),
            ));
        }
    }
    labels(problems, &format!("{key}.groups"), &c.groups, "groups");
    labels(problems, &format!("{key}.scopes"), &c.scopes, "scopes");
    for (k, ck) in c.keys.iter().enumerate() {
        let kkey = format!("{key}.keys[{k}]");
        match from_hex(&ck.sha256) {
            None => problems.push(Problem::at(
                format!("{kkey}.sha256"),
                "expected the 64 hex digits printed by `turnpike keys hash` (never the key itself)",
            )),
            Some(d) => {
                if let Some(first) = digests.insert(d, kkey.clone()) {
                    problems.push(Problem::at(
                        format!("{kkey}.sha256"),
                        format!("the same key is already given at {first}"),
                    ));
                }
            }
        }
        if let Some(t) = &ck.expires_at {
            if crate::clock::parse_rfc3339(t).is_none() {
                problems.push(Problem::at(
                    format!("{kkey}.expires_at"),
                    format!("{t:?}: expected an RFC 3339 time such as \"2027-01-01T00:00:00Z\""),
                ));
            }
        }
    }
}

fn api_auth(problems: &mut Vec<Problem>, i: usize, api: &ApiSection) {
    let key = format!("apis[{i}]");
    let Some(auth) = &api.auth else {
        for (r, route) in api.routes.iter().enumerate() {
            if !route.scopes.is_empty() {
                problems.push(Problem::at(
                    format!("{key}.routes[{r}].scopes"),
                    "scopes need callers to be identified: add [apis.auth] to this API",
                ));
            }
        }
        return;
    };
    for (r, route) in api.routes.iter().enumerate() {
        labels(
            problems,
            &format!("{key}.routes[{r}].scopes"),
            &route.scopes,
            "scopes",
        );
    }
    let akey = format!("{key}.auth");
    if auth.methods.is_empty() {
        problems.push(Problem::at(
            format!("{akey}.methods"),
            "list at least one method (\"api_key\"), or remove [apis.auth] for a public API",
        ));
    }
    let mut seen = HashSet::new();
    if auth.methods.iter().any(|m| !seen.insert(m)) {
        problems.push(Problem::at(
            format!("{akey}.methods"),
            "a method is listed twice",
        ));
    }
    let header = auth.api_key.header.to_ascii_lowercase();
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        problems.push(Problem::at(
            format!("{akey}.api_key.header"),
            format!(
                "{:?} is not a header name (letters, digits and '-')",
                auth.api_key.header
            ),
        ));
    } else if RESERVED_KEY_HEADERS.contains(&header.as_str()) || header.starts_with("x-forwarded-")
    {
        problems.push(Problem::at(
            format!("{akey}.api_key.header"),
            format!("{header:?} cannot carry API keys: the gateway or HTTP itself uses it"),
        ));
    }
    if let Some(q) = &auth.api_key.query_param {
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            problems.push(Problem::at(
                format!("{akey}.api_key.query_param"),
                format!("{q:?}: query parameter names use letters, digits, '-', '_' and '.'"),
            ));
        }
    }
    labels(
        problems,
        &format!("{akey}.allow_groups"),
        &auth.allow_groups,
        "groups",
    );
}

/// The config's consumers and digests (the config was validated).
pub fn compile_identities(cfg: &FileConfig) -> ConfigIdentities {
    let mut out = ConfigIdentities::default();
    for c in &cfg.consumers {
        out.consumers.insert(
            c.id.clone(),
            Arc::new(Consumer::new(
                &c.id,
                c.plan.clone(),
                c.groups.clone(),
                c.scopes.clone(),
                true,
            )),
        );
        for (k, ck) in c.keys.iter().enumerate() {
            if let Some(d) = from_hex(&ck.sha256) {
                out.keys.insert(
                    d,
                    Arc::new(KeyEntry {
                        key_id: ck
                            .label
                            .clone()
                            .unwrap_or_else(|| format!("config:{}:{k}", c.id)),
                        consumer: c.id.clone(),
                        expires_at: ck
                            .expires_at
                            .as_deref()
                            .and_then(crate::clock::parse_rfc3339),
                    }),
                );
            }
        }
    }
    out
}

/// An API's compiled auth policy (the config was validated).
pub fn compile_auth(auth: &AuthSection) -> Option<Arc<AuthPolicy>> {
    AuthPolicy::new(auth).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let cfg: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        validate(&cfg).iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn identity_config_problems_name_their_key() {
        let p = problems(
            r#"
[[consumers]]
id = "bad id"
groups = ["a,b", "ok", "ok"]
keys = [{ sha256 = "tpk_notadigest" }, { sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", expires_at = "tomorrow" }]

[[consumers]]
id = "x"
keys = [{ sha256 = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD" }]

[[apis]]
name = "a"
base_path = "/a"
[apis.auth]
methods = []
api_key = { header = "host", query_param = "a b" }

[[apis]]
name = "b"
base_path = "/b"
[[apis.routes]]
path = "/x"
scopes = ["w"]
"#,
        );
        let text = p.join("\n");
        for needle in [
            "consumers[0].id",
            "consumers[0].groups[0]",
            "consumers[0].groups[2]",
            "consumers[0].keys[0].sha256",
            "consumers[0].keys[1].expires_at",
            "consumers[1].keys[0].sha256: the same key is already given at consumers[0].keys[1]",
            "apis[0].auth.methods",
            "apis[0].auth.api_key.header",
            "apis[0].auth.api_key.query_param",
            "apis[1].routes[0].scopes",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }
}

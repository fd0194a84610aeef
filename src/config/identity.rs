//! The identity part of the config: `[store]`, `[keys]`, `[[consumers]]`, `[apis.auth]` and
//! route `scopes`. Checks every problem with its key path, and compiles the config's
//! consumers and key digests and each API's auth policy.

use super::error::Problem;
use super::file::{ApiSection, AuthMethod, AuthSection, ConsumerSection, FileConfig, JwtSection};
use crate::auth::jwt::{family, parse_alg, Family, JwksSource, JwtPolicy};
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
    redis(&mut problems, &cfg.store);
    let mut ids = HashMap::new();
    let mut digests = HashMap::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        consumer(&mut problems, i, c, &mut ids, &mut digests);
    }
    for (i, api) in cfg.apis.iter().enumerate() {
        api_auth(&mut problems, i, api);
    }
    plans(&mut problems, cfg);
    problems
}

/// Whether a consumer created with `plan` (or none) is allowed by `cfg`: once plans exist the
/// plan must be one of them, and one is needed unless `[consumer_defaults] plan` is set.
pub fn plan_for_new_consumer(cfg: &FileConfig, plan: Option<&str>) -> Result<(), String> {
    let known = || {
        cfg.plans
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match plan {
        Some(p) if !cfg.plans.is_empty() && !cfg.plans.contains_key(p) => {
            Err(format!("unknown plan {p:?}; known: {}", known()))
        }
        None if !cfg.plans.is_empty() && cfg.consumer_defaults.plan.is_none() => Err(format!(
            "required, the config has plans ({}) and no [consumer_defaults] plan",
            known()
        )),
        _ => Ok(()),
    }
}

/// Once plans exist, a consumer's plan must be one of them (a typo would lift every limit),
/// and a consumer without one needs `[consumer_defaults] plan`; a default plan must exist.
fn plans(problems: &mut Vec<Problem>, cfg: &FileConfig) {
    let known = || {
        let names: Vec<&str> = cfg.plans.keys().map(String::as_str).collect();
        match names.is_empty() {
            true => "no [plans] are defined".to_string(),
            false => format!("known: {}", names.join(", ")),
        }
    };
    let check = |problems: &mut Vec<Problem>, key: String, plan: &String| {
        if !cfg.plans.contains_key(plan) {
            problems.push(Problem::at(
                key,
                format!("unknown plan {plan:?}; {}", known()),
            ));
        }
    };
    if let Some(plan) = &cfg.consumer_defaults.plan {
        check(problems, "consumer_defaults.plan".into(), plan);
    }
    for (i, api) in cfg.apis.iter().enumerate() {
        let jwt = api.auth.as_ref().and_then(|a| a.jwt.as_ref());
        if let Some(plan) = jwt.and_then(|j| j.default_plan.as_ref()) {
            check(problems, format!("apis[{i}].auth.jwt.default_plan"), plan);
        }
    }
    if cfg.plans.is_empty() {
        return;
    }
    for (i, c) in cfg.consumers.iter().enumerate() {
        match &c.plan {
            Some(plan) => check(problems, format!("consumers[{i}].plan"), plan),
            None if cfg.consumer_defaults.plan.is_none() => problems.push(Problem::at(
                format!("consumers[{i}].plan"),
                format!(
                    "consumer {:?} has no plan; once [plans] exist every consumer needs one ({}), or set [consumer_defaults] plan",
                    c.id,
                    known()
                ),
            )),
            None => {}
        }
    }
}

/// `[store]`'s Redis keys. The URL itself is never echoed (it may hold a password).
fn redis(problems: &mut Vec<Problem>, s: &crate::config::file::StoreSection) {
    if let Some(url) = &s.redis_url {
        if let Err(why) = crate::cluster::check_url(url.expose()) {
            problems.push(Problem::at("store.redis_url", why));
        }
    }
    if s.redis_prefix.is_empty()
        || s.redis_prefix.len() > 64
        || !s.redis_prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        problems.push(Problem::at(
            "store.redis_prefix",
            "1 to 64 visible ASCII characters, no spaces",
        ));
    }
    if !(1..=1000).contains(&s.nodes) {
        problems.push(Problem::at("store.nodes", "between 1 and 1000"));
    }
    let ms = |d: &crate::config::units::Dur| d.0.as_millis();
    if !(50..=5000).contains(&ms(&s.sync_interval)) {
        problems.push(Problem::at(
            "store.sync_interval",
            "between 50ms and 5s (a revocation reaches every node within one interval)",
        ));
    }
    if !(10..=10_000).contains(&ms(&s.redis_timeout)) {
        problems.push(Problem::at("store.redis_timeout", "between 10ms and 10s"));
    }
    if !(1_000..=3_600_000).contains(&ms(&s.max_key_staleness))
        || ms(&s.max_key_staleness) < 4 * ms(&s.sync_interval)
    {
        problems.push(Problem::at(
            "store.max_key_staleness",
            "between 1s and 1h, and at least 4 sync_intervals",
        ));
    }
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
            if route.anonymous {
                problems.push(Problem::at(
                    format!("{key}.routes[{r}].anonymous"),
                    "the API has no [apis.auth]: every route is anonymous already",
                ));
            }
        }
        return;
    };
    for (r, route) in api.routes.iter().enumerate() {
        if route.anonymous && !route.scopes.is_empty() {
            problems.push(Problem::at(
                format!("{key}.routes[{r}].scopes"),
                "an anonymous route has no caller to hold scopes",
            ));
        }
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
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problems.push(Problem::at(
            format!("{akey}.api_key.header"),
            format!(
                "{:?} is not a header name (letters, digits, '-' and '_')",
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
    let wants_jwt = auth.methods.contains(&AuthMethod::Jwt);
    match (&auth.jwt, wants_jwt) {
        (None, true) => problems.push(Problem::at(
            format!("{akey}.methods"),
            "\"jwt\" is listed: add [apis.auth.jwt] with issuer, audience, algorithms and a key source",
        )),
        (Some(_), false) => problems.push(Problem::at(
            format!("{akey}.jwt"),
            "[apis.auth.jwt] is set but methods does not list \"jwt\"",
        )),
        (Some(j), true) => jwt_section(problems, &format!("{akey}.jwt"), j),
        (None, false) => {}
    }
}

fn jwt_section(problems: &mut Vec<Problem>, key: &str, j: &JwtSection) {
    let mut add = |k: &str, msg: String| problems.push(Problem::at(format!("{key}.{k}"), msg));
    if j.issuer.is_empty() {
        add("issuer", "the issuer is empty".into());
    }
    if j.audience.is_empty() {
        add("audience", "the audience is empty".into());
    }
    if j.consumer_claim.is_empty() {
        add("consumer_claim", "the claim name is empty".into());
    }
    let mut algs = Vec::new();
    for (i, name) in j.algorithms.iter().enumerate() {
        match parse_alg(name) {
            Some(a) if algs.contains(&a) => add(&format!("algorithms[{i}]"), format!("{name} is listed twice")),
            Some(a) => algs.push(a),
            None if name.eq_ignore_ascii_case("none") => {
                add(&format!("algorithms[{i}]"), "unsigned tokens (none) are never accepted".into())
            }
            None => add(
                &format!("algorithms[{i}]"),
                format!("{name:?}: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
            ),
        }
    }
    if j.algorithms.is_empty() {
        add(
            "algorithms",
            "list the accepted algorithms, e.g. [\"RS256\"]".into(),
        );
    }
    let families: HashSet<_> = algs.iter().map(|a| family(*a)).collect();
    let hmac = families.contains(&Family::Hmac);
    let sources = [
        j.jwks_url.is_some(),
        j.secret_env.is_some(),
        j.public_key_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        add(
            "jwks_url",
            "give exactly one of jwks_url, secret_env and public_key_file".into(),
        );
    } else if hmac && j.secret_env.is_none() {
        add(
            "algorithms",
            "HS* algorithms need secret_env (a public key must never serve as an HMAC secret)"
                .into(),
        );
    } else if !hmac && j.secret_env.is_some() && !algs.is_empty() {
        add(
            "algorithms",
            "secret_env only goes with HS256, HS384 or HS512".into(),
        );
    }
    if hmac && families.len() > 1 {
        add(
            "algorithms",
            "HS* cannot be mixed with public-key algorithms".into(),
        );
    }
    if j.public_key_file.is_some() && families.len() > 1 {
        add(
            "algorithms",
            "one public key file serves one family: RS/PS, ES or EdDSA".into(),
        );
    }
    if let Some(url) = &j.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            add("jwks_url", format!("{url:?} is not an http(s) URL"));
        }
    }
    if let Some(var) = &j.secret_env {
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            add(
                "secret_env",
                format!("{var:?} is not an environment variable name"),
            );
        }
    }
    if j.leeway.0 > std::time::Duration::from_secs(300) {
        add("leeway", "at most 5m".into());
    }
    if j.jwks_refresh.0 < std::time::Duration::from_secs(10) {
        add("jwks_refresh", "at least 10s".into());
    }
}

/// The config's consumers and digests (the config was validated).
pub fn compile_identities(cfg: &FileConfig) -> ConfigIdentities {
    let mut out = ConfigIdentities::default();
    for c in &cfg.consumers {
        out.consumers.insert(
            c.id.clone(),
            Arc::new(
                Consumer::new(
                    &c.id,
                    c.plan.clone(),
                    c.groups.clone(),
                    c.scopes.clone(),
                    true,
                )
                .with_metadata(
                    c.metadata
                        .iter()
                        .filter_map(|(k, v)| Some((k, serde_json::to_value(v).ok()?)))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|(k, v)| (*k, v)),
                ),
            ),
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

/// An API's compiled auth policy (the config was validated). `jwks` hands out the shared
/// source of a JWKS URL. Errors are (key under `[apis.auth]`, message).
pub fn compile_auth(
    auth: &AuthSection,
    beta_groups: Vec<String>,
    jwks: &mut dyn FnMut(&str, std::time::Duration) -> Arc<JwksSource>,
) -> Result<Arc<AuthPolicy>, (String, String)> {
    let jwt = match &auth.jwt {
        Some(j) if auth.methods.contains(&AuthMethod::Jwt) => {
            Some(JwtPolicy::new(j, jwks).map_err(|(k, m)| (format!("jwt.{k}"), m))?)
        }
        _ => None,
    };
    let policy = AuthPolicy::new(auth, jwt).map(|mut p| {
        p.beta_groups = beta_groups;
        p
    });
    policy.map(Arc::new).ok_or_else(|| {
        (
            "api_key.header".to_string(),
            "not a header name".to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let cfg: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        validate(&cfg).iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn jwt_config_problems_name_their_key() {
        let jwt = |body: &str| {
            problems(&format!(
                "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.auth]\nmethods = [\"jwt\"]\n[apis.auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n{body}\n"
            ))
            .join("\n")
        };
        let p = jwt("algorithms = [\"none\"]\njwks_url = \"http://127.0.0.1:1/j\"");
        assert!(
            p.contains("apis[0].auth.jwt.algorithms[0]: unsigned tokens"),
            "{p}"
        );
        let p = jwt("algorithms = [\"HS256\"]\njwks_url = \"http://127.0.0.1:1/j\"");
        assert!(p.contains("HS* algorithms need secret_env"), "{p}");
        let p = jwt("algorithms = [\"RS256\"]\nsecret_env = \"S\"");
        assert!(p.contains("secret_env only goes with HS"), "{p}");
        let p = jwt("algorithms = [\"HS256\", \"RS256\"]\nsecret_env = \"S\"");
        assert!(p.contains("cannot be mixed"), "{p}");
        let p = jwt("algorithms = [\"RS256\"]");
        assert!(p.contains("exactly one of jwks_url"), "{p}");
        let p = jwt("algorithms = [\"RS256\"]\njwks_url = \"ftp://x\"\njwks_refresh = \"1s\"");
        assert!(
            p.contains("jwt.jwks_url") && p.contains("jwt.jwks_refresh"),
            "{p}"
        );
        let p = jwt("algorithms = [\"RS512\", \"ES256\"]\njwks_url = \"https://id.example/jwks\"");
        assert!(p.is_empty(), "a JWKS may hold RSA and EC keys: {p}");
        let p = problems(
            "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.auth]\nmethods = [\"jwt\"]\n",
        )
        .join("\n");
        assert!(p.contains("add [apis.auth.jwt]"), "{p}");
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

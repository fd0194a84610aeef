//! Authentication of API callers: finds the credential an API accepts (an API key in a header
//! or query parameter, a bearer JWT), rejects ambiguous ones, resolves the consumer, and checks
//! the API's groups and the route's scopes.
//!
//! Answers: 401 `missing_credentials` (none given), 401 `invalid_credentials` (unknown,
//! revoked, expired, not verifiable or more than one), both with a `WWW-Authenticate`
//! challenge per method; 403 `forbidden` for a known caller the API or route does not allow.
//! The detail never repeats the credential.
//!
//! Keys are matched by the SHA-256 of what was presented, looked up in a hash map: the lookup
//! time depends on the digest, not on how much of a stored secret matches, so it tells an
//! attacker nothing about any key. Bearer JWTs are verified by `jwt`.

pub mod jwt;

use crate::config::file::{AuthMethod, AuthSection};
use crate::identity::{key, ConfigIdentities, Consumer, Identity, KeyLookup};
use crate::reply::{Code, Reply};
use http::HeaderName;
use jwt::JwtPolicy;
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;

/// An API's compiled auth settings.
#[derive(Debug)]
pub struct AuthPolicy {
    pub api_key: bool,
    pub header: HeaderName,
    pub query_param: Option<String>,
    pub allow_groups: Vec<String>,
    /// `[apis.catalog] beta_groups` of an API in beta: only these groups may call it.
    pub beta_groups: Vec<String>,
    pub forward_credentials: bool,
    pub jwt: Option<JwtPolicy>,
    /// The `WWW-Authenticate` challenges of 401 answers, one per method.
    pub challenges: Vec<String>,
}

impl AuthPolicy {
    pub fn new(a: &AuthSection, jwt: Option<JwtPolicy>) -> Option<AuthPolicy> {
        let header =
            HeaderName::from_bytes(a.api_key.header.to_ascii_lowercase().as_bytes()).ok()?;
        let api_key = a.methods.contains(&AuthMethod::ApiKey);
        let mut challenges = Vec::new();
        if api_key {
            let mut c = format!("ApiKey realm=\"turnpike\", header=\"{header}\"");
            if let Some(q) = &a.api_key.query_param {
                c.push_str(&format!(", query=\"{q}\""));
            }
            challenges.push(c);
        }
        let jwt = jwt.filter(|_| a.methods.contains(&AuthMethod::Jwt));
        if jwt.is_some() {
            challenges.push("Bearer realm=\"turnpike\"".to_string());
        }
        Some(AuthPolicy {
            api_key,
            header,
            query_param: a.api_key.query_param.clone(),
            allow_groups: a.allow_groups.clone(),
            beta_groups: Vec::new(),
            forward_credentials: a.forward_credentials,
            jwt,
            challenges,
        })
    }

    /// Whether `allow_groups` lets this consumer call the API.
    pub fn allows(&self, consumer: &Consumer) -> bool {
        self.allow_groups.is_empty() || consumer.in_any_group(&self.allow_groups)
    }

    fn unauthorized(&self, code: Code, detail: &str) -> Reply {
        let mut reply = Reply::new(code, detail);
        for c in &self.challenges {
            reply = reply.header("WWW-Authenticate", c.clone());
        }
        reply
    }

    /// 401 for a bearer token that does not verify (RFC 6750 `invalid_token`).
    fn invalid_token(&self, detail: &str) -> Reply {
        let mut reply = Reply::new(Code::InvalidCredentials, detail);
        for c in &self.challenges {
            let c = if c.starts_with("Bearer") {
                format!("{c}, error=\"invalid_token\"")
            } else {
                c.clone()
            };
            reply = reply.header("WWW-Authenticate", c);
        }
        reply
    }
}

/// The bearer tokens of a request's Authorization headers (the scheme is case-insensitive).
fn bearer_tokens(req: &RequestHeader) -> Vec<&[u8]> {
    req.headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| {
            let v = v.as_bytes();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
        })
        .collect()
}

/// The values of query parameter `name` in a raw query (bytes after `?`), percent-decoded.
pub fn query_values(query: &[u8], name: &str) -> Vec<Vec<u8>> {
    query
        .split(|&b| b == b'&')
        .filter_map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            (percent_decode(k) == name.as_bytes()).then(|| percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            s[i],
            s.get(i + 1).and_then(|&b| hex(b)),
            s.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Removes every `name=...` pair from a raw query, keeping the rest byte for byte.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let k = pair.split('=').next().unwrap_or("");
            percent_decode(k.as_bytes()) != name.as_bytes()
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Identifies the caller of an API with `policy` (what it may call is `authorize`'s answer).
pub async fn authenticate(
    req: &RequestHeader,
    policy: &AuthPolicy,
    config: &ConfigIdentities,
    identity: &Identity,
    now: i64,
) -> Result<Arc<Consumer>, Reply> {
    let tokens = if policy.jwt.is_some() {
        bearer_tokens(req)
    } else {
        Vec::new()
    };
    // Header values are borrowed; only query values (percent-decoded) are copies.
    let mut keys: Vec<Cow<'_, [u8]>> = Vec::new();
    if policy.api_key {
        keys.extend(
            req.headers
                .get_all(&policy.header)
                .iter()
                .map(|v| Cow::Borrowed(v.as_bytes())),
        );
        if let (Some(name), Some(query)) = (&policy.query_param, req.uri.query()) {
            keys.extend(
                query_values(query.as_bytes(), name)
                    .into_iter()
                    .map(Cow::Owned),
            );
        }
    }
    let consumer = match (keys.as_slice(), tokens.as_slice(), &policy.jwt) {
        ([], [], _) => {
            return Err(policy.unauthorized(Code::MissingCredentials, "this API needs credentials"))
        }
        ([key], [], _) => key_consumer(policy, config, identity, key, now)?,
        ([], [token], Some(jwt)) => {
            let token = std::str::from_utf8(token)
                .map_err(|_| policy.invalid_token("the bearer token is not a valid JWT"))?;
            let claims = jwt.verify(token, now).await.map_err(|why| {
                let reply = policy.invalid_token(&why.detail);
                if why.key_unknown {
                    reply
                } else {
                    reply.bad_credential()
                }
            })?;
            token_consumer(jwt, &claims, config, identity)
                .map_err(|why| policy.invalid_token(&why))?
        }
        _ => {
            return Err(policy.unauthorized(
                Code::InvalidCredentials,
                "more than one credential was sent: send exactly one",
            ))
        }
    };
    Ok(consumer)
}

/// Whether an identified consumer may call: the API's `allow_groups` and `beta_groups`, the
/// route's `scopes`.
pub fn authorize(policy: &AuthPolicy, consumer: &Consumer, scopes: &[String]) -> Result<(), Reply> {
    if !policy.allows(consumer) {
        return Err(Reply::new(
            Code::Forbidden,
            "this consumer is not allowed to call this API",
        ));
    }
    if !policy.beta_groups.is_empty() && !consumer.in_any_group(&policy.beta_groups) {
        return Err(Reply::new(
            Code::ApiBeta,
            "this API is in beta and open to invited consumers only",
        ));
    }
    if let Some(scope) = consumer.missing_scope(scopes) {
        return Err(Reply::new(
            Code::Forbidden,
            format!("this route needs the scope {scope:?}"),
        ));
    }
    Ok(())
}

/// The consumer whose API key a request presents in one of `headers` (a key the gateway knows
/// and that has not expired), for the reports on requests that match no route. Nothing is
/// refused or logged here, and the answer does not depend on it, so it tells a caller nothing.
pub fn key_holder(
    req: &RequestHeader,
    headers: &[HeaderName],
    config: &ConfigIdentities,
    identity: &Identity,
    now: i64,
) -> Option<String> {
    headers
        .iter()
        .flat_map(|h| req.headers.get_all(h).iter())
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty() && k.len() <= 512)
        .find_map(
            |k| match identity.lookup_key(config, &key::digest(k), now) {
                KeyLookup::Valid(c) => Some(c.id.clone()),
                _ => None,
            },
        )
}

/// The consumer of an API key.
fn key_consumer(
    policy: &AuthPolicy,
    config: &ConfigIdentities,
    identity: &Identity,
    key: &[u8],
    now: i64,
) -> Result<Arc<Consumer>, Reply> {
    match identity.lookup_key(config, &key::digest(key), now) {
        KeyLookup::Valid(c) => Ok(c),
        // The same answer as for an unknown or revoked key: a caller probing keys learns
        // nothing from it. The reason goes to the log (never the key).
        KeyLookup::Expired => {
            log::debug!("an expired API key was presented");
            Err(policy
                .unauthorized(Code::InvalidCredentials, "the API key is not valid")
                .bad_credential())
        }
        KeyLookup::Unknown => Err(policy
            .unauthorized(Code::InvalidCredentials, "the API key is not valid")
            .bad_credential()),
        KeyLookup::Unavailable => Err(Reply::new(
            Code::StoreUnavailable,
            "API keys cannot be checked right now; try again shortly",
        )
        .header("Retry-After", "1")),
    }
}

/// The consumer a verified token names: the configured claim. A consumer registered under that
/// id lends its plan, groups and scopes; the token's groups and scopes are added to them.
fn token_consumer(
    jwt: &JwtPolicy,
    claims: &serde_json::Value,
    config: &ConfigIdentities,
    identity: &Identity,
) -> Result<Arc<Consumer>, String> {
    let id = match claims.get(&jwt.consumer_claim) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(format!("the token has no {} claim", jwt.consumer_claim)),
    };
    if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token's {} claim is not a usable consumer id",
            jwt.consumer_claim
        ));
    }
    let mut groups = jwt
        .groups_claim
        .as_deref()
        .map(|c| jwt::claim_list(claims, c))
        .unwrap_or_default();
    let mut scopes = jwt::claim_list(claims, &jwt.scopes_claim);
    let registered = jwt
        .link_consumers
        .then(|| identity.consumer(config, &id))
        .flatten();
    let plan = registered
        .as_ref()
        .and_then(|c| c.plan.clone())
        .or_else(|| jwt.default_plan.clone());
    if let Some(c) = &registered {
        groups.extend(c.groups.iter().cloned());
        scopes.extend(c.scopes.iter().cloned());
    }
    groups.retain(|g| crate::config::identity::is_label(g));
    groups.sort();
    groups.dedup();
    scopes.sort();
    scopes.dedup();
    let from_config = registered.is_some_and(|c| c.from_config);
    Ok(Arc::new(Consumer::new(
        &id,
        plan,
        groups,
        scopes,
        from_config,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_decoded_and_stripped() {
        assert_eq!(
            query_values(b"a=1&api_key=x%2By&b=2&api%5Fkey=z", "api_key"),
            vec![b"x+y".to_vec(), b"z".to_vec()]
        );
        assert!(query_values(b"api_keyx=1", "api_key").is_empty());
        assert_eq!(
            strip_query_param("a=1&api_key=secret&b=%20&api_key", "api_key"),
            "a=1&b=%20"
        );
        assert_eq!(strip_query_param("api_key=s", "api_key"), "");
    }
}

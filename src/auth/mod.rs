//! Authentication of API callers: finds the credential an API accepts, rejects ambiguous
//! ones, resolves the consumer, and checks the API's groups and the route's scopes.
//!
//! Answers: 401 `missing_credentials` (none given), 401 `invalid_credentials` (unknown,
//! revoked, expired or ambiguous), both with `WWW-Authenticate`; 403 `forbidden` for a known
//! caller the API or route does not allow. The detail never repeats the credential.
//!
//! Keys are matched by the SHA-256 of what was presented, looked up in a hash map: the lookup
//! time depends on the digest, not on how much of a stored secret matches, so it tells an
//! attacker nothing about any key.

use crate::config::file::{AuthMethod, AuthSection};
use crate::identity::{key, ConfigIdentities, Consumer, Identity, KeyLookup};
use crate::proxy::reply::{Code, Reply};
use http::HeaderName;
use pingora::http::RequestHeader;
use std::sync::Arc;

/// An API's compiled auth settings.
#[derive(Debug)]
pub struct AuthPolicy {
    pub api_key: bool,
    pub header: HeaderName,
    pub query_param: Option<String>,
    pub allow_groups: Vec<String>,
    pub forward_credentials: bool,
    /// The `WWW-Authenticate` challenge of 401 answers.
    pub challenge: String,
}

impl AuthPolicy {
    pub fn new(a: &AuthSection) -> Option<AuthPolicy> {
        let header =
            HeaderName::from_bytes(a.api_key.header.to_ascii_lowercase().as_bytes()).ok()?;
        let mut challenge = format!("ApiKey realm=\"turnpike\", header=\"{header}\"");
        if let Some(q) = &a.api_key.query_param {
            challenge.push_str(&format!(", query=\"{q}\""));
        }
        Some(AuthPolicy {
            api_key: a.methods.contains(&AuthMethod::ApiKey),
            header,
            query_param: a.api_key.query_param.clone(),
            allow_groups: a.allow_groups.clone(),
            forward_credentials: a.forward_credentials,
            challenge,
        })
    }

    fn unauthorized(&self, code: Code, detail: &str) -> Reply {
        Reply::new(code, detail).header("WWW-Authenticate", self.challenge.clone())
    }
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

fn percent_decode(s: &[u8]) -> Vec<u8> {
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

/// Identifies the caller of an API with `policy`; `scopes` are the route's required scopes.
pub fn authenticate(
    req: &RequestHeader,
    policy: &AuthPolicy,
    scopes: &[String],
    config: &ConfigIdentities,
    identity: &Identity,
    now: i64,
) -> Result<Arc<Consumer>, Reply> {
    let mut presented: Vec<Vec<u8>> = Vec::new();
    if policy.api_key {
        presented.extend(
            req.headers
                .get_all(&policy.header)
                .iter()
                .map(|v| v.as_bytes().to_vec()),
        );
        if let (Some(name), Some(query)) = (&policy.query_param, req.uri.query()) {
            presented.extend(query_values(query.as_bytes(), name));
        }
    }
    let key = match presented.as_slice() {
        [] => {
            return Err(policy.unauthorized(Code::MissingCredentials, "this API needs an API key"))
        }
        [one] => one,
        _ => {
            return Err(policy.unauthorized(
                Code::InvalidCredentials,
                "more than one API key was sent: send exactly one",
            ))
        }
    };
    let consumer = match identity.lookup_key(config, &key::digest(key), now) {
        KeyLookup::Valid(c) => c,
        KeyLookup::Expired => {
            return Err(policy.unauthorized(Code::InvalidCredentials, "the API key has expired"))
        }
        KeyLookup::Unknown => {
            return Err(policy.unauthorized(Code::InvalidCredentials, "the API key is not valid"))
        }
    };
    if !policy.allow_groups.is_empty() && !consumer.in_any_group(&policy.allow_groups) {
        return Err(Reply::new(
            Code::Forbidden,
            "this consumer is not allowed to call this API",
        ));
    }
    if let Some(scope) = consumer.missing_scope(scopes) {
        return Err(Reply::new(
            Code::Forbidden,
            format!("this route needs the scope {scope:?}"),
        ));
    }
    Ok(consumer)
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

//! Bearer JWT verification for APIs with `jwt` in `[apis.auth] methods`.
//!
//! The algorithms are pinned per API and every key belongs to one family: HMAC keys only come
//! from `secret_env`, so a token signed with HS256 using an RSA public key as the secret is
//! refused before any signature work, and `alg: none` is not an algorithm at all. `exp` is
//! required; `nbf` and `iat` are checked with `leeway`; `iss` and `aud` must match.
//!
//! JWKS keys are fetched by `JwksSource`: on start, every `jwks_refresh`, and when a token names
//! a `kid` that is not known (at most once every 10 s, so garbage `kid`s cannot turn the gateway
//! into a load generator against the identity provider). A failed fetch keeps the keys it had.
//! `jku` and `x5u` header parameters are never followed: keys only come from the configured URL.

use crate::config::file::JwtSection;
use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Unknown-`kid` fetches happen at most this often per JWKS URL.
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

/// Parses an algorithm name as written in the config (`"RS256"`); `none` is not one.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// Why a token was refused (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub detail: String,
    /// No key is known for the token (yet): a key rotation or a JWKS outage, not evidence of a
    /// wrong credential, so the failed-authentication guard does not count it.
    pub key_unknown: bool,
}

impl From<String> for Refusal {
    fn from(detail: String) -> Self {
        Refusal {
            detail,
            key_unknown: false,
        }
    }
}

/// Where an API's verification keys come from.
pub enum KeySource {
    /// `secret_env` (HMAC) or `public_key_file` (PEM).
    Fixed(DecodingKey, Family),
    Jwks(Arc<JwksSource>),
}

/// An API's compiled JWT settings.
pub struct JwtPolicy {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub consumer_claim: String,
    pub groups_claim: Option<String>,
    pub scopes_claim: String,
    pub leeway: u64,
    pub link_consumers: bool,
    /// The plan of token consumers that no registered consumer lends one to.
    pub default_plan: Option<String>,
}

impl std::fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtPolicy {
    /// Builds the policy; `jwks` returns the shared source for a URL. Errors name the key.
    pub fn new(
        j: &JwtSection,
        jwks: &mut dyn FnMut(&str, Duration) -> Arc<JwksSource>,
    ) -> Result<JwtPolicy, (String, String)> {
        let algorithms: Vec<Algorithm> = j.algorithms.iter().filter_map(|a| parse_alg(a)).collect();
        let fam = algorithms.first().map(|a| family(*a));
        let keys = match (&j.jwks_url, &j.secret_env, &j.public_key_file) {
            (Some(url), None, None) => KeySource::Jwks(jwks(url, j.jwks_refresh.0)),
            (None, Some(var), None) => {
                let secret = std::env::var_os(var)
                    .map(|v| v.into_encoded_bytes())
                    .unwrap_or_default();
                if secret.is_empty() {
                    return Err((
                        "secret_env".into(),
                        format!("the environment variable {var} is unset or empty"),
                    ));
                }
                KeySource::Fixed(DecodingKey::from_secret(&secret), Family::Hmac)
            }
            (None, None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    (
                        "public_key_file".to_string(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let key = match fam {
                    Some(Family::Rsa) => DecodingKey::from_rsa_pem(&pem),
                    Some(Family::Ec) => DecodingKey::from_ec_pem(&pem),
                    Some(Family::Ed) => DecodingKey::from_ed_pem(&pem),
                    _ => {
                        return Err((
                            "algorithms".into(),
                            "a public key file needs RS*, PS*, ES* or EdDSA algorithms".into(),
                        ))
                    }
                }
                .map_err(|e| {
                    (
                        "public_key_file".to_string(),
                        format!(
                            "{}: not a usable PEM public key for {:?}: {e}",
                            path.display(),
                            algorithms.first()
                        ),
                    )
                })?;
                KeySource::Fixed(key, fam.unwrap_or(Family::Rsa))
            }
            _ => {
                return Err((
                    "jwks_url".into(),
                    "give exactly one of jwks_url, secret_env and public_key_file".into(),
                ))
            }
        };
        Ok(JwtPolicy {
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            algorithms,
            keys,
            consumer_claim: j.consumer_claim.clone(),
            groups_claim: j.groups_claim.clone(),
            scopes_claim: j.scopes_claim.clone(),
            leeway: j.leeway.0.as_secs(),
            link_consumers: j.link_consumers,
            default_plan: j.default_plan.clone(),
        })
    }

    /// Verifies `token` and returns its claims, or why it is refused (never the token).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Value, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| "the bearer token is not a valid JWT".to_string())?;
        if !self.algorithms.contains(&header.alg) {
            return Err(
                format!("tokens signed with {:?} are not accepted here", header.alg).into(),
            );
        }
        let key = match &self.keys {
            KeySource::Fixed(key, fam) if *fam == family(header.alg) => key.clone(),
            KeySource::Fixed(..) => {
                return Err("the token's algorithm does not fit this API's key"
                    .to_string()
                    .into())
            }
            KeySource::Jwks(src) => src
                .key_for(header.kid.as_deref(), header.alg)
                .await
                .ok_or_else(|| Refusal {
                    detail: "no known key matches the token (kid)".into(),
                    key_unknown: true,
                })?,
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired".to_string(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
            ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_string(),
            ErrorKind::InvalidAudience => "the token's audience is not accepted".to_string(),
            ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
            ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
            ErrorKind::InvalidAlgorithm => "the token's algorithm does not fit the key".to_string(),
            _ => "the token is not valid".to_string(),
        })?;
        let claims = data.claims;
        if let Some(iat) = claims.get("iat") {
            let Some(iat) = iat.as_i64().or_else(|| iat.as_f64().map(|f| f as i64)) else {
                return Err("the token's iat claim is not a number".to_string().into());
            };
            if iat > now.saturating_add(self.leeway as i64) {
                return Err("the token was issued in the future (iat)"
                    .to_string()
                    .into());
            }
        }
        Ok(claims)
    }
}

/// A claim as a list: a JSON array of strings, or a string split on spaces and commas.
pub fn claim_list(claims: &Value, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

struct JwkKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

/// One JWKS URL's keys, shared by every API that names it and kept across reloads.
pub struct JwksSource {
    pub url: String,
    pub refresh_every: Duration,
    keys: ArcSwap<Vec<JwkKey>>,
    /// When the last fetch was attempted and when one last succeeded.
    attempts: Mutex<(Option<Instant>, Option<Instant>)>,
    fetching: tokio::sync::Mutex<()>,
}

fn http_client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .ok()
        })
        .as_ref()
}

impl JwksSource {
    pub fn new(url: &str, refresh_every: Duration) -> JwksSource {
        JwksSource {
            url: url.to_string(),
            refresh_every,
            keys: ArcSwap::default(),
            attempts: Mutex::new((None, None)),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Instant>)> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the periodic refresh is due.
    pub fn due(&self) -> bool {
        let (attempt, success) = *self.attempts();
        match (attempt, success) {
            (None, _) => true,
            (Some(_), Some(ok)) => ok.elapsed() >= self.refresh_every,
            // Never fetched successfully: retry at the unknown-kid pace.
            (Some(tried), None) => tried.elapsed() >= MIN_REFETCH.min(self.refresh_every),
        }
    }

    /// Fetches the JWKS and replaces the keys; on failure the old keys stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.fetch().await
    }

    /// The fetch itself; the caller holds `fetching`.
    async fn fetch(&self) -> Result<usize, String> {
        self.attempts().0 = Some(Instant::now());
        let client = http_client().ok_or("no HTTP client")?;
        let mut resp = client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("fetching {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {}: status {}", self.url, resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_JWKS {
                return Err(format!(
                    "{}: the JWKS is larger than {MAX_JWKS} bytes",
                    self.url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("{}: not a JWKS: {e}", self.url))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                // A symmetric key published in a JWKS is no secret: never used.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            // A key pinned to an algorithm that is not a signature algorithm is skipped.
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match parse_alg(&format!("{a:?}")) {
                    Some(alg) => Some(alg),
                    None => continue,
                },
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.push(JwkKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    family,
                    key,
                });
            }
        }
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        self.attempts().1 = Some(Instant::now());
        Ok(n)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.load();
        let fits = |k: &&JwkKey| k.family == family(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            // Without a kid, only an unambiguous key is used.
            None => {
                let mut candidates = keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Some(k.key.clone()),
                    _ => None,
                }
            }
        }
    }

    /// The key for a token; an unknown `kid` triggers a fetch if none happened in the last 10 s.
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        if let Some(k) = self.find(kid, alg) {
            return Some(k);
        }
        let recently = || self.attempts().0.is_some_and(|t| t.elapsed() < MIN_REFETCH);
        if recently() {
            return None;
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if recently() {
            return self.find(kid, alg);
        }
        match self.fetch().await {
            Ok(n) => log::info!("JWKS {} fetched for an unknown kid: {n} keys", self.url),
            Err(e) => log::warn!("JWKS refresh failed, keeping the cached keys: {e}"),
        }
        self.find(kid, alg)
    }
}

/// Fetches every JWKS the current config names: at start, then every `jwks_refresh` (a source
/// that never loaded is retried every 10 s). Sources carry over reloads, so a reload does not
/// refetch.
pub struct JwksRefresher {
    pub shared: Arc<crate::state::Shared>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let sources: Vec<Arc<JwksSource>> =
                self.shared.snapshot().jwks.values().cloned().collect();
            for src in sources.into_iter().filter(|s| s.due()) {
                match src.refresh().await {
                    Ok(n) => log::info!("JWKS {} loaded: {n} keys", src.url),
                    Err(e) => log::warn!("JWKS refresh failed, keeping the cached keys: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithm: Algorithm, key: DecodingKey) -> JwtPolicy {
        JwtPolicy {
            issuer: "https://id.example/".into(),
            audience: "orders".into(),
            algorithms: vec![algorithm],
            keys: KeySource::Fixed(key, family(algorithm)),
            consumer_claim: "sub".into(),
            groups_claim: None,
            scopes_claim: "scope".into(),
            leeway: 5,
            link_consumers: false,
            default_plan: None,
        }
    }

    /// Every algorithm the issue names verifies with its own key, and none with another
    /// algorithm of the same family (the pin is per algorithm, not per family).
    #[test]
    fn every_supported_algorithm_verifies_and_is_pinned() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let now = crate::clock::now();
        let claims = serde_json::json!({"sub": "p", "iss": "https://id.example/",
            "aud": "orders", "exp": now + 60, "iat": now});
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let read =
            |name: &str| std::fs::read(fixtures.join(name)).unwrap_or_else(|e| panic!("{e}"));
        let rsa_private = read("jwt-rsa-private.pem");
        let rsa_public = read("jwt-rsa-public.pem");
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap_or_else(|e| panic!("{e}"));
        let ed =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap_or_else(|e| panic!("{e}"));
        let secret = b"an HMAC secret of a reasonable length, 0123456789";
        let ok = |e: Result<EncodingKey, jsonwebtoken::errors::Error>| {
            e.unwrap_or_else(|e| panic!("{e}"))
        };
        let ok_d = |e: Result<DecodingKey, jsonwebtoken::errors::Error>| {
            e.unwrap_or_else(|e| panic!("{e}"))
        };
        let cases: Vec<(Algorithm, EncodingKey, DecodingKey)> = vec![
            (
                Algorithm::HS256,
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            ),
            (
                Algorithm::HS384,
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            ),
            (
                Algorithm::HS512,
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            ),
            (
                Algorithm::RS256,
                ok(EncodingKey::from_rsa_pem(&rsa_private)),
                ok_d(DecodingKey::from_rsa_pem(&rsa_public)),
            ),
            (
                Algorithm::RS384,
                ok(EncodingKey::from_rsa_pem(&rsa_private)),
                ok_d(DecodingKey::from_rsa_pem(&rsa_public)),
            ),
            (
                Algorithm::RS512,
                ok(EncodingKey::from_rsa_pem(&rsa_private)),
                ok_d(DecodingKey::from_rsa_pem(&rsa_public)),
            ),
            (
                Algorithm::PS256,
                ok(EncodingKey::from_rsa_pem(&rsa_private)),
                ok_d(DecodingKey::from_rsa_pem(&rsa_public)),
            ),
            (
                Algorithm::ES384,
                ok(EncodingKey::from_ec_pem(p384.serialize_pem().as_bytes())),
                ok_d(DecodingKey::from_ec_pem(p384.public_key_pem().as_bytes())),
            ),
            (
                Algorithm::EdDSA,
                ok(EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes())),
                ok_d(DecodingKey::from_ed_pem(ed.public_key_pem().as_bytes())),
            ),
        ];
        for (alg, enc, dec) in cases {
            let token =
                encode(&Header::new(alg), &claims, &enc).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            let p = policy(alg, dec.clone());
            assert!(
                futures::executor::block_on(p.verify(&token, now)).is_ok(),
                "{alg:?}"
            );
            // The same key, pinned to another algorithm of its family, refuses the token.
            let other = match alg {
                Algorithm::HS256 => Algorithm::HS512,
                Algorithm::RS256 => Algorithm::PS256,
                Algorithm::EdDSA | Algorithm::ES384 => continue,
                _ => Algorithm::RS256,
            };
            if family(other) == family(alg) {
                let pinned = policy(other, dec);
                let why = futures::executor::block_on(pinned.verify(&token, now)).err();
                assert!(
                    why.is_some_and(|w| w.detail.contains("not accepted")),
                    "{alg:?} under {other:?}"
                );
            }
        }
    }

    #[test]
    fn families_and_claim_lists() {
        assert_eq!(parse_alg("none"), None);
        assert_eq!(parse_alg("RS256").map(family), Some(Family::Rsa));
        assert_eq!(parse_alg("PS256").map(family), Some(Family::Rsa));
        assert_eq!(parse_alg("ES384").map(family), Some(Family::Ec));
        assert_eq!(parse_alg("EdDSA").map(family), Some(Family::Ed));
        let claims = serde_json::json!({"scope": "a b,c", "groups": ["x", 1, "y"]});
        assert_eq!(claim_list(&claims, "scope"), vec!["a", "b", "c"]);
        assert_eq!(claim_list(&claims, "groups"), vec!["x", "y"]);
        assert!(claim_list(&claims, "missing").is_empty());
    }
}

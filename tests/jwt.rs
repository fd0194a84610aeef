//! Bearer JWTs end to end, against a real JWKS server on loopback: every way a token can be
//! wrong, key rotation by an unknown `kid` (fetched once, rate-limited), a JWKS outage that keeps
//! the cached keys, scopes and groups from claims, and HS256 with a secret from the environment.
//!
//! `fixtures/jwt-rsa-private.pem` is a throwaway RSA key made for these tests only.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::upstream::Upstream;
use support::{client, problem, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://id.example.test/";
const HS_SECRET: &str = "turnpike-test-hs256-secret-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A JWKS server: serves `body` with `status`, counts fetches.
struct Jwks {
    url: String,
    body: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    async fn start(body: Value) -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind jwks");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let body = Arc::new(Mutex::new(body.to_string()));
        let status = Arc::new(AtomicU16::new(200));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, s, f) = (body.clone(), status.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (b, s, f) = (b.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let code = s.load(Ordering::SeqCst);
                    let text = b.lock().map(|t| t.clone()).unwrap_or_default();
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Jwks {
            url,
            body,
            status,
            fetches,
        }
    }

    fn set(&self, body: Value) {
        if let Ok(mut b) = self.body.lock() {
            *b = body.to_string();
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn rsa_jwk() -> Value {
    serde_json::from_str(include_str!("fixtures/jwt-rsa-1.jwk.json")).expect("jwk fixture")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt-rsa-private.pem")).expect("rsa key")
}

fn claims(extra: Value) -> Value {
    let t = now();
    let mut c = json!({
        "sub": "partner-7",
        "iss": ISS,
        "aud": "orders",
        "iat": t,
        "exp": t + 300,
        "scope": "orders:read",
        "groups": ["partners"],
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).expect("sign")
}

async fn get(gw: &Gateway, path: &str, bearer: Option<&str>) -> (u16, String, Vec<String>) {
    let mut req = client().get(gw.url(path));
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let challenges = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_string())
        .collect();
    (status, r.text().await.expect("body"), challenges)
}

async fn refused(gw: &Gateway, path: &str, bearer: &str, why: &str) {
    let (_, body, challenges) = get(gw, path, Some(bearer)).await;
    let p = problem(&body, 401, "invalid_credentials");
    assert!(
        p["detail"].as_str().unwrap_or("").contains(why),
        "{why}: {p}"
    );
    assert!(
        challenges
            .iter()
            .any(|c| c.contains("error=\"invalid_token\"")),
        "{challenges:?}"
    );
    assert!(!body.contains(bearer), "the error repeats the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_callers_keys_and_rotation() {
    let up = Upstream::start("orders").await;
    let jwks = Jwks::start(json!({ "keys": [rsa_jwk()] })).await;
    // A JWKS no request ever needs: only the periodic refresh fetches it.
    let idle_jwks = Jwks::start(json!({ "keys": [rsa_jwk()] })).await;
    std::env::set_var("TURNPIKE_TEST_JWT_SECRET", HS_SECRET);
    // Many refusals from one address on purpose: the failed-authentication guard is off here
    // (tests/limits.rs tests it).
    let gw = Gateway::start_with(
        "[server.limits]\nauth_failures_per_ip = \"off\"",
        &format!(
            r#"
[upstreams.orders]
targets = [ {{ addr = "{addr}" }} ]

[[apis]]
name = "orders"
base_path = "/orders/v1"
upstream = "orders"
[apis.auth]
methods = ["jwt"]
allow_groups = ["partners"]
[apis.auth.jwt]
issuer = "{ISS}"
audience = "orders"
jwks_url = "{jwks}"
algorithms = ["RS256", "ES256"]
groups_claim = "groups"
leeway = "5s"
[[apis.routes]]
path = "/items"
[[apis.routes]]
path = "/write"
scopes = ["orders:write"]

[[apis]]
name = "internal"
base_path = "/internal"
upstream = "orders"
[apis.auth]
methods = ["jwt"]
[apis.auth.jwt]
issuer = "{ISS}"
audience = "internal"
secret_env = "TURNPIKE_TEST_JWT_SECRET"
algorithms = ["HS256"]
link_consumers = true
[[apis.routes]]
path = "/x"
[[apis.routes]]
path = "/write"
scopes = ["orders:write"]

[[apis]]
name = "periodic"
base_path = "/periodic"
upstream = "orders"
[apis.auth]
methods = ["jwt"]
[apis.auth.jwt]
issuer = "{ISS}"
audience = "periodic"
jwks_url = "{idle_jwks}"
algorithms = ["RS256"]
jwks_refresh = "10s"

[[consumers]]
id = "partner-7"
scopes = ["orders:write"]
"#,
            addr = up.addr,
            jwks = jwks.url,
            idle_jwks = idle_jwks.url,
        ),
    );
    let started = Instant::now();
    let rsa = rsa_key();

    // A good token: the upstream sees the consumer and its groups, not the token.
    let good = token(Algorithm::RS256, Some("rsa-1"), &rsa, &claims(json!({})));
    let mut ok = false;
    for _ in 0..40 {
        if get(&gw, "/orders/v1/items", Some(&good)).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a valid RS256 token was refused");
    let seen = up.last().expect("upstream saw it");
    assert_eq!(seen.header("x-consumer-id"), Some("partner-7"));
    assert_eq!(seen.header("x-consumer-groups"), Some("partners"));
    assert!(
        seen.header("authorization").is_none(),
        "the token went upstream"
    );

    // Missing credentials: 401 with a Bearer challenge.
    let (s, body, challenges) = get(&gw, "/orders/v1/items", None).await;
    assert_eq!(s, 401);
    problem(&body, 401, "missing_credentials");
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer realm=")),
        "{challenges:?}"
    );

    // Every way a token can be wrong.
    let t = now();
    let cases = [
        (claims(json!({"exp": t - 60})), "expired"),
        (claims(json!({"exp": null})), "exp"),
        (claims(json!({"nbf": t + 120})), "not valid yet"),
        (claims(json!({"iat": t + 120})), "issued in the future"),
        (claims(json!({"iss": "https://evil.example/"})), "issuer"),
        (claims(json!({"aud": "billing"})), "audience"),
    ];
    for (c, why) in &cases {
        refused(
            &gw,
            "/orders/v1/items",
            &token(Algorithm::RS256, Some("rsa-1"), &rsa, c),
            why,
        )
        .await;
    }
    let payload = b64url(claims(json!({})).to_string().as_bytes());
    let unsigned = format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#));
    refused(&gw, "/orders/v1/items", &unsigned, "not a valid JWT").await;
    let public_pem = include_bytes!("fixtures/jwt-rsa-public.pem");
    let confused = token(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(public_pem),
        &claims(json!({})),
    );
    refused(&gw, "/orders/v1/items", &confused, "not accepted").await;
    // The payload of another token (sub "admin") under the good token's signature.
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64url(claims(json!({"sub": "admin"})).to_string().as_bytes());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    refused(&gw, "/orders/v1/items", &tampered, "signature").await;

    // Scopes from the token, groups from the token. The registered consumer partner-7 has the
    // scope, but this API does not link tokens to registered consumers.
    let (_, body, _) = get(&gw, "/orders/v1/write", Some(&good)).await;
    problem(&body, 403, "forbidden");
    let writer = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa,
        &claims(json!({"scope": "orders:read orders:write"})),
    );
    assert_eq!(get(&gw, "/orders/v1/write", Some(&writer)).await.0, 200);
    let outsider = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa,
        &claims(json!({"groups": ["others"]})),
    );
    let (_, body, _) = get(&gw, "/orders/v1/items", Some(&outsider)).await;
    problem(&body, 403, "forbidden");

    // HS256 with the secret from the environment; a wrong secret is refused.
    let hs_claims = claims(json!({"aud": "internal"}));
    let hs = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        &hs_claims,
    );
    assert_eq!(get(&gw, "/internal/x", Some(&hs)).await.0, 200);
    // This API links tokens to registered consumers: partner-7 lends its scope.
    assert_eq!(get(&gw, "/internal/write", Some(&hs)).await.0, 200);
    let wrong = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"guess"),
        &hs_claims,
    );
    refused(&gw, "/internal/x", &wrong, "signature").await;

    // Claims never inject headers: a subject with CR/LF is not a consumer id, and a group with
    // CR/LF is dropped before X-Consumer-Groups is written.
    let injected = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        &claims(json!({"aud": "internal", "sub": "a\r\nX-Evil: 1"})),
    );
    refused(&gw, "/internal/x", &injected, "consumer id").await;
    let groups = token(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa,
        &claims(json!({"groups": ["partners", "x\r\nX-Evil: 1"]})),
    );
    assert_eq!(get(&gw, "/orders/v1/items", Some(&groups)).await.0, 200);
    let seen = up.last().expect("upstream");
    assert!(
        seen.header("x-evil").is_none(),
        "an injected header arrived"
    );
    assert_eq!(seen.header("x-consumer-groups"), Some("partners"));

    // Key rotation: the identity provider starts signing with a new EC key (kid ec-1). A token
    // with that kid makes the gateway fetch the JWKS again, at most once every 10 s.
    let ec = rcgen::KeyPair::generate().expect("ec key");
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec pem");
    let raw = ec.public_key_raw();
    let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
        "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])});
    let rotated = token(Algorithm::ES256, Some("ec-1"), &ec_key, &claims(json!({})));
    let before = jwks.fetches();
    jwks.set(json!({ "keys": [rsa_jwk(), ec_jwk] }));
    let mut accepted_after = None;
    let mut refused_during = 0;
    while started.elapsed() < Duration::from_secs(25) {
        if get(&gw, "/orders/v1/items", Some(&rotated)).await.0 == 200 {
            accepted_after = Some(started.elapsed());
            break;
        }
        refused_during += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        accepted_after.is_some(),
        "the rotated key was never fetched"
    );
    let fetched = jwks.fetches() - before;
    eprintln!(
        "rotated key accepted {:?} after start, {refused_during} refusals, {fetched} fetches",
        accepted_after
    );
    assert!(
        fetched <= 2,
        "{fetched} JWKS fetches for {refused_during} unknown-kid requests: not rate-limited"
    );

    // An outage of the JWKS keeps the cached keys: unknown kids trigger a fetch that fails,
    // and known keys keep working.
    jwks.status.store(503, Ordering::SeqCst);
    let stranger = token(Algorithm::RS256, Some("rsa-9"), &rsa, &claims(json!({})));
    let before = jwks.fetches();
    let deadline = Instant::now() + Duration::from_secs(15);
    while jwks.fetches() == before && Instant::now() < deadline {
        refused(&gw, "/orders/v1/items", &stranger, "no known key").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        jwks.fetches() > before,
        "no fetch was attempted during the outage"
    );
    assert_eq!(get(&gw, "/orders/v1/items", Some(&good)).await.0, 200);
    assert_eq!(get(&gw, "/orders/v1/items", Some(&rotated)).await.0, 200);
    assert!(
        gw.log().contains("keeping the cached keys"),
        "the failed fetch was not logged"
    );
    assert!(!gw.log().contains(&good), "a token reached the log");

    // The periodic refresh: fetched at start and again every jwks_refresh (10 s) on its own.
    assert!(
        started.elapsed() > Duration::from_secs(12),
        "the test ran too briefly to tell"
    );
    assert!(
        idle_jwks.fetches() >= 2,
        "{} fetches of a JWKS with a 10 s refresh after {:?}",
        idle_jwks.fetches(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_consumers_get_the_default_plan_or_are_refused_on_apis_with_plans() {
    let up = Upstream::start("orders").await;
    std::env::set_var("TURNPIKE_TEST_JWT_SECRET", HS_SECRET);
    let api = |name: &str, default_plan: &str| {
        format!(
            r#"
[[apis]]
name = "{name}"
base_path = "/{name}"
upstream = "orders"
[apis.auth]
methods = ["jwt"]
[apis.auth.jwt]
issuer = "{ISS}"
audience = "orders"
secret_env = "TURNPIKE_TEST_JWT_SECRET"
algorithms = ["HS256"]
{default_plan}
"#
        )
    };
    let gw = Gateway::start(&format!(
        "[upstreams.orders]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[plans.tiny]\nquotas = [\"2/hour\"]\n{}{}",
        up.addr,
        api("unplanned", ""),
        api("planned", "default_plan = \"tiny\""),
    ));
    let hs = token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        &claims(json!({})),
    );
    // No plan for this token: refused, never unlimited, and nothing reaches the upstream.
    let (_, body, _) = get(&gw, "/unplanned/x", Some(&hs)).await;
    problem(&body, 403, "no_plan");
    assert_eq!(up.hits(), 0);
    // The API's default plan limits the same token.
    for _ in 0..2 {
        assert_eq!(get(&gw, "/planned/x", Some(&hs)).await.0, 200);
    }
    let (_, body, _) = get(&gw, "/planned/x", Some(&hs)).await;
    problem(&body, 429, "quota_exceeded");
    assert_eq!(up.hits(), 2);

    // A default plan that names no plan is a config error with its key path.
    let bad = gw.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}[upstreams.orders]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[plans.tiny]\nquotas = [\"2/hour\"]\n{}",
            gw.header(),
            up.addr,
            api("planned", "default_plan = \"gold\""),
        ),
    )
    .expect("write");
    let (code, out, err) =
        support::run_cli(&["check", "-c", bad.to_str().unwrap_or_default()], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("apis[0].auth.jwt.default_plan: unknown plan \"gold\"; known: tiny"),
        "{err}"
    );
}

//! Identity on the request path: API key lookup with 1,000,000 keys in the index (hit and
//! miss, with and without the SHA-256 of the presented key), the whole `authenticate` call for
//! an API key, and JWT verification (RS256, ES256, HS256). Run with `cargo bench --bench identity`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pingora::http::RequestHeader;
use turnpike::auth::jwt::JwtPolicy;
use turnpike::auth::{authenticate, AuthPolicy};
use turnpike::config::file::{AuthSection, JwtSection};
use turnpike::identity::key::digest;
use turnpike::identity::{ConfigIdentities, Identity, KeyLookup};
use turnpike::store::{ConsumerRow, KeyRow};

const KEYS: usize = 1_000_000;

fn key_text(i: usize) -> String {
    format!("tpk_bench{i:027}000000")
}

/// An identity whose index holds `KEYS` keys of 1,000 consumers (the store itself is empty).
fn identity(dir: &std::path::Path) -> Identity {
    let id = Identity::open(&dir.join("bench.db"), None).unwrap_or_else(|e| panic!("{e}"));
    let consumers: Vec<ConsumerRow> = (0..1000)
        .map(|c| ConsumerRow {
            id: format!("c{c}"),
            plan: None,
            groups: vec!["partners".into()],
            scopes: vec![],
            metadata: Default::default(),
            created_at: 0,
            updated_at: 0,
        })
        .collect();
    let keys: Vec<KeyRow> = (0..KEYS)
        .map(|i| KeyRow {
            id: format!("key_{i}"),
            consumer_id: format!("c{}", i % 1000),
            digest: digest(key_text(i).as_bytes()),
            display: String::new(),
            label: None,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            replaced_by: None,
        })
        .collect();
    id.index.rebuild(&consumers, &keys);
    id
}

fn bench_keys(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let identity = identity(dir.path());
    let config = ConfigIdentities::default();
    let now = turnpike::clock::now();
    let hit = key_text(777_777);
    let miss = key_text(KEYS + 5);
    let hit_digest = digest(hit.as_bytes());
    assert!(matches!(
        identity.lookup_key(&config, &hit_digest, now),
        KeyLookup::Valid(_)
    ));
    let mut g = c.benchmark_group("api_key_1M");
    g.bench_function("index_lookup_hit", |b| {
        b.iter(|| identity.lookup_key(&config, black_box(&hit_digest), now))
    });
    g.bench_function("sha256_and_lookup_hit", |b| {
        b.iter(|| identity.lookup_key(&config, &digest(black_box(hit.as_bytes())), now))
    });
    g.bench_function("sha256_and_lookup_miss", |b| {
        b.iter(|| identity.lookup_key(&config, &digest(black_box(miss.as_bytes())), now))
    });
    let section: AuthSection =
        toml::from_str("methods = [\"api_key\"]\nallow_groups = [\"partners\"]")
            .unwrap_or_else(|e| panic!("{e}"));
    let policy = AuthPolicy::new(&section, None).unwrap_or_else(|| panic!("policy"));
    let mut req =
        RequestHeader::build("GET", b"/orders/v1/items", None).unwrap_or_else(|e| panic!("{e}"));
    req.insert_header("x-api-key", hit.as_str())
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("authenticate_api_key", |b| {
        b.iter(|| {
            futures::executor::block_on(authenticate(
                black_box(&req),
                &policy,
                &config,
                &identity,
                now,
            ))
            .is_ok()
        })
    });
    g.finish();
}

fn jwt_policy(algorithm: &str, source: &str) -> JwtPolicy {
    let section: JwtSection = toml::from_str(&format!(
        "issuer = \"https://id.example/\"\naudience = \"orders\"\nalgorithms = [\"{algorithm}\"]\n{source}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    JwtPolicy::new(&section, &mut |_, _| panic!("no JWKS here")).unwrap_or_else(|e| panic!("{e:?}"))
}

fn bench_jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let now = turnpike::clock::now();
    let claims = serde_json::json!({"sub": "partner-7", "iss": "https://id.example/", "aud": "orders",
        "iat": now, "exp": now + 3600, "scope": "orders:read"});
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");

    let rsa_private =
        std::fs::read(fixtures.join("jwt-rsa-private.pem")).unwrap_or_else(|e| panic!("{e}"));
    let rsa = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rsa_policy = jwt_policy(
        "RS256",
        &format!(
            "public_key_file = {:?}",
            fixtures.join("jwt-rsa-public.pem")
        ),
    );

    let ec = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let ec_public = dir.path().join("ec.pem");
    std::fs::write(&ec_public, ec.public_key_pem()).unwrap_or_else(|e| panic!("{e}"));
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let es_policy = jwt_policy("ES256", &format!("public_key_file = {ec_public:?}"));

    std::env::set_var(
        "TURNPIKE_BENCH_HS",
        "bench-secret-0123456789abcdef0123456789",
    );
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"bench-secret-0123456789abcdef0123456789"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hs_policy = jwt_policy("HS256", "secret_env = \"TURNPIKE_BENCH_HS\"");

    let mut g = c.benchmark_group("jwt_verify");
    for (name, token, policy) in [
        ("RS256", &rsa, &rsa_policy),
        ("ES256", &es, &es_policy),
        ("HS256", &hs, &hs_policy),
    ] {
        assert!(
            futures::executor::block_on(policy.verify(token, now)).is_ok(),
            "{name}"
        );
        g.bench_function(name, |b| {
            b.iter(|| futures::executor::block_on(policy.verify(black_box(token), now)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_keys, bench_jwt);
criterion_main!(benches);

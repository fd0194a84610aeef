//! OpenAPI documents named by `[apis.catalog] openapi`, with real public specs as fixtures
//! (`tests/fixtures/openapi/README.md`): they load through `turnpike check` (3.0 JSON and 3.1
//! YAML); `[apis.openapi] routes = true` routes exactly the spec's operations through the real
//! gateway; a spec with a remote or broken `$ref` refuses check, start and reload with the
//! spec's file, line and pointer (the running config keeps serving); drift between hand-written
//! routes and the spec is reported by the `openapi_drift` rule; the admin catalogue serves the
//! spec with its servers rewritten to `[catalog] public_url`.

mod support;

use std::path::{Path, PathBuf};
use support::upstream::Upstream;
use support::{client, run_cli, Gateway};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openapi")
        .join(name)
}

fn api(spec: &Path, extra: &str) -> String {
    format!(
        r#"
[[apis]]
name = "petstore"
version = "v1"
base_path = "/pets/v1"
upstream = "pets"
[apis.catalog]
title = "Petstore"
openapi = "{spec}"
{extra}
"#,
        spec = spec.display()
    )
}

fn config(dir: &Path, up: &str, api_text: &str) -> String {
    let text = format!("[upstreams.pets]\ntargets = [ {{ addr = \"{up}\" }} ]\n{api_text}");
    let p = dir.join("turnpike.toml");
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// Sends SIGHUP and waits for the refused reload's error in the admin status.
async fn refused_reload(gw: &Gateway) -> String {
    gw.sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, v) = support::admin(gw, "GET", "/status", None).await;
        if let Some(e) = v["last_reload"]["error"].as_str() {
            return e.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload reported: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn public_specs_load_and_broken_ones_say_where() {
    let dir = tempfile::tempdir().expect("tmp");
    for spec in [
        "petstore-3.0.json",
        "petstore-3.1.yaml",
        "uspto-3.0.json",
        "star-trek-3.0.json",
        "train-travel-3.1.json",
    ] {
        // Routes from the spec, and every schema compiled for request validation and mocks.
        let f = config(
            dir.path(),
            "127.0.0.1:9",
            &api(
                &fixture(spec),
                "[apis.openapi]\nroutes = true\nvalidate = \"request\"\nvalidate_responses = \"report\"",
            ),
        );
        let (code, out, err) = run_cli(&["check", "-c", &f], None);
        assert_eq!(code, 0, "{spec}: {out}{err}");
    }

    std::fs::write(
        dir.path().join("broken.yaml"),
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n      responses:\n        '200':\n          $ref: 'https://example.com/r.yaml#/ok'\n  /b:\n    get:\n      responses:\n        '200':\n          $ref: '#/components/responses/Gone'\n",
    )
    .expect("write");
    let f = config(
        dir.path(),
        "127.0.0.1:9",
        &api(Path::new("broken.yaml"), ""),
    );
    let (code, _, err) = run_cli(&["check", "-c", &f], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("apis[0].catalog.openapi")
            && err.contains("broken.yaml:8:11 at #/paths/~1a/get/responses/200/$ref: remote $ref"),
        "{err}"
    );
    assert!(
        err.contains(
            "broken.yaml:13:11 at #/paths/~1b/get/responses/200/$ref: $ref \"#/components/responses/Gone\" does not resolve"
        ),
        "{err}"
    );
}

#[test]
fn drift_between_routes_and_the_spec_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let routes = "[[apis.routes]]\npath = \"/pet/{petId}\"\nmethods = [\"GET\", \"DELETE\", \"PUT\"]\n[[apis.routes]]\npath = \"/legacy\"\n";
    let f = config(
        dir.path(),
        "127.0.0.1:9",
        &api(&fixture("petstore-3.0.json"), routes),
    );
    let (code, out, err) = run_cli(&["check", "-c", &f], None);
    let all = format!("{out}{err}");
    assert_eq!(code, 0, "drift warns by default: {all}");
    assert!(all.contains("openapi_drift"), "{all}");
    assert!(
        all.contains("POST /pet/{petId} is in the spec"),
        "an operation without a route: {all}"
    );
    assert!(
        all.contains("route /legacy is not in the API's OpenAPI document"),
        "{all}"
    );
    assert!(
        all.contains("PUT /pet/{petId} is routed but not in the API's OpenAPI document"),
        "{all}"
    );
    assert!(
        !all.contains("GET /pet/{petId} is"),
        "GET is in both: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_spec_serve_its_operations_only() {
    let up = Upstream::start("pets").await;
    let dir = tempfile::tempdir().expect("tmp");
    let spec = fixture("petstore-3.0.json");
    let text = format!(
        "[catalog]\npublic_url = \"https://api.example.com/\"\n[upstreams.pets]\ntargets = [ {{ addr = \"{}\" }} ]\n{}",
        up.addr,
        api(&spec, "[apis.openapi]\nroutes = true")
    );
    let gw = Gateway::start(&text);
    let c = client();
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |p: &str| c.get(gw.url(p)).send();
    assert_eq!(status(get("/pets/v1/pet/42").await.expect("get")), 200);
    assert_eq!(
        up.last().map(|s| s.uri).as_deref(),
        Some("/pets/v1/pet/42"),
        "proxied as routed"
    );
    assert_eq!(
        status(
            get("/pets/v1/pet/findByStatus?status=sold")
                .await
                .expect("get")
        ),
        200
    );
    // PATCH is not an operation of /pet/{petId}; /pet/42/photos is no path of the spec.
    let patch = c
        .patch(gw.url("/pets/v1/pet/42"))
        .send()
        .await
        .expect("patch");
    assert_eq!(status(patch), 405);
    assert_eq!(
        status(get("/pets/v1/pet/42/photos").await.expect("get")),
        404
    );

    // The catalogue serves the spec, its servers the gateway's public URL.
    let (code, doc) =
        support::admin(&gw, "GET", "/catalog/apis/petstore/v1/openapi.json", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        doc["servers"],
        serde_json::json!([{"url": "https://api.example.com/pets/v1"}])
    );
    assert_eq!(doc["info"]["title"], "Swagger Petstore");
    assert!(doc["paths"]["/pet/{petId}"]["get"].is_object());
    let (code, _) =
        support::admin(&gw, "GET", "/catalog/apis/petstore/v2/openapi.json", None).await;
    assert_eq!(code, 404);

    // A reload with a broken spec is refused; the running routes keep serving.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "openapi: 3.0.0\npaths:\n  /x: {$ref: 'nope.yaml#/x'}\n",
    )
    .expect("write");
    let bad = text.replace(
        &spec.display().to_string(),
        &dir.path().join("bad.yaml").display().to_string(),
    );
    gw.rewrite(&bad);
    let error = refused_reload(&gw).await;
    assert!(
        error.contains("bad.yaml:3:8 at #/paths/~1x/$ref: $ref to"),
        "the refused reload names the spec's place: {error}"
    );
    assert_eq!(status(get("/pets/v1/pet/42").await.expect("get")), 200);
}

#[test]
fn imported_public_specs_round_trip_through_check() {
    let dir = tempfile::tempdir().expect("tmp");
    for spec in [
        "petstore-3.0.json",
        "petstore-3.1.yaml",
        "uspto-3.0.json",
        "star-trek-3.0.json",
        "train-travel-3.1.json",
    ] {
        let path = fixture(spec);
        let (code, out, err) = run_cli(
            &[
                "openapi",
                "import",
                &path.display().to_string(),
                "--name",
                "imported",
                "--upstream",
                "imported",
            ],
            None,
        );
        assert_eq!(code, 0, "{spec}: {err}");
        assert!(out.contains("[apis.openapi]\nroutes = true"), "{out}");
        let f = dir.path().join("turnpike.toml");
        std::fs::write(
            &f,
            format!("[upstreams.imported]\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n{out}"),
        )
        .expect("write");
        let (code, checked, err) = run_cli(&["check", "-c", &f.display().to_string()], None);
        let all = format!("{checked}{err}");
        assert_eq!(code, 0, "{spec}: {all}\n{out}");
        assert!(
            !all.contains("openapi_drift"),
            "the routes are the spec's: {all}"
        );
        if spec.starts_with("petstore") {
            assert!(out.contains("title = \"Swagger Petstore\""), "{out}");
            assert!(out.contains("header = \"api_key\""), "{out}");
            assert!(
                out.contains("#   GET, POST, DELETE /pet/{petId}  (scopes write:pets read:pets)"),
                "{out}"
            );
            assert!(
                out.contains("contacts = [{ email = \"apiteam@swagger.io\" }]"),
                "{out}"
            );
        }
    }
    // A spec that does not load: its problems, exit 2.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "openapi: 3.0.0\npaths:\n  /x: {$ref: 'nope.yaml#/x'}\n",
    )
    .expect("write");
    let bad = dir.path().join("bad.yaml").display().to_string();
    let (code, _, err) = run_cli(
        &["openapi", "import", &bad, "--name", "x", "--upstream", "x"],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:3:8"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_changes_to_a_stable_spec_need_a_new_version() {
    let up = Upstream::start("pets").await;
    let dir = tempfile::tempdir().expect("tmp");
    let v1 = std::fs::read_to_string(fixture("petstore-3.0.json")).expect("fixture");
    std::fs::write(dir.path().join("pets-v1.json"), &v1).expect("write");
    let entry = |version: &str, spec: &str| {
        format!(
            "\n[[apis]]\nname = \"petstore\"\nversion = \"{version}\"\nbase_path = \"/pets/{version}\"\nupstream = \"pets\"\n[apis.catalog]\nlifecycle = \"stable\"\nopenapi = \"{}\"\n[apis.openapi]\nroutes = true\n",
            dir.path().join(spec).display()
        )
    };
    let head = format!(
        "[upstreams.pets]\ntargets = [ {{ addr = \"{}\" }} ]\n",
        up.addr
    );
    let text = format!("{head}{}", entry("v1", "pets-v1.json"));
    let gw = Gateway::start(&text);
    let old = dir.path().join("released.toml");
    std::fs::write(&old, &text).expect("write");
    // v1's spec loses an operation: breaking.
    let mut doc: serde_json::Value = serde_json::from_str(&v1).expect("json");
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.remove("/pet/findByTags");
    }
    std::fs::write(dir.path().join("pets-v1b.json"), doc.to_string()).expect("write");
    let breaking = format!("{head}{}", entry("v1", "pets-v1b.json"));
    let next = dir.path().join("next.toml");
    std::fs::write(&next, &breaking).expect("write");
    let (code, _, err) = run_cli(
        &[
            "check",
            "-c",
            &next.display().to_string(),
            "--against",
            &old.display().to_string(),
        ],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("breaking_change_requires_new_version")
            && err.contains("the spec of petstore/v1 (stable) changes in 1 breaking way: path_removed at #/paths/~1pet~1findByTags"),
        "{err}"
    );
    gw.rewrite(&breaking);
    let error = refused_reload(&gw).await;
    assert!(
        error.contains("breaking_change_requires_new_version"),
        "{error}"
    );
    let c = client();
    let r = c
        .get(gw.url("/pets/v1/pet/findByTags?tags=a"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "the running config keeps serving");

    // The same change as a new version entry beside v1: accepted, by check and by reload.
    let as_v2 = format!(
        "{head}{}{}",
        entry("v1", "pets-v1.json"),
        entry("v2", "pets-v1b.json")
    );
    std::fs::write(&next, &as_v2).expect("write");
    let (code, _, err) = run_cli(
        &[
            "check",
            "-c",
            &next.display().to_string(),
            "--against",
            &old.display().to_string(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    gw.rewrite(&as_v2);
    let (code, v) = support::admin(&gw, "POST", "/reload", None).await;
    assert_eq!(code, 200, "{v}");
    let r = c
        .get(gw.url("/pets/v2/pet/findByStatus?status=sold"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "v2 is served");
    let (_, v) = support::admin(&gw, "GET", "/status", None).await;
    assert!(v["last_reload"]["error"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_the_spec_leaves_open_need_no_key() {
    let up = Upstream::start("pets").await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("spec.yaml"),
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\nsecurity: [{key: []}]\npaths:\n  /health:\n    get:\n      security: []\n      responses: {'200': {description: ok}}\n  /status:\n    get:\n      security: [{}, {key: []}]\n      responses: {'200': {description: ok}}\n  /orders:\n    get:\n      responses: {'200': {description: ok}}\ncomponents:\n  securitySchemes:\n    key: {type: apiKey, in: header, name: x-api-key}\n",
    )
    .expect("spec");
    let text = format!(
        "[upstreams.pets]\ntargets = [ {{ addr = \"{}\" }} ]\n[[apis]]\nname = \"shop\"\nbase_path = \"/shop\"\nupstream = \"pets\"\n[apis.auth]\nmethods = [\"api_key\"]\n[apis.catalog]\nopenapi = \"{}\"\n[apis.openapi]\nroutes = true\n",
        up.addr,
        dir.path().join("spec.yaml").display()
    );
    let gw = Gateway::start(&text);
    let c = client();
    let status = |p: &'static str| {
        let c = c.clone();
        let url = gw.url(p);
        async move { c.get(url).send().await.expect("get").status().as_u16() }
    };
    assert_eq!(status("/shop/health").await, 200, "security: [] is open");
    assert_eq!(
        status("/shop/status").await,
        200,
        "an empty alternative is open"
    );
    assert_eq!(
        status("/shop/orders").await,
        401,
        "the document's security applies"
    );

    // By hand: anonymous needs [apis.auth], and holds no scopes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[upstreams.pets]\ntargets = [ { addr = \"127.0.0.1:9\" } ]\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\nupstream = \"pets\"\n[[apis.routes]]\npath = \"/x\"\nanonymous = true\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", &bad.display().to_string()], None);
    assert_ne!(code, 0);
    assert!(err.contains("apis[0].routes[0].anonymous"), "{err}");
}

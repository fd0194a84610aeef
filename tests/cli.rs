//! The command line: `check` on good and broken configs, `run` refusing a broken config,
//! `--version` and `--help`.

mod support;

use support::run_cli;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn every_config_file_shipped_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let entries = std::fs::read_dir(root.join("conf"))
        .expect("conf/")
        .chain(std::fs::read_dir(root.join("loadtest")).expect("loadtest/"));
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = run_cli(&["check", "-c", &path.display().to_string()], None);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains(": ok: "), "one-line summary: {out}");
            assert_eq!(out.lines().count(), 1, "{out}");
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "quickstart.toml, turnpike.toml and the load-test scenarios"
    );
}

#[test]
fn syntax_errors_show_file_line_column_and_text() {
    let dir = tempfile::tempdir().expect("dir");
    let f = write(
        dir.path(),
        "bad.toml",
        "[server]\nlisten = [\"127.0.0.1:8080\"\nthreads = 2\n",
    );
    let (code, _, err) = run_cli(&["check", "-c", &f], None);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{f}:3:")), "file:line:col in: {err}");

    let f = write(
        dir.path(),
        "unknown.toml",
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nthredas = 2\n",
    );
    let (code, _, err) = run_cli(&["check", "-c", &f], None);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{f}:3:1:")), "{err}");
    assert!(err.contains("unknown field `thredas`"), "{err}");
    assert!(
        err.contains("| thredas = 2"),
        "the offending text is shown: {err}"
    );

    let f = write(
        dir.path(),
        "dur.toml",
        "[upstreams.a]\ntargets = [{ addr = \"127.0.0.1:1\" }]\nread_timeout = \"10 sec\"\n",
    );
    let (code, _, err) = run_cli(&["check", "-c", &f], None);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{f}:3:")) && err.contains("invalid duration"),
        "{err}"
    );
}

#[test]
fn semantic_errors_are_all_reported_with_key_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let text = r#"
[server]
listen = ["127.0.0.1:8080", "nonsense"]

[admin]
listen = "127.0.0.1:8080"

[upstreams.catalog]
targets = [ { addr = "127.0.0.1:9001", weight = 0 } ]

[upstreams.empty]
targets = []

[[apis]]
name = "catalog"
version = "v1"
base_path = "/catalog/v1"
upstream = "catalgo"

[[apis]]
name = "catalog"
version = "v1"
base_path = "/other"
upstream = "catalog"

[[apis.routes]]
path = "/items/{id}"
methods = ["GET"]

[[apis.routes]]
path = "/items/{key}"
methods = ["GET", "POST"]

[[apis.routes]]
path = "/x"
methods = ["FETCH"]
"#;
    let f = write(dir.path(), "semantic.toml", text);
    let (code, _, err) = run_cli(&["check", "-c", &f], None);
    assert_eq!(code, 1, "{err}");
    for expected in [
        "apis[0].upstream: unknown upstream \"catalgo\"; known: catalog, empty",
        "apis[1].name: API \"catalog\" version \"v1\" is already defined by apis[0]",
        "upstreams.empty.targets: an upstream needs at least one target",
        "upstreams.catalog.targets[0].weight: weight must be between 1 and 1000, got 0",
        "apis[1].routes[1]: overlaps apis[1].routes[0]",
        "server.listen[1]: invalid listen address \"nonsense\"",
        "admin.listen: address 127.0.0.1:8080 is already used by server.listen[0]",
        "apis[1].routes[2].methods: unknown method \"FETCH\"",
    ] {
        // file:line:col: key path: message, the line being where that key is written.
        let line = err
            .lines()
            .find(|l| l.ends_with(expected) || l.contains(&format!(": {expected}")))
            .unwrap_or_else(|| panic!("missing {expected:?} in:\n{err}"));
        let place = line
            .strip_prefix(&format!("{f}:"))
            .and_then(|rest| rest.split_once(": "))
            .map(|(place, _)| place)
            .unwrap_or_else(|| panic!("no file:line:col in {line:?}"));
        assert!(
            place.split(':').count() == 2 && place.split(':').all(|n| n.parse::<usize>().is_ok()),
            "{line}"
        );
    }
    assert!(err.contains("8 problems"), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:18:1: apis[0].upstream: unknown upstream \"catalgo\""
        )),
        "{err}"
    );
    // No source text beside problems found by meaning: a refused value may be a secret.
    assert!(!err.contains("    | "), "{err}");

    // `run` refuses the same file with the same report.
    let (code, _, err) = run_cli(&["run", "-c", &f], None);
    assert_eq!(code, 1);
    assert!(err.contains("unknown upstream \"catalgo\""), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_cli(&["--version"], None);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("turnpike {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = run_cli(&["--help"], None);
    assert_eq!(code, 0);
    for word in ["run", "check", "API management gateway"] {
        assert!(out.contains(word), "{out}");
    }
    let (code, out, _) = run_cli(&["run", "--help"], None);
    assert_eq!(code, 0);
    for flag in ["--config", "--daemon", "--upgrade"] {
        assert!(out.contains(flag), "{out}");
    }
    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/turnpike.toml"], None);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn the_sample_config_of_the_issue_loads_as_written() {
    let f =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/issue-sample.toml");
    let (code, out, err) = run_cli(&["check", "-c", &f.display().to_string()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok: 2 APIs, 3 routes, 1 upstreams with 2 targets"),
        "{out}"
    );
}

#[test]
fn the_auth_sample_of_the_identity_issue_loads_as_written() {
    let f =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/issue4-sample.toml");
    let (code, out, err) = run_cli(&["check", "-c", &f.display().to_string()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 APIs, 1 routes"), "{out}");
}

/// systemd's own checker on the shipped unit, pointed at the binary under test: unknown keys,
/// bad values and commands that cannot run are all reported (as warnings or errors).
#[test]
fn the_systemd_unit_verifies() {
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    assert!(
        analyze.is_ok(),
        "systemd-analyze is missing: run 'sudo apt-get install -y systemd' (make test does it as root)"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/turnpike.service")).expect("unit");
    let binary = support::binary().display().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        dir.path(),
        "turnpike.service",
        &unit.replace("/usr/local/bin/turnpike", &binary),
    );
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", &path])
        .output()
        .expect("systemd-analyze verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    assert!(err.trim().is_empty(), "systemd-analyze verify warns: {err}");
    for key in [
        "Type=forking",
        "PIDFile=",
        "ExecStartPre=",
        "ExecReload=",
        "RuntimeDirectory=",
        "StateDirectory=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "User=turnpike",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
}

#[test]
fn broken_tls_material_is_reported_by_check() {
    let dir = tempfile::tempdir().expect("dir");
    let key_a = rcgen::KeyPair::generate().expect("key");
    let key_b = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key_a)
        .expect("cert");
    let cert_path = write(dir.path(), "cert.pem", &cert.pem());
    let other_key = write(dir.path(), "other-key.pem", &key_b.serialize_pem());
    let good_key = write(dir.path(), "key.pem", &key_a.serialize_pem());
    let garbage = write(dir.path(), "garbage.pem", "not a certificate");
    let config = |cert: &str, key: &str| {
        format!("[server]\nlisten = []\n[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{key}\"\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\n")
    };
    let f = write(dir.path(), "ok.toml", &config(&cert_path, &good_key));
    let (code, out, err) = run_cli(&["check", "-c", &f], None);
    assert_eq!(code, 0, "{out}{err}");
    for (name, cert, key) in [
        ("mismatch", &cert_path, &other_key),
        ("garbage", &garbage, &good_key),
    ] {
        let f = write(dir.path(), &format!("{name}.toml"), &config(cert, key));
        let (code, _, err) = run_cli(&["check", "-c", &f], None);
        assert_eq!(code, 1, "{name}");
        // Found when compiling, and placed at the [[server.tls]] entry's line.
        assert!(
            err.contains(&format!("{f}:3:1: server.tls[0]: ")),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_quickstart_policy_cases_pass_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run_cli(
        &[
            "test",
            "-c",
            "conf/quickstart.toml",
            "conf/policytests/quickstart.toml",
        ],
        Some(root),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("10 passed, 0 failed"), "{out}");
}

//! Governance rules against the real binary: `turnpike lint` in text, JSON and SARIF (rule ids,
//! severities, key paths and the lines of the keys; exit 1 on an error), `turnpike check`
//! printing warnings and still passing, a start refused by a default rule, the running
//! gateway's `/status` listing warnings, and a reload refused by an error rule while the
//! running config keeps serving.

mod support;

use support::{client, run_cli, Gateway, ADMIN_TOKEN};

const RULES: &str = r#"
[governance]
owner_required = "warn"
version_pattern = { severity = "error", pattern = '^v\d+$' }
successor_required = "error"
"#;

/// Three APIs: one without an owner (warn), one with a version off the pattern (error), one
/// deprecated without a successor (error). `marker` is a line the test looks for.
fn body(rules: &str) -> String {
    format!(
        r#"{rules}
[teams.ops]
name = "Ops"
contacts = [{{ email = "ops@example.com" }}]

[[apis]]
name = "plain"
base_path = "/plain"
[apis.respond]
body = "plain"

[[apis]]
name = "orders"
version = "1.0"
base_path = "/orders/1.0"
[apis.respond]
body = "orders"
[apis.catalog]
owner = "ops"

[[apis]]
name = "legacy"
version = "v1"
base_path = "/legacy/v1"
[apis.respond]
body = "legacy"
[apis.catalog]
owner = "ops"
lifecycle = "deprecated"
deprecated_at = "2026-01-01T00:00:00Z"
"#
    )
}

/// The 1-based line of the first line of `file` that starts with `start`, after line `after`.
fn line_of(file: &str, after: usize, start: &str) -> usize {
    file.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| l.starts_with(start))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("no line {start:?} in\n{file}"))
}

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("gov.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn lint_reports_every_finding_with_rule_severity_key_path_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    let text = body(RULES);
    let path = write(dir.path(), &text);
    let plain = line_of(&text, 0, "name = \"plain\"") - 1;
    let version = line_of(&text, 0, "version = \"1.0\"");
    let legacy_catalog = line_of(
        &text,
        line_of(&text, 0, "name = \"legacy\""),
        "[apis.catalog]",
    );

    // Text: one line per finding, file:line:col: level[rule] key: message; exit 1.
    let (code, out, err) = run_cli(&["lint", "-c", &path, "--format", "text"], None);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{path}:{plain}:1: warning[owner_required] apis[0].catalog.owner:"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{path}:{version}:1: error[version_pattern] apis[1].version:"
        )),
        "{out}"
    );
    // A missing key is placed at its table: the legacy API's [apis.catalog] line.
    assert!(
        lines[2].starts_with(&format!("{path}:{legacy_catalog}:"))
            && lines[2].contains(" error[successor_required] apis[2].catalog.successor:"),
        "{out}"
    );
    assert!(err.contains("2 error(s), 1 warning(s)"), "{err}");

    // JSON: the same findings, counted.
    let (code, out, _) = run_cli(&["lint", "-c", &path, "--format", "json"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (v["errors"].as_u64(), v["warnings"].as_u64()),
        (Some(2), Some(1))
    );
    let f = &v["findings"][1];
    assert_eq!(f["rule"], "version_pattern");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["key_path"], "apis[1].version");
    assert_eq!(f["line"].as_u64(), Some(version as u64));

    // SARIF 2.1.0: rules declared, a result per finding with its level and region.
    let (code, out, _) = run_cli(&["lint", "-c", &path, "--format", "sarif"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("sarif json");
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "turnpike");
    let rule_ids: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    for id in [
        "config",
        "owner_required",
        "version_pattern",
        "successor_required",
        "unique_base_paths",
    ] {
        assert!(rule_ids.contains(&id), "{id} in {rule_ids:?}");
    }
    let results = run["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["level"], "warning");
    assert_eq!(results[1]["ruleId"], "version_pattern");
    assert_eq!(results[1]["level"], "error");
    let loc = &results[1]["locations"][0];
    assert_eq!(
        loc["physicalLocation"]["artifactLocation"]["uri"],
        format!("file://{path}").as_str()
    );
    assert_eq!(
        loc["physicalLocation"]["region"]["startLine"].as_u64(),
        Some(version as u64)
    );
    assert_eq!(
        loc["logicalLocations"][0]["fullyQualifiedName"],
        "apis[1].version"
    );

    // A config problem (not a governance rule) is an error of rule "config", with its line.
    let broken = text.replace("[apis.respond]\nbody = \"plain\"", "upstream = \"nowhere\"");
    let path = write(dir.path(), &broken);
    let (code, out, _) = run_cli(&["lint", "-c", &path, "--format", "json"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let config = v["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["rule"] == "config"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(config["key_path"], "apis[0].upstream");
    assert_eq!(
        config["line"].as_u64(),
        Some(line_of(&broken, 0, "upstream = \"nowhere\"") as u64)
    );

    // Warnings alone: lint exits 0.
    let warn_only = body("[governance]\nowner_required = \"warn\"\n")
        .replace("version = \"1.0\"", "version = \"v1\"")
        .replace("/orders/1.0", "/orders/v1");
    let path = write(dir.path(), &warn_only);
    let (code, out, _) = run_cli(&["lint", "-c", &path], None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning[successor_required]") && out.contains("warning[owner_required]"),
        "{out}"
    );
}

#[test]
fn check_prints_warnings_and_passes_and_refuses_errors_with_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let warn_only = body("[governance]\nowner_required = \"warn\"\n");
    let path = write(dir.path(), &warn_only);
    let (code, out, err) = run_cli(&["check", "-c", &path], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning[owner_required] apis[0].catalog.owner"),
        "{err}"
    );

    let path = write(dir.path(), &body(RULES));
    let (code, _, err) = run_cli(&["check", "-c", &path], None);
    assert_eq!(code, 1);
    let version = line_of(&body(RULES), 0, "version = \"1.0\"");
    assert!(
        err.contains(&format!(
            "{path}:{version}:1: apis[1].version: \"1.0\" does not match ^v\\d+$ (governance rule version_pattern, severity error)"
        )),
        "{err}"
    );

    // The default rules: a confidential API without [apis.auth] does not start.
    let text = "[[apis]]\nname = \"secret\"\nbase_path = \"/s\"\n[apis.respond]\nbody = \"s\"\n[apis.catalog]\nclassification = \"confidential\"\n";
    let path = write(dir.path(), text);
    let (code, _, err) = run_cli(&["check", "-c", &path], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("apis[0]: secret is confidential and has no [apis.auth] (governance rule auth_required_for"),
        "{err}"
    );
    // `run` refuses it the same way, before listening.
    let (code, _, err) = run_cli(&["run", "-c", &path], None);
    assert_eq!(code, 1);
    assert!(err.contains("governance rule auth_required_for"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_warnings_and_an_error_rule_refuses_a_reload() {
    let base = body("[governance]\nowner_required = \"warn\"\n");
    let gw = Gateway::start(&base);
    let c = client();
    let status: serde_json::Value = c
        .get(gw.admin_url("/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let warnings = status["governance"].as_array().expect("governance list");
    assert!(
        warnings.iter().any(|w| w["rule"] == "owner_required"
            && w["severity"] == "warn"
            && w["key_path"] == "apis[0].catalog.owner"),
        "{status}"
    );

    // A restricted API opened to partners: refused by the default rule, nothing changes.
    let refused = base.replace(
        "owner = \"ops\"\nlifecycle",
        "owner = \"ops\"\nclassification = \"restricted\"\naudience = \"partner\"\nlifecycle",
    );
    gw.rewrite(&refused);
    let r = c
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "invalid_config");
    let problems = v["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["key_path"] == "apis[2].catalog.audience"
                && p["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("governance rule restricted_not_public"))),
        "{v}"
    );
    let legacy = c.get(gw.url("/legacy/v1")).send().await.expect("request");
    assert_eq!(legacy.status(), 200);
    assert_eq!(legacy.text().await.expect("body"), "legacy");
}

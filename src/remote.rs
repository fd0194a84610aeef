//! Command-line actions on a running gateway, through its admin listener (the address and
//! token come from the same config file): `turnpike reload`.

use std::path::Path;
use std::process::ExitCode;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(1)
}

/// The admin listener's address as a client reaches it (a wildcard bind through loopback).
fn admin_address(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    }
}

/// `turnpike reload [--force] -c FILE`: asks the gateway running on FILE to reload it (as
/// `POST /reload`; `--force` allows a file that removes more than half of the APIs or config
/// consumers). Prints the outcome; exit 0 when the new config is in use.
pub fn reload(config: &Path, force: bool) -> ExitCode {
    let file = match crate::config::load(config) {
        Ok(f) => f,
        Err(e) => return fail(format!("{e}").trim_end()),
    };
    let token = match crate::config::compile::read_admin_token(&file.admin) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return fail(
                "no admin token: set the variable named by [admin] token_env (or token_file)",
            )
        }
        Err(p) => return fail(format!("{}: {}", p.key_path, p.message)),
    };
    let url = format!(
        "http://{}/reload{}",
        admin_address(&file.admin.listen),
        if force {
            "?allow_large_removal=true"
        } else {
            ""
        }
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start: {e}")),
    };
    let answer = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(String::from_utf8_lossy(&token.0))
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    let (status, body) = match answer {
        Ok(a) => a,
        Err(e) => return fail(format!("the admin listener at {url} did not answer: {e}")),
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status == 200 {
        println!("reloaded: config generation {}", v["config_generation"]);
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "reload refused ({status} {}): {}",
        v["code"].as_str().unwrap_or("error"),
        v["detail"].as_str().unwrap_or(&body)
    );
    for p in v["problems"].as_array().into_iter().flatten() {
        eprintln!(
            "  {}: {}: {}",
            p["location"].as_str().unwrap_or(""),
            p["key_path"].as_str().unwrap_or(""),
            p["message"].as_str().unwrap_or("")
        );
    }
    ExitCode::from(1)
}

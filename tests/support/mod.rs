//! Test support: real upstream servers on loopback, the real `turnpike` binary started with a
//! generated config, and raw-socket clients for inputs that ordinary clients refuse to send.
#![allow(dead_code)]

pub mod hook;
pub mod load;
pub mod otlp;
pub mod redis;
pub mod upstream;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A free loopback port (bound and released; the race is acceptable on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A loopback port where connections are refused for as long as this lives: bound, never
/// listening, so that no other test can take it (a released port can be).
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("bound address").port();
    DeadPort {
        _socket: socket,
        port,
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turnpike"))
}

/// A running gateway process, killed (by its PID) when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The generated `[server]` and `[admin]` part of the config file.
    header: String,
}

impl Gateway {
    /// Starts the binary with `[server]` and `[admin]` generated (plus `server_extra` lines
    /// inside `[server]`) and `body` after them.
    pub fn start_with(server_extra: &str, body: &str) -> Gateway {
        Gateway::start_full(server_extra, "", body)
    }

    /// Starts the binary with the proxy on `port` and does not wait for it to be ready.
    pub fn spawn_on(port: u16, server_extra: &str, body: &str) -> Gateway {
        Gateway::spawn_full(port, server_extra, "", body)
    }

    /// Starts the binary with `store_extra` lines inside `[store]` (Redis settings) and waits
    /// for it to be ready.
    pub fn start_with_store(store_extra: &str, body: &str) -> Gateway {
        Gateway::start_full("", store_extra, body)
    }

    /// Starts the binary on free ports and waits for it to be ready. A port found free can be
    /// taken by another test before the gateway binds it (Pingora then logs that it is in
    /// use and keeps trying): such a start is stopped and made again on other ports.
    fn start_full(server_extra: &str, store_extra: &str, body: &str) -> Gateway {
        Gateway::start_limited(None, server_extra, store_extra, body)
    }

    /// Starts the binary under `prlimit --nofile=N:N` (its open-file limit) and waits for it.
    pub fn start_with_nofile(nofile: u64, server_extra: &str, body: &str) -> Gateway {
        Gateway::start_limited(Some(nofile), server_extra, "", body)
    }

    fn start_limited(
        nofile: Option<u64>,
        server_extra: &str,
        store_extra: &str,
        body: &str,
    ) -> Gateway {
        for _ in 0..3 {
            let port = free_port();
            let mut gw = Gateway::spawn_cmd(port, server_extra, store_extra, body, nofile);
            match gw.until_ready(true) {
                Ok(()) => return gw,
                Err(log) => eprintln!("a port was taken meanwhile, starting again:\n{log}"),
            }
        }
        panic!("three starts found their ports taken");
    }

    /// Starts the binary; `server_extra` and `store_extra` go inside `[server]` and `[store]`.
    pub fn spawn_full(port: u16, server_extra: &str, store_extra: &str, body: &str) -> Gateway {
        Gateway::spawn_cmd(port, server_extra, store_extra, body, None)
    }

    fn spawn_cmd(
        port: u16,
        server_extra: &str,
        store_extra: &str,
        body: &str,
        nofile: Option<u64>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin_port = free_port();
        let d = dir.path().display();
        let header = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 2\npid_file = \"{d}/tp.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n{server_extra}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"TURNPIKE_TEST_ADMIN_TOKEN\"\n\n[store]\npath = \"{d}/turnpike.db\"\n{store_extra}\n\n"
        );
        let text = format!("{header}{body}\n");
        let config = dir.path().join("turnpike.toml");
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = match nofile {
            None => Command::new(binary()),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary());
                c
            }
        };
        let child = cmd
            .args(["run", "-c"])
            .arg(&config)
            .env("TURNPIKE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the turnpike binary");
        Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            dir,
            config,
            header,
        }
    }

    /// Rewrites the config file with the same `[server]` and `[admin]` and a new body.
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config, format!("{}{body}\n", self.header)).expect("rewrite config");
    }

    /// Rewrites the whole config file.
    pub fn rewrite_raw(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    pub fn header(&self) -> &str {
        &self.header
    }

    /// Sends SIGHUP to the gateway process this test started.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends a signal (`HUP`, `QUIT`, `TERM`...) to the gateway process this test started.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Starts another gateway process on the same config (`run` with `extra` flags), logging
    /// to `log_name` in the test's directory. The caller stops it.
    pub fn spawn_process(&self, extra: &[&str], log_name: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log_name)).expect("log file");
        Command::new(binary())
            .arg("run")
            .args(extra)
            .arg("-c")
            .arg(&self.config)
            .env("TURNPIKE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start another turnpike process")
    }

    /// Starts a new gateway process on the same config with `-u`, to take over the listening
    /// sockets from this one. The caller stops it (it is returned as a child process).
    pub fn spawn_upgrade(&self) -> Child {
        self.spawn_process(&["-u"], "gateway-new.log")
    }

    pub fn new_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway-new.log")).unwrap_or_default()
    }

    /// Waits up to `limit` for this gateway process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, limit)
    }

    pub fn start(body: &str) -> Gateway {
        Gateway::start_with("", body)
    }

    /// Waits until ready (a listen port in use is waited for: Pingora keeps trying it).
    pub fn wait_ready(&mut self) {
        let _ = self.until_ready(false);
    }

    /// Waits until ready; with `port_taken_fails`, `Err` (the log) once a listen port is found
    /// in use.
    fn until_ready(&mut self, port_taken_fails: bool) -> Result<(), String> {
        let taken = |log: &str| port_taken_fails && log.contains("is in use, will try again");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if taken(&log) {
                return Err(log);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnpike exited early ({status}); log:\n{log}");
            }
            let proxy_up = TcpStream::connect(self.addr).is_ok();
            let answer = raw_exchange(
                self.admin,
                b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            );
            // The gateway's own answer, not another server's on a taken port.
            let ready =
                answer.starts_with("HTTP/1.1 200") && answer.contains("\"status\": \"ready\"");
            if proxy_up && ready {
                // Ready through another process's listener on a taken port is not ready.
                let log = self.log();
                return if taken(&log) { Err(log) } else { Ok(()) };
            }
            if Instant::now() > deadline {
                panic!(
                    "turnpike did not become ready in 20 s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal (`TERM`, `KILL`...) to a process this test started, by PID.
pub fn send_signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid} failed");
}

/// Waits up to `limit` for a child process to exit.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Sends raw bytes and returns everything read until the peer closes or 3 s pass.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_exchange_for(addr, bytes, Duration::from_secs(3))
}

pub fn raw_exchange_for(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(wait));
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw bytes and returns the first complete response (head and Content-Length body), or
/// what was read when the peer closed or 3 s passed.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A reqwest client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Parses a problem+json body and checks the members every error answer must have.
pub fn problem(body: &str, status: u16, code: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["status"], status, "{body}");
    assert_eq!(v["code"], code, "{body}");
    for member in ["type", "title", "detail", "request_id"] {
        assert!(v[member].is_string(), "{member} missing in {body}");
    }
    v
}

/// Runs `turnpike` with arguments and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run turnpike");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The hex SHA-256 digest of an API key, as config files list keys.
pub fn key_digest(key: &str) -> String {
    turnpike::identity::key::to_hex(&turnpike::identity::key::digest(key.as_bytes()))
}

/// Calls the admin API with the test token; the answer's JSON body (`Null` when empty).
pub async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .request(method.parse().expect("method"), gw.admin_url(path))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("admin call");
    let status = r.status().as_u16();
    let text = r.text().await.expect("admin body");
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    (status, v)
}

/// The admin `/metrics` text.
pub async fn metrics_text(gw: &Gateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `name` (with its labels, if any) in a `/metrics` text; 0 without it.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Waits until the aggregator has taken exactly `n` request records (reports are exact for
/// the records taken); fails on more, or after 20 s.
pub async fn wait_records(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = metric_value(&metrics_text(gw).await, "turnpike_analytics_records_total");
        if seen >= n {
            assert_eq!(seen, n, "one record per request");
            return;
        }
        assert!(Instant::now() < deadline, "{seen} of {n} records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `[[consumers]]` blocks for `(id, key)` pairs, each with `email = "ops@ID.example"` metadata
/// and its key's digest.
pub fn consumers_toml(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(id, key)| {
            format!(
                "[[consumers]]\nid = \"{id}\"\nmetadata = {{ email = \"ops@{id}.example\" }}\nkeys = [ {{ sha256 = \"{}\" }} ]\n\n",
                key_digest(key)
            )
        })
        .collect()
}

/// Calls `path` `n` times with the key of `who` (from `keys`), expecting 200 (or 503 when the
/// path asks the upstream for it with `status=503`).
pub async fn call_as(gw: &Gateway, keys: &[(&str, &str)], who: &str, path: &str, n: usize) {
    let key = keys.iter().find(|(id, _)| *id == who).map(|(_, k)| *k);
    for _ in 0..n {
        let r = client()
            .get(gw.url(path))
            .header("x-api-key", key.unwrap_or_default())
            .send()
            .await
            .expect("call");
        let want = if path.contains("status=503") {
            503
        } else {
            200
        };
        assert_eq!(r.status().as_u16(), want, "{who} {path}");
    }
}

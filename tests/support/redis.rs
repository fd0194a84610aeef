//! A real `redis-server` on a free loopback port, started and stopped by the test (by PID),
//! with no persistence and its files in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `requirepass`, when the test wants one.
    pub password: Option<String>,
}

fn program() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server is missing: install it (sudo apt-get install -y redis-server; `make test` does it as root)"
        )
    })
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with_password(None)
    }

    /// A server that requires `password` (AUTH).
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            password: password.map(str::to_string),
        };
        r.restart();
        r
    }

    /// `redis://[:password@]127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the server again on the same port (after `stop`), empty.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new(program())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_string(), p.clone()]),
            )
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server this test started (SIGSTOP, by PID): connections stay open and
    /// nothing answers, as with a hung server or a network partition. `resume` undoes it.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            super::send_signal(c.id(), "STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            super::send_signal(c.id(), "CONT");
        }
    }

    /// Kills the server this test started (by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ping(&self) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(200))?;
        redis::cmd("PING").query(&mut conn)
    }

    /// A connection for the test's own reads.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to the test's redis-server")
    }

    /// Every value under `pattern`, read by type, as one text (for secret scans).
    pub fn dump_all(&self, pattern: &str) -> String {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("KEYS");
        let mut out = String::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE").arg(&k).query(&mut conn).expect("TYPE");
            let values: Vec<String> = match kind.as_str() {
                "string" => vec![redis::cmd("GET").arg(&k).query(&mut conn).expect("GET")],
                "list" => redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query(&mut conn)
                    .expect("LRANGE"),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&k)
                    .query(&mut conn)
                    .expect("SMEMBERS"),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query(&mut conn)
                    .expect("ZRANGE"),
                "hash" => redis::cmd("HGETALL")
                    .arg(&k)
                    .query(&mut conn)
                    .expect("HGETALL"),
                other => panic!("unexpected type {other} of {k}"),
            };
            out.push_str(&k);
            out.push('\n');
            out.push_str(&values.join("\n"));
            out.push('\n');
        }
        out
    }

    /// How many times a command ran (`INFO commandstats`), e.g. "evalsha".
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The JSON lines access log, written by the aggregator (never on the request path). A file is
//! opened in append mode and reopened on `SIGUSR1`, so logrotate can move it away and signal
//! (see `conf/logrotate/turnpike`). Successful requests may be sampled; errors are always
//! written.

use super::record::Record;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where lines go.
#[derive(Debug, Clone)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `"stdout"` or a path (relative paths are relative to `base`, the config's directory).
    pub fn from_config(configured: &Path, base: Option<&Path>) -> Target {
        if configured == Path::new("stdout") {
            return Target::Stdout;
        }
        match base {
            Some(dir) if configured.is_relative() => Target::File(dir.join(configured)),
            _ => Target::File(configured.to_path_buf()),
        }
    }
}

/// Which records an access log keeps: every error, and `sample` of the successful requests
/// (evenly spread: each success adds `sample` to a credit, and one is kept per whole credit).
#[derive(Debug, Clone)]
pub struct Sampling {
    sample: f64,
    credit: f64,
}

impl Sampling {
    pub fn new(sample: f64) -> Sampling {
        Sampling {
            sample: sample.clamp(0.0, 1.0),
            credit: 0.0,
        }
    }

    pub fn keep(&mut self, r: &Record) -> bool {
        if r.status < 400 && r.status != 0 && self.sample < 1.0 {
            self.credit += self.sample;
            if self.credit < 1.0 {
                return false;
            }
            self.credit -= 1.0;
        }
        true
    }
}

pub struct AccessLog {
    target: Target,
    file: Option<File>,
    buf: Vec<u8>,
    sampling: Sampling,
    /// Lines lost since writes started failing (`None` while they succeed): the first
    /// failure and the recovery are logged once each, not every line.
    failing: Option<u64>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => write!(f, "stdout"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl AccessLog {
    pub fn new(target: Target, sample: f64) -> AccessLog {
        let mut log = AccessLog {
            target,
            file: None,
            buf: Vec::with_capacity(64 << 10),
            sampling: Sampling::new(sample),
            failing: None,
        };
        log.reopen();
        log
    }

    /// Opens the file again (after logrotate moved it).
    pub fn reopen(&mut self) {
        let _ = self.flush();
        if let Target::File(path) = &self.target {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    log::error!("access log {}: cannot open: {e}", path.display());
                    self.file = None;
                }
            }
        }
    }

    /// Adds a record's line to the buffer (if sampling keeps it).
    pub fn add(&mut self, r: &Record) {
        if !self.sampling.keep(r) {
            return;
        }
        r.to_json_line(&mut self.buf);
        self.buf.push(b'\n');
    }

    /// Writes the buffered lines; the number of lines lost on an error is returned.
    pub fn flush(&mut self) -> Result<(), u64> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = match (&self.target, &mut self.file) {
            (Target::Stdout, _) => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buf).and_then(|_| out.flush())
            }
            (Target::File(_), Some(f)) => f.write_all(&self.buf),
            (Target::File(_), None) => Err(io::Error::other("not open")),
        };
        let lost = match result {
            Ok(()) => {
                if let Some(lost) = self.failing.take() {
                    log::info!(
                        "access log {}: writing again ({lost} lines were lost meanwhile)",
                        self.target
                    );
                }
                Ok(())
            }
            Err(e) => {
                let n = memchr::memchr_iter(b'\n', &self.buf).count() as u64;
                match &mut self.failing {
                    Some(lost) => *lost += n,
                    None => {
                        log::error!(
                            "access log {}: writes fail ({e}); lines are dropped and counted in turnpike_access_log_errors_total until it recovers",
                            self.target
                        );
                        self.failing = Some(n);
                    }
                }
                Err(n)
            }
        };
        self.buf.clear();
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_sampled_and_reopened() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("logs/access.log");
        let mut log = AccessLog::new(Target::File(path.clone()), 0.75);
        let mut r = super::super::record::sample();
        for _ in 0..400 {
            log.add(&r);
        }
        r.status = 503;
        log.add(&r);
        assert_eq!(log.flush(), Ok(()));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 301, "3 in 4 successes and the error");
        std::fs::rename(&path, dir.path().join("old.log")).expect("rotate");
        log.reopen();
        log.add(&r);
        assert_eq!(log.flush(), Ok(()));
        assert_eq!(
            std::fs::read_to_string(&path).expect("new").lines().count(),
            1
        );
    }

    #[test]
    fn a_failing_log_counts_its_lost_lines_and_notices_recovery() {
        let dir = tempfile::tempdir().expect("tmp");
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "a file where the log's directory should be").expect("write");
        let path = blocked.join("access.log");
        let mut log = AccessLog::new(Target::File(path.clone()), 1.0);
        let r = super::super::record::sample();
        log.add(&r);
        log.add(&r);
        assert_eq!(log.flush(), Err(2));
        log.add(&r);
        assert_eq!(log.flush(), Err(1));
        assert_eq!(log.failing, Some(3), "one episode, three lines");
        std::fs::remove_file(&blocked).expect("unblock");
        log.reopen();
        log.add(&r);
        assert_eq!(log.flush(), Ok(()));
        assert_eq!(log.failing, None, "recovered");
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            1
        );
    }
}

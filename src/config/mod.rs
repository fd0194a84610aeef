//! The config file: parse (TOML syntax and types, errors with file:line:col), validate (every
//! semantic problem with its key path), compile (into a `Snapshot`). `load` does the first two,
//! `load_snapshot` all three.

pub mod analytics;
pub mod catalog;
pub mod compile;
pub mod error;
pub mod file;
pub mod hidden;
pub mod identity;
pub mod policy;
pub mod units;
pub mod validate;

use crate::state::Snapshot;
use error::{locate, ConfigError, Problem};
use file::FileConfig;
use std::path::Path;

/// Parses and validates config text that came from `file` (used in messages).
pub fn parse(src: &str, file: &Path) -> Result<FileConfig, ConfigError> {
    let cfg: FileConfig = toml::from_str(src).map_err(|e| {
        let mut p = Problem::at("", e.message().to_string());
        if let Some(span) = e.span() {
            let (line, col, text) = locate(src, span.start);
            p.line_col = Some((line, col));
            p.snippet = Some(text);
        }
        ConfigError::single(file, p)
    })?;
    let problems = validate::validate(&cfg);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            problems,
        })
    }
}

/// Reads, parses and validates a config file.
pub fn load(file: &Path) -> Result<FileConfig, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::single(file, Problem::at("", format!("cannot read the file: {e}")))
    })?;
    parse(&src, file)
}

/// Reads, validates and compiles a config file into a snapshot.
pub fn load_snapshot(file: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let cfg = load(file)?;
    let generation = previous.map_or(1, |p| p.generation + 1);
    compile::compile(&cfg, previous, generation).map_err(|problems| ConfigError {
        file: file.to_path_buf(),
        problems,
    })
}

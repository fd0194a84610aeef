//! The config file: parse (TOML syntax and types, errors with file:line:col), validate (every
//! semantic problem with its key path), compile (into a `Snapshot`). `load` does the first two,
//! `load_snapshot` all three.

pub mod analytics;
pub mod catalog;
pub mod compile;
pub mod error;
pub mod file;
pub mod governance;
pub mod hidden;
pub mod identity;
pub mod policy;
pub mod spans;
pub mod telemetry;
pub mod units;
pub mod validate;

use crate::state::Snapshot;
use error::{locate, ConfigError, Problem};
use file::FileConfig;
use std::path::Path;

/// Parses config text (TOML syntax and types) without checking its meaning; a syntax error
/// carries its line, column and the text of that line.
pub fn parse_syntax(src: &str, file: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(src).map_err(|e| {
        let mut p = Problem::at("", e.message().to_string());
        if let Some(span) = e.span() {
            let (line, col, text) = locate(src, span.start);
            p.line_col = Some((line, col));
            p.snippet = Some(text);
        }
        ConfigError::single(file, p)
    })
}

/// Parses and validates config text that came from `file` (used in messages; the OpenAPI
/// documents it names are read relative to its directory).
pub fn parse(src: &str, file: &Path) -> Result<FileConfig, ConfigError> {
    let mut cfg = parse_syntax(src, file)?;
    let mut problems = crate::openapi::attach(&mut cfg, file.parent());
    problems.extend(validate::validate(&cfg));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            problems: with_lines(src, problems),
        })
    }
}

/// Gives each problem found by meaning (a key path) the line and column of that key. Not its
/// text: a refused value may be a secret (a Redis URL with its password, a webhook token), and
/// problems reach the log and the admin `/status`.
pub fn with_lines(src: &str, mut problems: Vec<Problem>) -> Vec<Problem> {
    for p in &mut problems {
        if p.line_col.is_none() && !p.key_path.is_empty() {
            if let Some((line, col, _)) = spans::locate_key(src, &p.key_path) {
                p.line_col = Some((line, col));
            }
        }
    }
    problems
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigError::single(file, Problem::at("", format!("cannot read the file: {e}")))
    })
}

/// Reads, parses and validates a config file.
pub fn load(file: &Path) -> Result<FileConfig, ConfigError> {
    parse(&read(file)?, file)
}

/// Reads, validates and compiles a config file into a snapshot.
pub fn load_snapshot(file: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let src = read(file)?;
    let cfg = parse(&src, file)?;
    if let Some(p) = previous {
        gate(&p.file, &cfg, file, &src)?;
    }
    let generation = previous.map_or(1, |p| p.generation + 1);
    compile::compile(&cfg, previous, generation).map_err(|problems| ConfigError {
        file: file.to_path_buf(),
        problems: with_lines(&src, problems),
    })
}

/// The release gate of a reload (`breaking_change_requires_new_version`): a breaking change to
/// a stable API's spec refuses the new config at severity error and is logged at warn.
pub fn gate(old: &FileConfig, new: &FileConfig, file: &Path, src: &str) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for f in governance::breaking_changes(old, new) {
        match f.severity {
            governance::Severity::Error => problems.push(Problem::at(
                f.key_path,
                format!("{} (governance rule {}, severity error)", f.message, f.rule),
            )),
            _ => log::warn!("{}: {} (governance rule {})", f.key_path, f.message, f.rule),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            problems: with_lines(src, problems),
        })
    }
}

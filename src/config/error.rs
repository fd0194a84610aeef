//! Config problems: where each one is (file, line and column for syntax, key path for meaning)
//! and what is wrong. A load either succeeds or returns every problem found.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `apis[0].upstream`, or empty for problems of the whole file.
    pub key_path: String,
    /// 1-based line and column when known.
    pub line_col: Option<(usize, usize)>,
    /// The offending source line, when known.
    pub snippet: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn at(key_path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key_path: key_path.into(),
            line_col: None,
            snippet: None,
            message: message.into(),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn single(file: &Path, problem: Problem) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.line_col {
            write!(f, "{line}:{col}: ")?;
        }
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n    | {snippet}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "{}:{p}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Converts a byte offset in `src` to a 1-based (line, column) and the text of that line.
pub fn locate(src: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    let line_end = src[line_start..]
        .find('\n')
        .map_or(src.len(), |i| line_start + i);
    (line, col, src[line_start..line_end].trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_lines_and_columns() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(locate(src, 0), (1, 1, "a = 1".into()));
        assert_eq!(locate(src, 8), (2, 3, "bb = 2".into()));
        assert_eq!(locate(src, 999).0, 3);
    }
}

//! `Hidden`: a config string that may carry a credential (a Redis URL with a password, a
//! webhook URL whose path is its token). It reads like any string from TOML and prints as
//! `<hidden>` through `Debug`, so a config printed for debugging never shows it. The value is
//! reached only through `expose`, which marks each place that hands it on.

use serde::Deserialize;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Hidden(String);

impl Hidden {
    /// The value itself, for the code that connects with it or checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Section {
        url: Hidden,
    }

    #[test]
    fn reads_as_a_string_and_never_prints() {
        let s: Section =
            toml::from_str(r#"url = "redis://:hunter2@127.0.0.1:6379/0""#).expect("a plain string");
        assert_eq!(s.url.expose(), "redis://:hunter2@127.0.0.1:6379/0");
        let printed = format!("{s:?} {:?}", Some(s.url.clone()));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<hidden>"), "{printed}");
    }
}

//! The `bot` policy: user agents refused by regular expressions (compiled once, at load, into
//! one set matched in a single pass) and, optionally, requests without a `User-Agent`.

use regex::bytes::{RegexSet, RegexSetBuilder};

/// `kind = "bot"`.
#[derive(Debug)]
pub struct Bot {
    deny: Option<RegexSet>,
    pub require_user_agent: bool,
}

/// Compiled patterns may not grow past this many bytes each (a guard against patterns that
/// explode when compiled).
const PATTERN_LIMIT: usize = 1 << 20;

impl Bot {
    /// Compiles the patterns; `Err` is (key, message) of the first bad one.
    pub fn compile(patterns: &[String], require_user_agent: bool) -> Result<Bot, (String, String)> {
        for (i, p) in patterns.iter().enumerate() {
            RegexSetBuilder::new([p])
                .size_limit(PATTERN_LIMIT)
                .build()
                .map_err(|e| {
                    (
                        format!("deny_user_agents[{i}]"),
                        format!("invalid regex: {e}"),
                    )
                })?;
        }
        if patterns.is_empty() && !require_user_agent {
            return Err((
                "deny_user_agents".into(),
                "a bot policy needs patterns or require_user_agent = true".into(),
            ));
        }
        let deny = match patterns.is_empty() {
            true => None,
            false => Some(
                RegexSetBuilder::new(patterns)
                    .size_limit(PATTERN_LIMIT.saturating_mul(patterns.len()))
                    .build()
                    .map_err(|e| {
                        (
                            "deny_user_agents".to_string(),
                            format!("invalid regex: {e}"),
                        )
                    })?,
            ),
        };
        Ok(Bot {
            deny,
            require_user_agent,
        })
    }

    /// Why the request is refused, if it is.
    pub fn refuses(&self, user_agent: Option<&[u8]>) -> Option<&'static str> {
        match user_agent {
            None | Some([]) if self.require_user_agent => {
                Some("this API needs a User-Agent header")
            }
            Some(ua) if self.deny.as_ref().is_some_and(|d| d.is_match(ua)) => {
                Some("this client is not allowed to call this API")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_missing_agents() {
        let b = Bot::compile(&["(?i)curl/".into(), "python-requests".into()], true)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(b.refuses(Some(b"CURL/8.1")).is_some());
        assert!(b.refuses(Some(b"python-requests/2")).is_some());
        assert!(b.refuses(Some(b"Mozilla/5.0")).is_none());
        assert!(b.refuses(None).is_some());
        assert!(Bot::compile(&["(unclosed".into()], false).is_err());
    }
}

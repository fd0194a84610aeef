//! The lifecycle step of an API (`[apis.catalog] lifecycle`, `deprecated_at`, `sunset_at`):
//! a deprecated API's answers all carry `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and `Link`
//! (`rel="deprecation"`, `"sunset"`, `"successor-version"`); a retired API, or one past its
//! sunset, answers 410 `api_retired` with the same links and sends nothing upstream; during a
//! brownout window before the sunset it answers 410 `api_brownout`. Dates are compared per
//! request: no reload is needed when a date passes.

use crate::config::catalog::{CatalogSection, Lifecycle as Stage};
use crate::reply::{Code, Reply};
use http::{HeaderName, HeaderValue};

#[derive(Debug)]
pub struct Lifecycle {
    retired: bool,
    sunset_at: Option<i64>,
    /// Brownout windows (start, end) and the recurring one (from, every, duration), seconds.
    windows: Vec<(i64, i64)>,
    recurring: Option<(i64, i64, i64)>,
    /// The headers of every answer (Deprecation, Sunset, Link), in order.
    headers: Vec<(HeaderName, HeaderValue)>,
    link: Option<String>,
}

impl Lifecycle {
    /// The step of an API's catalogue entry; `None` when there is nothing to say (an API
    /// neither deprecated nor retired nor with a sunset). `successor` is the link of the
    /// successor version (its docs, or its base path).
    pub fn compile(c: &CatalogSection, successor: Option<String>) -> Option<Lifecycle> {
        let deprecated_at = c
            .deprecated_at
            .as_deref()
            .and_then(crate::clock::parse_rfc3339);
        let sunset_at = c.sunset_at.as_deref().and_then(crate::clock::parse_rfc3339);
        let retired = c.lifecycle == Stage::Retired;
        if !retired && deprecated_at.is_none() && sunset_at.is_none() {
            return None;
        }
        let mut links = Vec::new();
        if let Some(u) = &c.migration_url {
            links.push(format!("<{u}>; rel=\"deprecation\"; type=\"text/html\""));
            if sunset_at.is_some() {
                links.push(format!("<{u}>; rel=\"sunset\"; type=\"text/html\""));
            }
        }
        if let Some(s) = &successor {
            links.push(format!("<{s}>; rel=\"successor-version\""));
        }
        let link = (!links.is_empty()).then(|| links.join(", "));
        let mut headers = Vec::new();
        if let Some(d) = deprecated_at {
            if let Ok(v) = HeaderValue::from_str(&format!("@{d}")) {
                headers.push((HeaderName::from_static("deprecation"), v));
            }
        }
        if let Some(s) = sunset_at {
            if let Ok(v) = HeaderValue::from_str(&crate::clock::imf_fixdate(s)) {
                headers.push((HeaderName::from_static("sunset"), v));
            }
        }
        if let Some(v) = link.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.push((http::header::LINK, v));
        }
        let windows = c
            .brownouts
            .iter()
            .filter_map(|w| crate::config::catalog::parse_window(w).ok())
            .collect();
        let recurring = c.brownout.as_ref().and_then(|b| {
            let from = crate::clock::parse_rfc3339(&b.from)?;
            let every = i64::try_from(b.every.0.as_secs()).ok().filter(|e| *e > 0)?;
            let duration = i64::try_from(b.duration.0.as_secs()).ok()?;
            Some((from, every, duration))
        });
        Some(Lifecycle {
            retired,
            sunset_at,
            windows,
            recurring,
            headers,
            link,
        })
    }

    /// At `now`: the answer headers, or the 410 of a retired API.
    pub fn check(
        &self,
        now: i64,
        answer: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Result<(), Reply> {
        answer.extend(self.headers.iter().cloned());
        let past_sunset = self.sunset_at.is_some_and(|s| now >= s);
        if !(self.retired || past_sunset) {
            return match self.brownout_until(now) {
                None => Ok(()),
                Some(until) => Err(Reply::new(
                    Code::ApiBrownout,
                    format!(
                        "this deprecated API is in a scheduled brownout until {}; move to its successor before the sunset",
                        crate::clock::rfc3339(until)
                    ),
                )),
            };
        }
        let detail = match &self.link {
            Some(_) => {
                "this API is retired; see the Link header for its successor and the migration guide"
            }
            None => "this API is retired",
        };
        Err(Reply::new(Code::ApiRetired, detail))
    }
}

impl Lifecycle {
    /// How the gateway answers at `now`, for the catalogue: `"retired"` (410 `api_retired`,
    /// retired or past the sunset), `"brownout"` with its end (410 `api_brownout`), or
    /// `"served"` (with the lifecycle headers).
    pub fn answers_at(&self, now: i64) -> (&'static str, Option<i64>) {
        if self.retired || self.sunset_at.is_some_and(|s| now >= s) {
            return ("retired", None);
        }
        match self.brownout_until(now) {
            Some(until) => ("brownout", Some(until)),
            None => ("served", None),
        }
    }

    /// The names of the headers every answer carries.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The end of the brownout `now` falls in, if any.
    fn brownout_until(&self, now: i64) -> Option<i64> {
        if let Some((_, end)) = self.windows.iter().find(|(s, e)| (*s..*e).contains(&now)) {
            return Some(*end);
        }
        let (from, every, duration) = self.recurring?;
        let into = now.checked_sub(from)?;
        (into >= 0 && into % every < duration).then(|| now - into % every + duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> CatalogSection {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn deprecated_then_retired_at_the_sunset() {
        let c = section(
            "lifecycle = \"deprecated\"\ndeprecated_at = \"2026-12-01T00:00:00Z\"\nsunset_at = \"2027-06-30T00:00:00Z\"\nmigration_url = \"https://wiki.example.com/m\"",
        );
        let l =
            Lifecycle::compile(&c, Some("/orders/v2".into())).unwrap_or_else(|| panic!("a step"));
        let mut answer = Vec::new();
        assert!(l.check(1_795_000_000, &mut answer).is_ok());
        let text: Vec<String> = answer
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or_default()))
            .collect();
        assert_eq!(text[0], "deprecation: @1796083200");
        assert_eq!(text[1], "sunset: Wed, 30 Jun 2027 00:00:00 GMT");
        assert!(text[2].contains("rel=\"successor-version\""));
        let after = crate::clock::parse_rfc3339("2027-06-30T00:00:00Z").unwrap_or_default();
        let refused = l.check(after, &mut Vec::new());
        assert_eq!(refused.map_err(|r| r.code), Err(Code::ApiRetired));
        assert!(Lifecycle::compile(&section("lifecycle = \"stable\""), None).is_none());
        let b = Lifecycle::compile(
            &section(
                "lifecycle = \"deprecated\"\ndeprecated_at = \"2026-12-01T00:00:00Z\"\nbrownouts = [\"2027-05-01T10:00:00Z/PT1H\"]\nbrownout = { every = \"1d\", duration = \"5m\", from = \"2027-06-01T00:00:00Z\" }",
            ),
            None,
        )
        .unwrap_or_else(|| panic!("a step"));
        let at = |t: &str| crate::clock::parse_rfc3339(t).unwrap_or_default();
        let code = |t: &str| b.check(at(t), &mut Vec::new()).map_err(|r| r.code);
        assert_eq!(code("2027-05-01T10:30:00Z"), Err(Code::ApiBrownout));
        assert_eq!(code("2027-05-01T11:00:00Z"), Ok(()));
        assert_eq!(code("2027-06-03T00:04:59Z"), Err(Code::ApiBrownout));
        assert_eq!(code("2027-06-03T00:05:00Z"), Ok(()));
        assert_eq!(code("2027-05-31T23:59:59Z"), Ok(()));
    }
}

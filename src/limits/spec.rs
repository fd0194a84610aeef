//! Limit specifications as written in the config: rates (`"5/s"`, `"300/min"`) and calendar
//! quotas (`"450/hour"`, `"1000000/month"`), and the UTC calendar windows of quotas.

use std::fmt;

/// A calendar window in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(unit: &str) -> Option<Period> {
        match unit {
            "minute" | "min" | "m" => Some(Period::Minute),
            "hour" | "h" => Some(Period::Hour),
            "day" | "d" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// The window holding `secs` (Unix seconds): its start and its end (exclusive).
    pub fn window(self, secs: i64) -> (i64, i64) {
        let fixed = |len: i64| {
            let start = secs - secs.rem_euclid(len);
            (start, start + len)
        };
        match self {
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Month => crate::clock::month_bounds(secs),
        }
    }

    /// The nominal length in seconds (a month counts as 30 days) for the `w` header parameter.
    pub fn nominal_secs(self) -> u64 {
        match self {
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `N/unit` with a positive whole N.
fn split(text: &str) -> Option<(u64, &str)> {
    let (n, unit) = text.trim().split_once('/')?;
    let n: u64 = n.trim().parse().ok()?;
    (n > 0).then_some((n, unit.trim()))
}

/// A quota: at most `limit` requests per calendar `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub limit: u64,
    pub period: Period,
}

pub fn parse_quota(text: &str) -> Result<QuotaSpec, String> {
    let bad = || {
        format!("{text:?}: expected COUNT/PERIOD with PERIOD minute, hour, day or month, e.g. \"450/hour\"")
    };
    let (limit, unit) = split(text).ok_or_else(bad)?;
    let period = Period::parse(unit).ok_or_else(bad)?;
    Ok(QuotaSpec { limit, period })
}

/// A sustained rate: `count` requests per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u64,
    pub per_secs: u64,
}

impl RateSpec {
    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval_ns(self) -> u64 {
        (self.per_secs.saturating_mul(1_000_000_000) / self.count).max(1)
    }
}

pub fn parse_rate(text: &str) -> Result<RateSpec, String> {
    let bad = || format!("{text:?}: expected COUNT/UNIT with UNIT s, min or hour, e.g. \"5/s\"");
    let (count, unit) = split(text).ok_or_else(bad)?;
    let per_secs = match unit {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        _ => return Err(bad()),
    };
    Ok(RateSpec { count, per_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_windows() {
        assert_eq!(
            parse_quota("450/hour"),
            Ok(QuotaSpec {
                limit: 450,
                period: Period::Hour
            })
        );
        assert!(parse_quota("0/hour").is_err());
        assert!(parse_quota("5/week").is_err());
        assert!(parse_quota("-1/day").is_err());
        assert_eq!(
            parse_rate("5/s").map(RateSpec::interval_ns),
            Ok(200_000_000)
        );
        assert_eq!(
            parse_rate("120/min").map(RateSpec::interval_ns),
            Ok(500_000_000)
        );
        assert!(parse_rate("5/fortnight").is_err());
        let t = crate::clock::parse_rfc3339("2026-11-21T13:45:10Z").unwrap_or_default();
        let (s, e) = Period::Hour.window(t);
        assert_eq!(crate::clock::rfc3339(s), "2026-11-21T13:00:00Z");
        assert_eq!(crate::clock::rfc3339(e), "2026-11-21T14:00:00Z");
        let (s, e) = Period::Month.window(t);
        assert_eq!(crate::clock::rfc3339(s), "2026-11-01T00:00:00Z");
        assert_eq!(crate::clock::rfc3339(e), "2026-12-01T00:00:00Z");
        assert_eq!(Period::Minute.window(t).0 % 60, 0);
        assert_eq!(Period::Day.window(t).1 - Period::Day.window(t).0, 86_400);
    }
}

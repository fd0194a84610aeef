//! Usage reports from the stored rollups, shared by the admin API (`GET /analytics/usage` as
//! JSON or CSV, `GET /analytics/top`) and `turnpike report` (a table). Times are RFC 3339 or
//! Unix seconds; ranges are `[from, to)`.

use crate::store::usage::{self, Filter, UsageRow, UsageTotals};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The longest range each granularity may be asked for.
const MAX_MINUTE_RANGE: i64 = 7 * usage::DAY;
const MAX_HOUR_RANGE: i64 = 400 * usage::DAY;

/// A usage question, as the admin API and the CLI receive it.
#[derive(Debug, Default, Clone)]
pub struct Ask {
    pub api: Option<String>,
    pub consumer: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub granularity: Option<String>,
}

/// The latest time a question may name (9999-12-31T23:59:59Z).
const MAX_TIME: i64 = 253_402_300_799;

/// Reads a time: RFC 3339 or Unix seconds, from 1970 to the year 9999.
pub fn parse_time(text: &str) -> Option<i64> {
    text.parse::<i64>()
        .ok()
        .or_else(|| crate::clock::parse_rfc3339(text))
        .filter(|t| (0..=MAX_TIME).contains(t))
}

impl Ask {
    /// The store filter, or a message saying what is wrong. `default_range`: seconds before
    /// `to` when `from` is not given. The range is widened to whole periods of the granularity
    /// (the answer names the range it covers). `coarse`: rank-style questions, for which hour
    /// rows do above six hours.
    pub fn filter(&self, now: i64, default_range: i64, coarse: bool) -> Result<Filter, String> {
        let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
            v.as_deref()
                .map(|t| {
                    parse_time(t).ok_or_else(|| {
                        format!("{name} must be RFC 3339 (2026-11-21T13:00:00Z) or Unix seconds")
                    })
                })
                .transpose()
        };
        let to = time("to", &self.to)?.unwrap_or(now.saturating_add(1));
        let from = time("from", &self.from)?.unwrap_or(to.saturating_sub(default_range).max(0));
        if from >= to {
            return Err("from must be before to".into());
        }
        let range = to - from;
        let granularity = match self.granularity.as_deref() {
            None | Some("auto")
                if coarse && range > 6 * usage::HOUR && range <= 62 * usage::DAY =>
            {
                usage::HOUR
            }
            None | Some("auto") if range <= usage::DAY => usage::MINUTE,
            None | Some("auto") if range <= 62 * usage::DAY => usage::HOUR,
            None | Some("auto") => usage::DAY,
            Some("minute") => usage::MINUTE,
            Some("hour") => usage::HOUR,
            Some("day") => usage::DAY,
            Some(_) => return Err("granularity must be minute, hour, day or auto".into()),
        };
        if (granularity == usage::MINUTE && range > MAX_MINUTE_RANGE)
            || (granularity == usage::HOUR && range > MAX_HOUR_RANGE)
        {
            return Err(format!(
                "the range is too long for {} rows; ask for a coarser granularity",
                granularity_name(granularity)
            ));
        }
        let from = from - from.rem_euclid(granularity);
        let to = match to.rem_euclid(granularity) {
            0 => to,
            r => to - r + granularity,
        };
        Ok(Filter {
            granularity,
            from,
            to,
            api: self.api.clone(),
            consumer: self.consumer.clone(),
        })
    }
}

pub fn granularity_name(g: i64) -> &'static str {
    match g {
        usage::MINUTE => "minute",
        usage::HOUR => "hour",
        _ => "day",
    }
}

fn class_name(c: u8) -> String {
    match c {
        0 => "none".into(),
        c => format!("{c}xx"),
    }
}

/// A percentile in milliseconds, to the microsecond.
fn ms(t: &UsageTotals, q: f64) -> Option<f64> {
    t.latency.quantile(q).map(|us| us.round() / 1000.0)
}

fn latency(t: &UsageTotals) -> Value {
    json!({ "p50": ms(t, 0.5), "p95": ms(t, 0.95), "p99": ms(t, 0.99) })
}

fn totals(rows: &[UsageRow]) -> UsageTotals {
    let mut all = UsageTotals::default();
    for r in rows {
        all.merge(&r.totals);
    }
    all
}

fn counts(t: &UsageTotals) -> Value {
    json!({
        "requests": t.requests,
        "errors": t.errors,
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "latency_ms": latency(t),
    })
}

/// The JSON answer of `/analytics/usage`.
pub fn usage_json(f: &Filter, rows: &[UsageRow]) -> Value {
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "start": crate::clock::rfc3339(r.start),
                "api": r.key.api,
                "version": r.key.version,
                "consumer": r.key.consumer,
                "status_class": class_name(r.key.status_class),
            });
            if let (Some(o), Value::Object(c)) = (v.as_object_mut(), counts(&r.totals)) {
                o.extend(c);
            }
            v
        })
        .collect();
    json!({
        "granularity": granularity_name(f.granularity),
        "from": crate::clock::rfc3339(f.from),
        "to": crate::clock::rfc3339(f.to),
        "rows": list,
        "totals": counts(&totals(rows)),
    })
}

const COLUMNS: [&str; 12] = [
    "start",
    "api",
    "version",
    "consumer",
    "status_class",
    "requests",
    "errors",
    "bytes_in",
    "bytes_out",
    "p50_ms",
    "p95_ms",
    "p99_ms",
];

fn cells(r: &UsageRow) -> [String; 12] {
    let q = |x: f64| ms(&r.totals, x).map_or(String::new(), |v| v.to_string());
    [
        crate::clock::rfc3339(r.start),
        r.key.api.clone(),
        r.key.version.clone(),
        r.key.consumer.clone(),
        class_name(r.key.status_class),
        r.totals.requests.to_string(),
        r.totals.errors.to_string(),
        r.totals.bytes_in.to_string(),
        r.totals.bytes_out.to_string(),
        q(0.5),
        q(0.95),
        q(0.99),
    ]
}

/// One CSV field: quoted when needed, and never read as a formula by a spreadsheet.
fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || s.contains([',', '"', '\n', '\r']) {
        let lead = if formula { "'" } else { "" };
        format!("\"{lead}{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV answer of `/analytics/usage` (RFC 4180, header line first).
pub fn usage_csv(rows: &[UsageRow]) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = cells(r).iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// `turnpike report`: an aligned text table with a total line.
pub fn usage_table(f: &Filter, rows: &[UsageRow]) -> String {
    let mut lines: Vec<[String; 12]> = vec![COLUMNS.map(str::to_string)];
    lines.extend(rows.iter().map(cells));
    let all = totals(rows);
    let total = UsageRow {
        granularity: f.granularity,
        start: f.from,
        key: usage::UsageKey {
            api: String::new(),
            version: String::new(),
            consumer: String::new(),
            status_class: 0,
        },
        totals: all,
    };
    let mut last = cells(&total);
    last[0] = "total".into();
    last[4] = String::new();
    lines.push(last);
    let widths: Vec<usize> = (0..12)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "usage by {} from {} to {}\n",
        granularity_name(f.granularity),
        crate::clock::rfc3339(f.from),
        crate::clock::rfc3339(f.to)
    );
    for l in &lines {
        let cols: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                0..=4 => format!("{c:<w$}", w = widths[i]),
                _ => format!("{c:>w$}", w = widths[i]),
            })
            .collect();
        out.push_str(cols.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `/analytics/top?by=consumer|api&metric=requests|errors|latency&limit=N`.
pub fn top_json(f: &Filter, rows: &[UsageRow], by: &str, metric: &str, limit: usize) -> Value {
    let mut groups: HashMap<&str, UsageTotals> = HashMap::new();
    for r in rows {
        let name = match by {
            "api" => r.key.api.as_str(),
            _ => r.key.consumer.as_str(),
        };
        if name.is_empty() {
            continue;
        }
        groups.entry(name).or_default().merge(&r.totals);
    }
    let mut list: Vec<(&str, UsageTotals)> = groups.into_iter().collect();
    let p95 = |t: &UsageTotals| t.latency.quantile(0.95).unwrap_or(0.0);
    list.sort_by(|a, b| {
        let order = match metric {
            "errors" => b.1.errors.cmp(&a.1.errors),
            "latency" => p95(&b.1).total_cmp(&p95(&a.1)),
            _ => b.1.requests.cmp(&a.1.requests),
        };
        order.then_with(|| a.0.cmp(b.0))
    });
    let top: Vec<Value> = list
        .iter()
        .take(limit)
        .map(|(name, t)| {
            let mut v = json!({ by: name });
            if let (Some(o), Value::Object(c)) = (v.as_object_mut(), counts(t)) {
                o.extend(c);
                let rate = if t.requests > 0 {
                    t.errors as f64 / t.requests as f64
                } else {
                    0.0
                };
                o.insert(
                    "error_rate".into(),
                    json!((rate * 10_000.0).round() / 10_000.0),
                );
            }
            v
        })
        .collect();
    json!({
        "by": by,
        "metric": metric,
        "from": crate::clock::rfc3339(f.from),
        "to": crate::clock::rfc3339(f.to),
        "top": top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_granularities_and_csv_fields() {
        let now = 1_795_000_000;
        let ask = Ask::default();
        let f = ask.filter(now, 3_600, false).expect("default");
        assert_eq!(f.granularity, usage::MINUTE);
        assert!(
            f.to - f.from >= 3_600 && f.to - f.from <= 3_720,
            "whole minutes"
        );
        assert_eq!(f.from % 60, 0);
        let over = Ask {
            from: Some("-9223372036854775808".into()),
            ..Ask::default()
        };
        assert!(over.filter(now, 0, false).is_err());
        let day = Ask {
            from: Some("1795000000".into()),
            to: Some("1795086400".into()),
            ..Ask::default()
        };
        assert_eq!(
            day.filter(now, 0, true).expect("top").granularity,
            usage::HOUR
        );
        let week = Ask {
            from: Some("2026-10-01T00:00:00Z".into()),
            to: Some("2026-11-01T00:00:00Z".into()),
            ..Ask::default()
        };
        assert_eq!(
            week.filter(now, 0, false).expect("month").granularity,
            usage::HOUR
        );
        let bad = Ask {
            granularity: Some("minute".into()),
            ..week.clone()
        };
        assert!(bad.filter(now, 0, false).is_err());
        let bad = Ask {
            from: Some("yesterday".into()),
            ..Ask::default()
        };
        assert!(bad.filter(now, 0, false).is_err());
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "\"'=cmd()\"");
        assert_eq!(csv_field("acme"), "acme");
    }
}

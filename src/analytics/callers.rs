//! Who still calls an API version: every consumer with requests to it in a window, with the
//! request and error counts, the time of the last call and the consumer's contacts, from the
//! usage rollups. The list an owner needs before a sunset; served by the admin API
//! (`GET /catalog/apis/{name}/{version}/consumers?since=30d`) and `turnpike catalog consumers`.
//!
//! Counts come from the day rows (kept until deleted), so the window starts at the beginning of
//! its first day (the report names the range it covers). The last call is as precise as the
//! rows that still hold it: the minute within the last day, else the hour within the hour
//! retention, else the day.

use super::source::Source;
use crate::store::usage::{CallerRow, DAY, HOUR, MINUTE};
use serde_json::{json, Value};

/// The longest window a report may ask for.
pub const MAX_WINDOW: i64 = 400 * DAY;

/// One consumer's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `""` for requests without an identified consumer.
    pub consumer: String,
    pub requests: u64,
    pub errors: u64,
    pub last_call: i64,
    /// `"minute"`, `"hour"` or `"day"`: the period `last_call` is the start of.
    pub precision: &'static str,
}

/// The callers of one API version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub from: i64,
    pub to: i64,
    pub callers: Vec<Caller>,
    /// `"fleet"` or `"node"`: whose rollups were read.
    pub scope: &'static str,
    /// The lifecycle notices each consumer was sent (`crate::notices`), when read.
    pub notices: Vec<crate::store::notices::NoticeRow>,
}

/// The callers of `api` `version` (`""` for an API without one) in the `window` seconds before
/// `now`.
pub fn gather(
    source: &Source<'_>,
    api: &str,
    version: &str,
    window: i64,
    now: i64,
) -> crate::store::Result<Report> {
    let start = now.saturating_sub(window.clamp(1, MAX_WINDOW)).max(0);
    let from = start - start.rem_euclid(DAY);
    let to = now.saturating_add(1);
    let days = source.callers(DAY, from, to, api, version)?;
    let finer = |granularity: i64, since: i64| -> crate::store::Result<Vec<CallerRow>> {
        source.callers(granularity, since.max(from), to, api, version)
    };
    let hours = finer(HOUR, from)?;
    let minutes = finer(MINUTE, now - DAY)?;
    let last =
        |rows: &[CallerRow], id: &str| rows.iter().find(|r| r.consumer == id).map(|r| r.last);
    let callers = days
        .into_iter()
        .map(|d| {
            let (last_call, precision) = last(&minutes, &d.consumer)
                .map(|t| (t, "minute"))
                .or_else(|| last(&hours, &d.consumer).map(|t| (t, "hour")))
                .unwrap_or((d.last, "day"));
            Caller {
                consumer: d.consumer,
                requests: d.requests,
                errors: d.errors,
                last_call,
                precision,
            }
        })
        .collect();
    Ok(Report {
        from,
        to,
        callers,
        scope: source.scope(),
        notices: Vec::new(),
    })
}

/// A consumer's contacts: its `email` and `contact` metadata.
pub fn contacts(consumer: Option<&crate::identity::Consumer>) -> Vec<String> {
    consumer
        .map(|c| {
            ["email", "contact"]
                .iter()
                .filter_map(|k| c.meta(k).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Where an API is in its life, as the report states it.
pub fn lifecycle(catalog: Option<&crate::config::catalog::CatalogSection>) -> Value {
    let c = catalog.cloned().unwrap_or_default();
    json!({
        "state": c.lifecycle.as_str(),
        "deprecated_at": c.deprecated_at,
        "sunset_at": c.sunset_at,
        "successor": c.successor,
    })
}

/// The report as the admin API answers it; `contacts_of` gives a consumer's contacts.
pub fn to_json(
    api: &str,
    version: &str,
    lifecycle: &Value,
    report: &Report,
    contacts_of: impl Fn(&str) -> Vec<String>,
) -> Value {
    let rfc = crate::clock::rfc3339;
    json!({
        "api": api,
        "version": if version.is_empty() { Value::Null } else { json!(version) },
        "lifecycle": lifecycle,
        "scope": report.scope,
        "from": rfc(report.from),
        "to": rfc(report.to),
        "consumers": report.callers.iter().map(|c| json!({
            "consumer": if c.consumer.is_empty() { Value::Null } else { json!(c.consumer) },
            "anonymous": c.consumer.is_empty(),
            "requests": c.requests,
            "errors": c.errors,
            "last_call": rfc(c.last_call),
            "last_call_precision": c.precision,
            "contacts": if c.consumer.is_empty() { Vec::new() } else { contacts_of(&c.consumer) },
            "notices": report.notices.iter().filter(|n| n.consumer == c.consumer).map(|n| json!({
                "event": n.event, "state": n.state, "at": rfc(n.at),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The report as a table for the command line.
pub fn to_table(
    api_ref: &str,
    report: &Report,
    contacts_of: impl Fn(&str) -> Vec<String>,
) -> String {
    let rfc = crate::clock::rfc3339;
    let mut out = format!(
        "callers of {api_ref} from {} to {}\n{:<32} {:>10} {:>8}  {:<22} contacts\n",
        rfc(report.from),
        rfc(report.to),
        "consumer",
        "requests",
        "errors",
        "last call"
    );
    for c in &report.callers {
        let who = if c.consumer.is_empty() {
            "(anonymous)".to_string()
        } else {
            c.consumer.clone()
        };
        let contacts = if c.consumer.is_empty() {
            String::new()
        } else {
            contacts_of(&c.consumer).join(", ")
        };
        out.push_str(&format!(
            "{who:<32} {:>10} {:>8}  {:<22} {contacts}\n",
            c.requests,
            c.errors,
            format!("{} ({})", rfc(c.last_call), c.precision),
        ));
    }
    if report.callers.is_empty() {
        out.push_str("(no calls in this window)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::usage::{UsageKey, UsageTotals};

    #[test]
    fn callers_are_counted_per_consumer_with_the_finest_last_call() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::Store::open(&dir.path().join("t.db")).expect("open");
        let now = 1_800_000_000;
        let key = |consumer: &str, version: &str, class: u8| UsageKey {
            api: "orders".into(),
            version: version.into(),
            consumer: consumer.into(),
            status_class: class,
        };
        let n = |requests: u64, errors: u64| UsageTotals {
            requests,
            errors,
            ..Default::default()
        };
        let minute = |t: i64| t - t.rem_euclid(MINUTE);
        let deltas = vec![
            // acme: 3 calls 10 days ago, 2 (one failed) five minutes ago.
            (minute(now - 10 * DAY), key("acme", "v1", 2), n(3, 0)),
            (minute(now - 300), key("acme", "v1", 2), n(1, 0)),
            (minute(now - 300), key("acme", "v1", 5), n(1, 1)),
            // beta: one call 40 days ago only (outside a 30-day window).
            (minute(now - 40 * DAY), key("beta", "v1", 2), n(1, 0)),
            // anonymous: 4 calls two days ago; v2 calls do not count for v1.
            (minute(now - 2 * DAY), key("", "v1", 4), n(4, 4)),
            (minute(now - 60), key("acme", "v2", 2), n(9, 0)),
        ];
        store
            .write(|tx| crate::store::usage::add(tx, &deltas))
            .expect("write");
        let source = Source::Node(&store);
        let report = gather(&source, "orders", "v1", 30 * DAY, now).expect("read");
        // The fleet's way (callers from rows read) agrees with the store's query.
        let f = crate::store::usage::Filter {
            granularity: DAY,
            from: now - 60 * DAY,
            to: now + 1,
            api: Some("orders".into()),
            consumer: None,
        };
        let rows = source.query(&f, usize::MAX).expect("rows");
        assert_eq!(
            crate::store::usage::callers_of(&rows, "v1"),
            source
                .callers(DAY, f.from, f.to, "orders", "v1")
                .expect("callers")
        );
        let got: Vec<(&str, u64, u64, &str)> = report
            .callers
            .iter()
            .map(|c| (c.consumer.as_str(), c.requests, c.errors, c.precision))
            .collect();
        assert_eq!(got, vec![("acme", 5, 1, "minute"), ("", 4, 4, "hour")]);
        assert_eq!(report.callers[0].last_call, minute(now - 300));
        let two_days = now - 2 * DAY;
        assert_eq!(
            report.callers[1].last_call,
            two_days - two_days.rem_euclid(HOUR)
        );
        assert_eq!(report.from % DAY, 0);
        assert!(report.from <= now - 30 * DAY);
        // A wider window finds beta, with a last call known to the hour.
        let report = gather(&source, "orders", "v1", 60 * DAY, now).expect("read");
        assert!(report
            .callers
            .iter()
            .any(|c| c.consumer == "beta" && c.requests == 1));
    }
}

//! Lifecycle notices: with `[catalog] notify_webhook`, every consumer that called a deprecated
//! API version in the last 30 days gets one JSON event when the version is deprecated
//! (`api.deprecated`), and again 30 and 7 days before its sunset (`api.sunset_in_30_days`,
//! `api.sunset_in_7_days`; when the 7-day one is due first, the 30-day one is never sent).
//!
//! A background service looks every `notify_every`: it writes the pending usage rollups, finds
//! the callers from them (`analytics::callers`), and claims each due notice in the store before
//! sending it (`store::notices`), so a notice goes out at most once per consumer and event
//! across restarts. With `[store] redis_url` the claim is also taken in Redis (`SET NX`), so a
//! fleet sends it once. A delivery that fails after its retries gives the claim back and is
//! tried at the next look; a process that dies while sending does not send it again.
//!
//! Each event is POSTed as JSON with `X-Turnpike-Event`, `X-Turnpike-Delivery` (a stable id a
//! receiver can use to drop duplicates) and, with `notify_secret_env`,
//! `X-Turnpike-Signature: sha256=<hex HMAC-SHA256 of the body>`.

use crate::analytics::callers;
use crate::config::catalog::{api_ref, CatalogSection, Lifecycle};
use crate::state::Shared;
use crate::store::notices::{self, NoticeKey};
use crate::store::usage::DAY;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const DEPRECATED: &str = "api.deprecated";
pub const SUNSET_30: &str = "api.sunset_in_30_days";
pub const SUNSET_7: &str = "api.sunset_in_7_days";
/// Consumers who called in this window get notices.
pub const CALLED_WITHIN: i64 = 30 * DAY;

/// The events due for a catalogue entry at `now`: those to send, and those superseded by a
/// later one (never sent). Nothing for an API that is not deprecated, not yet deprecated, or
/// past its sunset.
pub fn due(c: &CatalogSection, now: i64) -> (Vec<&'static str>, Vec<&'static str>) {
    let parse = |t: &Option<String>| t.as_deref().and_then(crate::clock::parse_rfc3339);
    let deprecated_at = parse(&c.deprecated_at).unwrap_or(now);
    let sunset = parse(&c.sunset_at);
    if c.lifecycle != Lifecycle::Deprecated
        || deprecated_at > now
        || sunset.is_some_and(|s| s <= now)
    {
        return (Vec::new(), Vec::new());
    }
    let mut send = vec![DEPRECATED];
    let mut superseded = Vec::new();
    match sunset.map(|s| s - now) {
        Some(left) if left <= 7 * DAY => {
            send.push(SUNSET_7);
            superseded.push(SUNSET_30);
        }
        Some(left) if left <= 30 * DAY => send.push(SUNSET_30),
        _ => {}
    }
    (send, superseded)
}

/// One notice claimed for sending.
#[derive(Debug, Clone)]
struct Claimed {
    consumer: String,
    api: String,
    version: String,
    event: &'static str,
    id: String,
    body: Vec<u8>,
}

impl Claimed {
    fn key(&self) -> NoticeKey<'_> {
        NoticeKey {
            consumer: &self.consumer,
            api: &self.api,
            version: &self.version,
            event: self.event,
        }
    }
}

/// A stable id for a notice: the first 32 hex digits of SHA-256 over its parts.
fn notice_id(k: &NoticeKey<'_>) -> String {
    let text = format!("{}\n{}\n{}\n{}", k.consumer, k.api, k.version, k.event);
    crate::identity::key::to_hex(&crate::identity::key::digest(text.as_bytes()))[..32].to_string()
}

/// The event's JSON body.
fn payload(
    c: &CatalogSection,
    api: &crate::config::file::ApiSection,
    caller: &callers::Caller,
    contacts: Vec<String>,
    event: &str,
    id: &str,
    now: i64,
) -> Value {
    let rfc = crate::clock::rfc3339;
    let sunset = c.sunset_at.as_deref().and_then(crate::clock::parse_rfc3339);
    json!({
        "type": event,
        "id": id,
        "created_at": rfc(now),
        "api": {
            "name": api.name,
            "version": api.version,
            "ref": api_ref(&api.name, api.version.as_deref()),
            "title": c.title,
            "owner": c.owner,
            "lifecycle": c.lifecycle.as_str(),
            "deprecated_at": c.deprecated_at,
            "sunset_at": c.sunset_at,
            "successor": c.successor,
            "migration_url": c.migration_url,
            "docs_url": c.docs_url,
        },
        "consumer": { "id": caller.consumer, "contacts": contacts },
        "usage_30d": { "requests": caller.requests, "last_call": rfc(caller.last_call) },
        "days_to_sunset": sunset.map(|s| (s - now).max(0) / DAY),
    })
}

/// The Redis key of a notice claim.
fn fleet_key(cluster: &crate::cluster::Cluster, k: &NoticeKey<'_>) -> String {
    cluster.key(&["notice", k.consumer, k.api, k.version, k.event])
}

/// Takes the fleet's claim; `None` when Redis cannot be reached (try later).
fn claim_fleet(cluster: &crate::cluster::Cluster, k: &NoticeKey<'_>) -> Option<bool> {
    let key = fleet_key(cluster, k);
    cluster
        .with_conn("notice claim", |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(400 * DAY)
                .query::<Option<String>>(c)
        })
        .ok()
        .map(|r| r.is_some())
}

/// Finds the due notices and claims them (blocking: store and Redis work).
fn claim_due(shared: &Shared, now: i64) -> crate::store::Result<Vec<Claimed>> {
    let snapshot = shared.snapshot();
    let store = shared.identity.store();
    let mut out = Vec::new();
    let mut flushed = false;
    for api in &snapshot.file.apis {
        let Some(c) = &api.catalog else { continue };
        let (send, superseded) = due(c, now);
        if send.is_empty() {
            continue;
        }
        if !flushed {
            shared.analytics.flush_usage(store)?;
            flushed = true;
        }
        let version = api.version.clone().unwrap_or_default();
        let report = callers::gather(&shared.usage(), &api.name, &version, CALLED_WITHIN, now)?;
        // Not the pseudo-consumers of folded rows.
        let real = |c: &&callers::Caller| {
            !c.consumer.is_empty() && !c.consumer.starts_with('(') && !c.consumer.ends_with(')')
        };
        for caller in report.callers.iter().filter(real) {
            let key = |event| NoticeKey {
                consumer: &caller.consumer,
                api: &api.name,
                version: &version,
                event,
            };
            for event in &superseded {
                store.write(|tx| notices::claim(tx, &key(event), "superseded", now))?;
            }
            for event in &send {
                let k = key(event);
                if !store.write(|tx| notices::claim(tx, &k, "sending", now))? {
                    continue;
                }
                if let Some(cluster) = shared.cluster.as_deref() {
                    match claim_fleet(cluster, &k) {
                        Some(true) => {}
                        Some(false) => {
                            store.write(|tx| notices::set_state(tx, &k, "sent_by_fleet", now))?;
                            continue;
                        }
                        None => {
                            store.write(|tx| notices::release(tx, &k))?;
                            continue;
                        }
                    }
                }
                let contacts = callers::contacts(
                    shared
                        .identity
                        .consumer(&snapshot.identities, &caller.consumer)
                        .as_deref(),
                );
                let id = notice_id(&k);
                let body = payload(c, api, caller, contacts, event, &id, now);
                out.push(Claimed {
                    consumer: caller.consumer.clone(),
                    api: api.name.clone(),
                    version: version.clone(),
                    event,
                    id,
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

/// Where notices go and how.
struct Target {
    url: String,
    secret: Option<ring::hmac::Key>,
    timeout: Duration,
    retries: u32,
}

impl Target {
    fn from_config(c: &crate::config::catalog::CatalogSettings) -> Option<Target> {
        let url = c.notify_webhook.as_ref()?.expose().to_string();
        let secret = c
            .notify_secret_env
            .as_deref()
            .and_then(std::env::var_os)
            .filter(|v| !v.is_empty())
            .map(|v| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, v.as_encoded_bytes()));
        Some(Target {
            url,
            secret,
            timeout: c.notify_timeout.0,
            retries: c.notify_retries,
        })
    }

    /// Sends one notice with retries; whether it was delivered (a 2xx answer).
    async fn deliver(&self, client: &reqwest::Client, n: &Claimed) -> bool {
        let signature = self.secret.as_ref().map(|key| {
            let tag = ring::hmac::sign(key, &n.body);
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256={hex}")
        });
        let req = || {
            let r = client
                .post(&self.url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("x-turnpike-event", n.event)
                .header("x-turnpike-delivery", &n.id)
                .body(n.body.clone());
            match &signature {
                Some(s) => r.header("x-turnpike-signature", s),
                None => r,
            }
        };
        match crate::analytics::webhook::post_with_retries(req, self.retries).await {
            Ok(()) => true,
            Err((attempts, why)) => {
                log::warn!(
                    "notify webhook: {} for {}/{} to consumer {} not delivered after {attempts} attempts (tried again later): {why}",
                    n.event,
                    n.api,
                    n.version,
                    n.consumer,
                );
                false
            }
        }
    }
}

/// Records each notice's outcome: sent, or its claim given back.
fn settle(shared: &Shared, results: &[(Claimed, bool)], now: i64) {
    let store = shared.identity.store();
    for (n, ok) in results {
        let k = n.key();
        let written = if *ok {
            store.write(|tx| notices::set_state(tx, &k, "sent", now))
        } else {
            if let Some(cluster) = shared.cluster.as_deref() {
                let key = fleet_key(cluster, &k);
                let _ = cluster.with_conn("notice release", |c| {
                    redis::cmd("DEL").arg(&key).query::<i64>(c)
                });
            }
            store.write(|tx| notices::release(tx, &k))
        };
        if let Err(e) = written {
            log::warn!("notice state not written: {e}");
        }
        let outcome = if *ok { "sent" } else { "failed" };
        shared
            .analytics
            .metrics
            .notices
            .with_label_values(&[n.event, outcome])
            .inc();
    }
}

/// The background service.
pub struct Notifier {
    pub shared: Arc<Shared>,
}

impl Notifier {
    async fn look(&self, client: &reqwest::Client) {
        let snapshot = self.shared.snapshot();
        let Some(target) = Target::from_config(&snapshot.file.catalog) else {
            return;
        };
        let now = crate::clock::now();
        let shared = self.shared.clone();
        let claimed = tokio::task::spawn_blocking(move || claim_due(&shared, now)).await;
        let claimed = match claimed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                log::warn!("lifecycle notices not looked for (tried again later): {e}");
                return;
            }
            Err(e) => {
                log::error!("lifecycle notices: {e}");
                return;
            }
        };
        if claimed.is_empty() {
            return;
        }
        let mut results = Vec::with_capacity(claimed.len());
        for n in claimed {
            let ok = target.deliver(client, &n).await;
            results.push((n, ok));
        }
        let shared = self.shared.clone();
        let now = crate::clock::now();
        if let Err(e) = tokio::task::spawn_blocking(move || settle(&shared, &results, now)).await {
            log::error!("lifecycle notices: {e}");
        }
    }
}

#[async_trait]
impl BackgroundService for Notifier {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // No redirects: a 301/302 would turn the POST into a GET whose 2xx counted as sent.
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("turnpike/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("lifecycle notices disabled: cannot build an HTTP client: {e}");
                return;
            }
        };
        loop {
            self.look(&client).await;
            let every = self.shared.snapshot().file.catalog.notify_every.0;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lifecycle: Lifecycle, deprecated: &str, sunset: Option<&str>) -> CatalogSection {
        CatalogSection {
            lifecycle,
            deprecated_at: Some(deprecated.into()),
            sunset_at: sunset.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn events_due_by_date() {
        let now = crate::clock::parse_rfc3339("2027-01-01T00:00:00Z").expect("date");
        let past = "2026-12-01T00:00:00Z";
        let d = |l, dep: &str, s: Option<&str>| due(&entry(l, dep, s), now);
        let none: (Vec<&str>, Vec<&str>) = (vec![], vec![]);
        assert_eq!(d(Lifecycle::Stable, past, None), none);
        assert_eq!(d(Lifecycle::Retired, past, None), none);
        assert_eq!(d(Lifecycle::Deprecated, "2027-02-01T00:00:00Z", None), none);
        assert_eq!(
            d(Lifecycle::Deprecated, past, None),
            (vec![DEPRECATED], vec![])
        );
        let far = Some("2027-06-01T00:00:00Z");
        assert_eq!(
            d(Lifecycle::Deprecated, past, far),
            (vec![DEPRECATED], vec![])
        );
        let in20 = Some("2027-01-21T00:00:00Z");
        assert_eq!(
            d(Lifecycle::Deprecated, past, in20),
            (vec![DEPRECATED, SUNSET_30], vec![])
        );
        let in5 = Some("2027-01-06T00:00:00Z");
        assert_eq!(
            d(Lifecycle::Deprecated, past, in5),
            (vec![DEPRECATED, SUNSET_7], vec![SUNSET_30])
        );
        assert_eq!(
            d(Lifecycle::Deprecated, past, Some("2026-12-31T00:00:00Z")),
            none
        );
    }
}

//! Lifecycle notices: with `[catalog] notify_webhook`, every consumer that called a deprecated
//! API version in the last 30 days gets one JSON event when the version is deprecated
//! (`api.deprecated`), and again 30 and 7 days before its sunset (`api.sunset_in_30_days`,
//! `api.sunset_in_7_days`; when the 7-day one is due first, the 30-day one is never sent).
//!
//! A background service looks every `notify_every`: it writes the pending usage rollups, finds
//! the callers from them (`analytics::callers`), then takes the due notices one at a time:
//! claims it in the store (`store::notices`) and, with `[store] redis_url`, in Redis
//! (`cluster::notices`, so a fleet sends it once), sends it, and records the outcome. A notice
//! goes out once per consumer and event across restarts. A delivery that fails after its
//! retries gives its claims back and is tried at the next look; a process that stops mid-send
//! leaves one claim, which is taken again after its lifetime (an hour, or longer than a
//! delivery with all its retries), so that notice may arrive twice with the same delivery id.
//!
//! Each event is POSTed as JSON with `X-Turnpike-Event`, `X-Turnpike-Delivery` (a stable id a
//! receiver can use to drop duplicates) and, with `notify_secret_env`,
//! `X-Turnpike-Signature: sha256=<hex HMAC-SHA256 of the body>`.

use crate::analytics::callers;
use crate::cluster::notices::Claim;
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

/// One notice due to a consumer.
#[derive(Debug, Clone)]
struct Due {
    consumer: String,
    api: String,
    version: String,
    event: &'static str,
    id: String,
    body: Vec<u8>,
}

impl Due {
    fn key(&self) -> NoticeKey<'_> {
        NoticeKey {
            consumer: &self.consumer,
            api: &self.api,
            version: &self.version,
            event: self.event,
        }
    }

    fn parts(&self) -> [&str; 4] {
        [&self.consumer, &self.api, &self.version, self.event]
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

/// How long a claim holds, in seconds: at least an hour, and longer than a delivery with all
/// its retries can take. A node that stopped mid-send leaves a claim this old; the notice is
/// then sent again (with the same delivery id).
fn claim_lifetime(c: &crate::config::catalog::CatalogSettings) -> i64 {
    // Each attempt: its timeout and at most 30 s of backoff before the next.
    let attempt = c.notify_timeout.0.as_secs() + 31;
    let worst = attempt * (u64::from(c.notify_retries) + 1) + 60;
    i64::try_from(worst.max(3_600)).unwrap_or(i64::MAX)
}

/// Finds the notices due at `now` that no claim holds (blocking: store work). Superseded
/// events are marked here, so they are never sent.
fn find_due(shared: &Shared, now: i64) -> crate::store::Result<Vec<Due>> {
    let snapshot = shared.snapshot();
    let store = shared.identity.store();
    let stale_before = now - claim_lifetime(&snapshot.file.catalog);
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
                store
                    .write(|tx| notices::claim(tx, &key(event), "superseded", now, stale_before))?;
            }
            for event in &send {
                let k = key(event);
                if store.read(|conn| notices::settled(conn, &k, stale_before))? {
                    continue;
                }
                let contacts = callers::contacts(
                    shared
                        .identity
                        .consumer(&snapshot.identities, &caller.consumer)
                        .as_deref(),
                );
                let id = notice_id(&k);
                let body = payload(c, api, caller, contacts, event, &id, now);
                out.push(Due {
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

/// Claims one notice, in the store and, with a fleet, in Redis (blocking); whether to send it.
/// Nothing is left claimed when this returns false, except a fleet claim whose reply was lost,
/// which this node recognises as its own at the next look.
fn claim(shared: &Shared, n: &Due, now: i64) -> crate::store::Result<bool> {
    let store = shared.identity.store();
    let lifetime = claim_lifetime(&shared.snapshot().file.catalog);
    let k = n.key();
    if !store.write(|tx| notices::claim(tx, &k, "sending", now, now - lifetime))? {
        return Ok(false);
    }
    let Some(cluster) = shared.cluster.as_deref() else {
        return Ok(true);
    };
    let answer = crate::cluster::notices::claim(cluster, n.parts(), lifetime.unsigned_abs());
    match answer {
        Ok(Claim::Ours) => Ok(true),
        Ok(Claim::Sent) => {
            store.write(|tx| notices::set_state(tx, &k, "sent_by_fleet", now))?;
            Ok(false)
        }
        Ok(Claim::Busy) => {
            store.write(|tx| notices::release(tx, &k))?;
            Ok(false)
        }
        Err(e) => {
            log::warn!(
                "lifecycle notice {} for {}/{}: fleet claim failed (tried again later): {}",
                n.event,
                n.api,
                n.version,
                e.redis()
            );
            store.write(|tx| notices::release(tx, &k))?;
            Ok(false)
        }
    }
}

/// Records a claimed notice's outcome (blocking): sent, or its claims given back.
fn settle(shared: &Shared, n: &Due, ok: bool, now: i64) {
    let store = shared.identity.store();
    let k = n.key();
    let fleet = shared.cluster.as_deref().map(|c| {
        if ok {
            crate::cluster::notices::mark_sent(c, n.parts())
        } else {
            crate::cluster::notices::release(c, n.parts())
        }
    });
    if let Some(Err(e)) = fleet {
        // A claim not marked or given back expires after its lifetime.
        log::warn!(
            "lifecycle notice {} for {}/{}: fleet state not written: {}",
            n.event,
            n.api,
            n.version,
            e.redis()
        );
    }
    let written = if ok {
        store.write(|tx| notices::set_state(tx, &k, "sent", now))
    } else {
        store.write(|tx| notices::release(tx, &k))
    };
    if let Err(e) = written {
        log::warn!("notice state not written: {e}");
    }
    let outcome = if ok { "sent" } else { "failed" };
    shared
        .analytics
        .metrics
        .notices
        .with_label_values(&[n.event, outcome])
        .inc();
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
    async fn deliver(&self, client: &reqwest::Client, n: &Due) -> bool {
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

/// The background service.
pub struct Notifier {
    pub shared: Arc<Shared>,
}

impl Notifier {
    /// One look: finds the due notices, then claims, sends and settles them one at a time, so
    /// that a stop or an error leaves at most one notice claimed.
    async fn look(&self, client: &reqwest::Client) {
        let snapshot = self.shared.snapshot();
        let Some(target) = Target::from_config(&snapshot.file.catalog) else {
            return;
        };
        let now = crate::clock::now();
        let shared = self.shared.clone();
        let due = match tokio::task::spawn_blocking(move || find_due(&shared, now)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                log::warn!("lifecycle notices not looked for (tried again later): {e}");
                return;
            }
            Err(e) => {
                log::error!("lifecycle notices: {e}");
                return;
            }
        };
        for n in due {
            let n = Arc::new(n);
            let (shared, one) = (self.shared.clone(), n.clone());
            let now = crate::clock::now();
            match tokio::task::spawn_blocking(move || claim(&shared, &one, now)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => {
                    log::warn!("lifecycle notices: claim not written (tried again later): {e}");
                    return;
                }
                Err(e) => {
                    log::error!("lifecycle notices: {e}");
                    return;
                }
            }
            let ok = target.deliver(client, &n).await;
            let shared = self.shared.clone();
            let now = crate::clock::now();
            if let Err(e) = tokio::task::spawn_blocking(move || settle(&shared, &n, ok, now)).await
            {
                log::error!("lifecycle notices: {e}");
            }
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

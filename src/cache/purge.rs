//! Purges: `POST /cache/purge` with `{"url": ...}`, `{"api": ...}` or `{"tag": ...}` removes
//! every matching copy on this node (all consumers' copies and all variants), and with
//! `[store] redis_url` publishes the purge on a Redis channel that every node subscribes to
//! (`PurgeListener`). Redis pub/sub delivers only to connected subscribers: a node whose
//! subscription broke clears its whole cache when it subscribes again, since it may have missed
//! purges meanwhile.

use super::storage::{Labels, MemoryStore};
use crate::cluster::Cluster;
use crate::state::{Shared, Snapshot};
use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every copy of one URL (normalised like cache keys, without any API's key parameter).
    Url(String),
    /// Every copy of one API (by name).
    Api(String),
    /// Every copy whose upstream response named this tag in `Surrogate-Key`.
    Tag(String),
    /// Everything (a node that may have missed purges).
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    url: Option<String>,
    api: Option<String>,
    tag: Option<String>,
}

impl Target {
    /// Reads an admin request body; `Err` is the message for the caller. A URL loses the
    /// query parameters named in `credential_params` (every API's key parameter), so that an
    /// API key pasted into a purge never reaches the audit log, the log or Redis.
    pub fn parse(body: &[u8], credential_params: &[&str]) -> Result<Target, String> {
        // Only where the body went wrong: serde's message repeats what it read (a URL with a
        // key in it, for one).
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            format!(
                "expected a JSON object with one of \"url\", \"api\" or \"tag\" (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let target = match (b.url, b.api, b.tag) {
            (Some(u), None, None) => Target::Url(normalise_url(&u, credential_params)?),
            (None, Some(a), None) if !a.is_empty() => Target::Api(a),
            (None, None, Some(t)) if !t.is_empty() && !t.contains(char::is_whitespace) => {
                Target::Tag(t)
            }
            (None, None, Some(_)) => return Err("a tag is one word without spaces".into()),
            _ => return Err("give exactly one of \"url\", \"api\" or \"tag\" (not empty)".into()),
        };
        Ok(target)
    }

    /// A URL target matches a copy whose URL is the same once every API's key parameter is
    /// left out of both: a copy's URL lost only its own API's key parameter (another API's
    /// parameter name is an ordinary parameter there), the target lost them all.
    fn matches(&self, l: &Labels, credential_params: &[&str]) -> bool {
        match self {
            Target::Url(u) => {
                if *l.url == **u {
                    return true;
                }
                // Runs under the storage's shard locks: only a copy of the same scheme, host
                // and path with a query, in a config with key parameters, is normalised again.
                let Some((base, _)) = l.url.split_once('?') else {
                    return false;
                };
                let n = base.len();
                let same_base =
                    u.get(..n) == Some(base) && matches!(u.as_bytes().get(n), None | Some(b'?'));
                same_base
                    && !credential_params.is_empty()
                    && normalise_url(&l.url, credential_params).is_ok_and(|x| x == **u)
            }
            Target::Api(a) => *l.api == **a,
            Target::Tag(t) => l.tags.iter().any(|x| **x == **t),
            Target::All => true,
        }
    }

    /// Removes the matching copies from this node; returns how many. `credential_params` as
    /// given to `parse`, from this node's config: a URL from another node (whose config may
    /// name other key parameters) is normalised with them too.
    pub fn apply(&self, store: &MemoryStore, credential_params: &[&str]) -> usize {
        let local;
        let target = match self {
            Target::Url(u) => match normalise_url(u, credential_params) {
                Ok(n) if n != *u => {
                    local = Target::Url(n);
                    &local
                }
                _ => self,
            },
            _ => self,
        };
        store.purge_where(|l| target.matches(l, credential_params))
    }
}

/// The query parameters that carry API keys in a config: what purge URLs leave out.
pub fn credential_params(snapshot: &Snapshot) -> Vec<&str> {
    let mut params: Vec<&str> = snapshot
        .endpoints
        .iter()
        .filter_map(|e| e.auth.as_ref()?.query_param.as_deref())
        .collect();
    params.sort_unstable();
    params.dedup();
    params
}

/// `http(s)://host[:port]/path[?query]` in the form cache keys record it.
fn normalise_url(u: &str, credential_params: &[&str]) -> Result<String, String> {
    // The URL itself is not repeated: it may carry a credential.
    let bad = || "url is not an absolute http or https URL".to_string();
    let (https, rest) = if let Some(r) = u.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = u.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, target) = rest.split_at(split);
    // Userinfo (`user:password@`) is refused: cache keys never hold it, and it would reach
    // the audit log, Redis and the answer.
    if host.is_empty() || host.contains('@') || rest.contains('#') {
        return Err(bad());
    }
    let target = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    };
    Ok(super::key::url(
        https,
        host.as_bytes(),
        target.as_bytes(),
        credential_params,
    ))
}

/// A purge sent to the fleet.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The node that applied it already.
    from: String,
    target: Target,
}

fn channel(cluster: &Cluster, name: &str) -> String {
    cluster.key(&[name])
}

/// What a purge did.
#[derive(Debug)]
pub struct Purged {
    /// Copies removed on this node.
    pub removed_here: usize,
    /// How far the purge reached: "this node", "every node", "N of M nodes subscribed", or
    /// "this node only" when Redis did not take it.
    pub reached: String,
    /// Why the fleet's Redis did not take the purge (the caller should retry).
    pub fleet_error: Option<String>,
}

/// Purges `target` on this node, sends it to every node through Redis when the fleet shares
/// one, and records it in the audit log as `actor`'s `cache.purge`.
pub async fn purge(shared: &Arc<Shared>, target: &Target, actor: &str) -> Purged {
    let snapshot = shared.snapshot();
    let params = credential_params(&snapshot);
    let removed_here = target.apply(shared.cache.storage, &params);
    let fleet = match &shared.cluster {
        None => None,
        Some(c) => {
            let (c, t) = (c.clone(), target.clone());
            let channel = snapshot.file.cache.purge_channel.clone();
            Some(
                tokio::task::spawn_blocking(move || publish(&c, &channel, &t))
                    .await
                    .unwrap_or_else(|e| Err(format!("publish task failed: {e}"))),
            )
        }
    };
    // PUBLISH answers how many subscribers got it (this node's own listener among them).
    let nodes = shared.cluster.as_ref().map_or(1, |c| c.nodes);
    let reached = match &fleet {
        None => "this node".to_string(),
        Some(Ok(n)) if *n >= nodes => "every node".to_string(),
        Some(Ok(n)) => format!("{n} of {nodes} nodes subscribed"),
        Some(Err(_)) => "this node only".to_string(),
    };
    let (what, value) = target.describe();
    let change = crate::store::Change {
        action: "cache.purge",
        target: format!("{what}:{value}"),
        before: None,
        after: Some(serde_json::json!({"purged_here": removed_here, "reached": reached})),
    };
    let (identity, who) = (shared.identity.clone(), actor.to_string());
    let audited = tokio::task::spawn_blocking(move || identity.records().record(&who, change))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = audited {
        log::warn!("cache purge {what}:{value} done but not in the audit log: {e}");
    }
    Purged {
        removed_here,
        reached,
        fleet_error: fleet.and_then(|f| f.err()),
    }
}

impl Target {
    /// What the target names and its value, e.g. ("url", "https://...").
    pub fn describe(&self) -> (&'static str, &str) {
        match self {
            Target::Url(v) => ("url", v.as_str()),
            Target::Api(v) => ("api", v.as_str()),
            Target::Tag(v) => ("tag", v.as_str()),
            Target::All => ("all", ""),
        }
    }
}

/// Sends a purge to every other node. `Err` is the Redis failure (the purge did not leave this
/// node).
pub fn publish(cluster: &Cluster, name: &str, target: &Target) -> Result<u64, String> {
    let msg = Message {
        from: cluster.node_id.clone(),
        target: target.clone(),
    };
    let text = serde_json::to_string(&msg).map_err(|e| e.to_string())?;
    let channel = channel(cluster, name);
    cluster
        .with_conn("cache purge", |c| {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&text)
                .query::<u64>(c)
        })
        .map_err(|e| e.redis().to_string())
}

/// Applies the fleet's purges on this node.
pub struct PurgeListener {
    pub cluster: Arc<Cluster>,
    /// The running config (its key parameters) and the cache.
    pub shared: Arc<Shared>,
    /// `[cache] purge_channel`.
    pub channel: String,
}

impl PurgeListener {
    fn receive(&self, payload: &[u8]) {
        let msg: Message = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                log::warn!(
                    "ignored a cache purge message that is not valid (line {}, column {})",
                    e.line(),
                    e.column()
                );
                return;
            }
        };
        if msg.from == self.cluster.node_id {
            return;
        }
        let snapshot = self.shared.snapshot();
        let n = msg
            .target
            .apply(self.shared.cache.storage, &credential_params(&snapshot));
        log::info!(
            "cache purge from node {}: {:?}, {n} copies",
            msg.from,
            msg.target
        );
    }

    /// Listens until the subscription breaks. `clean` says this node has missed no purge so
    /// far (it subscribed at start, or cleared its cache after the last break).
    async fn listen(&self, clean: bool, subscribed: &mut bool) -> Result<(), String> {
        let wait = self.cluster.timeout.max(Duration::from_secs(2));
        let mut pubsub = tokio::time::timeout(wait, self.cluster.client().get_async_pubsub())
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            wait,
            pubsub.subscribe(channel(&self.cluster, &self.channel)),
        )
        .await
        .map_err(|_| "no answer to SUBSCRIBE".to_string())?
        .map_err(|e| e.to_string())?;
        *subscribed = true;
        if !clean {
            let n = Target::All.apply(self.shared.cache.storage, &[]);
            log::warn!(
                "cache purge channel subscribed after a break: cleared {n} cached copies (purges sent meanwhile may have been missed)"
            );
        } else {
            log::info!(
                "cache purge channel subscribed on redis at {}",
                self.cluster.address
            );
        }
        loop {
            let next = tokio::time::timeout(QUIET, pubsub.on_message().next()).await;
            match next {
                Ok(Some(msg)) => self.receive(msg.get_payload_bytes()),
                Ok(None) => return Err("the subscription ended".into()),
                // Quiet for a while: a connection dropped without a reset looks the same, so
                // check that Redis still answers on it.
                Err(_) => match tokio::time::timeout(wait, pubsub.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("ping failed: {e}")),
                    Err(_) => return Err("no answer to ping".into()),
                },
            }
        }
    }
}

/// How long the purge channel may stay quiet before its connection is checked.
const QUIET: Duration = Duration::from_secs(15);

#[async_trait]
impl BackgroundService for PurgeListener {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Whether this node has missed no purge: true until the first failure (a node that
        // could not subscribe at start may have missed some too); after one, the next
        // subscription clears the cache.
        let mut clean = true;
        let mut logged = false;
        loop {
            let mut subscribed = false;
            let outcome = self.listen(clean, &mut subscribed).await;
            clean = false;
            if subscribed {
                logged = false;
            }
            if let Err(e) = outcome {
                if !logged {
                    log::warn!(
                        "cache purge channel on redis at {}: {e}; subscribing again every {:?}",
                        self.cluster.address,
                        self.cluster.interval
                    );
                    logged = true;
                }
            }
            tokio::time::sleep(self.cluster.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_exactly_one_target() {
        assert_eq!(
            Target::parse(br#"{"url":"https://API.example.com:8443/a?b=1&a=2"}"#, &[]),
            Ok(Target::Url("https://api.example.com:8443/a?a=2&b=1".into()))
        );
        assert_eq!(
            Target::parse(br#"{"url":"http://h"}"#, &[]),
            Ok(Target::Url("http://h/".into()))
        );
        assert_eq!(
            Target::parse(br#"{"api":"catalog"}"#, &[]),
            Ok(Target::Api("catalog".into()))
        );
        assert_eq!(
            Target::parse(br#"{"tag":"p-1"}"#, &[]),
            Ok(Target::Tag("p-1".into()))
        );
        assert_eq!(
            Target::parse(
                br#"{"url":"http://h/p?apikey=tpk_secret&b=1"}"#,
                &["key", "apikey"]
            ),
            Ok(Target::Url("http://h/p?b=1".into())),
            "a key pasted into a purge URL is dropped, as in cache keys"
        );
        let refused = Target::parse(br#"{"url":"h/p?apikey=tpk_secret"}"#, &["apikey"]);
        assert!(refused.is_err_and(|m| !m.contains("tpk_secret")));
        // Neither a body that is not an object nor a URL with userinfo is repeated.
        for secret in [
            &br#""https://h/p?apikey=tpk_secret""#[..],
            br#"{"url":"https://h/p","tpk_secret":1}"#,
            br#"{"url":"https://user:tpk_secret@h/p"}"#,
        ] {
            let refused = Target::parse(secret, &["apikey"]);
            assert!(
                refused.as_ref().is_err_and(|m| !m.contains("tpk_secret")),
                "{refused:?}"
            );
        }
        for bad in [
            &br#"{"url":"/relative"}"#[..],
            br#"{"url":"ftp://h/x"}"#,
            br#"{"api":"a","tag":"t"}"#,
            br#"{}"#,
            br#"{"tag":"two words"}"#,
            br#"{"api":""}"#,
            br#"{"host":"x"}"#,
            b"not json",
        ] {
            assert!(
                Target::parse(bad, &[]).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_url_purge_finds_copies_that_kept_another_apis_key_parameter() {
        // API "pub" takes no key, API "mine" takes `apikey`: a copy of pub keeps `apikey`.
        let params = ["apikey", "key"];
        let label = |url: &str| Labels {
            api: Arc::from("pub"),
            url: Arc::from(url),
            tags: Vec::new(),
        };
        let target = Target::parse(br#"{"url":"http://h/pub/p?id=2&apikey=v"}"#, &params);
        assert_eq!(target, Ok(Target::Url("http://h/pub/p?id=2".into())));
        let target = target.unwrap_or(Target::All);
        assert!(target.matches(&label("http://h/pub/p?apikey=v&id=2"), &params));
        assert!(target.matches(&label("http://h/pub/p?id=2"), &params));
        assert!(!target.matches(&label("http://h/pub/p?id=3"), &params));
        assert!(!target.matches(&label("http://h/pub/p?apikey=v&id=2&x=1"), &params));
        assert!(!target.matches(&label("http://h/pub/q?id=2"), &params));
        assert!(!target.matches(&label("http://h/pub/p?apikey=v&id=2"), &[]));
        assert!(!target.matches(&label("http://h/pub/px?apikey=v&id=2"), &params));
    }
}

//! `POST /cache/purge`: removes cached copies by URL, API or tag on this node, sends the purge
//! to every node through Redis when the fleet shares one, and records it in the audit log.

use super::{json_response, problem, Answer};
use crate::cache::purge::{self, Target};
use crate::reply::Code;
use crate::state::Shared;
use crate::store::Change;
use serde_json::json;
use std::sync::Arc;

pub async fn purge(shared: &Arc<Shared>, body: &[u8], actor: &str, rid: &str) -> Answer {
    let snapshot = shared.snapshot();
    let params = purge::credential_params(&snapshot);
    let target = match Target::parse(body, &params) {
        Ok(t) => t,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    let purged = target.apply(shared.cache.storage, &params);
    let fleet = match &shared.cluster {
        None => None,
        Some(c) => {
            let (c, t) = (c.clone(), target.clone());
            let channel = snapshot.file.cache.purge_channel.clone();
            Some(
                tokio::task::spawn_blocking(move || purge::publish(&c, &channel, &t))
                    .await
                    .unwrap_or_else(|e| Err(format!("publish task failed: {e}"))),
            )
        }
    };
    let (what, value) = match &target {
        Target::Url(v) => ("url", v.as_str()),
        Target::Api(v) => ("api", v.as_str()),
        Target::Tag(v) => ("tag", v.as_str()),
        Target::All => ("all", ""),
    };
    // PUBLISH answers how many subscribers got it (this node's own listener among them).
    let nodes = shared.cluster.as_ref().map_or(1, |c| c.nodes);
    let reached = match &fleet {
        None => json!("this node"),
        Some(Ok(n)) if *n >= nodes => json!("every node"),
        Some(Ok(n)) => json!(format!("{n} of {nodes} nodes subscribed")),
        Some(Err(_)) => json!("this node only"),
    };
    let change = Change {
        action: "cache.purge",
        target: format!("{what}:{value}"),
        before: None,
        after: Some(json!({"purged_here": purged, "reached": reached})),
    };
    let (identity, who) = (shared.identity.clone(), actor.to_string());
    let audited = tokio::task::spawn_blocking(move || identity.records().record(&who, change))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = audited {
        log::warn!("cache purge {what}:{value} done but not in the audit log: {e}");
    }
    if let Some(Err(e)) = fleet {
        return problem(
            Code::StoreUnavailable,
            &format!(
                "purged {purged} copies on this node, but redis did not take the purge for the other nodes ({e}); retry"
            ),
            rid,
        );
    }
    json_response(
        200,
        json!({ "purged": { what: value }, "removed_here": purged, "reached": reached }),
        "application/json",
        rid,
    )
}

//! `POST /cache/purge`: removes cached copies by URL, API or tag on this node and, when the
//! fleet shares a Redis, on every node (`cache::purge::purge`, which also audits it).

use super::{json_response, problem, Answer};
use crate::cache::purge::{self, Target};
use crate::reply::Code;
use crate::state::Shared;
use serde_json::json;
use std::sync::Arc;

pub async fn purge(shared: &Arc<Shared>, body: &[u8], actor: &str, rid: &str) -> Answer {
    let params = purge::credential_params(&shared.snapshot())
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let refs: Vec<&str> = params.iter().map(String::as_str).collect();
    let target = match Target::parse(body, &refs) {
        Ok(t) => t,
        Err(why) => return problem(Code::InvalidRequest, &why, rid),
    };
    let done = purge::purge(shared, &target, actor).await;
    let (what, value) = target.describe();
    if let Some(e) = done.fleet_error {
        return problem(
            Code::StoreUnavailable,
            &format!(
                "purged {} copies on this node, but redis did not take the purge for the other nodes ({e}); retry",
                done.removed_here
            ),
            rid,
        );
    }
    json_response(
        200,
        json!({ "purged": { what: value }, "removed_here": done.removed_here, "reached": done.reached }),
        "application/json",
        rid,
    )
}

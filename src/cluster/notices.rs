//! A fleet's claims on lifecycle notices (with `[store] redis_url`), so that one node sends
//! each notice. One key per notice, `{prefix}notice:{consumer}:{api}:{version}:{event}`, holding
//! either `claim:{node id}` while a node sends it (expiring after the claim's lifetime, so a
//! node that died mid-send does not hold it for ever) or `sent` once delivered (kept 400 days).
//!
//! A claim is taken, renewed, given back and marked sent by small scripts, so a node never
//! overwrites another node's claim or a `sent` mark. A claim whose reply was lost (a timeout)
//! is this node's own and is recognised as such at the next look.

use super::{CallError, Cluster};
use std::sync::LazyLock;

/// How long a `sent` mark is kept.
const SENT_FOR: u64 = 400 * 86_400;

/// What the fleet says about a notice this node wants to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the claim: send it.
    Ours,
    /// Another node delivered it.
    Sent,
    /// Another node is sending it (or died doing so): look again later.
    Busy,
}

/// KEYS[1] the notice; ARGV[1] this node's claim value, ARGV[2] the claim's lifetime (s).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 'ours'
end
if v == 'sent' then return 'sent' end
return 'busy'
",
    )
});

/// KEYS[1] the notice; ARGV[1] this node's claim value. Deletes the claim if it is ours.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

fn key(c: &Cluster, parts: [&str; 4]) -> String {
    c.key(&["notice", parts[0], parts[1], parts[2], parts[3]])
}

fn mine(c: &Cluster) -> String {
    format!("claim:{}", c.node_id)
}

/// Claims the notice `[consumer, api, version, event]` for `lifetime` seconds.
pub fn claim(c: &Cluster, parts: [&str; 4], lifetime: u64) -> Result<Claim, CallError> {
    let k = key(c, parts);
    let mut inv = CLAIM.prepare_invoke();
    inv.key(&k).arg(mine(c)).arg(lifetime.max(1));
    let answer: String = c.with_conn("notice claim", |conn| inv.invoke(conn))?;
    Ok(match answer.as_str() {
        "ours" => Claim::Ours,
        "sent" => Claim::Sent,
        _ => Claim::Busy,
    })
}

/// Gives this node's claim back (the delivery failed): any node may send it at its next look.
pub fn release(c: &Cluster, parts: [&str; 4]) -> Result<(), CallError> {
    let k = key(c, parts);
    let mut inv = RELEASE.prepare_invoke();
    inv.key(&k).arg(mine(c));
    c.with_conn("notice release", |conn| inv.invoke::<i64>(conn))
        .map(|_| ())
}

/// Marks the notice delivered, for every node.
pub fn mark_sent(c: &Cluster, parts: [&str; 4]) -> Result<(), CallError> {
    let k = key(c, parts);
    c.with_conn("notice sent", |conn| {
        redis::cmd("SET")
            .arg(&k)
            .arg("sent")
            .arg("EX")
            .arg(SENT_FOR)
            .query::<()>(conn)
    })
}

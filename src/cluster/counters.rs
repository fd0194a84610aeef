//! Plan counters in Redis. Counters are keyed by period, window and limit key
//! (`{prefix}q:{period}:{window start}:{key}`, the key last because consumer ids may hold
//! `:`) and expire a minute after their window; strict rates by limit key (`{prefix}r:{key}`).
//!
//! Batched plans (the default) count on leases: every `sync_interval` each node gives back the
//! unused part of its lease, pushes what it counted while Redis was unreachable, and asks for a
//! lease sized to twice its last interval's traffic, granted by `scripts::SYNC` only out of the
//! room left under the limit (at most room / nodes). Requests spend the lease without a round
//! trip; a quota with no lease left asks Redis for that one request (`scripts::TAKE`). Every
//! accepted request is therefore in Redis's total before or when it is accepted: the fleet
//! never accepts more than the quota. The price is on the other side: a request may be refused
//! while other nodes hold unused leases, for at most one sync interval (they give them back at
//! their next sync). Strict plans ask Redis for every request, rate included.
//!
//! Counters are hashes: `n` the count (accepted requests plus every unused lease) and
//! `l:{node}` the lease each node holds, so that a node never gives back more than Redis
//! granted it (after a reset or a Redis restart the record is gone and so is the stale lease).

use super::{is_outage, scripts, CallError, Cluster};
use crate::limits::limiter::{Answer, Ask, Limiter, SyncItem, SyncOutcome};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// Counters per `SYNC` call (keeps one script run short).
const SYNC_BATCH: usize = 500;

fn counter_key(c: &Cluster, key: &str, period: &str, window: i64) -> String {
    c.key(&["q", period, &window.to_string(), key])
}

/// Seconds a counter of a window ending at `end` must live.
fn ttl(end: i64, now: i64) -> i64 {
    (end - now).max(0) + 60
}

/// Asks Redis to decide one request (see the module docs). `None`: Redis could not answer
/// (after one retry on a fresh connection when the connection had dropped, e.g. closed while
/// idle); an outage also marks Redis down.
pub async fn take(c: &Cluster, key: &str, ask: &Ask) -> Option<Answer> {
    let now = crate::clock::now();
    let mut inv = scripts::TAKE.prepare_invoke();
    inv.key(c.key(&["r", key]));
    let (interval_us, burst) = ask.rate.map_or((0, 0), |(interval, burst)| {
        ((interval / 1000).max(1), burst)
    });
    inv.arg(interval_us).arg(burst);
    for (q, start, end) in &ask.quotas {
        inv.key(counter_key(c, key, q.period.name(), *start));
        inv.arg(q.limit).arg(ttl(*end, now));
    }
    let mut reply = None;
    for attempt in 0..2 {
        let mut conn = match c.async_conn() {
            Some(conn) => conn,
            None => {
                c.ensure_async_conn().await;
                c.async_conn()?
            }
        };
        match tokio::time::timeout(c.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) => {
                reply = Some(v);
                break;
            }
            Ok(Err(e)) if is_outage(&e) => {
                c.drop_async_conn();
                let dropped = e.is_connection_dropped() || e.is_io_error();
                if attempt == 0 && dropped {
                    continue;
                }
                c.failed("plan check", &e);
                return None;
            }
            Ok(Err(e)) => {
                log::warn!("plan check in redis failed: {e}");
                return None;
            }
            Err(_) => {
                c.drop_async_conn();
                c.failed("plan check", &"no answer within redis_timeout");
                return None;
            }
        }
    }
    let reply = reply?;
    let [ok, rate_ok, level, counts @ ..] = reply.as_slice() else {
        log::warn!("plan check in redis: unexpected reply");
        return None;
    };
    Some(Answer {
        accepted: *ok == 1,
        rate_allowed: *rate_ok == 1,
        rate_level_ns: u64::try_from(*level).unwrap_or(0).saturating_mul(1000),
        counts: counts
            .iter()
            .map(|&n| u64::try_from(n).unwrap_or(0))
            .collect(),
    })
}

/// One sync of every counter this node holds (see the module docs); returns how many were
/// exchanged. With nothing to exchange it only checks that Redis answers, so that an outage
/// ends as soon as Redis is back. `last`: the sync at exit, which asks for no new lease.
/// Redis counts as up again only once a sync has pushed everything this node counted alone.
pub fn sync(c: &Cluster, limiter: &Limiter, last: bool) -> usize {
    let _one_at_a_time = c.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
    let now = crate::clock::now();
    let items = limiter.take_sync(now, last);
    if items.is_empty() {
        if c.with_conn("ping", |conn| redis::cmd("PING").query::<String>(conn))
            .is_ok()
        {
            c.succeeded();
        }
        return 0;
    }
    let mut done = 0;
    let mut batches = items.chunks(SYNC_BATCH);
    for batch in batches.by_ref() {
        match c.with_conn("counter sync", |conn| run_sync(c, conn, batch, now)) {
            Ok(r) => {
                limiter.finish_sync(batch, SyncOutcome::Applied(&r));
                done += batch.len();
            }
            Err(e) => {
                if !is_outage(e.redis()) {
                    log::warn!("plan counters not synced this time: {e}");
                }
                let outcome = match e {
                    CallError::NotSent(_) => SyncOutcome::NotSent,
                    CallError::Failed(_) => SyncOutcome::Unclear,
                };
                limiter.finish_sync(batch, outcome);
                // The rest waits for the next sync: no new connection per batch.
                for rest in batches.by_ref() {
                    limiter.finish_sync(rest, SyncOutcome::NotSent);
                }
                return done;
            }
        }
    }
    c.succeeded();
    done
}

fn run_sync(
    c: &Cluster,
    conn: &mut redis::Connection,
    batch: &[SyncItem],
    now: i64,
) -> redis::RedisResult<Vec<(u64, u64)>> {
    let mut inv = scripts::SYNC.prepare_invoke();
    inv.arg(c.nodes).arg(&c.node_id);
    for item in batch {
        let end = item.period.window(item.window).1;
        inv.key(counter_key(c, &item.key, item.period.name(), item.window));
        inv.arg(item.returned)
            .arg(item.pushed)
            .arg(item.wanted)
            .arg(item.limit)
            .arg(ttl(end, now));
    }
    inv.invoke(conn)
}

/// Forgets every counter and strict rate of `consumer` in Redis (all scopes); returns how
/// many keys were deleted. Scans this fleet's counters and matches the limit key exactly, so
/// that `acme` never matches `acme:eu`. Each page of the scan is its own call on the shared
/// connection, so that the counter and identity syncs waiting for it are not held up for a
/// whole scan of a large database.
pub fn reset(c: &Cluster, consumer: &str) -> Result<usize, super::CallError> {
    let ours = |limit_key: &str| {
        limit_key == consumer
            || limit_key
                .strip_prefix(consumer)
                .is_some_and(|rest| rest.starts_with('\n'))
    };
    let counters = c.key(&["q", ""]);
    let rates = c.key(&["r", ""]);
    let mut doomed = Vec::new();
    for (prefix, skip) in [(&counters, 2), (&rates, 0)] {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = c.with_conn("usage reset", |conn| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(conn)
            })?;
            for k in keys {
                // Past the prefix: `{period}:{window}:{key}` for counters, `{key}` for rates.
                let rest = k.get(prefix.len()..).unwrap_or("");
                let limit_key = rest.splitn(skip + 1, ':').nth(skip).unwrap_or("");
                if ours(limit_key) {
                    doomed.push(k);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let mut deleted = 0;
    for chunk in doomed.chunks(500) {
        deleted += c.with_conn("usage reset", |conn| {
            redis::cmd("DEL").arg(chunk).query::<usize>(conn)
        })?;
    }
    Ok(deleted)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Exchanges counters with Redis every `sync_interval`, keeps the request path's connection
/// open, and gives every lease back at exit.
pub struct CounterSync {
    pub cluster: Arc<Cluster>,
    pub limiter: Arc<Limiter>,
}

/// The last sync when the task is dropped (Pingora drops service tasks after the grace period
/// in which in-flight requests finish): leases go back, outage counts go in.
struct FinalSync(Arc<Cluster>, Arc<Limiter>);

impl Drop for FinalSync {
    fn drop(&mut self) {
        let n = sync(&self.0, &self.1, true);
        log::info!("plan counters synced with redis at exit ({n} counters)");
    }
}

#[async_trait]
impl BackgroundService for CounterSync {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let _last = FinalSync(self.cluster.clone(), self.limiter.clone());
        let mut tick = tokio::time::interval(self.cluster.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Keeps syncing through the shutdown grace period, until the runtime drops this task.
        loop {
            tick.tick().await;
            self.cluster.ensure_async_conn().await;
            let (cluster, limiter) = (self.cluster.clone(), self.limiter.clone());
            if tokio::task::spawn_blocking(move || sync(&cluster, &limiter, false))
                .await
                .is_err()
            {
                log::warn!("the plan counter sync task failed");
            }
        }
    }
}

//! The serde mirror of the TOML config file. Every struct rejects unknown keys; defaults live
//! here so that `conf/turnpike.toml` and this file tell the same story. Nothing in this module
//! checks meaning across keys: that is `validate`'s job.

use super::units::{Dur, Size};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub apis: Vec<ApiSection>,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub consumers: Vec<ConsumerSection>,
    #[serde(default)]
    pub plans: BTreeMap<String, PlanSection>,
    #[serde(default)]
    pub consumer_defaults: ConsumerDefaultsSection,
    #[serde(default)]
    pub usage: UsageSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub analytics: super::analytics::AnalyticsSection,
    /// `[policies.NAME]`: named, reusable policies (see `crate::policy`).
    #[serde(default)]
    pub policies: BTreeMap<String, super::policy::PolicySection>,
    /// `[groups.NAME]`: what applies to every consumer in a group.
    #[serde(default)]
    pub groups: BTreeMap<String, super::policy::GroupSection>,
    /// `[teams.ID]`: the owners of catalogue entries.
    #[serde(default)]
    pub teams: BTreeMap<String, super::catalog::TeamSection>,
    /// `[governance]`: rules over the catalogue, each with a severity.
    #[serde(default)]
    pub governance: super::governance::GovernanceSection,
    /// `[catalog]`: shadow endpoint discovery and lifecycle notices.
    #[serde(default)]
    pub catalog: super::catalog::CatalogSettings,
    /// `[telemetry]`: OpenTelemetry traces and logs to a collector.
    #[serde(default)]
    pub telemetry: super::telemetry::TelemetrySection,
    /// The OpenAPI documents of the APIs that name one (`[apis.catalog] openapi`), by API
    /// index: loaded by `config::parse` (they need the config file's directory).
    #[serde(skip)]
    pub specs: crate::openapi::Loaded,
}

/// `[cache]`: the edge cache shared by every API with an `[apis.cache]` block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Hard bound for all cached bodies and headers of this process.
    #[serde(default = "default_cache_memory")]
    pub max_memory: Size,
    /// How long a request waits for another request that is fetching the same object before
    /// it goes upstream itself.
    #[serde(default = "default_cache_lock_timeout")]
    pub lock_timeout: Dur,
    /// With `[store] redis_url`: Redis channel used to send purges to every node (under the
    /// store's `redis_prefix`).
    #[serde(default = "default_purge_channel")]
    pub purge_channel: String,
    /// Request headers that frameworks honour to change the URL, host, scheme or method, which
    /// are not part of a cache key: removed before the upstream on cached routes. A header of
    /// the default list taken out of this one becomes part of the key instead (as `vary`).
    #[serde(default = "default_strip_unkeyed")]
    pub strip_unkeyed: Vec<String>,
    /// Copies of one URL that differ by the upstream's `Vary`: past this many, a new one is
    /// served but not stored.
    #[serde(default = "default_max_variants")]
    pub max_variants: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_memory: default_cache_memory(),
            lock_timeout: default_cache_lock_timeout(),
            purge_channel: default_purge_channel(),
            strip_unkeyed: default_strip_unkeyed(),
            max_variants: default_max_variants(),
        }
    }
}

fn default_admin_failures() -> String {
    "20/min".into()
}

fn default_max_variants() -> usize {
    crate::cache::storage::MAX_VARIANTS
}

fn default_strip_unkeyed() -> Vec<String> {
    crate::cache::UNKEYED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

fn default_strip_request_headers() -> Vec<String> {
    crate::headers::OTHER_GATEWAYS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

fn default_cache_memory() -> Size {
    Size(256 << 20)
}
fn default_cache_lock_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_purge_channel() -> String {
    "cache-purge".into()
}

/// `[apis.cache]` or `[apis.routes.cache]`: responses of this API (or route) may be cached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiCacheSection {
    /// `false` on a route turns off the API's cache for that route.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Freshness when the upstream gives none (no max-age, s-maxage or Expires).
    #[serde(default = "default_cache_ttl")]
    pub ttl: Dur,
    /// `consumer`: one copy per consumer (default on APIs with auth); `shared`: one copy for all.
    pub scope: Option<CacheScope>,
    /// Request headers whose values select different copies (in addition to the upstream's
    /// `Vary`).
    #[serde(default)]
    pub vary: Vec<String>,
    /// How long a stale copy may be served while one background request refreshes it (when the
    /// upstream's Cache-Control says nothing).
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    /// How long a stale copy may be served when the upstream fails (when the upstream's
    /// Cache-Control says nothing).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// Larger responses are passed through and not stored (default 1MiB, or an eighth of
    /// `[cache] max_memory` when that is less).
    pub max_object: Option<Size>,
    /// Store responses that carry `Set-Cookie` (the cookie is then replayed to every caller who
    /// gets the copy).
    #[serde(default)]
    pub store_set_cookie: bool,
}

fn default_cache_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}

/// Who may receive a cached copy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    Consumer,
    Shared,
}

/// `[usage]`: where callers read their own usage with their normal credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_usage_path")]
    pub path: String,
    /// The API whose `[apis.auth]` identifies callers here (default: the first API with auth).
    pub api: Option<String>,
}

/// `[plans.NAME]`: the limits of the consumers on this plan.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// Sustained rate, e.g. "5/s" (smoothed: GCRA).
    pub rate: Option<String>,
    /// How many may arrive at once (default: the rate's count).
    pub burst: Option<u64>,
    /// Calendar quotas in UTC, e.g. ["450/hour", "1000000/month"].
    #[serde(default)]
    pub quotas: Vec<String>,
    /// With Redis: "batched" (leases, never over the quota) or "strict" (one Redis call per
    /// request, exact rate and quotas across the fleet).
    #[serde(default)]
    pub exactness: Exactness,
    /// With Redis: what requests on this plan get while Redis cannot be reached.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

/// `[plans.NAME] exactness`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Exactness {
    #[default]
    Batched,
    Strict,
}

/// `[plans.NAME] on_store_error`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse (503 store_unavailable) once the node's leases are used.
    Deny,
    /// Accept without limits; counts reach Redis when it is back.
    Allow,
    /// Count on this node with the plan's numbers divided by `[store] nodes`.
    #[default]
    Local,
}

/// `[apis.plans.NAME]`: an API's own numbers for a plan; keys left out keep the plan's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanOverride {
    pub rate: Option<String>,
    pub burst: Option<u64>,
    pub quotas: Option<Vec<String>>,
}

/// How an API counts plan limits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitsScope {
    /// One count per consumer across every API with this scope.
    #[default]
    Consumer,
    /// A separate count per consumer on this API.
    ConsumerApi,
}

/// `[store]`: the embedded SQLite store (consumers, key digests, audit log).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Relative paths are relative to the config file's directory.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// A Redis server shared by the fleet (consumers, keys, audit log, plan counters):
    /// `redis://[:password@]host:port[/db]`. Unset: everything stays in `path`.
    pub redis_url: Option<super::hidden::Hidden>,
    /// Prefix of every Redis key Turnpike writes (several fleets can share one server).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// How many gateway nodes share the Redis server (batched rates and `local` fallbacks
    /// divide the plan's numbers by it).
    #[serde(default = "one")]
    pub nodes: u32,
    /// How often counters and the identity index are synchronised with Redis.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// How long one Redis call may take before Redis counts as unreachable.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: Dur,
    /// With Redis: how long API keys of the store are still accepted from this node's last
    /// copy when Redis cannot be read (a key revoked meanwhile elsewhere would still work).
    /// After it, such keys get 503 store_unavailable (fail closed); keys in the config file
    /// are not affected.
    #[serde(default = "default_max_key_staleness")]
    pub max_key_staleness: Dur,
}

/// `[consumer_defaults]`: what a consumer gets when it does not say.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDefaultsSection {
    /// The plan of consumers that have none. Without it, once `[plans]` exist, a consumer
    /// must name a plan (config check, admin API 422), and one without a plan anyway is
    /// refused 403 `no_plan` on APIs with plans.
    pub plan: Option<String>,
}

/// `[keys]`: API key policy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// How long a rotated key keeps working next to its replacement.
    #[serde(default = "default_rotation_grace")]
    pub rotation_grace: Dur,
}

/// `[[consumers]]`: a consumer defined in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    pub id: String,
    pub plan: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub keys: Vec<ConfigKeySection>,
}

/// A key of a config consumer, given by its digest (`turnpike keys hash`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigKeySection {
    pub sha256: String,
    pub label: Option<String>,
    /// RFC 3339, e.g. `"2027-01-01T00:00:00Z"`.
    pub expires_at: Option<String>,
}

/// `[apis.auth]`: how callers of an API are identified. Absent = a public API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Any of these identifies the caller.
    pub methods: Vec<AuthMethod>,
    #[serde(default)]
    pub api_key: ApiKeySection,
    /// When set, only consumers in one of these groups may call the API.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Send the credential on to the upstream (default: removed).
    #[serde(default)]
    pub forward_credentials: bool,
    pub jwt: Option<JwtSection>,
}

/// `[apis.auth.jwt]`: bearer JWTs. Exactly one key source: `jwks_url`, `secret_env` (HS*) or
/// `public_key_file` (PEM).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of the token's audiences).
    pub audience: String,
    pub jwks_url: Option<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<PathBuf>,
    /// The algorithms accepted, e.g. ["RS256"]; one family per key source.
    pub algorithms: Vec<String>,
    /// The claim that names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// A claim listing groups (array, or a space- or comma-separated string).
    pub groups_claim: Option<String>,
    /// The claim listing scopes (array or space-separated string).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default = "default_jwt_leeway")]
    pub leeway: Dur,
    /// How often the JWKS is fetched again (also on an unknown `kid`, at most every 10 s).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// A consumer registered under the token's consumer id (config or store) lends its plan,
    /// groups and scopes. Off by default: with it on, the identity provider decides which
    /// registered consumer a token speaks for.
    #[serde(default)]
    pub link_consumers: bool,
    /// The plan of token consumers that no registered consumer lends one to; without it (and
    /// without `[consumer_defaults] plan`) they are refused 403 `no_plan` on APIs with plans.
    pub default_plan: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

/// `api_key = { header = "x-api-key", query_param = "api_key" }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    #[serde(default = "default_key_header")]
    pub header: String,
    /// Also accept the key in this query parameter (off unless set).
    pub query_param: Option<String>,
}

/// `[server]`: public listeners and process settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Client request headers removed before every upstream, beside the ones the gateway sets
    /// itself: by default the identity, limit and client-address headers of other gateways
    /// and CDNs (`prefix-*` entries allowed).
    #[serde(default = "default_strip_request_headers")]
    pub strip_request_headers: Vec<String>,
    #[serde(default)]
    pub tls: Vec<TlsListener>,
    /// Policies of every API (names of `[policies.NAME]`).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` is believed: behind them the
    /// client is the right-most address of that header that is not itself trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Worker threads of the proxy service; 0 is rejected.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Pingora's work-stealing runtime (tokio multi-thread) when true; one single-threaded
    /// runtime per thread when false (less cross-thread overhead per request).
    #[serde(default = "yes")]
    pub work_stealing: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plaintext listeners.
    #[serde(default)]
    pub h2c: bool,
    /// Every connection to the plaintext listeners starts with a PROXY protocol header (v1 or
    /// v2) from a peer in `trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// How long an old process keeps serving in-flight requests after an upgrade or shutdown.
    #[serde(default = "default_grace_period")]
    pub grace_period: Dur,
    /// After a shutdown or upgrade closes the listeners, how long idle keep-alive connections
    /// stay open so that their next request is answered (with `Connection: close`) instead of
    /// the connection being cut. Shorter than `grace_period`.
    #[serde(default = "default_keepalive_drain")]
    pub keepalive_drain: Dur,
    /// How long the final shutdown of services may take after the grace period.
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout: Dur,
    /// Idle upstream connections kept for reuse, across all upstreams.
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[[server.tls]]`: a TLS listener (rustls), HTTP/2 offered by ALPN.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "yes")]
    pub h2: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a trusted proxy.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `[server.limits]`: edge limits, each with the default from the hostile-input guide.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default = "d_request_line")]
    pub request_line: Size,
    #[serde(default = "d_header_line")]
    pub header_line: Size,
    #[serde(default = "d_header_block")]
    pub header_block: Size,
    #[serde(default = "d_header_count")]
    pub header_count: usize,
    /// Deadline for receiving the whole request head of a new connection.
    #[serde(default = "d_head_timeout")]
    pub head_timeout: Dur,
    /// A new connection that sends nothing for this long is closed (no answer).
    #[serde(default = "d_idle_before_request")]
    pub idle_before_request: Dur,
    /// Client connections the proxy listeners hold at once; over it a new connection is
    /// closed at once and counted. 0: half of the open-file limit (`ulimit -n`).
    #[serde(default)]
    pub max_connections: usize,
    #[serde(default = "d_body")]
    pub body: Size,
    /// A request body slower than this many bytes per second on average is answered 408 and
    /// its connection closed, once `body_rate_after` has passed ("0" turns the rate off).
    #[serde(default = "d_body_min_rate")]
    pub body_min_rate: Size,
    /// When the body rate starts to be judged; also the longest wait for one read of a body.
    #[serde(default = "d_body_rate_after")]
    pub body_rate_after: Dur,
    /// A client that reads an answer slower than this many bytes per second has its
    /// connection closed (Pingora turns it into a timeout per write of at least 1 s; "0"
    /// turns it off).
    #[serde(default = "d_send_min_rate")]
    pub send_min_rate: Size,
    /// The largest response head an upstream may send (names and values); over it the client
    /// gets 502 and the upstream connection is not reused.
    #[serde(default = "d_upstream_header_block")]
    pub upstream_header_block: Size,
    #[serde(default = "d_keepalive_idle")]
    pub keepalive_idle: Dur,
    /// Requests served on one keep-alive connection before it is closed (0 = no limit).
    #[serde(default = "d_keepalive_requests")]
    pub keepalive_requests: u32,
    #[serde(default = "d_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    #[serde(default = "d_h2_header_list")]
    pub h2_max_header_list: Size,
    #[serde(default = "d_h2_stream_window")]
    pub h2_stream_window: Size,
    #[serde(default = "d_h2_conn_window")]
    pub h2_connection_window: Size,
    /// Streams an HTTP/2 client may reset within 10 s before its connection is closed with
    /// GOAWAY(ENHANCE_YOUR_CALM) (0: no budget).
    #[serde(default = "d_h2_max_resets")]
    pub h2_max_resets: u32,
    /// Failed authentications per client address before its requests to APIs with auth get
    /// 429 for the rest of the window; "off" disables the guard.
    #[serde(default = "d_auth_failures")]
    pub auth_failures_per_ip: String,
}

/// `[admin]`: the admin listener and its bearer token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Wrong admin tokens per client address before its admin requests get 429 for the rest
    /// of the window; "off" disables the guard.
    #[serde(default = "default_admin_failures")]
    pub auth_failures_per_ip: String,
}

/// `[upstreams.NAME]`: a pool of targets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub hash_on: HashOn,
    /// The request header hashed when `hash_on = "header"`.
    pub hash_header: Option<String>,
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "d_read_timeout")]
    pub read_timeout: Dur,
    #[serde(default = "d_write_timeout")]
    pub write_timeout: Dur,
    /// Idle pooled connections are closed after this; keep it below the upstream's own timeout.
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout: Dur,
    /// Further targets tried when connecting fails (nothing was sent yet).
    #[serde(default = "d_retries")]
    pub retries: u32,
    pub health: Option<HealthSection>,
    #[serde(default)]
    pub passive: PassiveSection,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    ClientIp,
    Header,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over plain TCP.
    #[default]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (gRPC backends).
    H2c,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
}

/// `[upstreams.NAME.health]`: active health checks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    #[serde(rename = "type")]
    pub kind: HealthKind,
    #[serde(default = "d_health_path")]
    pub path: String,
    /// Host header of HTTP checks (default: `localhost`).
    pub host: Option<String>,
    #[serde(default = "d_health_interval")]
    pub interval: Dur,
    #[serde(default = "d_health_timeout")]
    pub timeout: Dur,
    #[serde(default = "d_unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "d_healthy_after")]
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Http,
    Tcp,
}

/// `[upstreams.NAME.passive]`: ejection of targets that fail live traffic.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PassiveSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive failures (connect errors, and 5xx when `on_5xx`) that eject a target.
    #[serde(default = "d_passive_failures")]
    pub failures: u32,
    /// How long an ejected target is left out before it gets traffic again.
    #[serde(default = "d_passive_cooldown")]
    pub cooldown: Dur,
    #[serde(default = "yes")]
    pub on_5xx: bool,
}

/// `[[apis]]`: one API product: where it lives and where it goes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    pub base_path: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_base_path: bool,
    /// Request body limit for this API (default `[server.limits] body`).
    pub max_body: Option<Size>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    pub respond: Option<RespondSection>,
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub limits_scope: LimitsScope,
    #[serde(default)]
    pub plans: BTreeMap<String, PlanOverride>,
    pub limits: Option<ApiLimitsSection>,
    pub cache: Option<ApiCacheSection>,
    /// Policies of this API (names of `[policies.NAME]`).
    #[serde(default)]
    pub policies: Vec<String>,
    /// `[apis.catalog]`: owner, audience, lifecycle.
    pub catalog: Option<super::catalog::CatalogSection>,
    /// `[apis.openapi]`: what the API's OpenAPI document (`[apis.catalog] openapi`) drives.
    pub openapi: Option<ApiOpenApiSection>,
}

/// `[apis.limits]`: flood guards of an API.
/// `[apis.openapi]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiOpenApiSection {
    /// The API's routes come from the spec's operations (each path template with its
    /// methods); `[[apis.routes]]` with the same path add their policies, limits and cache to
    /// it. (The issue's `routes = "openapi"` on the API itself cannot sit beside
    /// `[[apis.routes]]` tables in TOML, hence this block.)
    #[serde(default)]
    pub routes: bool,
    /// `validate = "request"`: requests are checked against the spec (a built-in `validate`
    /// step named `openapi`, with the keys below).
    pub validate: Option<ValidateTarget>,
    /// Every route is answered from the spec's examples (`crate::openapi::mock`), never
    /// proxied; requests are validated first.
    #[serde(default)]
    pub mock: bool,
    /// As the keys of a `validate` policy.
    pub mode: Option<super::policy::ValidateMode>,
    pub max_validated_body: Option<Size>,
    pub validate_responses: Option<super::policy::ResponseMode>,
    pub response_sample: Option<f64>,
}

impl ApiSection {
    /// The whole API is answered from its spec: `[apis.openapi] mock = true`, or lifecycle
    /// `design` with a spec.
    pub fn mocked(&self) -> bool {
        self.openapi.as_ref().is_some_and(|o| o.mock)
            || self.catalog.as_ref().is_some_and(|c| {
                c.lifecycle == super::catalog::Lifecycle::Design && c.openapi.is_some()
            })
    }
}

impl ApiOpenApiSection {
    pub fn validate_keys(&self) -> super::policy::ValidateKeys {
        super::policy::ValidateKeys {
            mode: self.mode,
            max_validated_body: self.max_validated_body,
            validate_responses: self.validate_responses,
            response_sample: self.response_sample,
        }
    }
}

/// What `[apis.openapi] validate` checks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValidateTarget {
    Request,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiLimitsSection {
    /// Requests per client address, e.g. "20/s" (approximate: a count-min sketch).
    pub per_ip: Option<String>,
}

/// `[[apis.routes]]`: a path template under the API's base path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: String,
    /// Allowed methods; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    pub max_body: Option<Size>,
    pub respond: Option<RespondSection>,
    /// Scopes a caller needs for this route (on an API with `auth`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Replaces the API's `[apis.cache]` for this route.
    pub cache: Option<ApiCacheSection>,
    /// Policies of this route, beside the API's (names of `[policies.NAME]`).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Answered from the API's OpenAPI document (`crate::openapi::mock`), never proxied.
    #[serde(default)]
    pub mock: bool,
    /// Callers need no credential here although the API has `[apis.auth]` (no identification,
    /// no plan; the flood guard still applies). Set by the spec's operations that say
    /// `security: []` when the routes come from it.
    #[serde(default)]
    pub anonymous: bool,
}

/// `respond`: a static answer given by the gateway itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "d_status")]
    pub status: u16,
    #[serde(default = "d_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".into()]
}
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_pid_file() -> String {
    "/run/turnpike/turnpike.pid".into()
}
fn default_upgrade_sock() -> String {
    "/run/turnpike/upgrade.sock".into()
}
fn default_grace_period() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_keepalive_drain() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_keepalive_pool() -> usize {
    1024
}
fn default_usage_path() -> String {
    "/_turnpike/usage".into()
}
fn default_redis_prefix() -> String {
    "turnpike:".into()
}
fn one() -> u32 {
    1
}
fn default_max_key_staleness() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_sync_interval() -> Dur {
    Dur(Duration::from_millis(250))
}
fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(250))
}
fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/turnpike/turnpike.db")
}
fn default_rotation_grace() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_scopes_claim() -> String {
    "scope".into()
}
fn default_jwt_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_key_header() -> String {
    "x-api-key".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9901".into()
}
fn d_request_line() -> Size {
    Size(8 << 10)
}
fn d_header_line() -> Size {
    Size(8 << 10)
}
fn d_header_block() -> Size {
    Size(64 << 10)
}
fn d_header_count() -> usize {
    100
}
fn d_head_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_idle_before_request() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_h2_max_resets() -> u32 {
    100
}
fn d_body() -> Size {
    Size(10 << 20)
}
fn d_body_min_rate() -> Size {
    Size(1000)
}
fn d_body_rate_after() -> Dur {
    Dur(Duration::from_secs(20))
}
fn d_send_min_rate() -> Size {
    Size(1000)
}
fn d_upstream_header_block() -> Size {
    Size(64 << 10)
}
fn d_keepalive_idle() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_keepalive_requests() -> u32 {
    10_000
}
fn d_h2_streams() -> u32 {
    100
}
fn d_h2_header_list() -> Size {
    Size(64 << 10)
}
fn d_h2_stream_window() -> Size {
    Size(256 << 10)
}
fn d_h2_conn_window() -> Size {
    Size(1 << 20)
}
fn d_auth_failures() -> String {
    "60/min".into()
}
fn d_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_write_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_idle_timeout() -> Dur {
    Dur(Duration::from_secs(50))
}
fn d_retries() -> u32 {
    1
}
fn d_health_path() -> String {
    "/".into()
}
fn d_health_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_health_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_unhealthy_after() -> u32 {
    3
}
fn d_healthy_after() -> u32 {
    2
}
fn d_passive_failures() -> u32 {
    5
}
fn d_passive_cooldown() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_status() -> u16 {
    200
}
fn d_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

impl Default for ServerSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty server section parses"))
    }
}
impl Default for LimitsSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty limits section parses"))
    }
}
impl Default for AdminSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty admin section parses"))
    }
}
impl Default for UsageSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty usage section parses"))
    }
}
impl Default for StoreSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty store section parses"))
    }
}
impl Default for KeysSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty keys section parses"))
    }
}
impl Default for ApiKeySection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty api_key section parses"))
    }
}
impl Default for PassiveSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty passive section parses"))
    }
}

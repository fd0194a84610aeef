//! Command-line interface: `run`, `check`, `lint`, `keys hash|create`, `audit verify`, `report`,
//! `--version`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Turnpike: an API management gateway on Cloudflare's Pingora.
#[derive(Parser, Debug)]
#[command(name = "turnpike", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (in the foreground unless -d is given).
    Run {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Run in the background (Pingora daemon mode; writes [server] pid_file).
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Take over the listening sockets of a running Turnpike ([server] upgrade_sock).
        #[arg(short = 'u', long)]
        upgrade: bool,
    },
    /// Check a config file: print a one-line summary (and governance warnings) and exit 0, or
    /// every problem and exit 1.
    Check {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The config running now (or the last released one): breaking changes to the specs
        /// of its stable APIs are refused as a reload would refuse them
        /// (`breaking_change_requires_new_version`).
        #[arg(long, value_name = "OLD_FILE")]
        against: Option<PathBuf>,
    },
    /// Print every problem and governance finding of a config file with its rule id, severity,
    /// key path and line; exit 1 when any is an error (for CI pipelines).
    Lint {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// text, json or sarif (SARIF 2.1.0, for code-review tools).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        format: String,
    },
    /// Ask the gateway running on a config file to reload it (through its admin listener).
    Reload {
        /// The config file (for [admin] listen and the token).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Apply a file that removes more than half of the running APIs or config consumers.
        #[arg(long)]
        force: bool,
    },
    /// Show what the policy pipeline does with one request: the route, each stage's policies
    /// and decisions, the upstream request and the answer headers. No upstream or network is
    /// used; keys are looked up in the configured store, plans count from zero.
    Explain {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The method and the URL, e.g. 'GET https://api.example.com/orders/v1/42'.
        request: String,
        /// A request header, 'Name: value' (repeat for more).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The client's address as the TCP peer (default 127.0.0.1).
        #[arg(long = "client-ip", value_name = "IP")]
        client_ip: Option<std::net::IpAddr>,
        /// A declared request body length in bytes.
        #[arg(long = "body-size", value_name = "BYTES")]
        body_size: Option<u64>,
        /// The request body (checked against the API's OpenAPI document by validate steps).
        #[arg(short = 'd', long = "data", value_name = "BODY")]
        data: Option<String>,
        /// Count N identical requests right before this one (quotas, rates, guards).
        #[arg(long, value_name = "N", default_value_t = 0)]
        usage: u64,
        /// Print JSON for tools.
        #[arg(long)]
        json: bool,
    },
    /// Run declarative policy test cases ([[case]] in TOML files) offline; exits 1 if any
    /// case fails, printing expected against actual.
    Test {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Case files.
        #[arg(required = true, value_name = "CASES")]
        files: Vec<PathBuf>,
        /// Print every case's outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The API catalogue: every API of a config file as a table (or JSON), or a report.
    Catalog(CatalogArgs),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print usage from the store's rollups as a table (the same numbers as
    /// `GET /analytics/usage`; a running gateway writes them every 5 seconds).
    Report {
        /// The config file (for [store] path).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Only this consumer.
        #[arg(long, value_name = "ID")]
        consumer: Option<String>,
        /// Only this API.
        #[arg(long, value_name = "NAME")]
        api: Option<String>,
        /// Start, RFC 3339 or Unix seconds (default: one hour before --to).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End, excluded (default: now).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// minute, hour, day or auto (by the length of the range).
        #[arg(long, value_name = "G")]
        granularity: Option<String>,
    },
    /// OpenAPI documents: `diff OLD NEW` lists breaking and other changes.
    #[command(subcommand)]
    Openapi(OpenapiCommand),
}

#[derive(Subcommand, Debug)]
pub enum OpenapiCommand {
    /// Compare two versions of a spec: every change, breaking ones first, with its JSON
    /// pointer. Exits 1 when a change is breaking, 2 when a spec cannot be read.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// text, json or markdown.
        #[arg(long, default_value = "text", value_parser = ["text", "json", "markdown"])]
        format: String,
    },
    /// Print the config of an API described by a spec (an `[[apis]]` block with its catalogue
    /// entry, routes and key settings) to paste into the config; no file is edited.
    Import {
        spec: PathBuf,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// The upstream it proxies to (`[upstreams.NAME]`).
        #[arg(long)]
        upstream: String,
        /// Its base path (default: the path of the spec's first server URL, else /NAME).
        #[arg(long)]
        base_path: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print the SHA-256 digest of a key read from standard input (for `keys = [{ sha256 }]`).
    Hash,
    /// Create a key for a consumer in the store (works offline; a running gateway picks it up
    /// within a second). Prints the key once, on standard output.
    Create {
        /// The consumer (created in the store if it does not exist).
        #[arg(long, value_name = "ID")]
        consumer: String,
        /// A label shown in listings.
        #[arg(long)]
        label: Option<String>,
        /// The plan of a consumer created here (needed once the config has plans, unless
        /// [consumer_defaults] plan is set).
        #[arg(long)]
        plan: Option<String>,
        /// The config file (for [store] path).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; prints the number of entries and the last hash.
    Verify {
        /// The config file (for [store] path).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

/// `turnpike catalog -c FILE [--json]`, or `turnpike catalog consumers ...`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: Option<CatalogCommand>,
    /// The config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (as GET /catalog answers, every entry).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Who still calls an API version: every consumer with requests to it in the window, with
    /// counts, last call and contacts, from the store's usage rollups (a running gateway writes
    /// them every 5 seconds).
    Consumers {
        /// NAME/VERSION, or NAME for an API without a version.
        api: String,
        /// The config file (for the API, [store] path and the consumers).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The window before now, e.g. 30d or 12h (at most 400d).
        #[arg(long, value_name = "DURATION", default_value = "30d")]
        since: String,
        /// Print JSON (as the admin API answers).
        #[arg(long)]
        json: bool,
    },
}

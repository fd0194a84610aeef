//! Command-line interface: `run`, `check`, `--version`.

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
    /// Check a config file: print a one-line summary and exit 0, or every problem and exit 1.
    Check {
        /// The config file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

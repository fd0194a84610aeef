//! The `turnpike` binary: parses the command line and hands over to the library.

use clap::Parser;
use std::process::ExitCode;
use turnpike::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::Check { config } => match turnpike::config::load_snapshot(&config, None) {
            Ok(snapshot) => {
                println!("{}: {}", config.display(), turnpike::summary(&snapshot));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            daemon,
            upgrade,
        } => {
            let flags = turnpike::app::RunFlags { daemon, upgrade };
            match turnpike::app::build(&config, flags) {
                Ok((server, _shared)) => server.run_forever(),
                Err(e) => {
                    eprint!("{e}");
                    if !e.to_string().ends_with('\n') {
                        eprintln!();
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}

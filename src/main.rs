//! The `turnpike` binary: parses the command line and hands over to the library.

use clap::Parser;
use std::process::ExitCode;
use turnpike::cli::{
    AuditCommand, CatalogArgs, CatalogCommand, Cli, Command, KeysCommand, OpenapiCommand,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The offline commands print reports: only warnings and errors besides.
    let quiet = matches!(
        cli.command,
        Command::Explain { .. }
            | Command::Test { .. }
            | Command::Lint { .. }
            | Command::Catalog(_)
            | Command::Openapi(_)
    );
    init_logging(if quiet { "warn" } else { "info" });
    match cli.command {
        Command::Check { config, against } => {
            match turnpike::config::load_snapshot(&config, None) {
                Ok(snapshot) => {
                    if let Some(old) = against {
                        let gate = turnpike::config::load(&old).and_then(|old_cfg| {
                            let src = std::fs::read_to_string(&config).unwrap_or_default();
                            turnpike::config::gate(&old_cfg, &snapshot.file, &config, &src)
                        });
                        if let Err(e) = gate {
                            eprint!("{e}");
                            return ExitCode::from(1);
                        }
                    }
                    println!("{}: {}", config.display(), turnpike::summary(&snapshot));
                    for w in turnpike::lint::warnings(&config) {
                        eprintln!("{w}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Lint { config, format } => turnpike::lint::run(&config, &format),
        Command::Reload { config, force } => turnpike::remote::reload(&config, force),
        Command::Explain {
            config,
            request,
            headers,
            client_ip,
            body_size,
            data,
            usage,
            json,
        } => turnpike::policytest::explain::run(&turnpike::policytest::explain::Ask {
            config: &config,
            request: &request,
            headers: &headers,
            client_ip,
            body_size,
            body: data.as_deref(),
            usage,
            json,
        }),
        Command::Test {
            config,
            files,
            json,
        } => turnpike::policytest::cases::run(&config, &files, json),
        Command::Catalog(CatalogArgs {
            command:
                Some(CatalogCommand::Consumers {
                    api,
                    config,
                    since,
                    json,
                }),
            ..
        }) => turnpike::offline::catalog_consumers(&config, &api, &since, json),
        Command::Catalog(CatalogArgs {
            command: None,
            config: Some(config),
            json,
        }) => turnpike::offline::catalog(&config, json),
        Command::Catalog(CatalogArgs { .. }) => {
            eprintln!("turnpike catalog -c FILE [--json], or turnpike catalog consumers NAME/VERSION -c FILE");
            ExitCode::from(2)
        }
        Command::Keys(KeysCommand::Hash) => turnpike::offline::keys_hash(),
        Command::Openapi(OpenapiCommand::Diff { old, new, format }) => {
            turnpike::openapi::diff::run(&old, &new, &format)
        }
        Command::Openapi(OpenapiCommand::Import {
            spec,
            name,
            upstream,
            base_path,
        }) => turnpike::openapi::import::run(
            &spec,
            &turnpike::openapi::import::Import {
                spec_path: &spec.display().to_string(),
                name: &name,
                upstream: &upstream,
                base_path: base_path.as_deref(),
            },
        ),
        Command::Keys(KeysCommand::Create {
            consumer,
            label,
            plan,
            config,
        }) => turnpike::offline::keys_create(&config, &consumer, label.as_deref(), plan),
        Command::Audit(AuditCommand::Verify { config }) => turnpike::offline::audit_verify(&config),
        Command::Report {
            config,
            consumer,
            api,
            from,
            to,
            granularity,
        } => {
            let ask = turnpike::analytics::report::Ask {
                api,
                consumer,
                from,
                to,
                granularity,
            };
            turnpike::offline::report(&config, &ask)
        }
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

/// Logs to stderr at `RUST_LOG` (default `default`). Pingora's own modules never log below info:
/// at debug they print whole request headers, which carry credentials.
fn init_logging(default: &str) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    let capped = format!("{wanted},pingora_core=info,pingora_proxy=info,pingora_cache=info,pingora_load_balancing=info");
    let verbose = wanted.contains("debug") || wanted.contains("trace");
    let filters = if verbose {
        capped.as_str()
    } else {
        wanted.as_str()
    };
    env_logger::Builder::new().parse_filters(filters).init();
}

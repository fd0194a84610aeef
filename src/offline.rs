//! The commands that work on the store without a running gateway: `keys hash`, `keys create`,
//! `audit verify`, `report`, `catalog` and `catalog consumers`. Messages go to stderr; only the requested value goes to stdout.

use crate::identity::Identity;
use crate::store::consumers::NewConsumer;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(1)
}

/// Opens the store named by a config file: the SQLite file, or the fleet's Redis.
fn open_store(config: &Path) -> Result<Identity, String> {
    let cfg = crate::config::load(config).map_err(|e| e.to_string())?;
    let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let path = crate::app::store_path(&absolute, &cfg.store.path);
    let cluster = crate::cluster::Cluster::from_config(&cfg.store)
        .map_err(|e| format!("store.redis_url: {e}"))?
        .map(std::sync::Arc::new);
    Identity::open(&path, cluster).map_err(|e| format!("{}: {e}", path.display()))
}

/// Who made a change from the command line.
fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

pub fn keys_hash() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return fail(format!("cannot read the key from standard input: {e}"));
    }
    // One trailing newline (from echo or a file) is not part of the key.
    let key = input
        .strip_suffix(b"\n")
        .map(|k| k.strip_suffix(b"\r").unwrap_or(k))
        .unwrap_or(&input);
    if key.is_empty() {
        return fail("no key on standard input");
    }
    if !crate::identity::key::well_formed(key) {
        eprintln!("note: this is not a Turnpike key (tpk_...) or its checksum is wrong; hashing it anyway");
    }
    println!(
        "{}",
        crate::identity::key::to_hex(&crate::identity::key::digest(key))
    );
    ExitCode::SUCCESS
}

pub fn keys_create(
    config: &Path,
    consumer: &str,
    label: Option<&str>,
    plan: Option<String>,
) -> ExitCode {
    if !crate::config::identity::is_consumer_id(consumer) {
        return fail("--consumer: letters, digits, '-', '_', '.', '@' and ':' (1 to 128)");
    }
    let cfg = match crate::config::load(config) {
        Ok(cfg) => cfg,
        Err(e) => return fail(e),
    };
    if cfg.consumers.iter().any(|c| c.id == consumer) {
        return fail(format!(
            "consumer {consumer} is defined in the config file: its keys are listed there as \
             digests (turnpike keys hash)"
        ));
    }
    if let Err(why) = crate::config::identity::plan_for_new_consumer(&cfg, plan.as_deref()) {
        return fail(format!("--plan: {why}"));
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let actor = cli_actor();
    let store = store.records();
    let exists = match store.get_consumer(consumer) {
        Ok(found) => found.is_some(),
        Err(e) => return fail(e),
    };
    if !exists {
        let new = NewConsumer {
            id: consumer.to_string(),
            plan,
            ..Default::default()
        };
        match store.create_consumer(&actor, new) {
            Ok(_) => eprintln!("created consumer {consumer}"),
            // Created meanwhile by someone else: use it.
            Err(crate::store::StoreError::Conflict(_)) => {}
            Err(e) => return fail(e),
        }
    }
    match store.create_key(&actor, consumer, label, None) {
        Ok((row, new)) => {
            eprintln!(
                "created key {} ({}) for {consumer}; it is shown once:",
                row.id, row.display
            );
            println!("{}", new.secret);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn audit_verify(config: &Path) -> ExitCode {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match store.records().verify_audit() {
        Ok(v) => {
            println!(
                "audit log ok: {} entries, last hash {}",
                v.entries, v.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The fleet's Redis of a config (`[store] redis_url`), if it names one.
fn fleet(cfg: &crate::config::file::FileConfig) -> Result<Option<crate::cluster::Cluster>, String> {
    crate::cluster::Cluster::from_config(&cfg.store).map_err(|e| format!("store.redis_url: {e}"))
}

/// `turnpike report`: usage rollups as a table, the fleet's from Redis when the config names
/// one, else the embedded store's.
pub fn report(config: &Path, ask: &crate::analytics::report::Ask) -> ExitCode {
    let cfg = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let filter = match ask.filter(crate::clock::now(), 3_600, false) {
        Ok(f) => f,
        Err(why) => return fail(why),
    };
    let cluster = match fleet(&cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let path = crate::app::store_path(&absolute, &cfg.store.path);
    if cluster.is_none() && !path.exists() {
        return fail(format!(
            "{}: no store yet (the gateway has not run with this config)",
            path.display()
        ));
    }
    let rows = match &cluster {
        Some(c) => crate::analytics::source::Source::Fleet(c).query(&filter, usize::MAX),
        None => crate::store::Store::open(&path)
            .and_then(|s| crate::analytics::source::Source::Node(&s).query(&filter, usize::MAX)),
    };
    let scope = if cluster.is_some() { "fleet" } else { "node" };
    match rows {
        Ok(rows) => {
            println!("scope: {scope}");
            print!("{}", crate::analytics::report::usage_table(&filter, &rows));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: {e}", path.display())),
    }
}

/// `turnpike catalog consumers NAME[/VERSION] -c FILE [--since D] [--json]`.
pub fn catalog_consumers(config: &Path, api: &str, since: &str, json: bool) -> ExitCode {
    let snapshot = match crate::config::load_snapshot(config, None) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (name, version) = api.split_once('/').unwrap_or((api, ""));
    let Some(entry) = crate::catalogue::find(
        &snapshot.file,
        name,
        Some(version).filter(|v| !v.is_empty()),
    ) else {
        return fail(format!(
            "no API {api:?} in {} (NAME/VERSION)",
            config.display()
        ));
    };
    let window = match crate::admin::since_seconds(Some(since)) {
        Ok(w) => w,
        Err(why) => return fail(format!("--since: {why}")),
    };
    let identity = match open_store(config) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let cluster = match fleet(&snapshot.file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let source = crate::analytics::source::Source::new(identity.store(), cluster.as_ref());
    let now = crate::clock::now();
    let report =
        crate::analytics::callers::gather(&source, name, version, window, now).and_then(|mut r| {
            r.notices = identity
                .store()
                .read(|c| crate::store::notices::of_api(c, name, version))?;
            Ok(r)
        });
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot read the usage rollups: {e}")),
    };
    let contacts_of = |id: &str| {
        crate::analytics::callers::contacts(identity.consumer(&snapshot.identities, id).as_deref())
    };
    if json {
        let lifecycle = crate::analytics::callers::lifecycle(entry.catalog.as_ref());
        let body =
            crate::analytics::callers::to_json(name, version, &lifecycle, &report, contacts_of);
        println!("{body:#}");
    } else {
        print!(
            "{}",
            crate::analytics::callers::to_table(api, &report, contacts_of)
        );
    }
    ExitCode::SUCCESS
}

/// `turnpike catalog -c FILE [--json]`: every API of the file, as a table or as JSON.
pub fn catalog(config: &Path, json: bool) -> ExitCode {
    let file = match crate::config::load(config) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    if json {
        let all = crate::catalogue::Query {
            limit: usize::MAX,
            ..Default::default()
        };
        let mut page = crate::catalogue::list(&file, &all);
        println!("{:#}", page["items"].take());
    } else {
        print!("{}", crate::catalogue::table(&file));
    }
    ExitCode::SUCCESS
}

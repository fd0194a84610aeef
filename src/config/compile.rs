//! Compiles a validated file model into a `Snapshot`: route table, upstream pools (reusing
//! unchanged pools of the previous generation), static replies with parsed header values, and
//! the admin token. All fallible work (DNS, files, header parsing) happens here, once.

use super::error::Problem;
use super::file::{FileConfig, RespondSection};
use crate::auth::jwt::JwksSource;
use crate::policy::{Kind, Level, Policy};
use crate::route::{template_segments, Methods, Router};
use crate::state::{Action, ApiInfo, Endpoint, Limits, Secret, Snapshot, StaticReply};
use crate::upstream::Pool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// An endpoint before it is numbered.
struct Planned {
    template: Arc<str>,
    catch_all: bool,
    methods: Methods,
    action: Action,
    max_body: u64,
    /// Scopes the caller needs.
    scopes: Vec<String>,
    cache: Option<Arc<crate::cache::Policy>>,
    /// The route's index (None: an API without routes).
    route: Option<usize>,
    /// No credential needed (`anonymous = true`, or the spec's `security: []`).
    anonymous: bool,
}

/// Builds a snapshot; `previous` lends pools whose definition did not change.
pub fn compile(
    file: &FileConfig,
    previous: Option<&Snapshot>,
    generation: u64,
) -> Result<Snapshot, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
    for (name, def) in &file.upstreams {
        let reused = previous
            .and_then(|p| p.pools.get(name))
            .filter(|p| &p.def == def)
            .cloned();
        match reused.map_or_else(|| Pool::build(name, def).map(Arc::new), Ok) {
            Ok(pool) => {
                pools.insert(name.clone(), pool);
            }
            Err(e) => problems.push(Problem::at(format!("upstreams.{name}"), e)),
        }
    }

    for (i, t) in file.server.tls.iter().enumerate() {
        if let Err(e) = check_tls(&t.cert, &t.key) {
            problems.push(Problem::at(format!("server.tls[{i}]"), e));
        }
    }

    let plans = match crate::limits::compile_plans(file) {
        Ok(p) => Arc::new(p),
        Err(found) => {
            problems.extend(found.into_iter().map(|(k, m)| Problem::at(k, m)));
            Arc::new(crate::limits::Plans::new())
        }
    };
    let mut found = Vec::new();
    let catalog = crate::policy::compile::Catalog::compile(file, &mut found);
    // JWKS sources by URL, kept from the previous generation so their keys carry over.
    let mut jwks: HashMap<String, Arc<JwksSource>> = HashMap::new();
    let mut router = Router::new();
    let mut endpoints = Vec::new();
    let default_body = file.server.limits.body.0;
    for (i, api) in file.apis.iter().enumerate() {
        let info = Arc::new(ApiInfo {
            name: api.name.clone(),
            version: api.version.clone(),
        });
        let base = if api.base_path == "/" {
            ""
        } else {
            api.base_path.as_str()
        };
        let strip = if api.strip_base_path { base.len() } else { 0 };
        let mut api_action = match (&api.respond, &api.upstream) {
            (Some(r), _) => match static_reply(r) {
                Ok(r) => Some(Action::Respond(Arc::new(r))),
                Err(e) => {
                    problems.push(Problem::at(format!("apis[{i}].respond"), e));
                    None
                }
            },
            (None, Some(up)) => pools.get(up).map(|p| Action::Proxy(p.clone())),
            (None, None) => None,
        };
        // Mock answers from the spec, for a mocked API or any mocked route.
        let mocks = if api.mocked() || api.routes.iter().any(|r| r.mock) {
            match file.specs.of(i) {
                Some(spec) => Some(Arc::new(crate::openapi::mock::Mocks::compile(spec))),
                None => {
                    problems.push(Problem::at(
                        format!("apis[{i}]"),
                        "mocks are answered from the API's OpenAPI document: set [apis.catalog] openapi",
                    ));
                    None
                }
            }
        } else {
            None
        };
        let mock_of = |path: &str| {
            mocks
                .as_ref()
                .map(|m| Action::Mock(Arc::new(m.on(&crate::openapi::operations::shape(path)))))
        };
        if api.mocked() && api.openapi.as_ref().is_none_or(|o| !o.routes) && api.routes.is_empty() {
            problems.push(Problem::at(
                format!("apis[{i}].openapi"),
                "a mocked API needs its routes: set routes = true (from the spec) or [[apis.routes]]",
            ));
        }
        let api_body = api.max_body.map_or(default_body, |s| s.0);
        // Flood guards keep their counts across reloads while their numbers stay the same.
        let per_ip = match api.limits.as_ref().and_then(|l| l.per_ip.as_deref()) {
            None => None,
            Some(text) => match crate::limits::spec::parse_rate(text) {
                Ok(spec) => Some(
                    previous
                        .and_then(|p| {
                            p.endpoints
                                .iter()
                                .find(|e| e.api.name == api.name && e.api.version == api.version)
                        })
                        .and_then(|e| e.per_ip.clone())
                        .filter(|l| l.spec == spec)
                        .unwrap_or_else(|| Arc::new(crate::limits::ip::IpLimit::new(spec))),
                ),
                Err(e) => {
                    problems.push(Problem::at(format!("apis[{i}].limits.per_ip"), e));
                    None
                }
            },
        };
        let limits = match crate::limits::api_limits(i, api, &plans, &file.plans) {
            Ok(l) => l,
            Err(found) => {
                problems.extend(found.into_iter().map(|(k, m)| Problem::at(k, m)));
                None
            }
        };
        let auth = match &api.auth {
            None => None,
            Some(a) => {
                let mut source = |url: &str, every: std::time::Duration| {
                    jwks.entry(url.to_string())
                        .or_insert_with(|| {
                            previous
                                .and_then(|p| p.jwks.get(url))
                                .filter(|s| s.refresh_every == every)
                                .cloned()
                                .unwrap_or_else(|| Arc::new(JwksSource::new(url, every)))
                        })
                        .clone()
                };
                let beta = api
                    .catalog
                    .as_ref()
                    .filter(|c| c.lifecycle == super::catalog::Lifecycle::Beta)
                    .map(|c| c.beta_groups.clone())
                    .unwrap_or_default();
                match super::identity::compile_auth(a, beta, &mut source) {
                    Ok(policy) => Some(policy),
                    Err((k, m)) => {
                        problems.push(Problem::at(format!("apis[{i}].auth.{k}"), m));
                        None
                    }
                }
            }
        };
        let lifecycle = api.catalog.as_ref().and_then(|c| {
            // The successor's docs, or its base path.
            let successor = c.successor.as_ref().and_then(|s| {
                file.apis
                    .iter()
                    .find(|a| &crate::config::catalog::api_ref(&a.name, a.version.as_deref()) == s)
                    .map(|a| {
                        a.catalog
                            .as_ref()
                            .and_then(|c| c.docs_url.clone())
                            .unwrap_or_else(|| a.base_path.clone())
                    })
            });
            crate::policy::lifecycle::Lifecycle::compile(c, successor).map(Arc::new)
        });
        let has_auth = api.auth.is_some();
        let api_cache = api
            .cache
            .as_ref()
            .and_then(|c| crate::cache::Policy::compile(c, has_auth, &file.cache))
            .map(Arc::new);
        // Only answers that come from an upstream are cached.
        let cache_for = |action: &Action, own: Option<&crate::config::file::ApiCacheSection>| {
            if !matches!(action, Action::Proxy(_)) {
                return None;
            }
            match own {
                Some(c) => crate::cache::Policy::compile(c, has_auth, &file.cache).map(Arc::new),
                None => api_cache.clone(),
            }
        };
        let mut planned: Vec<Planned> = Vec::new();
        // Hand-written routes, or with [apis.openapi] routes = true the spec's (merged).
        let routes = crate::openapi::routes::effective(api, file.specs.of(i));
        if routes.is_empty() {
            if let Some(action) = api_action.take() {
                let template: Arc<str> = if base.is_empty() {
                    "/".into()
                } else {
                    base.into()
                };
                planned.push(Planned {
                    template,
                    catch_all: true,
                    methods: Methods::ANY,
                    cache: cache_for(&action, None),
                    action,
                    max_body: api_body,
                    scopes: Vec::new(),
                    route: None,
                    anonymous: false,
                });
            }
        }
        for (r, route) in &routes {
            let mocked = (api.mocked() || route.mock) && route.respond.is_none();
            let action = match &route.respond {
                None if mocked => match mock_of(&route.path) {
                    Some(a) => a,
                    None => continue,
                },
                Some(rr) => match static_reply(rr) {
                    Ok(rr) => Action::Respond(Arc::new(rr)),
                    Err(e) => {
                        let at =
                            r.map_or(String::new(), |r| format!("apis[{i}].routes[{r}].respond"));
                        problems.push(Problem::at(at, e));
                        continue;
                    }
                },
                None => match &api_action {
                    Some(Action::Proxy(p)) => Action::Proxy(p.clone()),
                    Some(Action::Respond(s)) => Action::Respond(s.clone()),
                    Some(Action::Mock(_)) | Some(Action::Usage) | None => continue,
                },
            };
            let Some(methods) = Methods::from_names(&route.methods) else {
                continue;
            };
            let template: Arc<str> = format!("{base}{}", route.path).into();
            planned.push(Planned {
                template,
                catch_all: false,
                methods,
                cache: cache_for(&action, route.cache.as_ref()),
                action,
                max_body: route.max_body.map_or(api_body, |s| s.0),
                scopes: route.scopes.clone(),
                route: *r,
                anonymous: route.anonymous,
            });
        }
        for Planned {
            template,
            catch_all,
            methods,
            action,
            max_body,
            scopes,
            cache,
            route,
            anonymous,
        } in planned
        {
            // An anonymous route: no identification and no plan (the flood guard stays).
            let (auth, limits) = match anonymous {
                true => (None, None),
                false => (auth.clone(), limits.clone()),
            };
            let chain = catalog.chain(
                file,
                Some(i),
                route,
                &template,
                builtins(
                    lifecycle.as_ref(),
                    per_ip.as_ref(),
                    auth.as_ref(),
                    &scopes,
                    limits.as_ref(),
                ),
                &mut found,
            );
            let id = endpoints.len();
            router.insert(
                &api.hosts,
                &template_segments(&template),
                catch_all,
                methods,
                id,
            );
            endpoints.push(Endpoint {
                api: info.clone(),
                template,
                action,
                strip,
                max_body,
                auth,
                scopes,
                limits,
                per_ip: per_ip.clone(),
                cache,
                chain,
                deprecated: lifecycle.is_some(),
            });
        }
    }

    let admin_token = read_admin_token(&file.admin).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    // The usage endpoint authenticates with the auth of the named API (or the first with auth)
    // and has the server's policies; nothing is counted.
    let usage = if file.usage.enabled {
        let named = file.usage.api.as_deref();
        let borrowed = endpoints
            .iter()
            .find(|e: &&Endpoint| e.auth.is_some() && named.is_none_or(|n| e.api.name == n))
            .and_then(|e| Some((e.auth.clone()?, e.per_ip.clone())));
        match (borrowed, named) {
            (Some((auth, per_ip)), _) => {
                let path = file.usage.path.clone();
                let chain = catalog.chain(
                    file,
                    None,
                    None,
                    &path,
                    builtins(None, per_ip.as_ref(), Some(&auth), &[], None),
                    &mut found,
                );
                endpoints.push(Endpoint {
                    api: Arc::new(ApiInfo {
                        name: USAGE_API.into(),
                        version: None,
                    }),
                    template: Arc::from(path.as_str()),
                    action: Action::Usage,
                    strip: 0,
                    max_body: default_body,
                    auth: Some(auth),
                    scopes: Vec::new(),
                    limits: None,
                    per_ip,
                    cache: None,
                    chain,
                    deprecated: false,
                });
                Some((path, endpoints.len() - 1))
            }
            (None, Some(n)) => {
                problems.push(Problem::at(
                    "usage.api",
                    format!("no API named {n:?} with [apis.auth]"),
                ));
                None
            }
            (None, None) => None,
        }
    } else {
        None
    };
    let guard = |text: &str, key: &str, old: Option<&Arc<crate::limits::ip::IpLimit>>| match text {
        "off" => Ok(None),
        text => match crate::limits::spec::parse_rate(text) {
            Ok(spec) => Ok(Some(
                old.filter(|g| g.spec == spec)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(crate::limits::ip::IpLimit::new(spec))),
            )),
            Err(e) => Err(Problem::at(key, format!("{e} (or \"off\")"))),
        },
    };
    let auth_guard = guard(
        &file.server.limits.auth_failures_per_ip,
        "server.limits.auth_failures_per_ip",
        previous.and_then(|p| p.auth_guard.as_ref()),
    )
    .unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    let admin_guard = guard(
        &file.admin.auth_failures_per_ip,
        "admin.auth_failures_per_ip",
        previous.and_then(|p| p.admin_guard.as_ref()),
    )
    .unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    found.sort();
    found.dedup();
    problems.extend(found.into_iter().map(|(k, m)| Problem::at(k, m)));
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut key_headers: Vec<http::HeaderName> = Vec::new();
    for a in endpoints.iter().filter_map(|e| e.auth.as_ref()) {
        if a.api_key && !key_headers.contains(&a.header) {
            key_headers.push(a.header.clone());
        }
    }
    let l = &file.server.limits;
    Ok(Snapshot {
        generation,
        loaded_at: SystemTime::now(),
        file: file.clone(),
        router,
        endpoints,
        pools,
        strip_request: crate::headers::NameList::compile(&file.server.strip_request_headers)
            .unwrap_or_default(),
        limits: Limits {
            request_line: l.request_line.0 as usize,
            header_line: l.header_line.0 as usize,
            header_block: l.header_block.0 as usize,
            header_count: l.header_count,
            keepalive_idle: l.keepalive_idle.0,
            body_min_rate: l.body_min_rate.0,
            body_rate_after: l.body_rate_after.0,
            send_min_rate: usize::try_from(l.send_min_rate.0).unwrap_or(usize::MAX),
            upstream_header_block: usize::try_from(l.upstream_header_block.0).unwrap_or(usize::MAX),
        },
        admin_token,
        identities: super::identity::compile_identities(file),
        jwks,
        plans,
        usage,
        policies: Arc::new(catalog),
        auth_guard,
        admin_guard,
        key_headers,
    })
}

/// The `api` of requests to the `[usage]` endpoint.
pub const USAGE_API: &str = "[usage]";

/// The built-in steps of an endpoint: the flood guard, identification, authorization and the
/// plans, named after their config keys.
fn builtins(
    lifecycle: Option<&Arc<crate::policy::lifecycle::Lifecycle>>,
    per_ip: Option<&Arc<crate::limits::ip::IpLimit>>,
    auth: Option<&Arc<crate::auth::AuthPolicy>>,
    scopes: &[String],
    limits: Option<&Arc<crate::limits::EndpointLimits>>,
) -> Vec<(Level, Arc<Policy>)> {
    let step = |name: &str, kind: Kind| {
        (
            Level::Api,
            Arc::new(Policy {
                name: Arc::from(name),
                kind,
            }),
        )
    };
    let mut out = Vec::new();
    if let Some(l) = lifecycle {
        out.push(step("lifecycle", Kind::Lifecycle(l.clone())));
    }
    if let Some(l) = per_ip {
        out.push(step("per_ip", Kind::PerIp(l.clone())));
    }
    if let Some(a) = auth {
        out.push(step("auth", Kind::Identify(a.clone())));
        out.push(step(
            "auth",
            Kind::Authorize {
                auth: a.clone(),
                scopes: scopes.to_vec(),
            },
        ));
    }
    if let Some(l) = limits {
        out.push(step("plan", Kind::Plan(l.clone())));
    }
    out
}

fn static_reply(r: &RespondSection) -> Result<StaticReply, String> {
    let mut headers = Vec::with_capacity(r.headers.len() + 1);
    let ct = HeaderValue::from_str(&r.content_type)
        .map_err(|_| "content_type is not a valid header value".to_string())?;
    headers.push((http::header::CONTENT_TYPE, ct));
    for (name, value) in &r.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
        headers.push((n, v));
    }
    Ok(StaticReply {
        status: r.status,
        headers,
        body: Bytes::from(r.body.clone()),
    })
}

/// Loads a TLS certificate chain and key the way the listener will, so that a bad or mismatched
/// pair is reported by `check` instead of failing when the listener starts.
fn check_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    pingora::tls::install_default_crypto_provider();
    let (chain, key) = match pingora::tls::load_certs_and_key_files(
        &cert.to_string_lossy(),
        &key.to_string_lossy(),
    ) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Err("no certificate or no private key found in the PEM files".into()),
        Err(e) => return Err(format!("cannot load the certificate or key: {e}")),
    };
    pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map(|_| ())
        .map_err(|e| format!("the certificate and key cannot be used together: {e}"))
}

/// The admin token named by `[admin]`: from the environment variable `token_env`, or the file
/// `token_file` (trimmed). `None` when neither is set (or the variable is empty).
pub fn read_admin_token(
    admin: &crate::config::file::AdminSection,
) -> Result<Option<Secret>, Problem> {
    match (&admin.token_env, &admin.token_file) {
        (Some(var), _) => Ok(std::env::var_os(var)
            .map(|v| Secret(v.into_encoded_bytes()))
            .filter(|s| !s.0.is_empty())),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(bytes) => {
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.is_empty() {
                    return Err(Problem::at(
                        "admin.token_file",
                        format!("{} is empty", path.display()),
                    ));
                }
                Ok(Some(Secret(trimmed)))
            }
            Err(e) => Err(Problem::at(
                "admin.token_file",
                format!("cannot read {}: {e}", path.display()),
            )),
        },
        (None, None) => Ok(None),
    }
}

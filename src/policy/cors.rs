//! The `cors` policy: answers preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) itself, before identification, so a browser never needs a
//! key to ask; adds the CORS answer headers to actual requests from allowed origins. A
//! disallowed origin gets no CORS headers (its preflight gets 403 `cors_rejected`).

use crate::config::policy::PolicySection;
use http::{header, HeaderName, HeaderValue};

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Any,
    Exact(String),
    /// `scheme://*.suffix`: any host ending in `.suffix`, on that scheme and port.
    Wildcard {
        scheme: String,
        suffix: String,
    },
}

#[derive(Debug)]
pub struct Cors {
    origins: Vec<Origin>,
    methods: Vec<String>,
    methods_value: HeaderValue,
    /// Lower-case; `None` reflects what the preflight asks for.
    headers: Option<Vec<String>>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// Methods a `cors` policy allows when `allow_methods` is not given.
const DEFAULT_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// Whether a request is a CORS preflight.
pub fn is_preflight(req: &http::request::Parts) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    pub fn compile(p: &PolicySection) -> Result<Cors, (String, String)> {
        let bad = |k: &str, m: String| (k.to_string(), m);
        let mut origins = Vec::new();
        let list = p.allow_origins.clone().unwrap_or_default();
        if list.is_empty() {
            return Err(bad(
                "allow_origins",
                "a cors policy needs at least one origin (\"*\" for any)".into(),
            ));
        }
        for (i, o) in list.iter().enumerate() {
            origins.push(origin(o).map_err(|m| bad(&format!("allow_origins[{i}]"), m))?);
        }
        let credentials = p.allow_credentials.unwrap_or(false);
        if credentials && origins.contains(&Origin::Any) {
            return Err(bad(
                "allow_credentials",
                "credentials cannot be allowed for any origin (\"*\"): list the origins".into(),
            ));
        }
        let methods: Vec<String> = match &p.allow_methods {
            Some(m) => m.iter().map(|m| m.to_ascii_uppercase()).collect(),
            None => DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
        };
        for (i, m) in methods.iter().enumerate() {
            if crate::route::method_bit(m.as_bytes()) == 0 {
                return Err(bad(
                    &format!("allow_methods[{i}]"),
                    format!("unknown method {m:?}"),
                ));
            }
        }
        let value = |k: &str, v: String| {
            HeaderValue::from_str(&v).map_err(|_| bad(k, format!("{v:?} is not a header value")))
        };
        let names = |k: &str,
                     list: &Option<Vec<String>>|
         -> Result<Option<Vec<String>>, (String, String)> {
            let Some(list) = list else { return Ok(None) };
            for (i, n) in list.iter().enumerate() {
                if HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(bad(
                        &format!("{k}[{i}]"),
                        format!("{n:?} is not a header name"),
                    ));
                }
            }
            Ok(Some(list.iter().map(|n| n.to_ascii_lowercase()).collect()))
        };
        let headers = names("allow_headers", &p.allow_headers)?;
        let expose = names("expose_headers", &p.expose_headers)?;
        Ok(Cors {
            methods_value: value("allow_methods", methods.join(", "))?,
            methods,
            headers_value: match &headers {
                Some(h) if !h.is_empty() => Some(value("allow_headers", h.join(", "))?),
                _ => None,
            },
            headers,
            expose: match expose {
                Some(e) if !e.is_empty() => Some(value("expose_headers", e.join(", "))?),
                _ => None,
            },
            credentials,
            max_age: p
                .max_age
                .map(|d| value("max_age", d.0.as_secs().to_string()))
                .transpose()?,
            origins,
        })
    }

    fn allows_origin(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => e.eq_ignore_ascii_case(origin),
            Origin::Wildcard { scheme, suffix } => {
                let lower = origin.to_ascii_lowercase();
                lower.strip_prefix(scheme.as_str()).is_some_and(|host| {
                    host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                        && !host[..host.len() - suffix.len()].contains(['/', ':', '@'])
                })
            }
        })
    }

    /// The `Access-Control-Allow-Origin` value for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&Origin::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight: its headers, or why it is refused.
    pub fn preflight(
        &self,
        req: &http::request::Parts,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let origin = req.headers.get(header::ORIGIN);
        let Some(origin) = origin.filter(|o| self.allows_origin(o.as_bytes())) else {
            return Err("this origin is not allowed to call this API".into());
        };
        let method = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(|m| m.as_bytes())
            .unwrap_or_default();
        if !self.methods.iter().any(|m| m.as_bytes() == method) {
            return Err(format!(
                "the method {} is not allowed from this origin; allowed: {}",
                String::from_utf8_lossy(method),
                self.methods.join(", ")
            ));
        }
        let asked: Vec<String> = req
            .headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|n| String::from_utf8_lossy(n).trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        let mut out = vec![
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.methods_value.clone(),
            ),
            (header::VARY, HeaderValue::from_static(VARY_PREFLIGHT)),
        ];
        match (&self.headers, &self.headers_value) {
            (Some(allowed), value) => {
                if let Some(n) = asked.iter().find(|n| !allowed.contains(n)) {
                    return Err(format!("the header {n:?} is not allowed from this origin"));
                }
                if let Some(v) = value {
                    out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone()));
                }
            }
            (None, _) if !asked.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
                    out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
                }
            }
            (None, _) => {}
        }
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(age) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        Ok(out)
    }

    /// The answer headers of an actual (not preflight) request; none for a request without an
    /// `Origin` or from a disallowed one (the answer still varies by origin).
    pub fn actual(&self, req: &http::request::Parts, out: &mut Vec<(HeaderName, HeaderValue)>) {
        let any = !self.credentials && self.origins.contains(&Origin::Any);
        if !any {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        let Some(origin) = req
            .headers
            .get(header::ORIGIN)
            .filter(|o| self.allows_origin(o.as_bytes()))
        else {
            return;
        };
        out.push((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        ));
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(e) = &self.expose {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
        }
    }
}

/// Parses one `allow_origins` entry: `*`, `scheme://host[:port]`, or `scheme://*.suffix`.
fn origin(o: &str) -> Result<Origin, String> {
    if o == "*" {
        return Ok(Origin::Any);
    }
    let Some((scheme, host)) = o.split_once("://") else {
        return Err(format!(
            "{o:?} is not an origin: expected scheme://host[:port], scheme://*.domain or \"*\""
        ));
    };
    if scheme.is_empty() || host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{o:?} is not an origin: no path, query or user part, e.g. \"https://app.example.com\""
        ));
    }
    let scheme = format!("{}://", scheme.to_ascii_lowercase());
    match host.strip_prefix("*.") {
        Some(suffix) if !suffix.contains('*') && !suffix.is_empty() => Ok(Origin::Wildcard {
            scheme,
            suffix: format!(".{}", suffix.to_ascii_lowercase()),
        }),
        _ if host.contains('*') => Err(format!(
            "{o:?}: a wildcard may only be the first label, e.g. \"https://*.example.com\""
        )),
        _ => Ok(Origin::Exact(format!(
            "{scheme}{}",
            host.to_ascii_lowercase()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(toml_text: &str) -> Cors {
        let p: PolicySection = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"));
        Cors::compile(&p).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("OPTIONS").uri("/x");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap_or_default().into_parts().0
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let c = cors(
            "kind = \"cors\"\nallow_origins = [\"https://app.example.com\", \"https://*.partner.example\"]",
        );
        assert!(c.allows_origin(b"https://app.example.com"));
        assert!(c.allows_origin(b"https://a.b.partner.example"));
        assert!(!c.allows_origin(b"https://partner.example"));
        assert!(!c.allows_origin(b"http://a.partner.example"));
        assert!(!c.allows_origin(b"https://evil.example/.partner.example"));
        assert!(!c.allows_origin(b"https://app.example.com.evil"));
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let c = cors(
            "kind = \"cors\"\nallow_origins = [\"https://a.example\"]\nallow_methods = [\"GET\"]\nallow_headers = [\"x-api-key\"]\nmax_age = \"10m\"",
        );
        let ok = c.preflight(&parts(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "X-API-Key"),
        ]));
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert!(ok
            .iter()
            .any(|(n, v)| n == header::ACCESS_CONTROL_MAX_AGE && v == "600"));
        assert!(c
            .preflight(&parts(&[
                ("origin", "https://a.example"),
                ("access-control-request-method", "DELETE"),
            ]))
            .is_err());
        assert!(c
            .preflight(&parts(&[
                ("origin", "https://a.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-other"),
            ]))
            .is_err());
    }

    #[test]
    fn credentials_with_any_origin_is_refused() {
        let p: PolicySection =
            toml::from_str("kind = \"cors\"\nallow_origins = [\"*\"]\nallow_credentials = true")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(Cors::compile(&p).is_err());
    }
}

//! The `headers` policy (names removed and set, on the upstream request and on the answer) and
//! the `rewrite` policy (the upstream path from a template, query parameters removed and set).
//! Values are templates checked at load; a value whose variable has no value for a request
//! (no consumer, a metadata key it lacks) is not set.

use super::template::{Template, Vars};
use crate::config::policy::Edits;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Header edits of one direction.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, Template)>,
}

/// `kind = "headers"`.
#[derive(Debug)]
pub struct Headers {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

/// `kind = "rewrite"`.
#[derive(Debug)]
pub struct Rewrite {
    pub path: Option<Template>,
    pub query_remove: Vec<String>,
    pub query_set: Vec<(String, Template)>,
}

/// What applying an edit did, for `turnpike explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Removed(String),
    Set(String, String),
    Skipped(String, String),
    Path(String),
}

impl HeaderEdits {
    /// Compiles `edits`; `Err` is (key, message).
    pub fn compile(edits: &Option<Edits>, request: bool) -> Result<HeaderEdits, (String, String)> {
        let Some(e) = edits else {
            return Ok(HeaderEdits::default());
        };
        let mut out = HeaderEdits::default();
        for (i, n) in e.remove.iter().enumerate() {
            let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                (
                    format!("remove[{i}]"),
                    format!("{n:?} is not a header name"),
                )
            })?;
            out.remove.push(name);
        }
        for (n, v) in &e.set {
            let key = format!("set.{n}");
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| (key.clone(), format!("{n:?} is not a header name")))?;
            if request && crate::headers::is_gateway_owned(name.as_str()) {
                return Err((
                    key,
                    format!("{n} is set by the gateway itself and cannot be set by a policy"),
                ));
            }
            if matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "host" | "upgrade"
            ) {
                return Err((key, format!("{n} frames the message and cannot be set")));
            }
            let t = Template::parse(v, false).map_err(|m| (key.clone(), m))?;
            out.set.push((name, t));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set.iter().map(|(_, t)| t)
    }

    /// The header changes for one request, in order: removals, then values to set.
    fn plan(
        &self,
        vars: &Vars<'_>,
        changes: &mut Option<Vec<Change>>,
    ) -> Vec<(HeaderName, Option<HeaderValue>)> {
        let mut out: Vec<(HeaderName, Option<HeaderValue>)> =
            self.remove.iter().map(|n| (n.clone(), None)).collect();
        if let Some(c) = changes.as_mut() {
            c.extend(self.remove.iter().map(|n| Change::Removed(n.to_string())));
        }
        for (name, t) in &self.set {
            let value = t.render(vars).and_then(|v| {
                HeaderValue::from_str(&v).map_err(|_| "the value is not a header value".into())
            });
            match value {
                Ok(v) => {
                    if let Some(c) = changes.as_mut() {
                        c.push(Change::Set(
                            name.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ));
                    }
                    out.push((name.clone(), Some(v)));
                }
                Err(why) => {
                    if let Some(c) = changes.as_mut() {
                        c.push(Change::Skipped(name.to_string(), why));
                    }
                }
            }
        }
        out
    }

    /// Applies the edits to a request or answer head.
    pub fn apply<H: Head>(
        &self,
        head: &mut H,
        vars: &Vars<'_>,
        changes: &mut Option<Vec<Change>>,
    ) -> pingora::Result<()> {
        for (name, value) in self.plan(vars, changes) {
            match value {
                None => head.unset(&name),
                Some(v) => head.set(name, v)?,
            }
        }
        Ok(())
    }
}

/// A request or answer head, as header edits see it.
pub trait Head {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn unset(&mut self, name: &HeaderName);
}

impl Head for RequestHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header(name, value)
    }
    fn unset(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl Head for ResponseHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header(name, value)
    }
    fn unset(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

impl Rewrite {
    pub fn compile(
        path: &Option<String>,
        query: &Option<Edits>,
    ) -> Result<Rewrite, (String, String)> {
        let path = match path {
            None => None,
            Some(p) => {
                if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                    return Err((
                        "path".into(),
                        format!(
                            "{p:?} must be a path starting with '/', without query or fragment"
                        ),
                    ));
                }
                Some(Template::parse(p, true).map_err(|m| ("path".to_string(), m))?)
            }
        };
        let q = query.clone().unwrap_or_default();
        let ok_name = |n: &str| !n.is_empty() && !n.contains(['&', '=', '#', ' ', '?']);
        for (i, n) in q.remove.iter().enumerate() {
            if !ok_name(n) {
                return Err((
                    format!("query.remove[{i}]"),
                    format!("{n:?} is not a parameter name"),
                ));
            }
        }
        let mut query_set = Vec::new();
        for (n, v) in &q.set {
            let key = format!("query.set.{n}");
            if !ok_name(n) {
                return Err((key, format!("{n:?} is not a parameter name")));
            }
            query_set.push((n.clone(), Template::parse(v, false).map_err(|m| (key, m))?));
        }
        if path.is_none() && q.remove.is_empty() && query_set.is_empty() {
            return Err((
                "path".into(),
                "a rewrite needs a path or query edits".into(),
            ));
        }
        Ok(Rewrite {
            path,
            query_remove: q.remove,
            query_set,
        })
    }

    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.path
            .iter()
            .chain(self.query_set.iter().map(|(_, t)| t))
    }

    /// The new path and query for an upstream request whose current ones are `path` and
    /// `query`, and what could not be done. Removals always apply, and a name the policy sets
    /// never keeps the client's value; a template without a value for this request leaves the
    /// path as it is or the parameter unset.
    pub fn apply(&self, path: &str, query: Option<&str>, vars: &Vars<'_>) -> (String, Vec<String>) {
        let mut skipped = Vec::new();
        let path = match &self.path {
            Some(t) => match t.render(vars) {
                Ok(p)
                    if !p
                        .bytes()
                        .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f) =>
                {
                    p
                }
                Ok(_) => {
                    skipped.push("path: a parameter value cannot be used in a path".to_string());
                    path.to_string()
                }
                Err(why) => {
                    skipped.push(format!("path: {why}"));
                    path.to_string()
                }
            },
            None => path.to_string(),
        };
        let mut pairs: Vec<String> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                let name = crate::auth::percent_decode(name.as_bytes());
                !self.query_remove.iter().any(|r| r.as_bytes() == name)
                    && !self.query_set.iter().any(|(n, _)| n.as_bytes() == name)
            })
            .map(str::to_string)
            .collect();
        for (name, t) in &self.query_set {
            match t.render(vars) {
                Ok(v) => pairs.push(format!("{}={}", encode(name), encode(&v))),
                Err(why) => skipped.push(format!("query {name}: {why}")),
            }
        }
        let target = match pairs.is_empty() {
            true => path,
            false => format!("{path}?{}", pairs.join("&")),
        };
        (target, skipped)
    }
}

/// Percent-encodes a query name or value (unreserved bytes kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::template::Params;
    use std::sync::Arc;

    #[test]
    fn rewrite_builds_path_and_query() {
        let q = Edits {
            remove: vec!["debug".into()],
            set: [("source".to_string(), "gate way".to_string())]
                .into_iter()
                .collect(),
        };
        let r = Rewrite::compile(&Some("/legacy/items/{id}".into()), &Some(q))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let names = [(2usize, Arc::from("id"))];
        let vars = Vars {
            consumer: None,
            request_id: "r",
            client_ip: None,
            params: Params {
                names: &names,
                path: b"/orders/v1/42",
            },
        };
        let (out, skipped) = r.apply("/orders/v1/42", Some("a=1&debug=2&source=x"), &vars);
        assert_eq!(out, "/legacy/items/42?a=1&source=gate%20way");
        assert!(skipped.is_empty());
        // A set without a value still removes the client's copy, and removals still apply.
        let q = Edits {
            remove: vec!["admin".into()],
            set: [(
                "tenant".to_string(),
                "{consumer.metadata.tenant}".to_string(),
            )]
            .into_iter()
            .collect(),
        };
        let r = Rewrite::compile(&None, &Some(q)).unwrap_or_else(|e| panic!("{e:?}"));
        let (out, skipped) = r.apply("/x", Some("admin=1&tenant=evil&k=v"), &vars);
        assert_eq!(out, "/x?k=v");
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn framing_and_gateway_headers_cannot_be_set() {
        let e = Edits {
            remove: vec![],
            set: [("x-forwarded-for".to_string(), "1.2.3.4".to_string())]
                .into_iter()
                .collect(),
        };
        assert!(HeaderEdits::compile(&Some(e), true).is_err());
        let e = Edits {
            remove: vec![],
            set: [("content-length".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
        };
        assert!(HeaderEdits::compile(&Some(e), false).is_err());
    }
}

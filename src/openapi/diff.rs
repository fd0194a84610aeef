//! Breaking-change diff of two specs (`turnpike openapi diff OLD NEW`): what a consumer built
//! against OLD would see break with NEW, and what NEW only adds.
//!
//! Breaking kinds (each with a test): `path_removed`, `operation_removed`,
//! `required_parameter_added` (a new required parameter, or one made required),
//! `required_request_property_added` (likewise in a request body), `response_property_removed`
//! (a rename is a removal and an addition), `type_changed` and `format_changed` (parameters,
//! request and response schemas), `request_enum_narrowed` (a value a client may send is no
//! longer accepted), `response_enum_widened` (a value a client does not know may come back),
//! `bounds_narrowed` (a request's minimum/maximum, minLength/maxLength, minItems/maxItems made
//! stricter, or a pattern added or changed), `media_type_removed` (request or response),
//! `security_added` (an operation that needed no credential now does, or needs another scheme).
//! Non-breaking: `path_added`, `operation_added`, `optional_parameter_added`,
//! `response_property_added`, `request_property_added`, `media_type_added`.
//!
//! Schemas are compared through their `$ref`s (each pair of places once, so recursive schemas
//! end), in request bodies, parameters and 2xx/default responses.

use super::operations::METHODS;
use super::refs::follow;
use super::source::escape;
use super::Spec;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub breaking: bool,
    /// The JSON pointer in the new spec (the old one's for removals).
    pub pointer: String,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

struct Differ<'a> {
    old: &'a Spec,
    new: &'a Spec,
    out: Vec<Change>,
    seen: HashSet<(PathBuf, String, PathBuf, String)>,
}

/// A value and the document it is in.
#[derive(Clone)]
struct At<'a> {
    doc: PathBuf,
    value: &'a Value,
}

/// What a missing mapping reads as.
static EMPTY: std::sync::LazyLock<serde_json::Map<String, Value>> =
    std::sync::LazyLock::new(serde_json::Map::new);

impl<'a> Differ<'a> {
    fn add(&mut self, kind: &'static str, breaking: bool, pointer: &str, message: String) {
        self.out.push(Change {
            kind,
            breaking,
            pointer: pointer.to_string(),
            message,
        });
    }

    fn resolve(spec: &'a Spec, at: &At<'a>) -> Option<At<'a>> {
        follow(&spec.documents, &at.doc, at.value).map(|(doc, value)| At { doc, value })
    }

    fn root(spec: &'a Spec) -> At<'a> {
        At {
            doc: spec.root.clone(),
            value: spec.root_value(),
        }
    }

    fn child(at: &At<'a>, key: &str) -> Option<At<'a>> {
        at.value.get(key).map(|value| At {
            doc: at.doc.clone(),
            value,
        })
    }

    fn run(&mut self) {
        let (o, n) = (Self::root(self.old), Self::root(self.new));
        let op = o
            .value
            .get("paths")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let np = n
            .value
            .get("paths")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let (o_sec, n_sec) = (o.value.get("security"), n.value.get("security"));
        for (path, oitem) in op {
            let ptr = format!("/paths/{}", escape(path));
            let Some(nitem) = np.get(path) else {
                self.add(
                    "path_removed",
                    true,
                    &ptr,
                    format!("path {path} was removed"),
                );
                continue;
            };
            let oi = Self::resolve(
                self.old,
                &At {
                    doc: o.doc.clone(),
                    value: oitem,
                },
            );
            let ni = Self::resolve(
                self.new,
                &At {
                    doc: n.doc.clone(),
                    value: nitem,
                },
            );
            let (Some(oi), Some(ni)) = (oi, ni) else {
                continue;
            };
            for m in METHODS {
                let mptr = format!("{ptr}/{m}");
                let what = format!("{} {path}", m.to_ascii_uppercase());
                match (Self::child(&oi, m), Self::child(&ni, m)) {
                    (Some(_), None) => self.add(
                        "operation_removed",
                        true,
                        &mptr,
                        format!("{what} was removed"),
                    ),
                    (None, Some(_)) => {
                        self.add("operation_added", false, &mptr, format!("{what} was added"))
                    }
                    (Some(oo), Some(no)) => {
                        self.operation(&what, &mptr, &oi, &ni, &oo, &no, (o_sec, n_sec))
                    }
                    (None, None) => {}
                }
            }
        }
        for path in np.keys().filter(|p| !op.contains_key(*p)) {
            let ptr = format!("/paths/{}", escape(path));
            self.add("path_added", false, &ptr, format!("path {path} was added"));
        }
    }

    /// The parameters of an operation, with those of its path item: (name, in) -> parameter.
    fn parameters(spec: &'a Spec, item: &At<'a>, op: &At<'a>) -> Vec<(String, String, At<'a>)> {
        let mut out: Vec<(String, String, At<'a>)> = Vec::new();
        for src in [item, op] {
            let Some(list) = src.value.get("parameters").and_then(Value::as_array) else {
                continue;
            };
            for p in list {
                let Some(p) = Self::resolve(
                    spec,
                    &At {
                        doc: src.doc.clone(),
                        value: p,
                    },
                ) else {
                    continue;
                };
                let name = p
                    .value
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let loc = p
                    .value
                    .get("in")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                out.retain(|(n, l, _)| !(*n == name && *l == loc));
                out.push((name, loc, p));
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn operation(
        &mut self,
        what: &str,
        ptr: &str,
        oi: &At<'a>,
        ni: &At<'a>,
        oo: &At<'a>,
        no: &At<'a>,
        global: (Option<&'a Value>, Option<&'a Value>),
    ) {
        // Parameters.
        let (olds, news) = (
            Self::parameters(self.old, oi, oo),
            Self::parameters(self.new, ni, no),
        );
        for (name, loc, np) in &news {
            let required = np
                .value
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let pptr = format!("{ptr}/parameters");
            match olds.iter().find(|(n, l, _)| n == name && l == loc) {
                None if required => self.add(
                    "required_parameter_added",
                    true,
                    &pptr,
                    format!("{what}: required {loc} parameter {name:?} was added"),
                ),
                None => self.add(
                    "optional_parameter_added",
                    false,
                    &pptr,
                    format!("{what}: optional {loc} parameter {name:?} was added"),
                ),
                Some((_, _, op)) => {
                    let was = op
                        .value
                        .get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    if required && !was {
                        self.add(
                            "required_parameter_added",
                            true,
                            &pptr,
                            format!("{what}: {loc} parameter {name:?} became required"),
                        );
                    }
                    if let (Some(os), Some(ns)) =
                        (Self::child(op, "schema"), Self::child(np, "schema"))
                    {
                        let label = format!("{what}: {loc} parameter {name:?}");
                        self.schema(Side::Request, &label, &pptr, &os, &ns);
                    }
                }
            }
        }
        // Request body.
        let (orb, nrb) = (
            Self::child(oo, "requestBody").and_then(|b| Self::resolve(self.old, &b)),
            Self::child(no, "requestBody").and_then(|b| Self::resolve(self.new, &b)),
        );
        if let (Some(orb), Some(nrb)) = (orb, nrb) {
            let bptr = format!("{ptr}/requestBody/content");
            self.content(Side::Request, what, &bptr, &orb, &nrb);
        }
        // Responses: 2xx and default.
        if let (Some(ors), Some(nrs)) = (Self::child(oo, "responses"), Self::child(no, "responses"))
        {
            if let Some(map) = ors.value.as_object() {
                for code in map.keys().filter(|c| c.starts_with('2') || *c == "default") {
                    let (Some(or), Some(nr)) = (Self::child(&ors, code), Self::child(&nrs, code))
                    else {
                        continue;
                    };
                    let (Some(or), Some(nr)) =
                        (Self::resolve(self.old, &or), Self::resolve(self.new, &nr))
                    else {
                        continue;
                    };
                    let rptr = format!("{ptr}/responses/{}/content", escape(code));
                    let label = format!("{what} response {code}");
                    self.content(Side::Response, &label, &rptr, &or, &nr);
                }
            }
        }
        // Security.
        let sec = |op: &At<'a>, g: Option<&'a Value>| -> BTreeSet<String> {
            let v = op.value.get("security").or(g);
            v.and_then(Value::as_array)
                .map(|alts| {
                    alts.iter()
                        .filter_map(Value::as_object)
                        .map(|r| r.keys().cloned().collect::<Vec<_>>().join("+"))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (os, ns) = (sec(oo, global.0), sec(no, global.1));
        let open_before = os.is_empty() || os.contains("");
        let open_now = ns.is_empty() || ns.contains("");
        if !open_now && (open_before || ns.is_disjoint(&os)) {
            self.add(
                "security_added",
                true,
                &format!("{ptr}/security"),
                format!(
                    "{what}: needs {} (before: {})",
                    ns.iter().cloned().collect::<Vec<_>>().join(" or "),
                    if open_before {
                        "no credential".to_string()
                    } else {
                        os.iter().cloned().collect::<Vec<_>>().join(" or ")
                    }
                ),
            );
        }
    }

    /// Media types of a request body or response.
    fn content(&mut self, side: Side, what: &str, ptr: &str, old: &At<'a>, new: &At<'a>) {
        let oc = old
            .value
            .get("content")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let nc = new
            .value
            .get("content")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        for (media, _) in oc {
            let mptr = format!("{ptr}/{}", escape(media));
            if !nc.contains_key(media) {
                self.add(
                    "media_type_removed",
                    true,
                    &mptr,
                    format!("{what}: media type {media} was removed"),
                );
                continue;
            }
            let os = Self::child(old, "content")
                .and_then(|c| Self::child(&c, media))
                .and_then(|m| Self::child(&m, "schema"));
            let ns = Self::child(new, "content")
                .and_then(|c| Self::child(&c, media))
                .and_then(|m| Self::child(&m, "schema"));
            if let (Some(os), Some(ns)) = (os, ns) {
                let label = format!("{what} ({media})");
                self.schema(side, &label, &format!("{mptr}/schema"), &os, &ns);
            }
        }
        for media in nc.keys().filter(|m| !oc.contains_key(*m)) {
            let mptr = format!("{ptr}/{}", escape(media));
            self.add(
                "media_type_added",
                false,
                &mptr,
                format!("{what}: media type {media} was added"),
            );
        }
    }

    fn schema(&mut self, side: Side, what: &str, ptr: &str, old: &At<'a>, new: &At<'a>) {
        let (Some(o), Some(n)) = (Self::resolve(self.old, old), Self::resolve(self.new, new))
        else {
            return;
        };
        let key = (
            o.doc.clone(),
            format!("{:p}", o.value),
            n.doc.clone(),
            format!("{:p}", n.value),
        );
        if !self.seen.insert(key) {
            return;
        }
        let text = |v: &Value, k: &str| v.get(k).map(|x| x.to_string());
        if text(o.value, "type") != text(n.value, "type") && o.value.get("type").is_some() {
            self.add(
                "type_changed",
                true,
                ptr,
                format!(
                    "{what}: type {} became {}",
                    text(o.value, "type").unwrap_or_default(),
                    text(n.value, "type").unwrap_or_else(|| "any".into())
                ),
            );
        }
        if text(o.value, "format") != text(n.value, "format") && n.value.get("format").is_some() {
            self.add(
                "format_changed",
                true,
                ptr,
                format!(
                    "{what}: format {} became {}",
                    text(o.value, "format").unwrap_or_else(|| "none".into()),
                    text(n.value, "format").unwrap_or_default()
                ),
            );
        }
        // Enums.
        let values = |v: &Value| -> Option<Vec<String>> {
            v.get("enum")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Value::to_string).collect())
        };
        match (side, values(o.value), values(n.value)) {
            (Side::Request, Some(ov), nv) => {
                let gone: Vec<&String> = ov
                    .iter()
                    .filter(|x| nv.as_ref().is_some_and(|n| !n.contains(x)))
                    .collect();
                if !gone.is_empty() {
                    self.add(
                        "request_enum_narrowed",
                        true,
                        ptr,
                        format!("{what}: no longer accepts {}", join(&gone)),
                    );
                }
            }
            (Side::Request, None, Some(_)) => {
                self.add(
                    "request_enum_narrowed",
                    true,
                    ptr,
                    format!("{what}: now accepts only listed values"),
                );
            }
            (Side::Response, Some(ov), Some(nv)) => {
                let added: Vec<&String> = nv.iter().filter(|x| !ov.contains(x)).collect();
                if !added.is_empty() {
                    self.add(
                        "response_enum_widened",
                        true,
                        ptr,
                        format!("{what}: may now return {}", join(&added)),
                    );
                }
            }
            _ => {}
        }
        if side == Side::Request {
            self.bounds(what, ptr, o.value, n.value);
        }
        // Properties.
        let op = o
            .value
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let np = n
            .value
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let required = |v: &Value| -> BTreeSet<String> {
            v.get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (oreq, nreq) = (required(o.value), required(n.value));
        for name in op.keys() {
            let pptr = format!("{ptr}/properties/{}", escape(name));
            match np.get(name) {
                None if side == Side::Response => self.add(
                    "response_property_removed",
                    true,
                    &pptr,
                    format!("{what}: property {name:?} was removed"),
                ),
                None => {}
                Some(_) => {
                    let (Some(os), Some(ns)) = (
                        Self::child(&o, "properties").and_then(|p| Self::child(&p, name)),
                        Self::child(&n, "properties").and_then(|p| Self::child(&p, name)),
                    ) else {
                        continue;
                    };
                    self.schema(side, &format!("{what}.{name}"), &pptr, &os, &ns);
                }
            }
        }
        for name in np.keys().filter(|k| !op.contains_key(*k)) {
            let pptr = format!("{ptr}/properties/{}", escape(name));
            match side {
                Side::Request if nreq.contains(name) => self.add(
                    "required_request_property_added",
                    true,
                    &pptr,
                    format!("{what}: required property {name:?} was added"),
                ),
                Side::Request => self.add(
                    "request_property_added",
                    false,
                    &pptr,
                    format!("{what}: optional property {name:?} was added"),
                ),
                Side::Response => self.add(
                    "response_property_added",
                    false,
                    &pptr,
                    format!("{what}: property {name:?} was added"),
                ),
            }
        }
        if side == Side::Request {
            for name in nreq
                .iter()
                .filter(|r| !oreq.contains(*r) && op.contains_key(*r))
            {
                let pptr = format!("{ptr}/required");
                self.add(
                    "required_request_property_added",
                    true,
                    &pptr,
                    format!("{what}: property {name:?} became required"),
                );
            }
        }
        if let (Some(oi), Some(ni)) = (Self::child(&o, "items"), Self::child(&n, "items")) {
            self.schema(
                side,
                &format!("{what}[]"),
                &format!("{ptr}/items"),
                &oi,
                &ni,
            );
        }
    }

    /// Stricter bounds on what a client may send.
    fn bounds(&mut self, what: &str, ptr: &str, o: &Value, n: &Value) {
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        for (k, lower) in [
            ("minimum", true),
            ("maximum", false),
            ("minLength", true),
            ("maxLength", false),
            ("minItems", true),
            ("maxItems", false),
            ("exclusiveMinimum", true),
            ("exclusiveMaximum", false),
        ] {
            let narrowed = match (num(o, k), num(n, k)) {
                (None, Some(_)) => true,
                (Some(a), Some(b)) => {
                    if lower {
                        b > a
                    } else {
                        b < a
                    }
                }
                _ => false,
            };
            if narrowed {
                self.add(
                    "bounds_narrowed",
                    true,
                    ptr,
                    format!(
                        "{what}: {k} is now {}",
                        n.get(k).map(Value::to_string).unwrap_or_default()
                    ),
                );
            }
        }
        if n.get("pattern").is_some() && o.get("pattern") != n.get("pattern") {
            self.add(
                "bounds_narrowed",
                true,
                ptr,
                format!("{what}: pattern is now {}", n["pattern"]),
            );
        }
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Every change from `old` to `new`, breaking ones first.
pub fn diff(old: &Spec, new: &Spec) -> Vec<Change> {
    let mut d = Differ {
        old,
        new,
        out: Vec::new(),
        seen: HashSet::new(),
    };
    d.run();
    let mut out = d.out;
    out.sort_by_key(|c| !c.breaking);
    out
}

/// The changes as text, JSON or Markdown.
pub fn render(changes: &[Change], format: &str) -> String {
    let breaking = changes.iter().filter(|c| c.breaking).count();
    match format {
        "json" => serde_json::json!({
            "breaking": breaking,
            "changes": changes,
        })
        .to_string(),
        "markdown" => {
            let mut s = format!(
                "## API changes\n\n{breaking} breaking, {} other\n\n| | kind | where | change |\n|---|---|---|---|\n",
                changes.len() - breaking
            );
            for c in changes {
                let mark = if c.breaking { "breaking" } else { "" };
                s.push_str(&format!(
                    "| {mark} | `{}` | `#{}` | {} |\n",
                    c.kind,
                    c.pointer,
                    c.message.replace('|', "\\|")
                ));
            }
            s
        }
        _ => {
            let mut s = String::new();
            for c in changes {
                let mark = if c.breaking { "BREAKING" } else { "change  " };
                s.push_str(&format!(
                    "{mark} {} #{}: {}\n",
                    c.kind, c.pointer, c.message
                ));
            }
            s.push_str(&format!(
                "{breaking} breaking, {} other\n",
                changes.len() - breaking
            ));
            s
        }
    }
}

/// `turnpike openapi diff`: prints the changes; exit 1 when one is breaking, 2 when a spec
/// cannot be read (its problems on standard error).
pub fn run(old: &std::path::Path, new: &std::path::Path, format: &str) -> std::process::ExitCode {
    let load = |p: &std::path::Path| {
        super::load(p, None).map_err(|errors| {
            for e in errors {
                eprintln!("{e}");
            }
        })
    };
    let (Ok(o), Ok(n)) = (load(old), load(new)) else {
        return std::process::ExitCode::from(2);
    };
    let changes = diff(&o, &n);
    print!("{}", render(&changes, format));
    if format == "json" {
        println!();
    }
    if changes.iter().any(|c| c.breaking) {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

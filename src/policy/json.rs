//! The `json_fields` policy: members removed from JSON answers by JSON pointer (RFC 6901, with
//! `*` for every member or element at one level), unless the consumer is in one of
//! `unless_groups`. The answer is read whole (up to `max_body`, default 1 MiB) and edited once;
//! a body that is not JSON or not valid JSON passes unchanged. An answer that must be edited
//! but cannot be (a content encoding the upstream chose anyway, a declared size over the limit)
//! is refused with 502 `uneditable_response`, never passed unedited.

use crate::identity::Consumer;
use serde_json::Value;

/// The default of `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// `kind = "json_fields"`.
#[derive(Debug)]
pub struct JsonFields {
    /// Each pointer split into its unescaped tokens.
    pub remove: Vec<Vec<String>>,
    pub unless_groups: Vec<String>,
    pub max_body: u64,
}

impl JsonFields {
    pub fn compile(
        remove: &[String],
        unless_groups: &[String],
        max_body: u64,
    ) -> Result<JsonFields, (String, String)> {
        if remove.is_empty() {
            return Err(("remove".into(), "list at least one JSON pointer".into()));
        }
        let mut out = Vec::new();
        for (i, p) in remove.iter().enumerate() {
            out.push(pointer(p).map_err(|m| (format!("remove[{i}]"), m))?);
        }
        if max_body == 0 || max_body > 64 << 20 {
            return Err(("max_body".into(), "must be between 1B and 64MiB".into()));
        }
        Ok(JsonFields {
            remove: out,
            unless_groups: unless_groups.to_vec(),
            max_body,
        })
    }

    /// Whether this policy edits the answers of `consumer`.
    pub fn applies(&self, consumer: Option<&Consumer>) -> bool {
        !consumer.is_some_and(|c| c.in_any_group(&self.unless_groups))
    }

    /// Removes the pointed members from `doc`; the number removed.
    pub fn edit(&self, doc: &mut Value) -> usize {
        self.remove.iter().map(|p| remove_at(doc, p)).sum()
    }
}

/// Whether a `Content-Type` names JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    essence == b"application/json"
        || (essence.starts_with(b"application/") && essence.ends_with(b"+json"))
}

/// A body the JSON parser refuses (not JSON, or beyond what it reads: nesting deeper than 128,
/// a lone surrogate escape).
#[derive(Debug, PartialEq, Eq)]
pub struct Unparsed;

/// Edits a whole body with `policies`: the edited body, `None` when nothing was removed (the
/// body then passes unchanged).
pub fn edit_body(body: &[u8], policies: &[&JsonFields]) -> Result<Option<Vec<u8>>, Unparsed> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| Unparsed)?;
    let removed: usize = policies.iter().map(|p| p.edit(&mut doc)).sum();
    if removed == 0 {
        return Ok(None);
    }
    serde_json::to_vec(&doc).map(Some).map_err(|_| Unparsed)
}

/// Whether a body could hold what `policies` remove: it names one of the removed members
/// (as a quoted string), or a policy removes every member at some level (`*` last).
pub fn mentions(body: &[u8], policies: &[&JsonFields]) -> bool {
    policies.iter().flat_map(|p| p.remove.iter()).any(|tokens| {
        match tokens.last().map(String::as_str) {
            None | Some("*") => true,
            Some(name) => {
                let quoted = format!("\"{name}\"");
                memchr::memmem::find(body, quoted.as_bytes()).is_some()
                    // Any escape in the body could spell the name another way.
                    || memchr::memchr(b'\\', body).is_some()
            }
        }
    })
}

/// Splits an RFC 6901 pointer into unescaped tokens.
fn pointer(p: &str) -> Result<Vec<String>, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "{p:?} is not a JSON pointer: it starts with '/', e.g. \"/customer/email\""
        ));
    };
    let mut tokens = Vec::new();
    for t in rest.split('/') {
        let mut out = String::new();
        let mut chars = t.chars();
        while let Some(c) = chars.next() {
            match c {
                '~' => match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(format!("{p:?}: '~' must be followed by 0 or 1")),
                },
                c => out.push(c),
            }
        }
        tokens.push(out);
    }
    Ok(tokens)
}

/// Removes what `tokens` points at below `v`; `*` walks every member or element.
fn remove_at(v: &mut Value, tokens: &[String]) -> usize {
    let Some((first, rest)) = tokens.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return match v {
            Value::Object(m) if first == "*" => {
                let n = m.len();
                m.clear();
                n
            }
            Value::Object(m) => usize::from(m.remove(first).is_some()),
            Value::Array(a) if first == "*" => {
                let n = a.len();
                a.clear();
                n
            }
            Value::Array(a) => match first.parse::<usize>() {
                Ok(i) if i < a.len() => {
                    a.remove(i);
                    1
                }
                _ => 0,
            },
            _ => 0,
        };
    }
    match v {
        Value::Object(m) if first == "*" => m.values_mut().map(|c| remove_at(c, rest)).sum(),
        Value::Object(m) => m.get_mut(first).map_or(0, |c| remove_at(c, rest)),
        Value::Array(a) if first == "*" => a.iter_mut().map(|c| remove_at(c, rest)).sum(),
        Value::Array(a) => first
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get_mut(i))
            .map_or(0, |c| remove_at(c, rest)),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_by_pointer_and_wildcard() {
        let p = JsonFields::compile(
            &[
                "/customer/email".into(),
                "/items/*/secret".into(),
                "/a~1b".into(),
            ],
            &[],
            DEFAULT_MAX_BODY,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let body = br#"{"customer":{"email":"x@y","name":"n"},"items":[{"secret":1,"k":2},{"k":3}],"a/b":1}"#;
        let out = edit_body(body, &[&p]).ok().flatten().unwrap_or_default();
        let v: Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(v["customer"], serde_json::json!({"name": "n"}));
        assert_eq!(v["items"], serde_json::json!([{"k": 2}, {"k": 3}]));
        assert!(v.get("a/b").is_none());
        assert!(edit_body(b"not json", &[&p]).is_err());
        assert!(
            !mentions(b"not json", &[&p]),
            "cannot hold an email member: passes"
        );
        assert!(
            mentions(br#"{"email": "\ud800"}"#, &[&p]),
            "names a removed member: cut off"
        );
        assert_eq!(
            edit_body(br#"{"other":1}"#, &[&p]),
            Ok(None),
            "nothing removed: unchanged"
        );
        assert!(JsonFields::compile(&["customer".into()], &[], 10).is_err());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(b"application/json; charset=utf-8"));
        assert!(is_json(b"application/problem+json"));
        assert!(!is_json(b"text/html"));
    }
}

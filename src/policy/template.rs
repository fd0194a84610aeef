//! Value templates of policies: literal text with `{variable}` parts, parsed and checked when the
//! config loads and only filled in per request. Variables: `consumer.id`,
//! `consumer.metadata.KEY`, `request.id`, `route.param.NAME`, `client.ip`; in a rewrite path a
//! bare `{NAME}` is the route parameter `NAME`. `{{` and `}}` are literal braces.

use crate::identity::Consumer;
use std::net::IpAddr;
use std::sync::Arc;

/// One variable of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    ConsumerId,
    ConsumerMeta(String),
    RequestId,
    Param(String),
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is filled with.
pub struct Vars<'a> {
    pub consumer: Option<&'a Consumer>,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub params: Params<'a>,
}

/// The route parameters of a request: the template's parameter positions and the raw path.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub names: &'a [(usize, Arc<str>)],
    pub path: &'a [u8],
}

impl Params<'_> {
    /// The raw (still percent-encoded) value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let (index, _) = self.names.iter().find(|(_, n)| &**n == name)?;
        let path = self.path.strip_prefix(b"/").unwrap_or(self.path);
        path.split(|&b| b == b'/').nth(*index)
    }
}

impl Template {
    /// Parses `text`; `bare_params` lets `{NAME}` stand for `{route.param.NAME}`.
    pub fn parse(text: &str, bare_params: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                lit.push(char::from(tail.as_bytes()[0]));
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!(
                    "unmatched '}}' in {text:?} (write '}}}}' for a brace)"
                ));
            }
            let Some(end) = tail.find('}') else {
                return Err(format!("unclosed '{{' in {text:?}"));
            };
            let name = &tail[1..end];
            let var = parse_var(name, bare_params)?;
            if !lit.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &tail[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// The variables the template uses.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The filled-in text; `Err` names the first variable without a value (no consumer, a
    /// metadata key the consumer lacks).
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match value(v, vars) {
                    Some(s) => out.push_str(&s),
                    None => return Err(format!("{{{}}} has no value", var_name(v))),
                },
            }
        }
        Ok(out)
    }
}

fn value(v: &Var, vars: &Vars<'_>) -> Option<String> {
    match v {
        Var::ConsumerId => vars.consumer.map(|c| c.id.clone()),
        Var::ConsumerMeta(key) => vars.consumer.and_then(|c| c.meta(key)).map(str::to_string),
        Var::RequestId => Some(vars.request_id.to_string()),
        Var::Param(name) => vars
            .params
            .get(name)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Var::ClientIp => vars.client_ip.map(|ip| ip.to_string()),
    }
}

/// The written name of a variable.
pub fn var_name(v: &Var) -> String {
    match v {
        Var::ConsumerId => "consumer.id".into(),
        Var::ConsumerMeta(k) => format!("consumer.metadata.{k}"),
        Var::RequestId => "request.id".into(),
        Var::Param(n) => format!("route.param.{n}"),
        Var::ClientIp => "client.ip".into(),
    }
}

fn parse_var(name: &str, bare_params: bool) -> Result<Var, String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match name {
        "consumer.id" => return Ok(Var::ConsumerId),
        "request.id" => return Ok(Var::RequestId),
        "client.ip" => return Ok(Var::ClientIp),
        _ => {}
    }
    if let Some(key) = name.strip_prefix("consumer.metadata.").filter(|k| ident(k)) {
        return Ok(Var::ConsumerMeta(key.to_string()));
    }
    if let Some(p) = name.strip_prefix("route.param.").filter(|k| ident(k)) {
        return Ok(Var::Param(p.to_string()));
    }
    if bare_params && ident(name) && !name.contains('.') {
        return Ok(Var::Param(name.to_string()));
    }
    Err(format!(
        "unknown template variable {{{name}}}: use consumer.id, consumer.metadata.KEY, request.id, route.param.NAME or client.ip"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("t-{consumer.id}/{request.id}{{x}}", false)
            .unwrap_or_else(|e| panic!("{e}"));
        let c = Consumer::new("acme", None, vec![], vec![], true);
        let names = [(1usize, Arc::from("id"))];
        let vars = Vars {
            consumer: Some(&c),
            request_id: "r1",
            client_ip: None,
            params: Params {
                names: &names,
                path: b"/items/42",
            },
        };
        assert_eq!(t.render(&vars).as_deref(), Ok("t-acme/r1{x}"));
        let p = Template::parse("/legacy/{id}", true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.render(&vars).as_deref(), Ok("/legacy/42"));
        let ip = Template::parse("{client.ip}", false).unwrap_or_else(|e| panic!("{e}"));
        assert!(ip.render(&vars).is_err(), "no client address: no value");
    }

    #[test]
    fn refuses_unknown_and_broken() {
        assert!(Template::parse("{consumer.name}", false).is_err());
        assert!(
            Template::parse("{id}", false).is_err(),
            "bare names only in paths"
        );
        assert!(Template::parse("{consumer.id", false).is_err());
        assert!(Template::parse("a}b", false).is_err());
        assert!(Template::parse("{consumer.metadata.}", false).is_err());
    }
}

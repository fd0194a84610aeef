//! What the upstream receives: the client's request with the base path stripped, client
//! copies of gateway headers and the credentials removed, the consumer's identity headers,
//! the Transform stage of the policies, and the forwarding headers, the request id and
//! `traceparent`. The live proxy and the offline policy runner build it with `upstream_request`.

use crate::headers::{is_gateway_owned, NameList};
use crate::policy::run::replace_path_and_query;
use crate::policy::Flow;
use crate::state::{Endpoint, Snapshot};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// What `upstream_request` needs beside the endpoint and the policy state.
pub struct Forward<'a> {
    /// The request as the client sent it.
    pub original: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
    pub request_id: &'a str,
    pub traceparent: &'a str,
    /// `[cache] strip_unkeyed` on cached endpoints.
    pub cache_strip: Option<&'a NameList>,
}

/// Turns `upstream` (a copy of the client's request) into the request the upstream receives.
pub fn upstream_request(
    snapshot: &Snapshot,
    ep: &Endpoint,
    flow: &mut Flow,
    f: &Forward<'_>,
    upstream: &mut RequestHeader,
) -> pingora::Result<()> {
    let raw = f.original.raw_path();
    if ep.strip > 0 {
        let rest = &raw[ep.strip.min(raw.len())..];
        let path: Vec<u8> = if rest.first() == Some(&b'/') {
            rest.to_vec()
        } else {
            [&b"/"[..], rest].concat()
        };
        replace_path_and_query(upstream, path)?;
    }
    let host = f
        .original
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let server = &snapshot.strip_request;
    match f.cache_strip {
        Some(c) => strip_client_headers(upstream, &[server, c]),
        None => strip_client_headers(upstream, &[server]),
    }
    if let Some(policy) = ep.auth.as_ref().filter(|p| !p.forward_credentials) {
        strip_credentials(upstream, policy)?;
    }
    if let Some(c) = &flow.consumer {
        if let Some(v) = &c.id_header {
            upstream.insert_header("X-Consumer-Id", v.clone())?;
        }
        if let Some(v) = &c.groups_header {
            upstream.insert_header("X-Consumer-Groups", v.clone())?;
        }
    }
    // The Transform stage: the policies' header edits and rewrite.
    let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
    crate::policy::run::upstream(&ep.chain, flow, f.request_id, f.client_ip, path, upstream)?;
    set_upstream_headers(
        upstream,
        f.client_ip,
        f.tls,
        host,
        f.request_id,
        f.traceparent,
    )
}

/// Removes the API key (header and query parameter) and, with JWT, the Authorization header
/// from the upstream request.
pub fn strip_credentials(
    upstream: &mut RequestHeader,
    policy: &crate::auth::AuthPolicy,
) -> pingora::Result<()> {
    upstream.remove_header(&policy.header);
    if policy.jwt.is_some() {
        upstream.remove_header(&http::header::AUTHORIZATION);
    }
    let Some(name) = &policy.query_param else {
        return Ok(());
    };
    let Some(query) = upstream.uri.query() else {
        return Ok(());
    };
    if crate::auth::query_values(query.as_bytes(), name).is_empty() {
        return Ok(());
    }
    let rest = crate::auth::strip_query_param(query, name);
    let path = upstream.uri.path();
    let pq = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    replace_path_and_query(upstream, pq.into_bytes())
}

/// Removes the client headers the upstream must not receive: the names the gateway sets
/// itself, names with underscores (some servers read them as dashes, so a client could
/// smuggle a copy of a trusted header), and `also` (`[server] strip_request_headers`, and on
/// cached routes `[cache] strip_unkeyed`). One pass over the names; removal only when present.
pub fn strip_client_headers(req: &mut RequestHeader, also: &[&NameList]) {
    let unwanted: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            is_gateway_owned(n) || also.iter().any(|l| l.contains(n))
        })
        .cloned()
        .collect();
    for name in unwanted {
        req.remove_header(&name);
    }
}

/// The text of an address for `X-Forwarded-For` (IPv4 written by hand: this runs for every
/// request and `Display` goes through the formatting machinery).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Sets the forwarding and identity headers of the upstream request (after
/// `strip_client_headers`).
pub fn set_upstream_headers(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
    request_id: &str,
    traceparent: &str,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        req.insert_header("X-Forwarded-For", ip_text(ip))?;
    }
    req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
    if let Some(host) = host {
        req.insert_header("X-Forwarded-Host", host)?;
    }
    req.insert_header("X-Request-Id", request_id)?;
    req.insert_header("traceparent", traceparent)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_like_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}

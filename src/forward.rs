//! What the upstream receives: the client's request with the base path stripped, client
//! copies of gateway headers and the credentials removed, the consumer's identity headers,
//! the Transform stage of the policies, and the forwarding headers, the request id and
//! `traceparent`. The live proxy and the offline policy runner build it with `upstream_request`.

use crate::headers::{is_gateway_owned, NameList, RequestId};
use crate::policy::run::replace_path_and_query;
use crate::policy::Flow;
use crate::state::{Endpoint, Snapshot};
use http::HeaderValue;
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// What `upstream_request` needs beside the endpoint and the policy state.
pub struct Forward<'a> {
    /// The request as the client sent it.
    pub original: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
    pub request_id: &'a RequestId,
    pub traceparent: &'a HeaderValue,
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
    let host = f.original.headers.get(http::header::HOST);
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

/// An address as an `X-Forwarded-For` value (written without the `fmt` machinery: this runs
/// for every request).
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(15);
    crate::text::push_ip(&mut out, ip, false);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

/// Sets the forwarding and identity headers of the upstream request (after
/// `strip_client_headers`). Values are header values already (the client's Host and the
/// request id are shared, not copied).
pub fn set_upstream_headers(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&HeaderValue>,
    request_id: &RequestId,
    traceparent: &HeaderValue,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip.and_then(ip_value) {
        req.insert_header("X-Forwarded-For", ip)?;
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    req.insert_header("X-Forwarded-Proto", proto)?;
    if let Some(host) = host {
        req.insert_header("X-Forwarded-Host", host.clone())?;
    }
    req.insert_header("X-Request-Id", request_id.header())?;
    req.insert_header("traceparent", traceparent.clone())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_one_header_value_of_either_family() {
        // The digits themselves are text::push_ip's (tested there); this is the wrapping.
        for ip in ["192.168.9.99", "2001:db8::8a2e:370:7334"] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            let value = ip_value(ip).expect("an address is a header value");
            assert_eq!(value.to_str().ok(), Some(ip.to_string().as_str()));
        }
    }
}

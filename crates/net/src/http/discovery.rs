//! XEP-0156: how a web client finds the server's connection methods, as host-meta
//! documents (RFC 6415) at `/.well-known/host-meta` (XRD, XML) and
//! `/.well-known/host-meta.json` (JRD).
//!
//! Each served domain gets its own document, chosen by the request's `Host`; the links are
//! the endpoints the route table advertises ([`super::Routes::advertise`]), so BOSH joins
//! the list when it is added there.

use super::{refuse, Client, Connection, HttpContext};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use rookery_xml::Element;
use std::sync::Arc;

pub const HOST_META: &str = "/.well-known/host-meta";
pub const HOST_META_JSON: &str = "/.well-known/host-meta.json";
/// XEP-0156 §3: the link relation of a WebSocket endpoint (RFC 7395 §4).
pub const ALT_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
/// XEP-0156 §3: the link relation of a BOSH endpoint (XEP-0206).
pub const ALT_XBOSH: &str = "urn:xmpp:alt-connections:xbosh";
const NS_XRD: &str = "http://docs.oasis-open.org/ns/xri/xrd-1.0";

/// `GET /.well-known/host-meta`: the XRD document.
pub async fn host_meta(
    State(ctx): State<Arc<HttpContext>>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
) -> Response {
    let links = match links(&ctx, &ctx.client(&conn, &headers)) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut xrd = Element::new("XRD", NS_XRD);
    for (rel, href) in links {
        xrd.push_child(
            Element::new("Link", NS_XRD)
                .with_attr("rel", rel)
                .with_attr("href", href),
        );
    }
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n{}\n",
        xrd.to_xml("")
    );
    document("application/xrd+xml; charset=utf-8", body)
}

/// `GET /.well-known/host-meta.json`: the same links as JRD (RFC 6415 Appendix A).
pub async fn host_meta_json(
    State(ctx): State<Arc<HttpContext>>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
) -> Response {
    let links = match links(&ctx, &ctx.client(&conn, &headers)) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let links: Vec<_> = links
        .into_iter()
        .map(|(rel, href)| serde_json::json!({ "rel": rel, "href": href }))
        .collect();
    document(
        "application/json",
        serde_json::json!({ "links": links }).to_string(),
    )
}

fn document(content_type: &'static str, body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The links of the document for the host the client asked for: `(rel, URL)`.
fn links(ctx: &HttpContext, client: &Client) -> Result<Vec<(&'static str, String)>, Response> {
    let host = client.host.as_deref().unwrap_or("");
    let domain = host_domain(host).to_ascii_lowercase();
    if ctx.streams.server.host(&domain).is_none() {
        return Err(refuse(StatusCode::NOT_FOUND, "no such XMPP domain here"));
    }
    let base = match &ctx.config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if client.secure { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    let prefix = &ctx.config.path_prefix;
    Ok(ctx
        .alt_connections
        .iter()
        .map(|alt| {
            let url = format!("{base}{prefix}{}", alt.path);
            let url = match url.split_once("://") {
                Some(("https", rest)) if alt.websocket => format!("wss://{rest}"),
                Some(("http", rest)) if alt.websocket => format!("ws://{rest}"),
                _ => url,
            };
            (alt.rel, url)
        })
        .collect())
}

/// The host name of a `Host` value: without the port, and without the brackets of an
/// IPv6 literal.
fn host_domain(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(super::host_domain("example.org:5443"), "example.org");
        assert_eq!(super::host_domain("example.org"), "example.org");
        assert_eq!(super::host_domain("[::1]:5443"), "::1");
    }
}

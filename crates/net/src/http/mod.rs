//! The HTTP(S) listener: WebSocket (RFC 7395), BOSH (XEP-0124, XEP-0206), connection
//! discovery (XEP-0156) and the modules' HTTP handlers (file upload, XEP-0363, through
//! [`rookery_core::http`]), all through one route table ([`Routes`], built in [`routes`]).
//!
//! HTTP itself is hyper's (HTTP/1.1 only: WebSocket upgrades are HTTP/1.1, and browsers
//! speak it everywhere), with axum's router; TLS is rustls with the hosts' certificates
//! from [`crate::tls::TlsContext`] (SNI, SIGHUP reload). What this module adds is what an
//! XMPP server's HTTP side must enforce itself:
//!
//! * connection limits shared with the client streams ([`crate::limits::ConnectionLimits`]:
//!   one count per address and in total, whichever port a client uses);
//! * slow clients cut off: the TLS handshake, the request headers and each request have
//!   time limits, and a request body a size limit;
//! * the client's address behind a trusted reverse proxy (`Forwarded`, `X-Forwarded-For`),
//!   used for the limits, logs and the session's address;
//! * CORS for browsers' scripts on the XMPP endpoints and discovery documents, and the
//!   WebSocket `Origin` check, from one list of allowed origins.
//!
//! The Prometheus metrics ([`crate::metrics`], `/metrics`) are merged into the same table,
//! with their own address check.

pub mod bosh;
pub mod discovery;
mod handlers;
pub mod websocket;

use crate::c2s::StreamContext;
use crate::limits::{ConnectionLimits, ConnectionPermit};
use crate::tls::TlsContext;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::settings::{Place, Section};
use rookery_sasl::ChannelBindings;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head (request line and headers) read; beyond it the connection is
/// answered 431 and closed. hyper's read buffer is the bound (it cannot be under 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// `[http]`: the HTTP listeners' settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the XMPP endpoints live (`/xmpp` puts WebSocket at `/xmpp/xmpp-websocket`);
    /// empty: at the root. Discovery stays at `/.well-known/`, where clients look.
    pub path_prefix: String,
    /// The server's root as clients reach it (`https://chat.example.org`), for the URLs
    /// discovery lists; unset: the scheme and `Host` of each request.
    pub public_url: Option<String>,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` give the client's address, and
    /// whose `X-Forwarded-Proto: https` (or `proto=https`) makes a request secure.
    pub trusted_proxies: Vec<IpAddr>,
    /// Origins allowed to use the XMPP endpoints from a browser (CORS, and the WebSocket
    /// `Origin` check); `*` allows any.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_request_bytes: usize,
    /// Time a client has to send a request's headers (also how long an idle kept-alive
    /// connection is kept).
    pub header_timeout_secs: u64,
    /// Time to read a request's body and answer it.
    pub request_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            path_prefix: String::new(),
            public_url: None,
            trusted_proxies: Vec::new(),
            // As Prosody's `cross_domain_websocket` and ejabberd's defaults allow: any web
            // page may connect, since every connection still has to authenticate.
            cors_origins: vec!["*".to_owned()],
            max_request_bytes: 65536,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
        }
    }
}

impl Section for HttpConfig {
    const KEY: &'static str = "http";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# The HTTP listeners ([[listener]] kind = "http" or "https"): WebSocket (RFC 7395) at
# <path_prefix>/xmpp-websocket, BOSH (XEP-0206) at <path_prefix>/http-bind, and XEP-0156
# discovery at /.well-known/host-meta[.json].
[http]
# Where the XMPP endpoints live ("/xmpp" puts WebSocket at /xmpp/xmpp-websocket).
path_prefix = ""
# The server's root as clients reach it, for the URLs discovery lists; unset: the scheme
# and Host of each request.
# public_url = "https://chat.example.org"
# Reverse proxies whose Forwarded / X-Forwarded-For headers give the client's address (for
# limits, logs and sessions) and whose X-Forwarded-Proto: https makes a request secure.
trusted_proxies = []
# Origins allowed to use the XMPP endpoints from web pages (CORS, WebSocket Origin check);
# "*" allows any.
cors_origins = ["*"]
# Largest request body, in bytes (413 beyond).
max_request_bytes = 65536
# Time to send a request's headers (and how long an idle kept-alive connection stays).
header_timeout_secs = 10
# Time to send a request's body and be answered.
request_timeout_secs = 60
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let p = &self.path_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/') || p.contains("//")) {
            return Err(ConfigError::invalid(
                format!("{key}.path_prefix"),
                "empty, or a path such as /xmpp (a leading /, no trailing /)",
            ));
        }
        if let Some(u) = &self.public_url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(['?', '#', ' '])) {
                return Err(ConfigError::invalid(
                    format!("{key}.public_url"),
                    "an http:// or https:// URL without query or fragment",
                ));
            }
        }
        if self.cors_origins.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.cors_origins"),
                "at least one origin (\"*\" for any)",
            ));
        }
        for (name, value) in [
            ("max_request_bytes", self.max_request_bytes as u64),
            ("header_timeout_secs", self.header_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

impl HttpConfig {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// One HTTP connection, as every request on it sees it (a request extension).
#[derive(Clone)]
pub struct Connection {
    /// The TCP peer (a trusted proxy, or the client itself).
    pub peer: SocketAddr,
    /// TLS terminated here (an `https` listener).
    pub tls: bool,
    /// Channel-binding data of that TLS connection (for SCRAM-PLUS over WebSocket).
    pub channel_bindings: ChannelBindings,
    /// The connection's slot in the connection limits; `None` for a trusted proxy, whose
    /// clients are counted per request ([`HttpContext::permit`]).
    permit: Option<Arc<ConnectionPermit>>,
}

/// Who made a request, after a trusted proxy's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address (port 0 when a proxy did not say it).
    pub addr: SocketAddr,
    /// The client reached us over TLS: here, or at a trusted proxy that says so.
    pub secure: bool,
    /// The request came through a trusted proxy.
    pub proxied: bool,
    /// The host the client asked for (`Host`, or the proxy's `X-Forwarded-Host`).
    pub host: Option<String>,
}

/// An alternative connection method that discovery lists (XEP-0156).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltConnection {
    /// The link relation (`urn:xmpp:alt-connections:websocket`).
    pub rel: &'static str,
    /// The endpoint's path under `[http] path_prefix`.
    pub path: String,
    /// A WebSocket URL (`wss://`) rather than an HTTP one.
    pub websocket: bool,
}

/// What every HTTP request shares: the client streams' context, `[http]`, the connection
/// limits and the discovery list.
pub struct HttpContext {
    pub streams: Arc<StreamContext>,
    pub config: Arc<HttpConfig>,
    pub limits: Arc<ConnectionLimits>,
    pub alt_connections: Vec<AltConnection>,
}

/// The router's state type: what handlers take with `State<Arc<HttpContext>>`.
pub type HttpRouter = Router<Arc<HttpContext>>;

/// The route table: XMPP endpoints under the prefix (with CORS and the request limits),
/// what discovery lists, and routers with limits of their own.
///
/// A new HTTP feature adds itself in [`routes`], the one place every route is listed:
///
/// ```ignore
/// Routes::new(config)
///     .endpoint(websocket::PATH, get(websocket::upgrade))
///     .advertise(discovery::ALT_WEBSOCKET, websocket::PATH, true)
///     // BOSH (XEP-0206): an endpoint, listed for discovery
///     .endpoint(bosh::PATH, post(bosh::request))
///     .advertise(discovery::ALT_XBOSH, bosh::PATH, false)
/// ```
///
/// Modules' handlers ([`rookery_core::http::HttpHandler`], file upload's) need no line here:
/// every one registered with `HostBuilder::http_handler` is mounted under the prefix when
/// the table is built.
pub struct Routes {
    prefix: String,
    endpoints: HttpRouter,
    others: HttpRouter,
    alt: Vec<AltConnection>,
}

impl Routes {
    pub fn new(config: &HttpConfig) -> Self {
        Routes {
            prefix: config.path_prefix.clone(),
            endpoints: Router::new(),
            others: Router::new(),
            alt: Vec::new(),
        }
    }

    /// `[http] path_prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An XMPP endpoint at `path` (starting with `/`) under the prefix, for browsers'
    /// scripts: CORS headers and preflight answers, the request body size limit and the
    /// request time limit apply.
    pub fn endpoint(mut self, path: &str, handler: MethodRouter<Arc<HttpContext>>) -> Self {
        let full = format!("{}{path}", self.prefix);
        self.endpoints = self.endpoints.route(&full, handler);
        self
    }

    /// Lists the endpoint at `path` (under the prefix) in the discovery documents as `rel`.
    pub fn advertise(mut self, rel: &'static str, path: &str, websocket: bool) -> Self {
        self.alt.push(AltConnection {
            rel,
            path: path.to_owned(),
            websocket,
        });
        self
    }

    /// Routes with limits of their own (a file upload's bodies are larger than any XMPP
    /// request): merged as they are, paths absolute (use [`prefix`](Self::prefix)). They
    /// still get the connection limits and the header time limit of every connection.
    pub fn merge(mut self, router: HttpRouter) -> Self {
        self.others = self.others.merge(router);
        self
    }

    /// The router to serve, and the discovery list it advertises.
    fn build(self, streams: Arc<StreamContext>, limits: Arc<ConnectionLimits>) -> Router {
        let config = streams.server.config().sections.get::<HttpConfig>();
        let ctx = Arc::new(HttpContext {
            streams,
            config,
            limits,
            alt_connections: self.alt,
        });
        let endpoints = self
            .endpoints
            .route(discovery::HOST_META, get(discovery::host_meta))
            .route(discovery::HOST_META_JSON, get(discovery::host_meta_json))
            .layer(middleware::from_fn_with_state(ctx.clone(), guard));
        // Modules' handlers (`HostBuilder::http_handler`): large bodies and limits of their
        // own, so beside the guard, like `merge`.
        let handlers = handlers::router(&self.prefix);
        Router::new()
            .merge(endpoints)
            .merge(self.others)
            .merge(handlers)
            .with_state(ctx)
    }
}

/// Every route the HTTP listeners serve.
pub fn routes(config: &HttpConfig) -> Routes {
    Routes::new(config)
        .endpoint(websocket::PATH, get(websocket::upgrade))
        .advertise(discovery::ALT_WEBSOCKET, websocket::PATH, true)
        .endpoint(bosh::PATH, post(bosh::request))
        .advertise(discovery::ALT_XBOSH, bosh::PATH, false)
}

/// CORS, the body size limit and the request time limit of the XMPP endpoints.
async fn guard(State(ctx): State<Arc<HttpContext>>, req: Request, next: Next) -> Response {
    let config = &ctx.config;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| config.origin_allowed(o));
    let any = config.cors_origins.iter().any(|o| o == "*");
    let cors = |response: &mut Response| {
        let Some(origin) = origin.as_ref().filter(|_| allowed) else {
            return;
        };
        let h = response.headers_mut();
        if any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    };
    // A CORS preflight (Fetch standard §3.2.2): answered here, for any endpoint.
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if !allowed {
            return refuse(StatusCode::FORBIDDEN, "origin not allowed");
        }
        let mut r = StatusCode::NO_CONTENT.into_response();
        cors(&mut r);
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("7200"),
        );
        return r;
    }
    let max = config.max_request_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    // A body without a length (chunked) is cut at the limit while it is read.
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, max)));
    let limit = Duration::from_secs(config.request_timeout_secs);
    let mut response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => refuse(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    };
    cors(&mut response);
    response
}

/// A refusal: counted, with a short text saying why.
pub fn refuse(status: StatusCode, why: &'static str) -> Response {
    counters::incr(Counter::HttpRefused);
    (status, why).into_response()
}

impl HttpContext {
    /// Who made the request: the TCP peer, or (from a trusted proxy) the client its
    /// forwarding headers name.
    pub fn client(&self, conn: &Connection, headers: &HeaderMap) -> Client {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let proxied = self.config.trusted_proxies.contains(&conn.peer.ip());
        if !proxied {
            return Client {
                addr: conn.peer,
                secure: conn.tls,
                proxied,
                host,
            };
        }
        let fwd = Forwarded::parse(headers);
        let trusted = &self.config.trusted_proxies;
        // The rightmost address that is not one of our proxies: the ones to its left were
        // written by the client or its own proxies, and may be made up.
        let addr = fwd
            .chain
            .iter()
            .rev()
            .find(|a| !trusted.contains(&a.ip()))
            .or(fwd.chain.first())
            .copied()
            .unwrap_or(conn.peer);
        Client {
            addr,
            secure: conn.tls || fwd.proto.as_deref() == Some("https"),
            proxied,
            host: fwd.host.or(host),
        }
    }

    /// A slot in the connection limits for a long-lived use of the connection (a
    /// WebSocket): the connection's own slot, or for a trusted proxy's request one for the
    /// client it forwards. `None`: the client is over its limit.
    pub fn permit(&self, conn: &Connection, client: &Client) -> Option<Arc<ConnectionPermit>> {
        match &conn.permit {
            Some(p) => Some(p.clone()),
            None => self.limits.try_acquire(client.addr.ip()).map(Arc::new),
        }
    }
}

/// What a trusted proxy said about the request (RFC 7239 `Forwarded`, else the
/// `X-Forwarded-*` headers).
#[derive(Debug, Default, PartialEq, Eq)]
struct Forwarded {
    /// Client, then each proxy, left to right.
    chain: Vec<SocketAddr>,
    /// The scheme the client used, as the last proxy saw it.
    proto: Option<String>,
    host: Option<String>,
}

impl Forwarded {
    fn parse(headers: &HeaderMap) -> Forwarded {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let forwarded = values("forwarded");
        if !forwarded.is_empty() {
            let mut out = Forwarded::default();
            for element in &forwarded {
                for pair in element.split(';') {
                    let Some((k, v)) = pair.split_once('=') else {
                        continue;
                    };
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "for" => out.chain.extend(node_addr(v)),
                        "proto" => out.proto = Some(v.to_ascii_lowercase()),
                        "host" => out.host = Some(v.to_owned()),
                        _ => {}
                    }
                }
            }
            return out;
        }
        Forwarded {
            chain: values("x-forwarded-for")
                .iter()
                .filter_map(|v| node_addr(v))
                .collect(),
            proto: values("x-forwarded-proto")
                .last()
                .map(|p| p.to_ascii_lowercase()),
            host: values("x-forwarded-host").last().cloned(),
        }
    }
}

/// An address in a forwarding header: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711` (RFC 7239 §6). Obfuscated or `unknown` nodes give none.
fn node_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    ip.unwrap_or(s)
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 0))
}

/// What every connection on one HTTP listener shares.
struct Listener {
    router: Router,
    tls: Option<TlsContext>,
    limits: Arc<ConnectionLimits>,
    server: Arc<rookery_core::Server>,
    config: Arc<HttpConfig>,
}

/// Serves HTTP (or HTTPS, with `tls`) on `listener` until the server shuts down.
pub(crate) fn serve(
    streams: Arc<StreamContext>,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<crate::metrics::Metrics>,
    tls: Option<TlsContext>,
    listener: TcpListener,
    metrics_only: bool,
) {
    let server = streams.server.clone();
    let config = server.config().sections.get::<HttpConfig>();
    let metrics_config = server
        .config()
        .sections
        .get::<crate::metrics::MetricsConfig>();
    let router = if metrics_only {
        // The metrics' own listener: `/metrics` and nothing else (no XMPP endpoint, no
        // discovery, no module handler).
        let ctx = Arc::new(HttpContext {
            streams,
            config: config.clone(),
            limits: limits.clone(),
            alt_connections: Vec::new(),
        });
        crate::metrics::router(metrics, &metrics_config, true).with_state(ctx)
    } else {
        routes(&config)
            .merge(crate::metrics::router(metrics, &metrics_config, false))
            .build(streams, limits.clone())
    };
    let l = Arc::new(Listener {
        router,
        tls,
        limits,
        server: server.clone(),
        config,
    });
    server.tasks().spawn(accept_loop(l, listener));
}

async fn accept_loop(l: Arc<Listener>, listener: TcpListener) {
    let shutdown = l.server.shutdown_token().clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                // A trusted proxy's connections carry many clients: those are counted per
                // WebSocket, by the address the proxy gives.
                let permit = if l.config.trusted_proxies.contains(&peer.ip()) {
                    None
                } else {
                    match l.limits.try_acquire(peer.ip()) {
                        Some(p) => Some(Arc::new(p)),
                        None => {
                            tracing::warn!(%peer, open = l.limits.open(), "HTTP connection refused: connection limit reached");
                            counters::incr(Counter::ConnectionsRefused);
                            continue;
                        }
                    }
                };
                let _ = socket.set_nodelay(true);
                l.server
                    .tasks()
                    .spawn(connection(l.clone(), socket, peer, permit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One HTTP connection: the TLS handshake on an HTTPS listener, then HTTP/1.1 requests
/// (and upgrades) until it closes.
async fn connection(
    l: Arc<Listener>,
    socket: TcpStream,
    peer: SocketAddr,
    permit: Option<Arc<ConnectionPermit>>,
) {
    let mut conn = Connection {
        peer,
        tls: false,
        channel_bindings: ChannelBindings::none(),
        permit,
    };
    let Some(tls) = &l.tls else {
        return serve_http(&l, socket, conn).await;
    };
    // The configurations current now: the channel-binding data must name the certificate
    // this client is shown, even if a reload happens during the handshake.
    let configs = tls.current();
    // rustls's handshake, then the records protected here (`crate::tls_records`), as on a
    // client stream's TCP connection: a WebSocket session is as long-lived and as idle.
    let accept = crate::tls_records::accept(socket, configs.https.clone(), |c| {
        configs.channel_bindings(c)
    });
    let limit = Duration::from_secs(l.server.config().limits.tls_handshake_timeout_secs);
    match crate::transport::handshake(accept, limit, l.server.shutdown_token()).await {
        Ok((records, bindings)) => {
            conn.tls = true;
            conn.channel_bindings = bindings;
            serve_http(&l, records, conn).await
        }
        Err(why) => {
            tracing::debug!(%peer, why, "HTTPS handshake did not complete");
            counters::incr(Counter::TlsHandshakeFailures);
        }
    }
}

async fn serve_http<I>(l: &Listener, io: I, conn: Connection)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let router = l.router.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Slow clients are cut off (a client holding connections open by sending its
        // headers a byte at a time), and so are kept-alive connections left idle.
        .header_read_timeout(Duration::from_secs(l.config.header_timeout_secs))
        .max_buf_size(MAX_HEAD_BYTES);
    let served = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    let shutdown = l.server.shutdown_token().clone();
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_are_read() {
        let f = Forwarded::parse(&headers(&[
            (
                "Forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8::17]:4711\"",
            ),
            ("Forwarded", "for=unknown;proto=HTTPS;host=chat.example.org"),
            ("X-Forwarded-For", "10.9.9.9"),
        ]));
        assert_eq!(
            f.chain,
            vec![
                "192.0.2.60:0".parse().expect("addr"),
                "[2001:db8::17]:4711".parse().expect("addr"),
            ]
        );
        assert_eq!(f.proto.as_deref(), Some("https"));
        assert_eq!(f.host.as_deref(), Some("chat.example.org"));
        let f = Forwarded::parse(&headers(&[
            ("X-Forwarded-For", "198.51.100.1, 198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
        ]));
        assert_eq!(f.chain.len(), 2);
        assert_eq!(f.proto.as_deref(), Some("https"));
        assert_eq!(Forwarded::parse(&HeaderMap::new()), Forwarded::default());
    }

    #[test]
    fn the_prefix_and_public_url_are_checked() {
        let bad = |c: HttpConfig| c.validate("http").expect_err("refused").to_string();
        let ok = HttpConfig {
            path_prefix: "/xmpp".into(),
            public_url: Some("https://chat.example.org/base".into()),
            ..HttpConfig::default()
        };
        ok.validate("http").expect("valid");
        for p in ["xmpp", "/xmpp/", "//x"] {
            let e = bad(HttpConfig {
                path_prefix: p.into(),
                ..HttpConfig::default()
            });
            assert!(e.contains("http.path_prefix"), "{e}");
        }
        for u in ["ftp://x", "https://", "https://x/?a=1"] {
            let e = bad(HttpConfig {
                public_url: Some(u.into()),
                ..HttpConfig::default()
            });
            assert!(e.contains("http.public_url"), "{e}");
        }
        let e = bad(HttpConfig {
            cors_origins: vec![],
            ..HttpConfig::default()
        });
        assert!(e.contains("cors_origins"), "{e}");
    }
}

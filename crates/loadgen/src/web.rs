//! XMPP over the web transports, in the clear (`ws://`, `http://`): WebSocket (RFC 7395) and
//! BOSH (XEP-0124, XEP-0206). Both carry a client stream as whole elements, so one
//! negotiation ([`negotiate`]: SASL, restart, bind, presence, a confirming ping) serves both.
//!
//! The servers under test are set up as behind a reverse proxy that terminated TLS (Rookery:
//! `[http] trusted_proxies`; Prosody: `consider_websocket_secure`/`consider_bosh_secure`;
//! ejabberd needs nothing): every request says so with `X-Forwarded-Proto: https`, which the
//! others ignore. TLS is measured by the TCP scenarios; these measure the transports.

use crate::client::{
    connect_tcp, iq_outcome, stream_error_text, write_iq_answer, ClientError, LoginOpts,
    LoginTimes, Result, Sasl, SaslStep, Target, NS_BIND, NS_SESSION,
};
use crate::scan::{self, Event, StreamScanner};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// What a BOSH client asks the server to hold a request for at most, in seconds.
pub const BOSH_WAIT: u64 = 30;

/// A client stream carried as whole elements.
pub trait Link {
    /// Sends these elements: one WebSocket message each, or one BOSH request for all.
    fn send(&mut self, els: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// The next element from the server.
    fn next(&mut self, timeout: Duration) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Restarts the stream (after SASL) and returns the new features.
    fn restart(&mut self, t: &Target) -> impl Future<Output = Result<Vec<u8>>> + Send;
}

/// Waits for the answer to our IQ `id`, answering the server's own IQs meanwhile.
async fn wait_iq<L: Link>(link: &mut L, id: &str, timeout: Duration) -> Result<Vec<u8>> {
    let until = Instant::now() + timeout;
    loop {
        let el = link
            .next(until.saturating_duration_since(Instant::now()))
            .await?;
        match scan::root_name(&el) {
            b"iq" if scan::attr(&el, b"id") == Some(id.as_bytes()) => return iq_outcome(el, id),
            b"iq" => {
                let mut answer = Vec::new();
                write_iq_answer(&el, &mut answer);
                if !answer.is_empty() {
                    link.send(&[String::from_utf8_lossy(&answer).into_owned()])
                        .await?;
                }
            }
            b"error" => return Err(ClientError::new("stream-error", stream_error_text(&el))),
            _ => {}
        }
    }
}

/// From the first stream features to a bound session: SASL as account `n`, restart, bind
/// `resource` (and the legacy session where required), then per `opts` initial presence and
/// a ping whose answer confirms the session is set up. Returns the bound JID.
#[allow(clippy::too_many_arguments)]
pub async fn negotiate<L: Link>(
    link: &mut L,
    t: &Target,
    n: u64,
    features: &[u8],
    resource: &str,
    opts: LoginOpts,
    start: Instant,
    times: &mut LoginTimes,
) -> Result<String> {
    let us = |s: Instant| s.elapsed().as_micros() as u64;
    let want = t.mechanism.name();
    let mechs = scan::child_texts(features, b"mechanism");
    if !mechs.contains(&want.as_bytes()) {
        let offered: Vec<String> = mechs
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        return Err(ClientError::new(
            "mechanism",
            format!("{want} not offered (offered: {})", offered.join(" ")),
        ));
    }
    let (mut sasl, auth) = Sasl::start(t, &t.user(n), &t.password(n));
    link.send(&[auth]).await?;
    loop {
        let el = link.next(t.step_timeout).await?;
        match sasl.step(&el, &t.keys)? {
            SaslStep::Reply(r) => link.send(&[r]).await?,
            SaslStep::Success => break,
            SaslStep::Other => {}
        }
    }
    times.auth_us = us(start);

    let features = link.restart(t).await?;
    if !scan::has_child(&features, b"bind") {
        return Err(ClientError::new("no-bind", "server does not offer binding"));
    }
    let session_required =
        scan::has_child(&features, b"session") && !scan::has_child(&features, b"optional");
    link.send(&[format!(
        "<iq type='set' id='bind1' xmlns='jabber:client'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        scan::escape(resource)
    )])
    .await?;
    let bound = wait_iq(link, "bind1", t.step_timeout).await?;
    let jid = scan::unescape(scan::child_text(&bound, b"jid").unwrap_or(b"")).into_owned();
    if session_required {
        link.send(&[format!(
            "<iq type='set' id='sess1' xmlns='jabber:client'><session xmlns='{NS_SESSION}'/></iq>"
        )])
        .await?;
        wait_iq(link, "sess1", t.step_timeout).await?;
    }
    times.bind_us = us(start);

    let mut els = Vec::new();
    if opts.presence {
        els.push(if opts.priority != 0 {
            format!(
                "<presence xmlns='jabber:client'><priority>{}</priority></presence>",
                opts.priority
            )
        } else {
            "<presence xmlns='jabber:client'/>".to_owned()
        });
    }
    if opts.confirm {
        els.push(format!(
            "<iq type='get' id='ready1' to='{}' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>",
            scan::escape(&t.domain)
        ));
    }
    if !els.is_empty() {
        link.send(&els).await?;
    }
    if opts.confirm {
        wait_iq(link, "ready1", t.step_timeout).await?;
    }
    times.ready_us = us(start);
    Ok(jid)
}

/// `Host` for the HTTP requests: the XMPP domain (a server with several hosts picks by it).
fn host_header(t: &Target) -> String {
    format!("{}:{}", t.domain, t.http_addr.port())
}

// ---- WebSocket -------------------------------------------------------------------------------

/// An XMPP session over a WebSocket.
pub struct WsConn {
    ws: WebSocketStream<TcpStream>,
    pub jid: String,
    /// Whether the server closed the stream or the WebSocket.
    pub closed: bool,
}

impl WsConn {
    /// Connects, upgrades to a WebSocket with the `xmpp` subprotocol and opens the stream;
    /// returns the session before authentication and its features.
    async fn open(
        t: &Target,
        n: u64,
        times: &mut LoginTimes,
        start: Instant,
    ) -> Result<(Self, Vec<u8>)> {
        let us = |s: Instant| s.elapsed().as_micros() as u64;
        let tcp = connect_tcp(t, t.http_addr, n).await?;
        times.connect_us = us(start);
        let url = format!("ws://{}{}", host_header(t), t.ws_path);
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::new("config", e.to_string()))?;
        let h = req.headers_mut();
        h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
        h.insert("X-Forwarded-Proto", HeaderValue::from_static("https"));
        // Small buffers: an idle run holds thousands of these (tungstenite reads into 128 KiB
        // by default).
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(8 << 20));
        let (ws, _resp) = tokio::time::timeout(
            t.step_timeout,
            tokio_tungstenite::client_async_with_config(req, tcp, Some(config)),
        )
        .await
        .map_err(|_| ClientError::new("timeout", "WebSocket upgrade"))?
        .map_err(|e| ClientError::new("ws-upgrade", e.to_string()))?;
        times.tls_us = us(start);
        let mut conn = WsConn {
            ws,
            jid: String::new(),
            closed: false,
        };
        let features = conn.restart(t).await?;
        Ok((conn, features))
    }

    /// A full login over WebSocket: upgrade, stream, SASL, restart, bind, presence, ping.
    pub async fn login(
        t: &Target,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> Result<(WsConn, LoginTimes)> {
        let start = Instant::now();
        let mut times = LoginTimes::default();
        let (mut conn, features) = Self::open(t, n, &mut times, start).await?;
        conn.jid = negotiate(
            &mut conn, t, n, &features, resource, opts, start, &mut times,
        )
        .await?;
        Ok((conn, times))
    }

    /// Ends the stream with `<close/>`, waits (bounded) for the server's, then closes the
    /// WebSocket.
    pub async fn close(mut self, wait: Duration) {
        if !self.closed {
            let close = Message::text(format!("<close xmlns='{NS_FRAMING}'/>"));
            if self.ws.send(close).await.is_ok() {
                let _ = tokio::time::timeout(wait, async {
                    while let Some(Ok(m)) = self.ws.next().await {
                        match m {
                            Message::Text(s) if scan::root_name(s.as_bytes()) == b"close" => break,
                            Message::Close(_) => break,
                            _ => {}
                        }
                    }
                })
                .await;
            }
        }
        let _ = tokio::time::timeout(wait, self.ws.close(None)).await;
        // Read until the server's close frame or the end of the connection.
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Reads and discards what the server sends (answering pings; WebSocket pings are
    /// answered by tungstenite while reading) until `stop`. False when the server ended the
    /// session first.
    pub async fn hold(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> bool {
        let mut alive = true;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                m = self.ws.next() => match m {
                    Some(Ok(Message::Text(s))) => {
                        let el = s.as_bytes();
                        match scan::root_name(el) {
                            b"iq" => {
                                let mut answer = Vec::new();
                                write_iq_answer(el, &mut answer);
                                if !answer.is_empty() {
                                    let msg = Message::text(String::from_utf8_lossy(&answer).into_owned());
                                    if self.ws.send(msg).await.is_err() {
                                        alive = false;
                                        break;
                                    }
                                }
                            }
                            b"close" | b"error" => {
                                self.closed = true;
                                alive = false;
                                break;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        self.closed = true;
                        alive = false;
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        self.close(crate::scenario::CLOSE_WAIT).await;
        alive
    }
}

impl Link for WsConn {
    async fn send(&mut self, els: &[String]) -> Result<()> {
        for el in els {
            self.ws
                .feed(Message::text(el.clone()))
                .await
                .map_err(|e| ClientError::new("io", e.to_string()))?;
        }
        self.ws
            .flush()
            .await
            .map_err(|e| ClientError::new("io", e.to_string()))
    }

    async fn next(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(until, self.ws.next())
                .await
                .map_err(|_| ClientError::new("timeout", "waiting for the server"))?;
            match m {
                Some(Ok(Message::Text(s))) => {
                    let el = s.as_bytes().trim_ascii();
                    if el.is_empty() {
                        continue;
                    }
                    if scan::root_name(el) == b"close" {
                        self.closed = true;
                        return Err(ClientError::new(
                            "stream-closed",
                            "server closed the stream",
                        ));
                    }
                    return Ok(el.to_vec());
                }
                Some(Ok(Message::Close(_))) | None => {
                    self.closed = true;
                    return Err(ClientError::new("eof", "server closed the WebSocket"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(ClientError::new("io", e.to_string()));
                }
            }
        }
    }

    async fn restart(&mut self, t: &Target) -> Result<Vec<u8>> {
        self.send(&[format!(
            "<open xmlns='{NS_FRAMING}' to='{}' version='1.0' xml:lang='en'/>",
            scan::escape(&t.domain)
        )])
        .await?;
        let mut opened = false;
        loop {
            let el = self.next(t.step_timeout).await?;
            match scan::root_name(&el) {
                b"open" => opened = true,
                b"features" if opened => return Ok(el),
                b"error" => return Err(ClientError::new("stream-error", stream_error_text(&el))),
                other => {
                    return Err(ClientError::new(
                        "protocol",
                        format!(
                            "expected <open/> and features, got {}",
                            String::from_utf8_lossy(other)
                        ),
                    ))
                }
            }
        }
    }
}

// ---- BOSH ------------------------------------------------------------------------------------

type Http = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection to the server's HTTP listener.
async fn http_connect(t: &Target, n: u64) -> Result<Http> {
    let tcp = connect_tcp(t, t.http_addr, n).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| ClientError::new("http", e.to_string()))?;
    // Runs the connection until the sender is dropped and the last response is read.
    tokio::spawn(conn);
    Ok(sender)
}

/// A BOSH response: the `<body>` start tag and its child elements.
pub struct BoshBody {
    pub tag: Vec<u8>,
    pub children: Vec<Vec<u8>>,
}

impl BoshBody {
    fn parse(bytes: &[u8]) -> Result<BoshBody> {
        let bad = |why: &str| ClientError::new("bosh-body", why.to_owned());
        // Past an XML declaration, if any.
        let mut rest = bytes.trim_ascii_start();
        if rest.starts_with(b"<?") {
            let end = rest
                .windows(2)
                .position(|w| w == b"?>")
                .ok_or_else(|| bad("unterminated XML declaration"))?;
            rest = rest[end + 2..].trim_ascii_start();
        }
        match scan::tokens(rest).next() {
            Some(scan::Token::Start {
                name: b"body",
                tag,
                empty: true,
            }) => {
                return Ok(BoshBody {
                    tag: tag.to_vec(),
                    children: Vec::new(),
                })
            }
            Some(scan::Token::Start { name: b"body", .. }) => {}
            _ => return Err(bad("the response is not a <body/>")),
        }
        let mut sc = StreamScanner::new();
        sc.push(rest);
        let mut body = BoshBody {
            tag: Vec::new(),
            children: Vec::new(),
        };
        loop {
            match sc.next_event().map_err(|e| bad(e.0))? {
                Some(Event::StreamOpen(r)) => body.tag = sc.slice(r).to_vec(),
                Some(Event::Element(r)) => body.children.push(sc.slice(r).to_vec()),
                Some(Event::StreamClose) | None => return Ok(body),
            }
        }
    }

    fn attr(&self, name: &[u8]) -> Option<String> {
        scan::tag_attr(&self.tag, name).map(|v| scan::unescape(v).into_owned())
    }

    /// An error for a `type='terminate'` body (the session is over).
    fn check(self) -> Result<BoshBody> {
        if self.attr(b"type").as_deref() == Some("terminate") {
            let cond = self.attr(b"condition").unwrap_or_default();
            return Err(ClientError::new(
                "bosh-terminate",
                format!("session terminated ({cond})"),
            ));
        }
        Ok(self)
    }
}

/// POSTs one body on `http` (or a new connection) and reads the response. Gives the
/// connection back for the next request when it can be reused.
pub async fn post(
    t: Arc<Target>,
    n: u64,
    http: Option<Http>,
    body: String,
) -> (Option<Http>, Result<BoshBody>) {
    let mut http = match http {
        Some(h) if !h.is_closed() => h,
        _ => match http_connect(&t, n).await {
            Ok(h) => h,
            Err(e) => return (None, Err(e)),
        },
    };
    let req = hyper::Request::post(t.bosh_path.as_str())
        .header(hyper::header::HOST, host_header(&t))
        .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header("X-Forwarded-Proto", "https")
        .body(Full::new(Bytes::from(body)));
    let req = match req {
        Ok(r) => r,
        Err(e) => return (Some(http), Err(ClientError::new("config", e.to_string()))),
    };
    let res = async {
        http.ready()
            .await
            .map_err(|e| ClientError::new("http", e.to_string()))?;
        let resp = http
            .send_request(req)
            .await
            .map_err(|e| ClientError::new("http", e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::new("http", e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::new(
                "http-status",
                format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            ));
        }
        BoshBody::parse(&bytes)?.check()
    }
    .await;
    let keep = res.is_ok() && !http.is_closed();
    (keep.then_some(http), res)
}

/// An XMPP session over BOSH: its `sid`, the next `rid`, idle HTTP connections, and
/// elements received but not yet read.
pub struct BoshConn {
    t: Arc<Target>,
    n: u64,
    pub sid: String,
    rid: u64,
    idle: Vec<Http>,
    queue: VecDeque<Vec<u8>>,
    pub jid: String,
}

impl BoshConn {
    /// The body of the next request (taking its `rid`): `attrs` added to the `<body>` tag,
    /// `payload` its content.
    pub fn body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        format!(
            "<body rid='{}' sid='{}' xmlns='{NS_HTTPBIND}'{attrs}>{payload}</body>",
            self.rid,
            scan::escape(&self.sid)
        )
    }

    /// A request for the scenario to run beside others: its body, and an idle connection.
    pub fn begin(
        &mut self,
        attrs: &str,
        payload: &str,
    ) -> impl Future<Output = (Option<Http>, Result<BoshBody>)> + Send + 'static {
        let body = self.body(attrs, payload);
        post(self.t.clone(), self.n, self.idle.pop(), body)
    }

    /// Gives a connection back after a request started with [`Self::begin`].
    pub fn finish(&mut self, http: Option<Http>) {
        if let Some(h) = http {
            self.idle.push(h);
        }
    }

    /// One request at a time: sends, waits for the response, queues its elements.
    async fn request(&mut self, attrs: &str, payload: &str) -> Result<()> {
        let (http, res) = self.begin(attrs, payload).await;
        self.finish(http);
        self.queue.extend(res?.children);
        Ok(())
    }

    /// A full login over BOSH: session creation, SASL, restart, bind, presence, ping.
    pub async fn login(
        t: &Arc<Target>,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> Result<(BoshConn, LoginTimes)> {
        let start = Instant::now();
        let us = |s: Instant| s.elapsed().as_micros() as u64;
        let mut times = LoginTimes::default();
        let http = http_connect(t, n).await?;
        times.connect_us = us(start);
        let rid: u64 = rand::random::<u32>() as u64 * 1000;
        let create = format!(
            "<body content='text/xml; charset=utf-8' hold='1' rid='{rid}' to='{}' ver='1.6' \
             wait='{BOSH_WAIT}' xml:lang='en' xmpp:version='1.0' xmlns='{NS_HTTPBIND}' \
             xmlns:xmpp='{NS_XBOSH}'/>",
            scan::escape(&t.domain)
        );
        let (http, res) = post(t.clone(), n, Some(http), create).await;
        let created = res?;
        let sid = created
            .attr(b"sid")
            .ok_or_else(|| ClientError::new("bosh", "no sid in the session creation response"))?;
        let mut conn = BoshConn {
            t: t.clone(),
            n,
            sid,
            rid,
            idle: Vec::new(),
            queue: created.children.into(),
            jid: String::new(),
        };
        conn.finish(http);
        times.tls_us = us(start);
        let features = conn.features(t.step_timeout).await?;
        conn.jid = negotiate(
            &mut conn, t, n, &features, resource, opts, start, &mut times,
        )
        .await?;
        Ok((conn, times))
    }

    async fn features(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        loop {
            let el = self.next(timeout).await?;
            match scan::root_name(&el) {
                b"features" => return Ok(el),
                b"error" => return Err(ClientError::new("stream-error", stream_error_text(&el))),
                _ => {}
            }
        }
    }

    /// Ends the session (`type='terminate'` with unavailable presence), bounded.
    pub async fn close(mut self, wait: Duration) {
        let body = self.body(
            " type='terminate'",
            "<presence type='unavailable' xmlns='jabber:client'/>",
        );
        let _ =
            tokio::time::timeout(wait, post(self.t.clone(), self.n, self.idle.pop(), body)).await;
    }
}

impl Link for BoshConn {
    async fn send(&mut self, els: &[String]) -> Result<()> {
        self.request("", &els.concat()).await
    }

    async fn next(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(el) = self.queue.pop_front() {
                return Ok(el);
            }
            // An empty request, held by the server until it has something.
            tokio::time::timeout_at(until, self.request("", ""))
                .await
                .map_err(|_| ClientError::new("timeout", "waiting for the server"))??;
        }
    }

    async fn restart(&mut self, t: &Target) -> Result<Vec<u8>> {
        self.queue.clear();
        let attrs = format!(
            " to='{}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='{NS_XBOSH}'",
            scan::escape(&t.domain)
        );
        self.request(&attrs, "").await?;
        self.features(t.step_timeout).await
    }
}

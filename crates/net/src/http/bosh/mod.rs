//! BOSH (XEP-0124) carrying XMPP (XEP-0206) at `<prefix>/http-bind`: the request handler,
//! the sessions, and the transport a client stream runs over.
//!
//! A BOSH session is an ordinary client stream: [`BoshTransport`] implements
//! [`StanzaTransport`] and [`crate::c2s::run`] drives it in a task of its own, so SASL,
//! binding, stream management (a session resumes on any transport), CSI and every module
//! behave as on TCP. The BOSH protocol itself (rid order and window, holding and answering
//! requests, pauses, inactivity, polling and request limits, terminate) is
//! [`session::Session`], a state machine without sockets or timers; the transport feeds it
//! the requests the handler passes on (through the session's channel in the
//! [`Registry`]), what the stream writes, and the time.
//!
//! The handler reads a request (`body::read`: the stream parser with the stream's limits),
//! creates a session for a request without `sid`, or hands the request to its session and
//! waits for the answer. Errors are HTTP 200 `type='terminate'` bodies with a condition
//! (XEP-0124 §17.2), except for what is not BOSH at all (§17.1: 400) and refusals before
//! any session (403 without TLS where it is required, 413 for an oversized body).

pub mod body;
pub mod session;

use super::{refuse, Connection, HttpContext};
use crate::c2s;
use crate::transport::{Received, StanzaTransport, UpgradeError};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use body::{terminal, Condition, ReadError, Request};
use bytes::Bytes;
use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::settings::{Place, Section};
use rookery_sasl::ChannelBindings;
use rookery_xml::{Framing, StreamEvent};
use serde::{Deserialize, Serialize};
use session::{End, Params, Session, Ticket};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where the endpoint is, under `[http] path_prefix` (the path Prosody, ejabberd and
/// Openfire use, which clients try first).
pub const PATH: &str = "/http-bind";
/// The BOSH version spoken (XEP-0124 §7.2 `ver`: the lower of the client's and this).
pub const VERSION: &str = "1.11";
/// What a request body may hold beyond one stanza: the `<body/>` wrapper and its attributes.
pub const BODY_OVERHEAD: usize = 4096;
/// The output kept for a session with no request held, in stanzas of the largest size
/// (`limits.max_stanza_bytes`): a few full stanzas between two requests, no more.
pub const BUFFER_FACTOR: usize = 4;
/// How long a stream that ended waits for the client's next request to tell it so
/// (within the two seconds `c2s::run` gives a closing transport).
const FINAL_BODY_WAIT: Duration = Duration::from_millis(1500);

/// `[bosh]`: the BOSH sessions' terms and limits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BoshConfig {
    /// Longest a request is held (a client's `wait` is capped to it, and to five seconds
    /// less than `[http] request_timeout_secs`).
    pub max_wait_secs: u64,
    /// Most requests held at once (a client's `hold` is capped to it; `requests` is one more).
    pub max_hold: u64,
    /// Seconds with no request held after which a session is considered gone (its stream
    /// then ends as a dropped connection: stream management may keep it for resumption).
    pub inactivity_secs: u64,
    /// Shortest interval between empty requests with none held (`policy-violation` below).
    pub polling_secs: u64,
    /// Longest pause a client may ask for (0: none).
    pub max_pause_secs: u64,
    /// BOSH sessions per client address.
    pub sessions_per_ip: usize,
    /// BOSH sessions in total.
    pub max_sessions: usize,
}

impl Default for BoshConfig {
    fn default() -> Self {
        BoshConfig {
            max_wait_secs: 50,
            max_hold: 1,
            inactivity_secs: 60,
            polling_secs: 2,
            max_pause_secs: 120,
            sessions_per_ip: 10,
            max_sessions: 10_000,
        }
    }
}

impl Section for BoshConfig {
    const KEY: &'static str = "bosh";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# BOSH (XEP-0124, XEP-0206) at <path_prefix>/http-bind on the HTTP listeners.
[bosh]
# Longest a request is held, in seconds (a client's wait is capped to it, and to five
# seconds less than [http] request_timeout_secs).
max_wait_secs = 50
# Most requests held at once (a client's hold is capped to it).
max_hold = 1
# Seconds with no request held after which the client is considered gone (its session
# ends like a dropped connection; stream management may keep it for resumption).
inactivity_secs = 60
# Shortest interval between empty requests when none is held (policy-violation below).
polling_secs = 2
# Longest pause a client may ask for, in seconds (0: none).
max_pause_secs = 120
# BOSH sessions per client address, and in total.
sessions_per_ip = 10
max_sessions = 10000
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, value, min, max) in [
            ("max_wait_secs", self.max_wait_secs, 1, 3600),
            ("max_hold", self.max_hold, 0, 16),
            ("inactivity_secs", self.inactivity_secs, 1, 86_400),
            ("polling_secs", self.polling_secs, 0, 3600),
            ("max_pause_secs", self.max_pause_secs, 0, 86_400),
            ("sessions_per_ip", self.sessions_per_ip as u64, 1, u64::MAX),
            ("max_sessions", self.max_sessions as u64, 1, u64::MAX),
        ] {
            if value < min || value > max {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    format!("between {min} and {max}"),
                ));
            }
        }
        Ok(())
    }
}

/// A request on its way to its session, with where its answer goes.
pub struct Incoming {
    req: Request,
    reply: oneshot::Sender<Bytes>,
}

/// The BOSH sessions of the server: their ids, the channel to each, the count per address.
pub struct Registry {
    config: BoshConfig,
    /// The longest `wait` granted: `max_wait_secs`, within the request time limit.
    max_wait: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, (mpsc::Sender<Incoming>, IpAddr)>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A session's place in the [`Registry`], given back when dropped.
pub struct Slot {
    registry: Arc<Registry>,
    sid: String,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock();
        inner.sessions.remove(&self.sid);
        if let Some(n) = inner.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Registry {
    /// `request_timeout_secs`: `[http]`'s, which bounds every request, held ones too.
    pub fn new(config: BoshConfig, request_timeout_secs: u64) -> Self {
        let max_wait = config
            .max_wait_secs
            .min(request_timeout_secs.saturating_sub(5).max(1));
        Registry {
            config,
            max_wait,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn config(&self) -> &BoshConfig {
        &self.config
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new session for a client at `ip`, within the limits: its id, its place and the
    /// receiving end of its channel.
    fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        capacity: usize,
    ) -> Option<(Slot, mpsc::Receiver<Incoming>)> {
        let mut inner = self.inner.lock();
        let count = inner.per_ip.get(&ip).copied().unwrap_or(0);
        if inner.sessions.len() >= self.config.max_sessions || count >= self.config.sessions_per_ip
        {
            return None;
        }
        // XEP-0124 §20.3: a session id nobody can guess.
        let sid = rookery_stanza::random_id(32);
        let (tx, rx) = mpsc::channel(capacity);
        inner.sessions.insert(sid.clone(), (tx, ip));
        *inner.per_ip.entry(ip).or_default() += 1;
        Some((
            Slot {
                registry: self.clone(),
                sid,
                ip,
            },
            rx,
        ))
    }

    fn sender(&self, sid: &str) -> Option<mpsc::Sender<Incoming>> {
        self.inner
            .lock()
            .sessions
            .get(sid)
            .map(|(tx, _)| tx.clone())
    }

    /// Ends a session from outside (a bad request for it): its channel closes, so its
    /// stream ends as a dropped connection.
    fn remove(&self, sid: &str) {
        self.inner.lock().sessions.remove(sid);
    }
}

/// An answer to a BOSH request: HTTP 200 with a `<body/>` (XEP-0124 §5).
fn xml(body: impl Into<Bytes>) -> Response {
    let mut r = (StatusCode::OK, body.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    // A held request's answer is never to be reused by a cache.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A terminal binding condition for a request outside any session (§17.2).
fn fail(condition: Condition) -> Response {
    counters::incr(Counter::HttpRefused);
    xml(terminal(condition))
}

/// `POST <prefix>/http-bind`: one BOSH request.
pub async fn request(
    State(ctx): State<Arc<HttpContext>>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let server = &ctx.streams.server;
    let limits = &server.config().limits;
    if bytes.len() > limits.max_stanza_bytes + BODY_OVERHEAD {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let xml_limits = limits.xml();
    let req = match body::read(&bytes, xml_limits) {
        Ok(r) => r,
        Err(ReadError::NotBosh(e)) => {
            tracing::debug!(error = %e, "not a BOSH request");
            return refuse(StatusCode::BAD_REQUEST, "not a BOSH request (XEP-0124)");
        }
        Err(ReadError::Bad { error, sid }) => {
            tracing::debug!(%error, "bad BOSH request");
            if let Some(sid) = sid {
                ctx.streams.bosh.remove(&sid);
            }
            return fail(Condition::BadRequest);
        }
    };
    let client = ctx.client(&conn, &headers);
    match req.sid.clone() {
        None => create(&ctx, client, req).await,
        Some(sid) => forward(&ctx.streams.bosh, &sid, req).await,
    }
}

/// A session creation request (XEP-0124 §7.1, XEP-0206 §3).
async fn create(ctx: &Arc<HttpContext>, client: super::Client, req: Request) -> Response {
    let streams = &ctx.streams;
    let server = &streams.server;
    // As a WebSocket: no stream (and no authentication) in the clear where TLS is required.
    if !client.secure && server.config().tls.require_starttls {
        return refuse(StatusCode::FORBIDDEN, "BOSH needs TLS here: use https");
    }
    let to = req.to.as_deref().unwrap_or("").to_ascii_lowercase();
    if to.is_empty() {
        return fail(Condition::ImproperAddressing);
    }
    if server.host(&to).is_none() {
        return fail(Condition::HostUnknown);
    }
    let registry = &streams.bosh;
    let config = registry.config();
    let hold = req.hold.unwrap_or(1).min(config.max_hold) as usize;
    let Some((slot, rx)) = registry.open(client.addr.ip(), hold + 3) else {
        tracing::warn!(peer = %client.addr, "BOSH session refused: session limit reached");
        counters::incr(Counter::ConnectionsRefused);
        return fail(Condition::PolicyViolation);
    };
    let max_buffer = server
        .config()
        .limits
        .max_stanza_bytes
        .saturating_mul(BUFFER_FACTOR);
    let params = Params {
        wait: req.wait.unwrap_or(registry.max_wait).min(registry.max_wait),
        hold,
        inactivity: config.inactivity_secs,
        polling: config.polling_secs,
        maxpause: config.max_pause_secs,
        ack: req.ack == Some(1),
        max_buffer,
        ver: lower_version(req.ver.as_deref()),
    };
    tracing::debug!(peer = %client.addr, sid = %slot.sid, wait = params.wait, hold, "BOSH session");
    let (reply, answer) = oneshot::channel();
    let session = Session::new(params, slot.sid.clone(), 0, req, Instant::now());
    let transport = BoshTransport {
        session,
        rx,
        replies: HashMap::from([(0, reply)]),
        next_ticket: 1,
        peer: client.addr,
        confidential: client.secure,
        arrived: false,
        _slot: slot,
    };
    server.tasks().spawn(c2s::run(streams.clone(), transport));
    match answer.await {
        Ok(body) => xml(body),
        Err(_) => fail(Condition::InternalServerError),
    }
}

/// A request for an existing session: handed to it, its answer awaited.
async fn forward(registry: &Registry, sid: &str, req: Request) -> Response {
    let Some(tx) = registry.sender(sid) else {
        return fail(Condition::ItemNotFound);
    };
    let (reply, answer) = oneshot::channel();
    match tx.try_send(Incoming { req, reply }) {
        Ok(()) => {}
        // More requests than the session's window could ever hold.
        Err(mpsc::error::TrySendError::Full(_)) => return fail(Condition::PolicyViolation),
        Err(mpsc::error::TrySendError::Closed(_)) => return fail(Condition::ItemNotFound),
    }
    match answer.await {
        Ok(body) => xml(body),
        // The session ended without answering: it no longer exists (§9.4).
        Err(_) => fail(Condition::ItemNotFound),
    }
}

/// §7.2: the lower of the client's version and ours (majors and minors compared as numbers).
fn lower_version(client: Option<&str>) -> String {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    match client.and_then(parse) {
        Some(c) if parse(VERSION).is_some_and(|ours| c < ours) => format!("{}.{}", c.0, c.1),
        _ => VERSION.to_owned(),
    }
}

/// A client stream over a BOSH session.
pub struct BoshTransport {
    session: Session,
    rx: mpsc::Receiver<Incoming>,
    /// Where the answers to the requests the session holds go.
    replies: HashMap<Ticket, oneshot::Sender<Bytes>>,
    next_ticket: Ticket,
    peer: SocketAddr,
    confidential: bool,
    /// A request came since the last `receive` (a sign of life for the stream).
    arrived: bool,
    _slot: Slot,
}

impl BoshTransport {
    fn on_incoming(&mut self, inc: Incoming) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.replies.insert(ticket, inc.reply);
        self.session.on_request(ticket, inc.req, Instant::now());
        self.arrived = true;
        self.flush();
    }

    /// Sends the session's answers to the requests waiting for them.
    fn flush(&mut self) {
        for (ticket, body) in self.session.take_responses() {
            if let Some(reply) = self.replies.remove(&ticket) {
                // The HTTP request may have given up (its time limit); the client repeats
                // the rid and gets the kept response.
                let _ = reply.send(body);
            }
        }
    }
}

impl StanzaTransport for BoshTransport {
    fn framing(&self) -> Framing {
        Framing::Bosh
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn is_confidential(&self) -> bool {
        self.confidential
    }

    /// TLS is HTTPS's; XEP-0206 §8 has no STARTTLS.
    fn can_upgrade(&self) -> bool {
        false
    }

    /// A session spans many HTTP connections: none of them is the channel to bind to.
    fn channel_bindings(&self) -> ChannelBindings {
        ChannelBindings::none()
    }

    async fn readable(&mut self) -> io::Result<()> {
        loop {
            if self.arrived || self.session.has_events() || self.session.end().is_some() {
                return Ok(());
            }
            let deadline = self.session.deadline();
            // Cancel-safe: a request is taken from the channel and handled in one step.
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(inc) => self.on_incoming(inc),
                    None => return Err(io::Error::other("the BOSH session was removed")),
                },
                _ = sleep_until(deadline) => {
                    self.session.on_timer(Instant::now());
                    self.flush();
                }
            }
        }
    }

    fn receive(&mut self, events: &mut Vec<StreamEvent>) -> Received {
        if matches!(self.session.end(), Some(End::Inactive | End::Violation(_))) {
            return Received::Closed;
        }
        let bytes = self.session.take_events(events);
        let arrived = std::mem::take(&mut self.arrived);
        if events.is_empty() && !arrived {
            return Received::Nothing;
        }
        Received::Events {
            bytes,
            parsed: Ok(()),
        }
    }

    fn restart(&mut self) {
        self.session.restart();
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let r = self.session.on_output(bytes, Instant::now());
        self.flush();
        r.map_err(|_| {
            counters::incr(Counter::SendQueueOverflows);
            io::Error::other("output for a BOSH client that makes no requests")
        })
    }

    async fn upgrade_tls(&mut self) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unsupported)
    }

    /// A stream the server ended with no request held: the client's next request gets the
    /// `type='terminate'` body (XEP-0124 §13), if it comes soon.
    async fn close(&mut self) {
        self.flush();
        if self.session.end() != Some(End::StreamClosed) {
            return;
        }
        let deadline = Instant::now() + FINAL_BODY_WAIT;
        while self.replies.is_empty() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(inc)) => self.on_incoming(inc),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = self.session.take_final_body();
    }
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_lower_one() {
        assert_eq!(lower_version(Some("1.6")), "1.6");
        assert_eq!(lower_version(Some("1.11")), "1.11");
        assert_eq!(lower_version(Some("2.0")), "1.11");
        assert_eq!(lower_version(Some("junk")), "1.11");
        assert_eq!(lower_version(None), "1.11");
    }

    #[test]
    fn sessions_are_limited_per_address_and_in_total() {
        let registry = Arc::new(Registry::new(
            BoshConfig {
                sessions_per_ip: 2,
                max_sessions: 3,
                ..BoshConfig::default()
            },
            60,
        ));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let s1 = registry.open(a, 2).expect("first");
        let _s2 = registry.open(a, 2).expect("second");
        assert!(registry.open(a, 2).is_none(), "per address");
        let _s3 = registry.open(b, 2).expect("another address");
        assert!(registry.open(b, 2).is_none(), "in total");
        assert!(registry.sender(&s1.0.sid).is_some());
        let sid = s1.0.sid.clone();
        drop(s1);
        assert!(registry.sender(&sid).is_none());
        assert!(registry.open(a, 2).is_some(), "a place given back");
    }

    #[test]
    fn the_wait_stays_within_the_request_time_limit() {
        let r = Registry::new(BoshConfig::default(), 30);
        assert_eq!(r.max_wait, 25);
        let r = Registry::new(BoshConfig::default(), 600);
        assert_eq!(r.max_wait, 50);
    }

    #[test]
    fn the_section_is_checked() {
        BoshConfig::default().validate("bosh").expect("defaults");
        let e = BoshConfig {
            max_hold: 17,
            ..BoshConfig::default()
        }
        .validate("bosh")
        .expect_err("refused");
        assert!(e.to_string().contains("bosh.max_hold"), "{e}");
    }
}

//! One client-to-server connection (RFC 6120): stream negotiation (STARTTLS, SASL, resource
//! binding), then stanzas in from the socket to the core's router, and stanzas out from the
//! session's queue to the socket. One task per connection; nothing here blocks another
//! connection.

use crate::csi::ClientState;
use crate::limits::{AuthThrottle, ConnectionPermit, TokenBucket};
use crate::sm::{self, Detached, ResumeError, Resumptions, StreamState, TakeoverReceiver};
use crate::tls::{TlsConfigs, TlsContext};
use crate::transport::{ReadNow, Transport};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rookery_core::config::ListenerKind;
use rookery_core::counters::{self, Counter};
use rookery_core::events::SessionBound;
use rookery_core::{
    Host, Outgoing, PreAuthHandler, PreAuthRequest, Server, SessionHandle, SessionInbox,
};
use rookery_sasl::{ChannelBindings, Mechanism, SaslError, ServerSession, Step};
use rookery_stanza::{
    error_reply, iq_result, ns, random_id, BareJid, FullJid, IqType, StanzaError,
    StanzaErrorCondition, StreamErrorCondition,
};
use rookery_xml::{Element, Limits, StreamEvent, StreamHeader, StreamParser};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

mod sasl2;
use sasl2::NS_SASL2;

/// Bytes read from the socket at once, into a stack buffer lent for the read only (an idle
/// connection holds none); stanzas larger than it are assembled by the parser.
const READ_BUFFER: usize = 4096;
/// Output buffer capacity kept between writes; anything larger is freed after the flush.
const OUT_BUFFER_KEEP: usize = 512;
/// Stanzas written in one batch before flushing (one syscall for a burst of deliveries).
const WRITE_BATCH: usize = 64;
/// A client that accepts none of our bytes for this long is gone or hostile: the connection
/// is dropped rather than holding its task and buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to answer the liveness check sent after its idle time (or the
/// idle time itself, if shorter).
const LIVENESS_GRACE: Duration = Duration::from_secs(60);

/// What every connection on one listener shares.
pub struct ListenerContext {
    pub server: Arc<Server>,
    pub tls: TlsContext,
    pub kind: ListenerKind,
    pub throttle: Arc<AuthThrottle>,
    /// Sessions that can be resumed (XEP-0198), shared by every listener.
    pub resumptions: Arc<Resumptions>,
}

/// How far the stream has come (RFC 6120 §4.3 negotiation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before TLS on a STARTTLS port.
    Plain,
    /// TLS up (or not required), not authenticated.
    Unauthenticated,
    /// Authenticated, no resource bound.
    Authenticated,
    /// Resource bound: stanzas flow.
    Bound,
}

/// Why the stream ends.
enum Close {
    /// Send this stream error, then close.
    Error(StreamErrorCondition, Option<String>),
    /// The client closed its stream: answer with ours.
    Graceful,
    /// The socket is gone: nothing more can be written.
    Dropped,
    /// Send this stream error with an application-specific condition element, then close.
    ErrorWith(StreamErrorCondition, Element),
    /// Another connection resumes this session (XEP-0198 §5): hand it over, then close.
    TakenOver(sm::TakeoverRequest),
    /// The client went silent and did not answer the liveness check: `connection-timeout`,
    /// but a resumable session is kept as if the connection had dropped.
    IdleTimeout,
}

impl Close {
    fn err(c: StreamErrorCondition) -> Self {
        Close::Error(c, None)
    }
    fn err_text(c: StreamErrorCondition, t: impl Into<String>) -> Self {
        Close::Error(c, Some(t.into()))
    }
}

/// The SASL exchange in progress, as the failure log line and the throttle see it.
struct AuthAttempt {
    mechanism: &'static str,
    /// The account name the client gave, as `user@domain` (the prepared JID when the name
    /// makes one, else what was sent); `None` until the client's message named one.
    user: Option<String>,
    /// That account, when the name is a valid JID: the throttle's per-account key.
    account: Option<BareJid>,
}

/// What processing one top-level element asks the read loop to do next.
enum Next {
    Continue,
    /// Discard the rest of what was read and expect a new stream header (after TLS or SASL).
    Restart,
}

struct Connection {
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
    io: Option<Transport>,
    parser: StreamParser,
    out: Vec<u8>,
    stage: Stage,
    header_sent: bool,
    /// The domain this stream is for (from the first header's `to`).
    host: Option<Arc<Host>>,
    channel_bindings: ChannelBindings,
    sasl: Option<ServerSession>,
    /// Remembered across the exchange's messages: a SCRAM exchange fails on the client-final
    /// message, which no longer carries the name.
    auth_attempt: Option<AuthAttempt>,
    auth_attempts: u32,
    user: Option<BareJid>,
    session: Option<Arc<SessionHandle>>,
    inbox: Option<SessionInbox>,
    /// Stream management, once the client enabled it or resumed.
    sm: Option<StreamState>,
    /// Where a resuming connection asks for this session (resumable sessions only).
    takeover: Option<TakeoverReceiver>,
    /// Client state indication (XEP-0352): what is held while the client is inactive.
    csi: ClientState,
    /// The SASL2 `<authenticate/>` of the exchange in progress (XEP-0388), with its inline
    /// requests; `None` for legacy SASL.
    sasl2: Option<Element>,
    /// The FAST token this exchange authenticated with (mechanism, token, expiry).
    fast_used: Option<(rookery_sasl::ht::HtMechanism, String, u64)>,
    /// When the client last sent anything (for the idle timeout once bound).
    last_read: Instant,
    /// Input pacing (bytes and stanzas per second).
    bytes_bucket: TokenBucket,
    stanzas_bucket: TokenBucket,
    /// When the connection first went over its rate, if it still is.
    throttled_since: Option<Instant>,
    _permit: ConnectionPermit,
}

/// Runs one accepted connection to its end.
pub async fn run(
    ctx: Arc<ListenerContext>,
    socket: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
) {
    let limits = &ctx.server.config().limits;
    let parser = StreamParser::new(Limits {
        max_stanza_bytes: limits.max_stanza_bytes,
        max_depth: limits.max_depth,
        max_attributes: limits.max_attributes,
        max_attribute_bytes: limits.max_attribute_bytes,
        ..Limits::default()
    });
    let handshake_limit = Duration::from_secs(limits.tls_handshake_timeout_secs);
    let bytes_bucket =
        TokenBucket::new(limits.max_bytes_per_second, limits.max_bytes_per_second * 2);
    let stanzas_bucket = TokenBucket::new(
        limits.max_stanzas_per_second,
        limits.max_stanzas_per_second * 2,
    );
    let (io, stage, tls_configs) = match ctx.kind {
        ListenerKind::C2s => {
            let stage = if ctx.server.config().tls.require_starttls {
                Stage::Plain
            } else {
                Stage::Unauthenticated
            };
            (Transport::Plain(socket), stage, None)
        }
        ListenerKind::C2sDirectTls => {
            let configs = ctx.tls.current();
            let acceptor = tokio_rustls::TlsAcceptor::from(configs.direct.clone());
            let shutdown = ctx.server.shutdown_token();
            match handshake(acceptor.accept(socket), handshake_limit, shutdown).await {
                Ok(tls) => (
                    Transport::Tls(Box::new(tls)),
                    Stage::Unauthenticated,
                    Some(configs),
                ),
                Err(why) => {
                    tracing::debug!(%peer, why, "TLS handshake did not complete");
                    counters::incr(Counter::TlsHandshakeFailures);
                    return;
                }
            }
        }
    };
    let mut conn = Connection {
        channel_bindings: ChannelBindings::default(),
        ctx,
        peer,
        io: Some(io),
        parser,
        out: Vec::new(),
        stage,
        header_sent: false,
        host: None,
        sasl: None,
        auth_attempt: None,
        auth_attempts: 0,
        user: None,
        session: None,
        inbox: None,
        sm: None,
        takeover: None,
        csi: ClientState::default(),
        sasl2: None,
        fast_used: None,
        last_read: Instant::now(),
        bytes_bucket,
        stanzas_bucket,
        throttled_since: None,
        _permit: permit,
    };
    if let Some(configs) = tls_configs {
        conn.update_channel_bindings(&configs);
    }
    tracing::debug!(%peer, tls = conn.is_tls(), "client connected");
    let close = conn.serve().await;
    conn.finish(close).await;
}

/// A TLS handshake bounded in time and abandoned at shutdown.
async fn handshake<T>(
    accept: impl std::future::Future<Output = std::io::Result<T>>,
    limit: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<T, String> {
    tokio::select! {
        r = tokio::time::timeout(limit, accept) => match r {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        },
        _ = shutdown.cancelled() => Err("server shutting down".into()),
    }
}

/// What one read from the socket gave.
enum ReadOutcome {
    /// End of stream or an error: the connection is gone.
    Closed,
    /// Nothing to read after all (a spurious wake-up, or TLS records not complete yet);
    /// `again` when the TLS layer asked to be polled again without a socket event.
    Nothing { again: bool },
    /// `n` bytes fed to the parser; `full` when the buffer was filled (more may wait).
    Read {
        n: usize,
        full: bool,
        fed: Result<(), rookery_xml::XmlError>,
    },
}

/// Resolves when the socket is readable, or at once when a previous read may have left
/// decrypted bytes behind.
async fn readable_or_now(io: &Transport, more_buffered: bool) -> std::io::Result<()> {
    if more_buffered {
        return Ok(());
    }
    io.readable().await
}

/// Waits on an optional session inbox; pending forever when there is none.
async fn next_outgoing(inbox: &mut Option<SessionInbox>) -> Option<Box<Outgoing>> {
    match inbox {
        Some(inbox) => inbox.stanzas.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for a resuming connection's request; pending forever when not resumable.
async fn takeover_request(takeover: &mut Option<TakeoverReceiver>) -> Option<sm::TakeoverRequest> {
    match takeover {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn kicked(session: &Option<Arc<SessionHandle>>) -> (StreamErrorCondition, String) {
    match session {
        Some(handle) => handle.kicked().await,
        None => std::future::pending().await,
    }
}

impl Connection {
    fn server(&self) -> &Arc<Server> {
        &self.ctx.server
    }

    fn is_tls(&self) -> bool {
        self.io.as_ref().is_some_and(Transport::is_tls)
    }

    /// `configs`: those the handshake used (not the current ones, which a reload may have
    /// replaced since).
    fn update_channel_bindings(&mut self, configs: &TlsConfigs) {
        if let Some(Transport::Tls(tls)) = &self.io {
            self.channel_bindings = configs.channel_bindings(tls.get_ref().1);
        }
    }

    /// The read/write loop; returns why the stream ended.
    async fn serve(&mut self) -> Close {
        let mut events = Vec::new();
        // TLS may hold decrypted bytes the socket no longer signals (e.g. data that came with
        // the end of the handshake): read at once before waiting on readiness.
        let mut more_buffered = true;
        let shutdown = self.server().shutdown_token().clone();
        let deadline = Instant::now()
            + Duration::from_secs(self.server().config().limits.unauthenticated_timeout_secs);
        let grace = Duration::from_secs(self.server().config().limits.rate_limit_grace_secs);
        // While over its rate the connection is not read (TCP pushes back on the sender);
        // stanzas for it are still written.
        let mut resume_reading = Instant::now();
        let idle = Duration::from_secs(self.server().config().limits.idle_timeout_secs);
        // One timer for the life of the connection, re-armed only when it fires: reads
        // just record the time, so an active client costs no timer work per read.
        let idle_check = tokio::time::sleep(idle);
        tokio::pin!(idle_check);
        let mut probed = false;
        loop {
            let Some(io) = self.io.as_mut() else {
                return Close::Dropped;
            };
            let bound = self.stage == Stage::Bound;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Close::err(StreamErrorCondition::SystemShutdown);
                }
                (cond, text) = kicked(&self.session) => {
                    return Close::Error(cond, Some(text));
                }
                req = takeover_request(&mut self.takeover) => {
                    match req {
                        Some(req) => return Close::TakenOver(req),
                        None => self.takeover = None,
                    }
                }
                first = next_outgoing(&mut self.inbox) => {
                    let Some(first) = first else { return Close::Dropped };
                    let mut receipts = Vec::new();
                    self.offer_outgoing(first, &mut receipts);
                    for _ in 1..WRITE_BATCH {
                        match self.inbox.as_mut().map(|i| i.stanzas.try_recv()) {
                            Some(Ok(o)) => self.offer_outgoing(o, &mut receipts),
                            _ => break,
                        }
                    }
                    if self.sm.as_mut().is_some_and(StreamState::should_request) {
                        self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
                    }
                    if self.flush().await.is_err() {
                        return Close::Dropped;
                    }
                    if self.sm.as_ref().is_some_and(|s| s.unacked_len() > self.server().config().stream_management.max_unacked_stanzas) {
                        return Close::err_text(
                            StreamErrorCondition::PolicyViolation,
                            "too many stanzas left unacknowledged",
                        );
                    }
                    for r in receipts {
                        let _ = r.send(());
                    }
                }
                _ = tokio::time::sleep_until(resume_reading), if resume_reading > Instant::now() => {}
                ready = readable_or_now(io, more_buffered), if resume_reading <= Instant::now() => {
                    if ready.is_err() {
                        return Close::Dropped;
                    }
                    let (n, fed) = match self.read_available(&mut events) {
                        ReadOutcome::Closed => return Close::Dropped,
                        ReadOutcome::Nothing { again } => {
                            more_buffered = again;
                            if again {
                                // Let other tasks run before polling TLS again.
                                tokio::task::yield_now().await;
                            }
                            continue;
                        }
                        ReadOutcome::Read { n, full, fed } => {
                            more_buffered = full;
                            (n, fed)
                        }
                    };
                    let now = Instant::now();
                    self.last_read = now;
                    let wait = self
                        .bytes_bucket
                        .charge(n as u64, now.into_std())
                        .max(self.stanzas_bucket.charge(events.len() as u64, now.into_std()));
                    if wait.is_zero() {
                        self.throttled_since = None;
                    } else {
                        let since = *self.throttled_since.get_or_insert_with(|| {
                            counters::incr(Counter::RateLimited);
                            tracing::warn!(peer = %self.peer, "input rate limit reached: pausing reads");
                            now
                        });
                        if now.duration_since(since) > grace {
                            return Close::err_text(
                                StreamErrorCondition::PolicyViolation,
                                "sending too fast for too long",
                            );
                        }
                        resume_reading = now + wait;
                    }
                    let mut restarted = false;
                    for ev in events.drain(..) {
                        match self.on_event(ev).await {
                            Ok(Next::Continue) => {}
                            Ok(Next::Restart) => {
                                restarted = true;
                                break;
                            }
                            Err(close) => return close,
                        }
                    }
                    if self.flush().await.is_err() {
                        return Close::Dropped;
                    }
                    if restarted {
                        // Anything the client sent after <starttls/> or <auth/> in the same
                        // read was sent before it could know the outcome: discard it
                        // (RFC 6120 §5.4.3.3, the STARTTLS command-injection rule).
                        events.clear();
                        self.parser.reset();
                        more_buffered = true;
                        continue;
                    }
                    if let Err(e) = fed {
                        let cond = StreamErrorCondition::from_name(e.stream_condition())
                            .unwrap_or(StreamErrorCondition::NotWellFormed);
                        return Close::err_text(cond, e.to_string());
                    }
                }
                _ = &mut idle_check, if bound => {
                    let now = Instant::now();
                    if now.duration_since(self.last_read) < idle {
                        probed = false;
                        idle_check.as_mut().reset(self.last_read + idle);
                    } else if !probed {
                        // XEP-0478 / RFC 6120 §4.6: check liveness before giving up.
                        probed = true;
                        self.liveness_probe();
                        if self.flush().await.is_err() {
                            return Close::Dropped;
                        }
                        idle_check.as_mut().reset(now + LIVENESS_GRACE.min(idle));
                    } else {
                        return Close::IdleTimeout;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !bound => {
                    counters::incr(Counter::UnauthenticatedTimeouts);
                    return Close::err_text(
                        StreamErrorCondition::ConnectionTimeout,
                        "authentication took too long",
                    );
                }
            }
        }
    }

    /// Reads what is available into a buffer that lives only for this call (so an idle
    /// connection holds no read buffer) and feeds it to the parser.
    fn read_available(&mut self, events: &mut Vec<StreamEvent>) -> ReadOutcome {
        let Some(io) = self.io.as_mut() else {
            return ReadOutcome::Closed;
        };
        let mut buf = [0u8; READ_BUFFER];
        match io.read_now(&mut buf) {
            ReadNow::Eof | ReadNow::Error(_) => ReadOutcome::Closed,
            ReadNow::Wait => ReadOutcome::Nothing { again: false },
            ReadNow::Again => ReadOutcome::Nothing { again: true },
            ReadNow::Data(n) => ReadOutcome::Read {
                n,
                full: n == buf.len(),
                fed: self.parser.feed(&buf[..n], events),
            },
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        let r = tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(&self.out).await?;
            io.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client is not reading",
            ))
        });
        self.out.clear();
        if self.out.capacity() > OUT_BUFFER_KEEP {
            // An idle session keeps no more than a small buffer: the next batch allocates
            // once (cheap next to the write itself).
            self.out = Vec::new();
        }
        r
    }

    /// Ends the stream as `close` says, then releases the session.
    async fn finish(mut self, close: Close) {
        match &close {
            Close::Error(StreamErrorCondition::PolicyViolation, _) => {
                counters::incr(Counter::PolicyViolations)
            }
            Close::Error(
                cond @ (StreamErrorCondition::NotWellFormed
                | StreamErrorCondition::InvalidXml
                | StreamErrorCondition::RestrictedXml
                | StreamErrorCondition::InvalidNamespace
                | StreamErrorCondition::UnsupportedStanzaType),
                text,
            ) => {
                counters::incr(Counter::BadXml);
                // Why, at info: the counter alone tells an operator nothing. The parser's
                // message, never the input itself.
                let error: String = text.as_deref().unwrap_or("-").chars().take(200).collect();
                tracing::info!(
                    addr = %self.peer.ip().to_canonical(),
                    condition = %cond,
                    error = ?error,
                    "stream closed for bad XML"
                );
            }
            Close::IdleTimeout => counters::incr(Counter::IdleTimeouts),
            _ => {}
        }
        let close = match close {
            Close::Error(cond, text) => {
                tracing::debug!(peer = %self.peer, condition = %cond, "closing stream with error");
                self.write_stream_error(cond, text.as_deref(), None);
                Close::Graceful
            }
            Close::ErrorWith(cond, app) => {
                self.write_stream_error(cond, None, Some(&app));
                Close::Graceful
            }
            Close::IdleTimeout => {
                self.write_stream_error(
                    StreamErrorCondition::ConnectionTimeout,
                    Some("no answer to the liveness check"),
                    None,
                );
                Close::IdleTimeout
            }
            Close::TakenOver(req) => {
                // Hand the session over before spending any time on this dead connection.
                if let Some(d) = self.detach() {
                    let _ = req.send(d);
                }
                self.write_stream_error(
                    StreamErrorCondition::Conflict,
                    Some("the session was resumed on another connection"),
                    None,
                );
                Close::Graceful
            }
            Close::Graceful => {
                self.out.extend_from_slice(b"</stream:stream>");
                Close::Graceful
            }
            Close::Dropped => Close::Dropped,
        };
        if !matches!(close, Close::Dropped) {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = self.flush().await;
                if let Some(io) = self.io.as_mut() {
                    let _ = io.shutdown().await;
                }
            })
            .await;
        }
        let resumable = matches!(close, Close::Dropped | Close::IdleTimeout)
            && self.sm.as_ref().is_some_and(|s| s.id.is_some());
        if let Some(detached) = resumable.then(|| self.detach()).flatten() {
            let server = self.server().clone();
            let resumptions = self.ctx.resumptions.clone();
            server
                .tasks()
                .spawn(sm::park(server.clone(), resumptions, detached));
        } else if let (Some(handle), Some(host)) = (self.session.take(), self.host.clone()) {
            let held = self.csi.take_all().into();
            let (mut inbox, mut state) = (self.inbox.take(), self.sm.take());
            sm::end_session(
                self.server(),
                &self.ctx.resumptions,
                &host,
                &handle,
                inbox.as_mut(),
                state.as_mut(),
                held,
            )
            .await;
        }
        tracing::debug!(peer = %self.peer, "connection closed");
    }

    /// Asks a silent client to show it is there: an SM ack request, or a ping.
    fn liveness_probe(&mut self) {
        if self.sm.is_some() {
            self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
            return;
        }
        let (Some(session), Some(host)) = (&self.session, &self.host) else {
            return;
        };
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", format!("idle-{}", random_id(8)))
            .with_attr("from", host.domain())
            .with_attr("to", session.jid().as_str())
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        self.write_stanza(ping);
    }

    /// Takes the session off this connection, with everything needed to continue it
    /// elsewhere (a resuming connection or the parked-session task); `None` unless it is a
    /// resumable stream-management session.
    fn detach(&mut self) -> Option<Detached> {
        if self.session.is_none() || self.inbox.is_none() || self.takeover.is_none() {
            return None;
        }
        let mut state = self.sm.take()?;
        state.connection_changed();
        Some(Detached {
            handle: self.session.take()?,
            inbox: self.inbox.take()?,
            state,
            takeover: self.takeover.take()?,
            host: self.host.clone()?,
            held: self.csi.take_all().into(),
        })
    }

    /// Writes `<stream:error>` (with an application-specific condition if given) and closes
    /// the stream.
    fn write_stream_error(
        &mut self,
        condition: StreamErrorCondition,
        text: Option<&str>,
        app: Option<&Element>,
    ) {
        if !self.header_sent {
            self.write_header(None);
        }
        self.out.extend_from_slice(b"<stream:error>");
        for child in condition.to_element(text).children() {
            child.write_to(&mut self.out, ns::STREAMS);
        }
        if let Some(app) = app {
            app.write_to(&mut self.out, ns::STREAMS);
        }
        self.out
            .extend_from_slice(b"</stream:error></stream:stream>");
    }

    /// Writes a queued stanza now, or holds it while the client is inactive (XEP-0352).
    fn offer_outgoing(
        &mut self,
        o: Box<Outgoing>,
        receipts: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        if !self.csi.is_inactive() {
            return self.write_outgoing(*o, receipts);
        }
        for o in self.csi.offer(o) {
            self.write_outgoing(*o, receipts);
        }
    }

    /// Serialises one queued stanza; under stream management it joins the unacknowledged
    /// queue (its receipt resolves on the client's ack), otherwise its receipt resolves after
    /// the flush.
    fn write_outgoing(
        &mut self,
        o: Outgoing,
        receipts: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Outgoing { stanza, written } = o;
        stanza.write_to(&mut self.out, ns::CLIENT);
        match self.sm.as_mut() {
            Some(sm) => sm.sent(stanza, written),
            None => receipts.extend(written),
        }
    }

    /// Writes a stanza this connection answers itself once bound (counted by stream
    /// management like any other).
    fn write_stanza(&mut self, stanza: Element) {
        stanza.write_to(&mut self.out, ns::CLIENT);
        if let Some(sm) = self.sm.as_mut() {
            sm.sent(stanza, None);
        }
    }

    fn write_header(&mut self, to: Option<&str>) {
        let from = self
            .host
            .as_ref()
            .map(|h| h.domain().to_owned())
            .or_else(|| {
                self.server()
                    .config()
                    .hosts
                    .first()
                    .map(|h| h.domain.clone())
            })
            .unwrap_or_default();
        let mut header = Element::new("stream", ns::STREAMS)
            .with_attr("id", random_id(16))
            .with_attr("from", from)
            .with_attr("version", "1.0")
            .with_attr("xml:lang", "en");
        if let Some(to) = to {
            header.set_attr("to", to);
        }
        // The open tag is written by hand: it stays open for the life of the stream.
        self.out.extend_from_slice(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'",
        );
        for (k, v) in header.attrs() {
            self.out.push(b' ');
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"='");
            escape_attr(v, &mut self.out);
            self.out.push(b'\'');
        }
        self.out.push(b'>');
        self.header_sent = true;
    }

    fn write_features(&mut self, features: &[Element]) {
        self.out.extend_from_slice(b"<stream:features>");
        for f in features {
            f.write_to(&mut self.out, ns::CLIENT);
        }
        self.out.extend_from_slice(b"</stream:features>");
    }

    fn write(&mut self, el: &Element) {
        el.write_to(&mut self.out, ns::CLIENT);
    }

    async fn on_event(&mut self, ev: StreamEvent) -> Result<Next, Close> {
        match ev {
            StreamEvent::Open(header) => self.on_stream_open(header).map(|()| Next::Continue),
            StreamEvent::Close => Err(Close::Graceful),
            StreamEvent::Stanza(el) => self.on_element(el).await,
        }
    }

    /// RFC 6120 §4.7: validate the client's stream header, answer with ours and the features.
    fn on_stream_open(&mut self, header: StreamHeader) -> Result<(), Close> {
        if header.name != "stream" || header.ns != ns::STREAMS {
            return Err(Close::err_text(
                StreamErrorCondition::InvalidNamespace,
                "the stream element must be <stream> in http://etherx.jabber.org/streams",
            ));
        }
        if header.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(Close::err_text(
                StreamErrorCondition::InvalidNamespace,
                "the content namespace of a client stream is jabber:client",
            ));
        }
        let to = header.attr("to").unwrap_or("");
        let domain = BareJid::new(to)
            .ok()
            .filter(|j| j.node().is_none())
            .map(|j| j.domain().to_string());
        let host = domain.and_then(|d| self.server().host(&d).cloned());
        let Some(host) = host else {
            return Err(Close::err_text(
                StreamErrorCondition::HostUnknown,
                "this server does not serve that domain",
            ));
        };
        if let Some(prev) = &self.host {
            if prev.domain() != host.domain() {
                return Err(Close::err_text(
                    StreamErrorCondition::HostUnknown,
                    "a restarted stream must be for the same domain",
                ));
            }
        }
        self.host = Some(host);
        let reply_to = header
            .attr("from")
            .filter(|f| rookery_stanza::Jid::new(f).is_ok())
            .map(str::to_owned);
        self.write_header(reply_to.as_deref());
        // §4.7.5: version 1.0 is required; a higher major version is answered with ours.
        let major = header
            .attr("version")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major.unwrap_or(0) < 1 {
            return Err(Close::err_text(
                StreamErrorCondition::UnsupportedVersion,
                "XMPP version 1.0 is required",
            ));
        }
        let features = self.features();
        self.write_features(&features);
        Ok(())
    }

    fn offered_mechanisms(&self) -> Vec<Mechanism> {
        let tls = self.is_tls();
        let has_cb = !self.channel_bindings.supported().is_empty();
        Mechanism::ALL
            .into_iter()
            .filter(|m| match m {
                Mechanism::Plain => tls,
                m if m.is_plus() => tls && has_cb,
                _ => true,
            })
            .collect()
    }

    fn features(&self) -> Vec<Element> {
        let mut out = Vec::new();
        match self.stage {
            Stage::Plain => {
                out.push(
                    Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
                );
            }
            Stage::Unauthenticated => {
                if self.ctx.kind == ListenerKind::C2s && !self.is_tls() {
                    out.push(Element::new("starttls", ns::TLS));
                }
                let mut mechs = Element::new("mechanisms", ns::SASL);
                for m in self.offered_mechanisms() {
                    mechs.push_child(Element::new("mechanism", ns::SASL).with_text(m.name()));
                }
                out.push(mechs);
                if self.is_tls() {
                    if let Some(host) = &self.host {
                        out.extend(host.pre_auth_features().iter().cloned());
                    }
                }
                out.push(self.sasl2_feature());
                // XEP-0440: which channel-binding types this connection supports.
                let cbs = self.channel_bindings.supported();
                if !cbs.is_empty() {
                    let mut el = Element::new("sasl-channel-binding", ns::SASL_CB);
                    for t in cbs {
                        el.push_child(
                            Element::new("channel-binding", ns::SASL_CB)
                                .with_attr("type", t.name()),
                        );
                    }
                    out.push(el);
                }
            }
            Stage::Authenticated | Stage::Bound => {
                // After a SASL2 login with Bind 2 the stream is bound without a restart:
                // binding is no longer on offer (XEP-0386), nor SM once enabled.
                let bound = self.stage == Stage::Bound;
                if !bound {
                    out.push(Element::new("bind", ns::BIND));
                    // RFC 6121 Appendix E: kept for old clients, marked optional.
                    out.push(
                        Element::new("session", ns::SESSION)
                            .with_child(Element::new("optional", ns::SESSION)),
                    );
                }
                if self.server().config().stream_management.enabled && self.sm.is_none() {
                    out.push(Element::new("sm", sm::NS));
                }
                out.push(Element::new("csi", crate::csi::NS));
                if let Some(host) = &self.host {
                    out.extend(host.stream_features().iter().cloned());
                }
            }
        }
        out.push(self.limits_feature());
        out
    }

    /// XEP-0478: the largest top-level element accepted and the idle time before a
    /// liveness check.
    fn limits_feature(&self) -> Element {
        let limits = &self.server().config().limits;
        Element::new("limits", NS_STREAM_LIMITS)
            .with_child(
                Element::new("max-bytes", NS_STREAM_LIMITS)
                    .with_text(limits.max_stanza_bytes.to_string()),
            )
            .with_child(
                Element::new("idle-seconds", NS_STREAM_LIMITS)
                    .with_text(limits.idle_timeout_secs.to_string()),
            )
    }

    async fn on_element(&mut self, el: Element) -> Result<Next, Close> {
        if self.host.is_none() {
            return Err(Close::err(StreamErrorCondition::NotWellFormed));
        }
        match (self.stage, el.ns(), el.name()) {
            (Stage::Plain | Stage::Unauthenticated, ns::TLS, "starttls") => self.starttls().await,
            (Stage::Plain, ns::SASL, "auth") => {
                let fail = Element::new("failure", ns::SASL)
                    .with_child(Element::new("encryption-required", ns::SASL));
                self.write(&fail);
                Ok(Next::Continue)
            }
            (Stage::Unauthenticated, ns::SASL, "auth") => {
                let initial = decode_sasl(&el);
                self.sasl_auth(&el, initial).await
            }
            (Stage::Plain, NS_SASL2, _) => {
                let fail = Element::new("failure", NS_SASL2)
                    .with_child(Element::new("encryption-required", ns::SASL));
                self.write(&fail);
                Ok(Next::Continue)
            }
            (Stage::Unauthenticated, NS_SASL2, "authenticate") if self.sasl.is_none() => {
                self.sasl2_authenticate(el).await
            }
            (Stage::Unauthenticated, NS_SASL2, "response") => {
                let data = decode_sasl(&el);
                self.sasl_step(|s| data.and_then(|d| s.step(&d))).await
            }
            (Stage::Unauthenticated, NS_SASL2, "abort") => {
                self.sasl = None;
                self.sasl_failure(SaslError::Aborted).await
            }
            (Stage::Unauthenticated, ns::SASL, "response") => {
                let data = decode_sasl(&el);
                self.sasl_step(|s| data.and_then(|d| s.step(&d))).await
            }
            (Stage::Unauthenticated, ns::SASL, "abort") => {
                self.sasl = None;
                self.sasl_failure(SaslError::Aborted).await
            }
            (Stage::Unauthenticated, ns::CLIENT, "iq") if self.answers_before_auth(&el) => {
                self.register(el).await;
                Ok(Next::Continue)
            }
            (Stage::Authenticated, ns::CLIENT, "iq") => self.pre_bind_iq(el).await,
            (Stage::Authenticated | Stage::Bound, sm::NS, _) => {
                self.on_sm(el).await.map(|()| Next::Continue)
            }
            (Stage::Bound, crate::csi::NS, "inactive") => {
                self.csi.set_inactive();
                Ok(Next::Continue)
            }
            (Stage::Bound, crate::csi::NS, "active") => {
                // §5: everything held is on the wire before anything the client sends next
                // is processed (the read loop flushes before reading on).
                let mut receipts = Vec::new();
                for o in self.csi.set_active() {
                    self.write_outgoing(*o, &mut receipts);
                }
                if self.sm.as_mut().is_some_and(StreamState::should_request) {
                    self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
                }
                if self.flush().await.is_err() {
                    return Err(Close::Dropped);
                }
                for r in receipts {
                    let _ = r.send(());
                }
                Ok(Next::Continue)
            }
            (Stage::Authenticated, crate::csi::NS, _) => Ok(Next::Continue),
            (Stage::Bound, _, _) => self.on_stanza(el).await.map(|()| Next::Continue),
            (_, ns::CLIENT, "message" | "presence" | "iq") => Err(Close::err_text(
                StreamErrorCondition::NotAuthorized,
                "authenticate and bind a resource first",
            )),
            (_, ns::CLIENT, _) => Err(Close::err(StreamErrorCondition::UnsupportedStanzaType)),
            (_, ns::SERVER, _) => Err(Close::err(StreamErrorCondition::InvalidNamespace)),
            _ => Err(Close::err(StreamErrorCondition::UnsupportedStanzaType)),
        }
    }

    /// RFC 6120 §5.4: upgrade the connection in place.
    async fn starttls(&mut self) -> Result<Next, Close> {
        if self.is_tls() {
            self.write(&Element::new("failure", ns::TLS));
            return Err(Close::Dropped);
        }
        self.write(&Element::new("proceed", ns::TLS));
        if self.flush().await.is_err() {
            return Err(Close::Dropped);
        }
        let Some(Transport::Plain(tcp)) = self.io.take() else {
            return Err(Close::Dropped);
        };
        let configs = self.ctx.tls.current();
        let acceptor = tokio_rustls::TlsAcceptor::from(configs.starttls.clone());
        let limit = Duration::from_secs(self.server().config().limits.tls_handshake_timeout_secs);
        match handshake(acceptor.accept(tcp), limit, self.server().shutdown_token()).await {
            Ok(tls) => {
                self.io = Some(Transport::Tls(Box::new(tls)));
                self.update_channel_bindings(&configs);
                self.stage = Stage::Unauthenticated;
                self.header_sent = false;
                Ok(Next::Restart)
            }
            Err(why) => {
                tracing::debug!(peer = %self.peer, why, "STARTTLS handshake did not complete");
                counters::incr(Counter::TlsHandshakeFailures);
                Err(Close::Dropped)
            }
        }
    }

    async fn sasl_auth(
        &mut self,
        el: &Element,
        initial: Result<Vec<u8>, SaslError>,
    ) -> Result<Next, Close> {
        let offered = self.offered_mechanisms();
        let mech = el
            .attr("mechanism")
            .and_then(Mechanism::from_name)
            .filter(|m| offered.contains(m));
        let Some(mech) = mech else {
            let fail = self.sasl_failure_element("invalid-mechanism");
            self.sasl2 = None;
            self.write(&fail);
            return Ok(Next::Continue);
        };
        self.auth_attempt = Some(AuthAttempt {
            mechanism: mech.name(),
            user: None,
            account: None,
        });
        let plus_advertised = offered.iter().any(|m| m.is_plus());
        // XEP-0474: the client can check that nobody stripped what was offered.
        let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        let cbs = self.channel_bindings.supported();
        let cb_names: Vec<&str> = cbs.iter().map(|c| c.name()).collect();
        self.sasl = Some(
            ServerSession::new(
                mech,
                self.channel_bindings.clone(),
                plus_advertised,
                self.is_tls(),
            )
            .with_downgrade_protection(&names, (!cb_names.is_empty()).then_some(&cb_names[..])),
        );
        self.sasl_step(|s| initial.and_then(|d| s.start(&d))).await
    }

    /// Drives the SASL exchange one client message further.
    async fn sasl_step(
        &mut self,
        f: impl FnOnce(&mut ServerSession) -> Result<Step, SaslError>,
    ) -> Result<Next, Close> {
        let Some(mut session) = self.sasl.take() else {
            let fail = Element::new("failure", ns::SASL)
                .with_child(Element::new("malformed-request", ns::SASL));
            self.write(&fail);
            return Ok(Next::Continue);
        };
        let mut step = f(&mut session);
        let mut account = None;
        loop {
            match step {
                Ok(Step::NeedCredentials { username, .. }) => {
                    let domain = self
                        .host
                        .as_ref()
                        .map(|h| h.domain().to_owned())
                        .unwrap_or_default();
                    let jid = BareJid::new(&format!("{username}@{domain}")).ok();
                    self.note_auth_user(&username, jid.clone());
                    let creds = match (&jid, session.mechanism().hash()) {
                        (Some(jid), hash) => {
                            let node = jid.node().map(|n| n.to_string()).unwrap_or_default();
                            let hash = hash.unwrap_or(rookery_sasl::HashAlg::Sha256);
                            match self
                                .server()
                                .storage()
                                .accounts
                                .get_credentials(&domain, &node, hash)
                                .await
                            {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::error!(error = %e, "credential look-up failed");
                                    return self
                                        .sasl_failure(SaslError::Internal("storage".into()))
                                        .await;
                                }
                            }
                        }
                        (None, _) => None,
                    };
                    account = jid;
                    step = session.credentials(creds);
                }
                Ok(Step::Challenge(data)) => {
                    let ns = if self.sasl2.is_some() {
                        NS_SASL2
                    } else {
                        ns::SASL
                    };
                    let el = Element::new("challenge", ns).with_text(B64.encode(data));
                    self.write(&el);
                    self.sasl = Some(session);
                    return Ok(Next::Continue);
                }
                Ok(Step::Success {
                    username,
                    authzid,
                    additional_data,
                }) => {
                    let domain = self.host.as_ref().map(|h| h.domain().to_owned());
                    let jid = account.or_else(|| {
                        BareJid::new(&format!("{username}@{}", domain.unwrap_or_default())).ok()
                    });
                    let Some(jid) = jid else {
                        return self.sasl_failure(SaslError::NotAuthorized).await;
                    };
                    // An authorization identity other than the account itself is not allowed.
                    if let Some(z) = authzid.filter(|z| !z.is_empty()) {
                        if BareJid::new(&z).ok().as_ref() != Some(&jid) {
                            return self.sasl_failure(SaslError::InvalidAuthzid).await;
                        }
                    }
                    self.auth_attempt = None;
                    if self.sasl2.is_some() {
                        tracing::info!(peer = %self.peer, jid = %jid, mechanism = session.mechanism().name(), "authenticated (SASL2)");
                        return self.sasl2_success(jid, additional_data).await;
                    }
                    let mut el = Element::new("success", ns::SASL);
                    if let Some(d) = additional_data {
                        el.push_text(B64.encode(d));
                    }
                    self.write(&el);
                    self.ctx.throttle.success(self.peer.ip());
                    tracing::info!(peer = %self.peer, jid = %jid, mechanism = session.mechanism().name(), "authenticated");
                    self.user = Some(jid);
                    self.stage = Stage::Authenticated;
                    self.header_sent = false;
                    return Ok(Next::Restart);
                }
                Err(e) => return self.sasl_failure(e).await,
            }
        }
    }

    /// Records the account name the client's SASL message gave (`username` as sent, `jid`
    /// when it makes a valid JID at this stream's domain).
    fn note_auth_user(&mut self, username: &str, jid: Option<BareJid>) {
        let user = match &jid {
            Some(j) => j.to_string(),
            None => {
                let domain = self.host.as_ref().map(|h| h.domain()).unwrap_or_default();
                format!("{username}@{domain}")
            }
        };
        if let Some(a) = self.auth_attempt.as_mut() {
            a.user = Some(user);
            a.account = jid;
        }
    }

    /// Answers a failed SASL exchange: slowed down by the throttle, and the stream closed after
    /// too many attempts (RFC 6120 §6.4.5 lets the server limit retries). Logs one line per
    /// failure with the name tried and the client's address, for fail2ban-style tools:
    /// `authentication failed user=alice@example.org addr=192.0.2.7 mechanism=SCRAM-SHA-256
    /// reason=not-authorized` (`user=(none)` when the exchange failed before naming one).
    async fn sasl_failure(&mut self, e: SaslError) -> Result<Next, Close> {
        self.sasl = None;
        let attempt = self.auth_attempt.take();
        let counted = !matches!(e, SaslError::Aborted);
        if counted {
            counters::incr(Counter::AuthFailures);
            self.auth_attempts += 1;
            let (mechanism, user, account) = match attempt {
                Some(a) => (a.mechanism, a.user, a.account),
                None => ("(none)", None, None),
            };
            let delay = self
                .ctx
                .throttle
                .failure(self.peer.ip(), account.as_ref().map(|a| a.as_str()));
            let user = user.map_or_else(|| "(none)".to_owned(), |u| log_field(&u));
            tracing::warn!(
                user = %user,
                addr = %self.peer.ip().to_canonical(),
                mechanism = %mechanism,
                reason = %e.condition(),
                "authentication failed"
            );
            // Debug-formatted: the detail may quote what the client sent.
            tracing::debug!(peer = %self.peer, error = ?e.to_string(), "authentication failure detail");
            if self.flush().await.is_err() {
                return Err(Close::Dropped);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.ctx.server.shutdown_token().cancelled() => {
                    return Err(Close::err(StreamErrorCondition::SystemShutdown));
                }
            }
        }
        let fail = self.sasl_failure_element(e.condition());
        self.sasl2 = None;
        self.fast_used = None;
        self.write(&fail);
        if self.auth_attempts >= self.server().config().limits.max_auth_attempts {
            counters::incr(Counter::AuthAttemptsExceeded);
            return Err(Close::err_text(
                StreamErrorCondition::PolicyViolation,
                "too many failed authentication attempts",
            ));
        }
        Ok(Next::Continue)
    }

    /// A SASL `<failure/>` in the namespace of the exchange in progress (RFC 6120 §6.5 or
    /// XEP-0388 §2.6.2, whose failure carries the RFC 6120 condition).
    fn sasl_failure_element(&self, condition: &str) -> Element {
        let ns = if self.sasl2.is_some() {
            NS_SASL2
        } else {
            ns::SASL
        };
        Element::new("failure", ns).with_child(Element::new(condition, ns::SASL))
    }

    /// Resource binding (RFC 6120 §7) and the legacy session request.
    async fn pre_bind_iq(&mut self, el: Element) -> Result<Next, Close> {
        let is_set = IqType::of(&el) == Some(IqType::Set);
        if is_set && el.has_child("session", ns::SESSION) {
            self.write(&iq_result(&el, None));
            return Ok(Next::Continue);
        }
        let Some(bind) = el.get_child("bind", ns::BIND).filter(|_| is_set) else {
            return Err(Close::err_text(
                StreamErrorCondition::NotAuthorized,
                "bind a resource first",
            ));
        };
        let Some(user) = self.user.clone() else {
            return Err(Close::err(StreamErrorCondition::NotAuthorized));
        };
        let requested = bind
            .get_child("resource", ns::BIND)
            .map(|r| r.text().trim().to_owned())
            .filter(|r| !r.is_empty());
        let full = match requested {
            Some(r) => match user.with_resource_str(&r) {
                Ok(j) => j,
                Err(_) => {
                    let e = StanzaError::bad_request("the resource is not a valid resourcepart");
                    if let Some(reply) = error_reply(&el, &e) {
                        self.write(&reply);
                    }
                    return Ok(Next::Continue);
                }
            },
            None => match user.with_resource_str(&random_id(12)) {
                Ok(j) => j,
                Err(_) => return Err(Close::err(StreamErrorCondition::InternalServerError)),
            },
        };
        self.bind(full.clone()).await;
        let reply = iq_result(
            &el,
            Some(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.as_str())),
            ),
        );
        self.write(&reply);
        Ok(Next::Continue)
    }

    async fn bind(&mut self, jid: FullJid) {
        let queue = self.server().config().limits.session_send_queue;
        let (handle, inbox) = SessionHandle::new(jid.clone(), queue);
        if let Some(old) = self.server().sessions().bind(handle.clone()) {
            // RFC 6120 §7.7.2.2: this server's policy is that the newer session wins.
            old.kick(
                StreamErrorCondition::Conflict,
                "replaced by a new session with the same resource",
            );
        }
        self.session = Some(handle.clone());
        self.inbox = Some(inbox);
        self.stage = Stage::Bound;
        tracing::info!(peer = %self.peer, jid = %jid, "resource bound");
        if let Some(host) = self.host.clone() {
            host.hooks()
                .run(self.server(), SessionBound { session: handle })
                .await;
        }
    }

    async fn on_stanza(&mut self, el: Element) -> Result<(), Close> {
        let Some(jid) = self.session.as_ref().map(|h| h.jid().clone()) else {
            return Err(Close::err(StreamErrorCondition::InternalServerError));
        };
        let Some(stanza) = self
            .server()
            .stamp_from_client(&jid, el)
            .map_err(Close::err)?
        else {
            // Answered already (a malformed 'to').
            self.count_handled();
            return Ok(());
        };
        if stanza.name() == "iq" && stanza.attr("to").is_none() {
            let is_set = IqType::of(&stanza) == Some(IqType::Set);
            if is_set && stanza.has_child("session", ns::SESSION) {
                self.write_stanza(iq_result(&stanza, None));
                self.count_handled();
                return Ok(());
            }
            if stanza.has_child("bind", ns::BIND) {
                let e = StanzaError::new(StanzaErrorCondition::NotAllowed)
                    .with_text("a resource is already bound on this stream");
                if let Some(reply) = error_reply(&stanza, &e) {
                    self.write_stanza(reply);
                }
                self.count_handled();
                return Ok(());
            }
        }
        let server = self.server().clone();
        server.route_from_client(&jid, stanza).await;
        self.count_handled();
        Ok(())
    }
}

const NS_STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";

impl Connection {
    /// The handler a module registered for an IQ on this stream before authentication, by
    /// the namespace of its payload (in-band registration, XEP-0077 §3.1).
    fn pre_auth_handler(&self, iq: &Element) -> Option<Arc<dyn PreAuthHandler>> {
        let payload = iq.children().next()?;
        self.host.as_ref()?.pre_auth_handler(payload.ns()).cloned()
    }

    /// Whether an IQ before authentication is answered (by a module of this host, or with
    /// `service-unavailable` where the host does not run the module) rather than ending the
    /// stream: see [`Host::answers_before_auth`].
    fn answers_before_auth(&self, iq: &Element) -> bool {
        let Some(payload) = iq.children().next() else {
            return false;
        };
        self.host
            .as_ref()
            .is_some_and(|h| h.answers_before_auth(payload.ns()))
    }

    /// An IQ before authentication, answered by the module that handles its namespace; only
    /// over TLS, since such requests carry credentials.
    async fn register(&mut self, iq: Element) {
        let answer = match (self.pre_auth_handler(&iq), IqType::of(&iq)) {
            (Some(handler), Some(iq_type @ (IqType::Get | IqType::Set))) if self.is_tls() => {
                let (Some(host), Some(payload)) = (self.host.as_ref(), iq.children().next()) else {
                    return;
                };
                handler
                    .handle(PreAuthRequest {
                        server: self.server().clone(),
                        domain: host.domain().to_owned(),
                        peer: self.peer,
                        iq_type,
                        payload: payload.clone(),
                    })
                    .await
            }
            _ => Err(StanzaError::service_unavailable()),
        };
        let reply = match answer {
            Ok(payload) => iq_result(&iq, payload),
            Err(e) => match error_reply(&iq, &e) {
                Some(r) => r,
                None => return,
            },
        };
        self.write(&reply);
    }
}

/// Client-chosen text made safe for one `key=value` of a log line: spaces, quotes, control
/// characters and line breaks escaped (`\u{a}`), at most 128 characters.
fn log_field(s: &str) -> String {
    const MAX: usize = 128;
    let mut out = String::with_capacity(s.len().min(MAX));
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() || c.is_whitespace() || c == '"' || c == '\\' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The base64 payload of a SASL element: empty text is "no data", `=` is an empty response.
fn decode_sasl(el: &Element) -> Result<Vec<u8>, SaslError> {
    let text = el.text();
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    B64.decode(t).map_err(|_| SaslError::IncorrectEncoding)
}

fn escape_attr(v: &str, out: &mut Vec<u8>) {
    for b in v.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            _ => out.push(b),
        }
    }
}

// ---- Stream management (XEP-0198) --------------------------------------------------------

impl Connection {
    fn count_handled(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.handled();
        }
    }

    async fn on_sm(&mut self, el: Element) -> Result<(), Close> {
        if !self.server().config().stream_management.enabled {
            return Err(Close::err(StreamErrorCondition::UnsupportedStanzaType));
        }
        match (self.stage, el.name()) {
            (Stage::Bound, "enable") => {
                let reply = self.sm_enable(&el);
                self.write(&reply);
                Ok(())
            }
            (Stage::Authenticated, "resume") => match self.take_for_resume(&el).await? {
                Ok(d) => {
                    let resumed = resumed_element(&d, &el);
                    self.write(&resumed);
                    self.install_resumed(d);
                    Ok(())
                }
                Err(failed) => {
                    self.write(&failed);
                    Ok(())
                }
            },
            (Stage::Bound, "r") => {
                if let Some(h) = self.sm.as_ref().map(StreamState::inbound) {
                    let a = Element::new("a", sm::NS).with_attr("h", h.to_string());
                    self.write(&a);
                }
                Ok(())
            }
            (Stage::Bound, "a") => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Err(Close::err_text(
                        StreamErrorCondition::InvalidXml,
                        "an <a/> needs a numeric h",
                    ));
                };
                let Some(sm) = self.sm.as_mut() else {
                    return Ok(());
                };
                sm.ack(h)
                    .map(|_| ())
                    .map_err(|e| handled_too_high(e.h, e.sent))
            }
            // Resuming after binding (§5).
            _ => {
                self.write(&sm_failed(StanzaErrorCondition::UnexpectedRequest, None));
                Ok(())
            }
        }
    }

    /// `<enable/>` (XEP-0198 §3), on a bound stream or inline in Bind 2: the `<enabled/>`
    /// or `<failed/>` answer.
    fn sm_enable(&mut self, el: &Element) -> Element {
        let config = self.server().config().stream_management.clone();
        if self.sm.is_some() || self.stage != Stage::Bound || !config.enabled {
            // Enabling twice or before binding.
            return sm_failed(StanzaErrorCondition::UnexpectedRequest, None);
        }
        let wants_resume = matches!(el.attr("resume"), Some("true" | "1"));
        let mut reply = Element::new("enabled", sm::NS);
        let mut state = StreamState::new(None, Duration::ZERO);
        if wants_resume {
            if let Some(user) = self.user.clone() {
                let secs = el
                    .attr("max")
                    .and_then(|m| m.parse::<u64>().ok())
                    .filter(|m| *m > 0)
                    .unwrap_or(config.resume_timeout_secs)
                    .min(config.max_resume_timeout_secs);
                let (id, rx) = self.ctx.resumptions.register(user);
                reply.set_attr("id", id.as_str());
                reply.set_attr("resume", "true");
                reply.set_attr("max", secs.to_string());
                state = StreamState::new(Some(id), Duration::from_secs(secs));
                self.takeover = Some(rx);
            }
        }
        self.sm = Some(state);
        reply
    }

    /// XEP-0198 §5: takes over the session named by a `<resume/>`; `Err` is the `<failed/>`
    /// to send (the client may then bind normally).
    async fn take_for_resume(&mut self, el: &Element) -> Result<Result<Detached, Element>, Close> {
        if !self.server().config().stream_management.enabled {
            return Ok(Err(sm_failed(
                StanzaErrorCondition::FeatureNotImplemented,
                None,
            )));
        }
        let (Some(previd), Some(h)) = (
            el.attr("previd"),
            el.attr("h").and_then(|h| h.parse::<u32>().ok()),
        ) else {
            return Ok(Err(sm_failed(StanzaErrorCondition::BadRequest, None)));
        };
        let Some(user) = self.user.clone() else {
            return Err(Close::err(StreamErrorCondition::NotAuthorized));
        };
        let mut d = match self.ctx.resumptions.take(previd, &user).await {
            Ok(d) => d,
            Err(ResumeError::NotFound { h }) => {
                return Ok(Err(sm_failed(StanzaErrorCondition::ItemNotFound, h)))
            }
        };
        if let Err(e) = d.state.ack(h) {
            // The client claims stanzas it cannot have had: end the session.
            let server = self.server().clone();
            let resumptions = self.ctx.resumptions.clone();
            sm::end_session(
                &server,
                &resumptions,
                &d.host,
                &d.handle,
                Some(&mut d.inbox),
                Some(&mut d.state),
                std::mem::take(&mut d.held),
            )
            .await;
            return Err(handled_too_high(e.h, e.sent));
        }
        Ok(Ok(d))
    }

    /// Continues a taken-over session on this stream: writes again what the client never
    /// confirmed, then what arrived while it was away.
    fn install_resumed(&mut self, mut d: Detached) {
        for stanza in d.state.unacked() {
            stanza.write_to(&mut self.out, ns::CLIENT);
        }
        let mut receipts = Vec::new();
        let held = std::mem::take(&mut d.held);
        self.sm = Some(d.state);
        for o in held {
            self.write_outgoing(*o, &mut receipts);
        }
        if self.sm.as_mut().is_some_and(StreamState::should_request) {
            self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
        }
        tracing::info!(peer = %self.peer, jid = %d.handle.jid(), "session resumed");
        counters::incr(Counter::SmResumed);
        self.session = Some(d.handle);
        self.inbox = Some(d.inbox);
        self.takeover = Some(d.takeover);
        self.stage = Stage::Bound;
    }
}

fn sm_failed(condition: StanzaErrorCondition, h: Option<u32>) -> Element {
    let mut el = Element::new("failed", sm::NS)
        .with_child(Element::new(condition.as_str(), ns::STANZA_ERRORS));
    if let Some(h) = h {
        el.set_attr("h", h.to_string());
    }
    el
}

/// The `<resumed/>` answer for a taken-over session (its 'h' is what this side handled).
fn resumed_element(d: &Detached, request: &Element) -> Element {
    Element::new("resumed", sm::NS)
        .with_attr("previd", request.attr("previd").unwrap_or_default())
        .with_attr("h", d.state.inbound().to_string())
}

/// XEP-0198 §6: the peer acknowledged more than it was sent.
fn handled_too_high(h: u32, sent: u32) -> Close {
    Close::ErrorWith(
        StreamErrorCondition::UndefinedCondition,
        Element::new("handled-count-too-high", sm::NS)
            .with_attr("h", h.to_string())
            .with_attr("send-count", sent.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::log_field;

    #[test]
    fn log_fields_cannot_split_or_forge_log_lines() {
        assert_eq!(log_field("alice@example.org"), "alice@example.org");
        assert_eq!(log_field("jürgen@例え.jp"), "jürgen@例え.jp");
        assert_eq!(
            log_field("a b\n2026 WARN x\"y\\"),
            "a\\u{20}b\\u{a}2026\\u{20}WARN\\u{20}x\\u{22}y\\u{5c}"
        );
        let long = log_field(&"x".repeat(1000));
        assert_eq!(long.chars().count(), 129);
        assert!(long.ends_with('…'));
    }
}

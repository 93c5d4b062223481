//! The client stream (RFC 6120) as a state machine without a socket: stream negotiation
//! (STARTTLS as a request to the transport, SASL and SASL2/Bind 2/FAST, resource binding),
//! then stanzas in from the client to the core's router and stanzas out from the session's
//! queue to the client, with stream management and client state indication.
//!
//! A [`ClientStream`] is fed [`StreamEvent`]s and wake-ups of its session and writes what
//! it answers into its [`Output`]; what it asks of the transport (restart the stream,
//! upgrade to TLS, wait before answering) it returns as [`Next`], and why it ends as
//! [`Close`]. [`run`] drives one over any [`StanzaTransport`], with the timers and input
//! limits every transport shares. It awaits the core (storage, hooks, routing), never a
//! socket.

use crate::csi::ClientState;
use crate::limits::{AuthThrottle, TokenBucket};
use crate::sm::{self, Detached, ResumeError, Resumptions, StreamState, TakeoverReceiver};
use crate::transport::{Received, StanzaTransport};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rookery_core::counters::{self, Counter};
use rookery_core::events::SessionBound;
use rookery_core::{
    ClientTransport, Host, Outgoing, PreAuthHandler, PreAuthRequest, Server, SessionHandle,
    SessionInbox,
};
use rookery_sasl::{ChannelBindings, Mechanism, SaslError, ServerSession, Step};
use rookery_stanza::{
    error_reply, iq_result, ns, random_id, BareJid, FullJid, IqType, SharedStanza, StanzaError,
    StanzaErrorCondition, StreamErrorCondition,
};
use rookery_xml::{Element, Framing, StreamEvent, StreamHeader, StreamOpen};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod sasl2;
use sasl2::NS_SASL2;

/// Output buffer capacity kept between writes; anything larger is freed after the flush.
const OUT_BUFFER_KEEP: usize = 512;
/// Stanzas written in one batch before flushing (one syscall for a burst of deliveries).
const WRITE_BATCH: usize = 64;
/// How long a client has to answer the liveness check sent after its idle time (or the
/// idle time itself, if shorter).
const LIVENESS_GRACE: Duration = Duration::from_secs(60);

/// What every client stream of the server shares, whatever its transport.
pub struct StreamContext {
    pub server: Arc<Server>,
    pub throttle: Arc<AuthThrottle>,
    /// Sessions that can be resumed (XEP-0198), shared by every transport.
    pub resumptions: Arc<Resumptions>,
    /// `[stream_management]` and `[fast]`, read once here rather than on every batch.
    /// `[stream_management]`, `[fast]` and `[sasl]` (the mechanisms offered): live sections,
    /// replaced by [`StreamContext::refresh`] when a reload changes them, and read with one
    /// atomic load where streams need them.
    pub sm_config: ArcSwap<sm::StreamManagementConfig>,
    pub fast_config: ArcSwap<crate::fast::FastConfig>,
    pub sasl_config: ArcSwap<crate::sasl_config::SaslConfig>,
    /// The BOSH sessions (XEP-0124), shared by every HTTP listener.
    pub bosh: Arc<crate::http::bosh::Registry>,
}

impl StreamContext {
    pub fn new(server: Arc<Server>) -> Self {
        let sections = &server.config().sections;
        let sm_config = ArcSwap::new(sections.get());
        let fast_config = ArcSwap::new(sections.get());
        let sasl_config = ArcSwap::new(sections.get());
        let bosh = crate::http::bosh::Registry::new(
            (*sections.get::<crate::http::bosh::BoshConfig>()).clone(),
            sections
                .get::<crate::http::HttpConfig>()
                .request_timeout_secs,
        );
        StreamContext {
            server,
            throttle: Arc::new(AuthThrottle::default()),
            resumptions: Arc::new(Resumptions::default()),
            sm_config,
            fast_config,
            sasl_config,
            bosh: Arc::new(bosh),
        }
    }

    /// Takes the live stream sections' values from the configuration in force (after a
    /// reload): new values apply from the streams' next use of them.
    pub fn refresh(&self) {
        let config = self.server.config();
        self.sm_config.store(config.sections.get());
        self.fast_config.store(config.sections.get());
        self.sasl_config.store(config.sections.get());
    }
}

/// How far the stream has come (RFC 6120 §4.3 negotiation order), with what only that
/// stage needs.
// `Bound` is the stage a stream spends its life in: boxing it would add an allocation per
// session and save nothing.
#[allow(clippy::large_enum_variant)]
enum Stage {
    /// Before TLS on a transport that offers (and the configuration requires) STARTTLS.
    Plain,
    /// TLS up (or not required), not authenticated. Boxed: a bound session does not carry
    /// the room of a SASL exchange.
    Unauthenticated(Box<Auth>),
    /// Authenticated, no resource bound.
    Authenticated { user: BareJid },
    /// Resource bound: stanzas flow.
    Bound(Bound),
    /// The session left this stream (taken over by a resuming stream, or released).
    Ended,
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

/// The SASL exchange of an unauthenticated stream.
#[derive(Default)]
struct Auth {
    /// The exchange in progress.
    sasl: Option<ServerSession>,
    /// Remembered across the exchange's messages: a SCRAM exchange fails on the client-final
    /// message, which no longer carries the name.
    attempt: Option<AuthAttempt>,
    /// The SASL2 `<authenticate/>` of the exchange in progress (XEP-0388), with its inline
    /// requests; `None` for legacy SASL.
    sasl2: Option<Element>,
    /// The FAST token this exchange authenticated with (mechanism, token, expiry).
    fast_used: Option<(rookery_sasl::ht::HtMechanism, String, u64)>,
    /// Failed attempts so far (RFC 6120 §6.4.5 lets the server limit retries).
    attempts: u32,
    /// A `<failure/>` held back until the failure delay has passed.
    delayed_failure: Option<Element>,
}

/// A bound session on this stream.
struct Bound {
    user: BareJid,
    handle: Arc<SessionHandle>,
    inbox: SessionInbox,
    /// Stream management, once the client enabled it or resumed.
    sm: Option<StreamState>,
    /// Where a resuming stream asks for this session (resumable sessions only).
    takeover: Option<TakeoverReceiver>,
    /// Client state indication (XEP-0352): what is held while the client is inactive.
    csi: ClientState,
}

/// Why the stream ends.
pub enum Close {
    /// Send this stream error, then close.
    Error(StreamErrorCondition, Option<String>),
    /// The client closed its stream: answer with ours.
    Graceful,
    /// The connection is gone: nothing more can be written.
    Dropped,
    /// Send this stream error with an application-specific condition element, then close.
    ErrorWith(StreamErrorCondition, Element),
    /// Another stream resumes this session (XEP-0198 §5): hand it over, then close.
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

/// What handling one event asks of the transport before the next one.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Send what was written, then discard the rest of what was received and expect a new
    /// stream header (after SASL).
    Restart,
    /// Send what was written (`<proceed/>`), upgrade the transport to TLS, report it with
    /// [`ClientStream::tls_established`] and restart the stream (RFC 6120 §5.4.3.3).
    StartTls,
    /// Send what was written, wait this long (a failed authentication is answered slowly),
    /// then call [`ClientStream::after_delay`] before handling anything else.
    Delay(Duration),
}

/// What a bound session was woken by.
pub enum Wake {
    /// The session was ended from outside (conflict, account deleted, ...).
    Kicked(StreamErrorCondition, String),
    /// A resuming stream asks for the session; `None` when nobody can ask any more.
    Takeover(Option<sm::TakeoverRequest>),
    /// A stanza for the client; `None` when the session's queue closed.
    Outgoing(Option<Box<Outgoing>>),
}

/// How the stream ended, for whoever drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// Send what was written (the closing framing), then close the transport.
    pub send_and_close: bool,
    /// A resumable session is kept for resumption rather than ended.
    keep_resumable: bool,
}

/// What the stream wrote and not yet sent: bytes, and the receipts of deliveries among
/// them that resolve once the bytes are sent.
pub struct Output {
    bytes: Vec<u8>,
    receipts: Vec<oneshot::Sender<()>>,
    framing: Framing,
}

impl Output {
    /// The transport this output is framed for, as metrics name it.
    fn transport(&self) -> ClientTransport {
        match self.framing {
            Framing::Stream => ClientTransport::Tcp,
            Framing::WebSocket => ClientTransport::WebSocket,
            Framing::Bosh => ClientTransport::Bosh,
        }
    }

    fn new(framing: Framing) -> Self {
        Output {
            bytes: Vec::new(),
            receipts: Vec::new(),
            framing,
        }
    }

    /// What to send.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes were sent: resolves their receipts and keeps no more than a small buffer
    /// (an idle session keeps no more; the next batch allocates once, cheap next to the
    /// write itself).
    pub fn sent(&mut self) {
        self.bytes.clear();
        if self.bytes.capacity() > OUT_BUFFER_KEEP {
            self.bytes = Vec::new();
        }
        for r in self.receipts.drain(..) {
            let _ = r.send(());
        }
    }

    /// Writes a top-level element of the client stream.
    fn element(&mut self, el: &Element) {
        self.framing.write_element(&mut self.bytes, el, ns::CLIENT);
    }

    /// Writes a stanza the core delivered, possibly to other sessions as well: on a stream
    /// framing its serialisation is shared with them (`SharedStanza::write_to`, one
    /// serialisation however many recipients). A WebSocket message (and a BOSH payload,
    /// XEP-0206 §4) declares the namespace on each stanza, a second wire form, written here
    /// per recipient: not shared yet between WebSocket or BOSH sessions.
    fn shared(&mut self, stanza: &SharedStanza) {
        match self.framing {
            Framing::Stream => stanza.write_to(&mut self.bytes, ns::CLIENT),
            Framing::WebSocket | Framing::Bosh => stanza.write_declared(&mut self.bytes, ""),
        }
    }

    /// An XEP-0198 `<r/>` (it declares its namespace, so it reads the same on every
    /// framing).
    fn ack_request(&mut self) {
        self.bytes.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
    }
}

/// The client end of one XMPP client stream.
pub struct ClientStream {
    ctx: Arc<StreamContext>,
    peer: SocketAddr,
    /// What is sent is confidential (TLS, or a transport that is by nature).
    confidential: bool,
    /// The transport can still be upgraded to TLS (STARTTLS offered).
    can_upgrade: bool,
    channel_bindings: ChannelBindings,
    /// The domain this stream is for (from the first header's `to`).
    host: Option<Arc<Host>>,
    header_sent: bool,
    stage: Stage,
    out: Output,
}

/// Waits for a resuming stream's request; pending forever when not resumable.
async fn takeover_request(takeover: &mut Option<TakeoverReceiver>) -> Option<sm::TakeoverRequest> {
    match takeover {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one client stream over `transport` to its end: reads and hands events to the
/// stream, writes what it answers and what its session receives, enforces the input rate,
/// the authentication deadline and the idle check, then ends or parks the session.
///
/// Not an `async fn`: an `async fn` keeps its arguments in its future and then moves them
/// into locals of their own, so the transport (about 850 bytes) would be held twice by
/// every session for its whole life. The `async move` block below uses the captured
/// transport in place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run<T: StanzaTransport>(
    ctx: Arc<StreamContext>,
    mut transport: T,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut stream = ClientStream::new(ctx, &transport);
        tracing::debug!(peer = %stream.peer, tls = stream.confidential, "client connected");
        let close = drive(&mut stream, &mut transport).await;
        let ending = stream.end(close);
        if ending.send_and_close {
            // Boxed, like the release below: they run once, at the end, and would
            // otherwise add their size to the task of every session for its whole life.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                Box::pin(async {
                    let _ = send(&mut stream.out, &mut transport).await;
                    transport.close().await;
                }),
            )
            .await;
        }
        Box::pin(stream.release(ending)).await;
    }
}

/// Sends what the stream wrote.
async fn send<T: StanzaTransport>(out: &mut Output, transport: &mut T) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = transport.send(out.bytes()).await;
    if r.is_ok() {
        out.sent();
    } else {
        // Nothing more will be sent; the receipts are dropped, so their senders keep
        // their copies.
        out.bytes = Vec::new();
        out.receipts.clear();
    }
    r
}

/// The read/write loop; returns why the stream ended.
async fn drive<T: StanzaTransport>(stream: &mut ClientStream, transport: &mut T) -> Close {
    let server = stream.ctx.server.clone();
    let limits = &server.config().limits;
    let mut events = Vec::new();
    let shutdown = server.shutdown_token().clone();
    let deadline = Instant::now() + Duration::from_secs(limits.unauthenticated_timeout_secs);
    let grace = Duration::from_secs(limits.rate_limit_grace_secs);
    let mut bytes_bucket =
        TokenBucket::new(limits.max_bytes_per_second, limits.max_bytes_per_second * 2);
    let mut stanzas_bucket = TokenBucket::new(
        limits.max_stanzas_per_second,
        limits.max_stanzas_per_second * 2,
    );
    // When the stream first went over its rate, if it still is.
    let mut throttled_since: Option<Instant> = None;
    // While over its rate the stream is not read (TCP pushes back on the sender); stanzas
    // for it are still written.
    // The wait until reading resumes, only while over the rate: a timer of its own exists
    // only then (an idle or a busy stream within its rate has none, and no timer is made
    // per pass of the loop).
    let mut throttle: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    // When the client last sent anything (for the idle check once bound).
    let mut last_read = Instant::now();
    // One timer for the life of the stream, re-armed only when it fires: reads just record
    // the time, so an active client costs no timer work per read.
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    // When the liveness check was sent, until the client shows it is there.
    let mut probed: Option<Instant> = None;
    loop {
        let bound = stream.is_bound();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                return Close::err(StreamErrorCondition::SystemShutdown);
            }
            wake = stream.wake() => {
                if let Err(close) = stream.on_wake(wake) {
                    return close;
                }
                if send(&mut stream.out, transport).await.is_err() {
                    return Close::Dropped;
                }
            }
            _ = async {
                if let Some(wait) = throttle.as_mut() {
                    wait.as_mut().await;
                }
            }, if throttle.is_some() => {
                throttle = None;
            }
            ready = transport.readable(), if throttle.is_none() => {
                if ready.is_err() {
                    return Close::Dropped;
                }
                let (n, parsed) = match transport.receive(&mut events) {
                    Received::Closed => return Close::Dropped,
                    Received::Nothing => continue,
                    Received::Events { bytes, parsed } => (bytes, parsed),
                };
                let now = Instant::now();
                last_read = now;
                let wait = bytes_bucket
                    .charge(n as u64, now.into_std())
                    .max(stanzas_bucket.charge(events.len() as u64, now.into_std()));
                if wait.is_zero() {
                    throttled_since = None;
                } else {
                    let since = *throttled_since.get_or_insert_with(|| {
                        counters::incr(Counter::RateLimited);
                        tracing::warn!(peer = %stream.peer, "input rate limit reached: pausing reads");
                        now
                    });
                    if now.duration_since(since) > grace {
                        return Close::err_text(
                            StreamErrorCondition::PolicyViolation,
                            "sending too fast for too long",
                        );
                    }
                    throttle = Some(Box::pin(tokio::time::sleep_until(now + wait)));
                }
                // Boxed, once per read: handling events can go through SASL, binding,
                // storage and the modules' hooks, a future of several KiB that would
                // otherwise stay in the connection's task for its whole life, idle or not.
                // One short-lived allocation per read (carrying every stanza it brought)
                // costs far less than that memory held by every idle session.
                let restarted =
                    match Box::pin(handle_events(stream, transport, &mut events, &shutdown)).await {
                        Ok(restarted) => restarted,
                        Err(close) => return close,
                    };
                if send(&mut stream.out, transport).await.is_err() {
                    return Close::Dropped;
                }
                // The list grew to the largest batch read; an idle stream keeps none (one
                // small allocation per read under load).
                events = Vec::new();
                if restarted {
                    // Anything the client sent after <starttls/> or <auth/> in the same
                    // read was sent before it could know the outcome: discard it
                    // (RFC 6120 §5.4.3.3, the STARTTLS command-injection rule).
                    events.clear();
                    transport.restart();
                    continue;
                }
                if let Err(e) = parsed {
                    let cond = StreamErrorCondition::from_name(e.stream_condition())
                        .unwrap_or(StreamErrorCondition::NotWellFormed);
                    return Close::err_text(cond, e.to_string());
                }
            }
            _ = &mut idle_check, if bound => {
                let now = Instant::now();
                // Anything read since the check answers it, even when the idle time is
                // shorter than the wait for the answer.
                let answered = probed.is_some_and(|at| last_read >= at);
                if now.duration_since(last_read) < idle || answered {
                    probed = None;
                    idle_check.as_mut().reset(last_read + idle);
                } else if probed.is_none() {
                    // XEP-0478 / RFC 6120 §4.6: check liveness before giving up; with the
                    // transport's own check if it has one (a WebSocket ping), else in XMPP.
                    probed = Some(now);
                    match transport.keepalive().await {
                        Ok(true) => {}
                        Ok(false) => {
                            stream.liveness_probe();
                            if send(&mut stream.out, transport).await.is_err() {
                                return Close::Dropped;
                            }
                        }
                        Err(_) => return Close::Dropped,
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

/// Handles the events of one read in order; `Ok(true)` when the stream restarted (after
/// SASL or STARTTLS) and the rest of the read must be discarded.
async fn handle_events<T: StanzaTransport>(
    stream: &mut ClientStream,
    transport: &mut T,
    events: &mut Vec<StreamEvent>,
    shutdown: &CancellationToken,
) -> Result<bool, Close> {
    for ev in events.drain(..) {
        match stream.on_event(ev).await? {
            Next::Continue => {}
            Next::Restart => return Ok(true),
            Next::StartTls => {
                if send(&mut stream.out, transport).await.is_err() {
                    return Err(Close::Dropped);
                }
                // Boxed: once per stream, and the handshake's future (a whole
                // `ServerConnection`) would make every read's allocation larger.
                if Box::pin(transport.upgrade_tls()).await.is_err() {
                    return Err(Close::Dropped);
                }
                stream.tls_established(transport.channel_bindings());
                return Ok(true);
            }
            Next::Delay(delay) => {
                if send(&mut stream.out, transport).await.is_err() {
                    return Err(Close::Dropped);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {
                        return Err(Close::err(StreamErrorCondition::SystemShutdown));
                    }
                }
                stream.after_delay()?;
            }
        }
    }
    Ok(false)
}

impl ClientStream {
    /// A new stream on `transport`, before the client's stream header.
    pub fn new<T: StanzaTransport>(ctx: Arc<StreamContext>, transport: &T) -> Self {
        let confidential = transport.is_confidential();
        let can_upgrade = transport.can_upgrade();
        let stage = if !confidential && can_upgrade && ctx.server.config().tls.require_starttls {
            Stage::Plain
        } else {
            Stage::Unauthenticated(Box::default())
        };
        ClientStream {
            ctx,
            peer: transport.peer(),
            confidential,
            can_upgrade,
            channel_bindings: transport.channel_bindings(),
            host: None,
            header_sent: false,
            stage,
            out: Output::new(transport.framing()),
        }
    }

    fn server(&self) -> &Arc<Server> {
        &self.ctx.server
    }

    /// What the stream wrote and not yet sent.
    pub fn output(&mut self) -> &mut Output {
        &mut self.out
    }

    /// Whether a resource is bound (stanzas flow).
    pub fn is_bound(&self) -> bool {
        matches!(self.stage, Stage::Bound(_))
    }

    fn bound_mut(&mut self) -> Option<&mut Bound> {
        match &mut self.stage {
            Stage::Bound(b) => Some(b),
            _ => None,
        }
    }

    fn auth_mut(&mut self) -> Option<&mut Auth> {
        match &mut self.stage {
            Stage::Unauthenticated(a) => Some(a),
            _ => None,
        }
    }

    /// The authenticated account, once there is one.
    fn user(&self) -> Option<&BareJid> {
        match &self.stage {
            Stage::Authenticated { user } => Some(user),
            Stage::Bound(b) => Some(&b.user),
            _ => None,
        }
    }

    /// Resolves when the bound session needs the stream: it was kicked, a resuming stream
    /// asks for it, or a stanza arrived for the client. Pending forever before binding.
    pub async fn wake(&mut self) -> Wake {
        let Stage::Bound(b) = &mut self.stage else {
            return std::future::pending().await;
        };
        tokio::select! {
            biased;
            (cond, text) = b.handle.kicked() => Wake::Kicked(cond, text),
            req = takeover_request(&mut b.takeover) => Wake::Takeover(req),
            first = b.inbox.stanzas.recv() => Wake::Outgoing(first),
        }
    }

    /// Handles what [`wake`](Self::wake) returned: writes a batch of queued stanzas (up to
    /// [`WRITE_BATCH`], one send for a burst of deliveries).
    pub fn on_wake(&mut self, wake: Wake) -> Result<(), Close> {
        let Stage::Bound(b) = &mut self.stage else {
            return Ok(());
        };
        match wake {
            Wake::Kicked(cond, text) => Err(Close::Error(cond, Some(text))),
            Wake::Takeover(Some(req)) => Err(Close::TakenOver(req)),
            Wake::Takeover(None) => {
                b.takeover = None;
                Ok(())
            }
            Wake::Outgoing(None) => Err(Close::Dropped),
            Wake::Outgoing(Some(first)) => {
                b.offer_outgoing(first, &mut self.out);
                for _ in 1..WRITE_BATCH {
                    match b.inbox.stanzas.try_recv() {
                        Ok(o) => b.offer_outgoing(o, &mut self.out),
                        Err(_) => break,
                    }
                }
                b.request_ack_if_due(&mut self.out);
                let max = self.ctx.sm_config.load().max_unacked_stanzas;
                if b.sm.as_ref().is_some_and(|s| s.unacked_len() > max) {
                    return Err(Close::err_text(
                        StreamErrorCondition::PolicyViolation,
                        "too many stanzas left unacknowledged",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The transport is TLS now (after [`Next::StartTls`]): the stream restarts.
    pub fn tls_established(&mut self, channel_bindings: ChannelBindings) {
        self.confidential = true;
        self.can_upgrade = false;
        self.channel_bindings = channel_bindings;
        self.stage = Stage::Unauthenticated(Box::default());
        self.header_sent = false;
    }

    /// The delay asked for by [`Next::Delay`] has passed: writes the SASL failure held
    /// back, and ends the stream after too many failed attempts.
    pub fn after_delay(&mut self) -> Result<(), Close> {
        let max = self.server().config().limits.max_auth_attempts;
        let Some(auth) = self.auth_mut() else {
            return Ok(());
        };
        let failure = auth.delayed_failure.take();
        let attempts = auth.attempts;
        if let Some(f) = failure {
            self.write(&f);
        }
        check_attempts(attempts, max)
    }

    /// Ends the stream as `close` says: counts it and writes the closing framing (after
    /// handing the session over, for a take-over).
    pub fn end(&mut self, close: Close) -> Ending {
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
        let closing = Ending {
            send_and_close: true,
            keep_resumable: false,
        };
        match close {
            Close::Error(cond, text) => {
                tracing::debug!(peer = %self.peer, condition = %cond, "closing stream with error");
                self.write_stream_error(cond, text.as_deref(), None);
                closing
            }
            Close::ErrorWith(cond, app) => {
                self.write_stream_error(cond, None, Some(app));
                closing
            }
            Close::IdleTimeout => {
                self.write_stream_error(
                    StreamErrorCondition::ConnectionTimeout,
                    Some("no answer to the liveness check"),
                    None,
                );
                Ending {
                    keep_resumable: true,
                    ..closing
                }
            }
            Close::TakenOver(req) => {
                // Hand the session over before spending any time on this dead stream.
                if let Some(d) = self.detach() {
                    let _ = req.send(d);
                }
                self.write_stream_error(
                    StreamErrorCondition::Conflict,
                    Some("the session was resumed on another connection"),
                    None,
                );
                closing
            }
            Close::Graceful => {
                self.out.framing.write_close(&mut self.out.bytes);
                closing
            }
            Close::Dropped => Ending {
                send_and_close: false,
                keep_resumable: true,
            },
        }
    }

    /// Releases the session after the stream ended: a resumable one is parked for
    /// resumption if the connection was lost, anything else ends for good.
    pub async fn release(mut self, ending: Ending) {
        let resumable = ending.keep_resumable
            && matches!(&self.stage, Stage::Bound(b) if b.sm.as_ref().is_some_and(|s| s.id.is_some()));
        if let Some(detached) = resumable.then(|| self.detach()).flatten() {
            let server = self.server().clone();
            let resumptions = self.ctx.resumptions.clone();
            server
                .tasks()
                .spawn(sm::park(server.clone(), resumptions, detached));
        } else if let (Stage::Bound(mut b), Some(host)) = (
            std::mem::replace(&mut self.stage, Stage::Ended),
            self.host.clone(),
        ) {
            let held = b.csi.take_all().into();
            sm::end_session(
                self.server(),
                &self.ctx.resumptions,
                &host,
                &b.handle,
                Some(&mut b.inbox),
                b.sm.as_mut(),
                held,
            )
            .await;
        }
        tracing::debug!(peer = %self.peer, "connection closed");
    }

    /// Asks a silent client to show it is there: an SM ack request, or a ping.
    pub fn liveness_probe(&mut self) {
        let Some(host) = self.host.clone() else {
            return;
        };
        let Stage::Bound(b) = &mut self.stage else {
            return;
        };
        if b.sm.is_some() {
            self.out.ack_request();
            return;
        }
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", format!("idle-{}", random_id(8)))
            .with_attr("from", host.domain())
            .with_attr("to", b.handle.jid().as_str())
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        b.write_stanza(ping, &mut self.out);
    }

    /// Takes the session off this stream, with everything needed to continue it elsewhere
    /// (a resuming stream or the parked-session task); `None` unless it is a resumable
    /// stream-management session.
    fn detach(&mut self) -> Option<Detached> {
        let host = self.host.clone()?;
        let resumable =
            matches!(&self.stage, Stage::Bound(b) if b.sm.is_some() && b.takeover.is_some());
        if !resumable {
            return None;
        }
        let Stage::Bound(mut b) = std::mem::replace(&mut self.stage, Stage::Ended) else {
            return None;
        };
        let mut state = b.sm.take()?;
        state.connection_changed();
        Some(Detached {
            handle: b.handle,
            inbox: b.inbox,
            state,
            takeover: b.takeover.take()?,
            host,
            held: b.csi.take_all().into(),
        })
    }

    /// Writes `<stream:error>` (with an application-specific condition if given) and closes
    /// the stream.
    fn write_stream_error(
        &mut self,
        condition: StreamErrorCondition,
        text: Option<&str>,
        app: Option<Element>,
    ) {
        if !self.header_sent {
            self.write_header(None);
        }
        let mut error = condition.to_element(text);
        if let Some(app) = app {
            error.push_child(app);
        }
        self.out.framing.write_error(&mut self.out.bytes, &error);
        self.out.framing.write_close(&mut self.out.bytes);
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
        let id = random_id(16);
        self.out.framing.write_open(
            &mut self.out.bytes,
            &StreamOpen {
                content_ns: ns::CLIENT,
                id: &id,
                from: &from,
                to,
                version: "1.0",
                lang: "en",
            },
        );
        self.header_sent = true;
    }

    fn write_features(&mut self, features: &[Element]) {
        self.out
            .framing
            .write_features(&mut self.out.bytes, ns::CLIENT, features);
    }

    /// Writes a negotiation element (not counted by stream management).
    fn write(&mut self, el: &Element) {
        self.out.element(el);
    }

    /// Handles one event of the client's stream.
    pub async fn on_event(&mut self, ev: StreamEvent) -> Result<Next, Close> {
        match ev {
            StreamEvent::Open(header) => self.on_stream_open(header).map(|()| Next::Continue),
            StreamEvent::Close => Err(Close::Graceful),
            StreamEvent::Stanza(el) => self.on_element(el).await,
        }
    }

    /// RFC 6120 §4.7: validate the client's stream header, answer with ours and the features.
    fn on_stream_open(&mut self, header: StreamHeader) -> Result<(), Close> {
        if self.out.framing == Framing::Bosh {
            // XEP-0206 §3: the session creation request (or a restart request, §5) is the
            // header; the content namespace is jabber:client, each stanza declaring it.
            if header.name != "body" || header.ns != rookery_xml::NS_HTTPBIND {
                return Err(Close::err_text(
                    StreamErrorCondition::InvalidNamespace,
                    "a BOSH stream opens with <body/> in http://jabber.org/protocol/httpbind",
                ));
            }
        } else if self.out.framing == Framing::WebSocket {
            // RFC 7395 §3.4: `<open/>` in the framing namespace; the content namespace is
            // jabber:client by definition, each stanza declaring it.
            if header.name != "open" || header.ns != rookery_xml::NS_FRAMING {
                return Err(Close::err_text(
                    StreamErrorCondition::InvalidNamespace,
                    "a WebSocket stream opens with <open/> in urn:ietf:params:xml:ns:xmpp-framing",
                ));
            }
        } else if header.name != "stream" || header.ns != ns::STREAMS {
            return Err(Close::err_text(
                StreamErrorCondition::InvalidNamespace,
                "the stream element must be <stream> in http://etherx.jabber.org/streams",
            ));
        } else if header.default_ns.as_deref() != Some(ns::CLIENT) {
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
        let host = domain.and_then(|d| self.server().host(&d));
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
        let tls = self.confidential;
        let has_cb = !self.channel_bindings.supported().is_empty();
        let allowed = self.ctx.sasl_config.load();
        Mechanism::ALL
            .into_iter()
            .filter(|m| allowed.allows(*m))
            .filter(|m| match m {
                Mechanism::Plain => tls,
                m if m.is_plus() => tls && has_cb,
                _ => true,
            })
            .collect()
    }

    fn features(&self) -> Vec<Element> {
        let mut out = Vec::new();
        match &self.stage {
            Stage::Plain => {
                out.push(
                    Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
                );
            }
            Stage::Unauthenticated(_) => {
                if self.can_upgrade && !self.confidential {
                    out.push(Element::new("starttls", ns::TLS));
                }
                let mut mechs = Element::new("mechanisms", ns::SASL);
                for m in self.offered_mechanisms() {
                    mechs.push_child(Element::new("mechanism", ns::SASL).with_text(m.name()));
                }
                out.push(mechs);
                if self.confidential {
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
            Stage::Authenticated { .. } | Stage::Bound(_) | Stage::Ended => {
                // After a SASL2 login with Bind 2 the stream is bound without a restart:
                // binding is no longer on offer (XEP-0386), nor SM once enabled.
                let (bound, sm_enabled) = match &self.stage {
                    Stage::Bound(b) => (true, b.sm.is_some()),
                    _ => (false, false),
                };
                if !bound {
                    out.push(Element::new("bind", ns::BIND));
                    // RFC 6121 Appendix E: kept for old clients, marked optional.
                    out.push(
                        Element::new("session", ns::SESSION)
                            .with_child(Element::new("optional", ns::SESSION)),
                    );
                }
                if self.sm_config().enabled && !sm_enabled {
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
        let stage = match &self.stage {
            Stage::Plain => StageName::Plain,
            Stage::Unauthenticated(a) => StageName::Unauthenticated {
                exchange: a.sasl.is_some(),
            },
            Stage::Authenticated { .. } => StageName::Authenticated,
            Stage::Bound(_) => StageName::Bound,
            Stage::Ended => return Err(Close::Dropped),
        };
        use StageName::*;
        // The once-per-stream exchanges (SASL, registration, binding) are boxed, so the
        // future the driver allocates for every event is the size of the stanza path.
        match (stage, el.ns(), el.name()) {
            (Plain | Unauthenticated { .. }, ns::TLS, "starttls") => self.starttls(),
            (Plain, ns::SASL, "auth") => {
                let fail = Element::new("failure", ns::SASL)
                    .with_child(Element::new("encryption-required", ns::SASL));
                self.write(&fail);
                Ok(Next::Continue)
            }
            (Unauthenticated { .. }, ns::SASL, "auth") => {
                let initial = decode_sasl(&el);
                Box::pin(self.sasl_auth(&el, initial)).await
            }
            (Plain, NS_SASL2, _) => {
                let fail = Element::new("failure", NS_SASL2)
                    .with_child(Element::new("encryption-required", ns::SASL));
                self.write(&fail);
                Ok(Next::Continue)
            }
            (Unauthenticated { exchange: false }, NS_SASL2, "authenticate") => {
                Box::pin(self.sasl2_authenticate(el)).await
            }
            (Unauthenticated { .. }, NS_SASL2 | ns::SASL, "response") => {
                let data = decode_sasl(&el);
                Box::pin(self.sasl_step(|s| data.and_then(|d| s.step(&d)))).await
            }
            (Unauthenticated { .. }, NS_SASL2 | ns::SASL, "abort") => {
                if let Some(auth) = self.auth_mut() {
                    auth.sasl = None;
                }
                self.sasl_failure(SaslError::Aborted)
            }
            (Unauthenticated { .. }, ns::CLIENT, "iq") if self.answers_before_auth(&el) => {
                Box::pin(self.register(el)).await;
                Ok(Next::Continue)
            }
            (Authenticated, ns::CLIENT, "iq") => Box::pin(self.pre_bind_iq(el)).await,
            (Authenticated | Bound, sm::NS, _) => self.on_sm(el).await.map(|()| Next::Continue),
            (Bound, crate::csi::NS, "inactive") => {
                if let Some(b) = self.bound_mut() {
                    b.csi.set_inactive();
                    b.handle.set_inactive(true);
                }
                Ok(Next::Continue)
            }
            (Bound, crate::csi::NS, "active") => {
                // §5: everything held is on the wire before anything the client sends next
                // is processed (the driver sends what was written before reading on).
                if let Stage::Bound(b) = &mut self.stage {
                    b.handle.set_inactive(false);
                    for o in b.csi.set_active() {
                        b.write_outgoing(*o, &mut self.out);
                    }
                    b.request_ack_if_due(&mut self.out);
                }
                Ok(Next::Continue)
            }
            (Authenticated, crate::csi::NS, _) => Ok(Next::Continue),
            (Bound, _, _) => self.on_stanza(el).await.map(|()| Next::Continue),
            (_, ns::CLIENT, "message" | "presence" | "iq") => Err(Close::err_text(
                StreamErrorCondition::NotAuthorized,
                "authenticate and bind a resource first",
            )),
            (_, ns::CLIENT, _) => Err(Close::err(StreamErrorCondition::UnsupportedStanzaType)),
            (_, ns::SERVER, _) => Err(Close::err(StreamErrorCondition::InvalidNamespace)),
            _ => Err(Close::err(StreamErrorCondition::UnsupportedStanzaType)),
        }
    }

    /// RFC 6120 §5.4: the transport upgrades in place, then the stream restarts.
    fn starttls(&mut self) -> Result<Next, Close> {
        if self.confidential || !self.can_upgrade {
            self.write(&Element::new("failure", ns::TLS));
            return Err(Close::Dropped);
        }
        self.write(&Element::new("proceed", ns::TLS));
        Ok(Next::StartTls)
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
            if let Some(auth) = self.auth_mut() {
                auth.sasl2 = None;
            }
            self.write(&fail);
            return Ok(Next::Continue);
        };
        let plus_advertised = offered.iter().any(|m| m.is_plus());
        // XEP-0474: the client can check that nobody stripped what was offered.
        let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        let cbs = self.channel_bindings.supported();
        let cb_names: Vec<&str> = cbs.iter().map(|c| c.name()).collect();
        let session = ServerSession::new(
            mech,
            self.channel_bindings.clone(),
            plus_advertised,
            self.confidential,
        )
        .with_downgrade_protection(&names, (!cb_names.is_empty()).then_some(&cb_names[..]));
        if let Some(auth) = self.auth_mut() {
            auth.sasl = Some(session);
            auth.attempt = Some(AuthAttempt {
                mechanism: mech.name(),
                user: None,
                account: None,
            });
        }
        self.sasl_step(|s| initial.and_then(|d| s.start(&d))).await
    }

    /// Whether the exchange in progress is SASL2.
    fn in_sasl2(&self) -> bool {
        matches!(&self.stage, Stage::Unauthenticated(a) if a.sasl2.is_some())
    }

    /// Drives the SASL exchange one client message further.
    async fn sasl_step(
        &mut self,
        f: impl FnOnce(&mut ServerSession) -> Result<Step, SaslError>,
    ) -> Result<Next, Close> {
        let Some(mut session) = self.auth_mut().and_then(|a| a.sasl.take()) else {
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
                            // SCRAM needs the record of its hash. PLAIN checks the password
                            // against any record: SHA-256 first, then the others an imported
                            // account may have only (SCRAM-SHA-1 from ejabberd or Prosody).
                            let hashes: &[rookery_sasl::HashAlg] = match &hash {
                                Some(h) => std::slice::from_ref(h),
                                None => &[
                                    rookery_sasl::HashAlg::Sha256,
                                    rookery_sasl::HashAlg::Sha512,
                                    rookery_sasl::HashAlg::Sha1,
                                ],
                            };
                            let mut found = None;
                            for h in hashes {
                                match self
                                    .server()
                                    .storage()
                                    .accounts
                                    .get_credentials(&domain, &node, *h)
                                    .await
                                {
                                    Ok(Some(c)) => {
                                        found = Some(c);
                                        break;
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        tracing::error!(error = %e, "credential look-up failed");
                                        return self
                                            .sasl_failure(SaslError::Internal("storage".into()));
                                    }
                                }
                            }
                            found
                        }
                        (None, _) => None,
                    };
                    account = jid;
                    step = session.credentials(creds);
                }
                Ok(Step::Challenge(data)) => {
                    let ns = if self.in_sasl2() { NS_SASL2 } else { ns::SASL };
                    let el = Element::new("challenge", ns).with_text(B64.encode(data));
                    self.write(&el);
                    if let Some(auth) = self.auth_mut() {
                        auth.sasl = Some(session);
                    }
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
                        return self.sasl_failure(SaslError::NotAuthorized);
                    };
                    // An authorization identity other than the account itself is not allowed.
                    if let Some(z) = authzid.filter(|z| !z.is_empty()) {
                        if BareJid::new(&z).ok().as_ref() != Some(&jid) {
                            return self.sasl_failure(SaslError::InvalidAuthzid);
                        }
                    }
                    // After the proof, so only the account's owner learns it is disabled.
                    if let Err(e) = self.refuse_disabled(&jid).await {
                        return self.sasl_failure(e);
                    }
                    if let Some(auth) = self.auth_mut() {
                        auth.attempt = None;
                    }
                    if let Some(password) = session.take_verified_password() {
                        complete_records(self.server(), &jid, password);
                    }
                    crate::metrics::login(session.mechanism().name(), true);
                    if self.in_sasl2() {
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
                    self.stage = Stage::Authenticated { user: jid };
                    self.header_sent = false;
                    return Ok(Next::Restart);
                }
                Err(e) => return self.sasl_failure(e),
            }
        }
    }

    /// `Err(AccountDisabled)` when an administrator disabled the account (XEP-0133 §4.5):
    /// every way of logging in (SASL, SASL2, FAST tokens) passes here after its proof.
    pub(crate) async fn refuse_disabled(&self, jid: &BareJid) -> Result<(), SaslError> {
        let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
        match self
            .server()
            .storage()
            .account_disabled(jid.domain().as_str(), node)
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => {
                tracing::info!(peer = %self.peer, jid = %jid, "login refused: the account is disabled");
                Err(SaslError::AccountDisabled)
            }
            Err(e) => {
                tracing::error!(error = %e, "disabled-account look-up failed");
                Err(SaslError::Internal("storage".into()))
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
        if let Some(a) = self.auth_mut().and_then(|a| a.attempt.as_mut()) {
            a.user = Some(user);
            a.account = jid;
        }
    }

    /// Answers a failed SASL exchange: slowed down by the throttle (the `<failure/>` is
    /// written after [`Next::Delay`]), and the stream closed after too many attempts
    /// (RFC 6120 §6.4.5 lets the server limit retries). An abort is answered at once.
    ///
    /// Logs one line per failure with the name tried and the client's address, for
    /// fail2ban-style tools: `authentication failed user=alice@example.org addr=192.0.2.7
    /// mechanism=SCRAM-SHA-256 reason=not-authorized` (`user=(none)` when the exchange failed
    /// before naming one).
    fn sasl_failure(&mut self, e: SaslError) -> Result<Next, Close> {
        let fail = self.sasl_failure_element(e.condition());
        let counted = !matches!(e, SaslError::Aborted);
        let attempt = self.auth_mut().and_then(|a| a.attempt.take());
        let delay = counted.then(|| {
            counters::incr(Counter::AuthFailures);
            let (mechanism, user, account) = match attempt {
                Some(a) => (a.mechanism, a.user, a.account),
                None => ("(none)", None, None),
            };
            crate::metrics::login(mechanism, false);
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
            self.ctx
                .throttle
                .failure(self.peer.ip(), account.as_ref().map(|a| a.as_str()))
        });
        let max = self.server().config().limits.max_auth_attempts;
        let Some(auth) = self.auth_mut() else {
            return Ok(Next::Continue);
        };
        auth.sasl = None;
        auth.sasl2 = None;
        auth.fast_used = None;
        if let Some(delay) = delay {
            auth.attempts += 1;
            auth.delayed_failure = Some(fail);
            return Ok(Next::Delay(delay));
        }
        let attempts = auth.attempts;
        self.write(&fail);
        check_attempts(attempts, max).map(|()| Next::Continue)
    }

    /// A SASL `<failure/>` in the namespace of the exchange in progress (RFC 6120 §6.5 or
    /// XEP-0388 §2.6.2, whose failure carries the RFC 6120 condition).
    fn sasl_failure_element(&self, condition: &str) -> Element {
        let ns = if self.in_sasl2() { NS_SASL2 } else { ns::SASL };
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
        let Some(user) = self.user().cloned() else {
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
        self.bind(full.clone()).await?;
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

    /// Registers the session in the core's session registry: the stream is bound.
    async fn bind(&mut self, jid: FullJid) -> Result<Arc<SessionHandle>, Close> {
        let Some(user) = self.user().cloned() else {
            return Err(Close::err(StreamErrorCondition::NotAuthorized));
        };
        let queue = self.server().config().limits.session_send_queue;
        let (handle, inbox) = SessionHandle::with_peer(jid.clone(), queue, Some(self.peer));
        handle.set_transport(self.out.transport());
        if let Some(old) = self.server().sessions().bind(handle.clone()) {
            // RFC 6120 §7.7.2.2: this server's policy is that the newer session wins.
            old.kick(
                StreamErrorCondition::Conflict,
                "replaced by a new session with the same resource",
            );
        }
        // A reload may have retired the host after this stream opened: checked after the
        // registration, so `Server::retire_host` either finds this session or is seen here.
        if !self.server().serves(jid.domain().as_str()) {
            handle.kick(
                StreamErrorCondition::HostGone,
                "this host is no longer served here",
            );
        }
        self.stage = Stage::Bound(Bound {
            user,
            handle: handle.clone(),
            inbox,
            sm: None,
            takeover: None,
            csi: ClientState::default(),
        });
        tracing::info!(peer = %self.peer, jid = %jid, "resource bound");
        if let Some(host) = self.host.clone() {
            host.hooks()
                .run(
                    self.server(),
                    SessionBound {
                        session: handle.clone(),
                    },
                )
                .await;
        }
        Ok(handle)
    }

    /// A stanza from the bound client: stamped and routed by the core, except the few
    /// requests the stream answers itself.
    async fn on_stanza(&mut self, el: Element) -> Result<(), Close> {
        let Stage::Bound(b) = &mut self.stage else {
            return Err(Close::err(StreamErrorCondition::InternalServerError));
        };
        let jid = b.handle.jid().clone();
        let Some(stanza) = self
            .ctx
            .server
            .stamp_from_client(&jid, el)
            .map_err(Close::err)?
        else {
            // Answered already (a malformed 'to').
            b.count_handled();
            return Ok(());
        };
        if stanza.name() == "iq" && stanza.attr("to").is_none() {
            let is_set = IqType::of(&stanza) == Some(IqType::Set);
            if is_set && stanza.has_child("session", ns::SESSION) {
                b.write_stanza(iq_result(&stanza, None), &mut self.out);
                b.count_handled();
                return Ok(());
            }
            if stanza.has_child("bind", ns::BIND) {
                let e = StanzaError::new(StanzaErrorCondition::NotAllowed)
                    .with_text("a resource is already bound on this stream");
                if let Some(reply) = error_reply(&stanza, &e) {
                    b.write_stanza(reply, &mut self.out);
                }
                b.count_handled();
                return Ok(());
            }
        }
        let server = self.server().clone();
        server.route_from_client(&jid, stanza).await;
        if let Some(b) = self.bound_mut() {
            b.count_handled();
        }
        Ok(())
    }
}

/// The stage an element arrives in, for dispatch.
#[derive(Debug, Clone, Copy)]
enum StageName {
    Plain,
    /// `exchange`: a SASL exchange is in progress.
    Unauthenticated {
        exchange: bool,
    },
    Authenticated,
    Bound,
}

/// RFC 6120 §6.4.5: the stream ends after too many failed authentication attempts.
fn check_attempts(attempts: u32, max: u32) -> Result<(), Close> {
    if attempts >= max {
        counters::incr(Counter::AuthAttemptsExceeded);
        return Err(Close::err_text(
            StreamErrorCondition::PolicyViolation,
            "too many failed authentication attempts",
        ));
    }
    Ok(())
}

impl Bound {
    /// Writes a queued stanza now, or holds it while the client is inactive (XEP-0352).
    fn offer_outgoing(&mut self, o: Box<Outgoing>, out: &mut Output) {
        if !self.csi.is_inactive() {
            return self.write_outgoing(*o, out);
        }
        for o in self.csi.offer(o) {
            self.write_outgoing(*o, out);
        }
    }

    /// Serialises one stanza from the session's queue: the one place where what the core
    /// delivered is written. Under stream management it joins the unacknowledged queue
    /// (its receipt resolves on the client's ack), otherwise its receipt resolves once the
    /// bytes are sent.
    fn write_outgoing(&mut self, o: Outgoing, out: &mut Output) {
        let Outgoing { stanza, written } = o;
        out.shared(&stanza);
        match self.sm.as_mut() {
            Some(sm) => sm.sent(stanza, written),
            None => out.receipts.extend(written),
        }
    }

    /// Writes a stanza the stream answers itself once bound (counted by stream management
    /// like any other).
    fn write_stanza(&mut self, stanza: Element, out: &mut Output) {
        out.element(&stanza);
        if let Some(sm) = self.sm.as_mut() {
            sm.sent(stanza, None);
        }
    }

    /// Asks for an acknowledgement when stream management wants one (XEP-0198 §4).
    fn request_ack_if_due(&mut self, out: &mut Output) {
        if self.sm.as_mut().is_some_and(StreamState::should_request) {
            out.ack_request();
        }
    }

    fn count_handled(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.handled();
        }
    }
}

const NS_STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";

impl ClientStream {
    /// The handler a module registered for an IQ on this stream before authentication, by
    /// the namespace of its payload (in-band registration, XEP-0077 §3.1).
    fn pre_auth_handler(&self, iq: &Element) -> Option<Arc<dyn PreAuthHandler>> {
        let payload = iq.children().next()?;
        self.host.as_ref()?.pre_auth_handler(payload.ns()).cloned()
    }

    /// `[stream_management]` as configured.
    fn sm_config(&self) -> Arc<sm::StreamManagementConfig> {
        self.ctx.sm_config.load_full()
    }

    /// `[fast]` as configured.
    fn fast_config(&self) -> Arc<crate::fast::FastConfig> {
        self.ctx.fast_config.load_full()
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
            (Some(handler), Some(iq_type @ (IqType::Get | IqType::Set))) if self.confidential => {
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

// ---- Stream management (XEP-0198) --------------------------------------------------------

impl ClientStream {
    async fn on_sm(&mut self, el: Element) -> Result<(), Close> {
        if !self.sm_config().enabled {
            return Err(Close::err(StreamErrorCondition::UnsupportedStanzaType));
        }
        let bound = self.is_bound();
        match (bound, el.name()) {
            (true, "enable") => {
                let reply = self.sm_enable(&el);
                self.write(&reply);
                Ok(())
            }
            (false, "resume") => match Box::pin(self.take_for_resume(&el)).await? {
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
            (true, "r") => {
                if let Some(h) = self
                    .bound_mut()
                    .and_then(|b| b.sm.as_ref().map(StreamState::inbound))
                {
                    let a = Element::new("a", sm::NS).with_attr("h", h.to_string());
                    self.write(&a);
                }
                Ok(())
            }
            (true, "a") => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Err(Close::err_text(
                        StreamErrorCondition::InvalidXml,
                        "an <a/> needs a numeric h",
                    ));
                };
                let Some(sm) = self.bound_mut().and_then(|b| b.sm.as_mut()) else {
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
        let config = self.sm_config();
        let resumptions = self.ctx.resumptions.clone();
        let Some(b) = self
            .bound_mut()
            .filter(|b| b.sm.is_none() && config.enabled)
        else {
            // Enabling twice or before binding.
            return sm_failed(StanzaErrorCondition::UnexpectedRequest, None);
        };
        let wants_resume = matches!(el.attr("resume"), Some("true" | "1"));
        let mut reply = Element::new("enabled", sm::NS);
        let mut state = StreamState::new(None, Duration::ZERO);
        if wants_resume {
            let secs = el
                .attr("max")
                .and_then(|m| m.parse::<u64>().ok())
                .filter(|m| *m > 0)
                .unwrap_or(config.resume_timeout_secs)
                .min(config.max_resume_timeout_secs);
            let (id, rx) = resumptions.register(b.user.clone());
            reply.set_attr("id", id.as_str());
            reply.set_attr("resume", "true");
            reply.set_attr("max", secs.to_string());
            state = StreamState::new(Some(id), Duration::from_secs(secs));
            b.takeover = Some(rx);
        }
        b.sm = Some(state);
        reply
    }

    /// XEP-0198 §5: takes over the session named by a `<resume/>`; `Err` is the `<failed/>`
    /// to send (the client may then bind normally).
    async fn take_for_resume(&mut self, el: &Element) -> Result<Result<Detached, Element>, Close> {
        if !self.sm_config().enabled {
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
        let Some(user) = self.user().cloned() else {
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
        let Some(user) = self.user().cloned() else {
            return;
        };
        for stanza in d.state.unacked() {
            self.out.shared(stanza);
        }
        let held = std::mem::take(&mut d.held);
        tracing::info!(peer = %self.peer, jid = %d.handle.jid(), "session resumed");
        counters::incr(Counter::SmResumed);
        d.handle.set_transport(self.out.transport());
        // The resumed stream starts active (its `ClientState` is new).
        d.handle.set_inactive(false);
        let mut b = Bound {
            user,
            handle: d.handle,
            inbox: d.inbox,
            sm: Some(d.state),
            takeover: Some(d.takeover),
            csi: ClientState::default(),
        };
        for o in held {
            b.write_outgoing(*o, &mut self.out);
        }
        b.request_ack_if_due(&mut self.out);
        self.stage = Stage::Bound(b);
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

/// After a PLAIN login, makes the SCRAM records the account lacks from the password it just
/// proved: an account imported with SCRAM-SHA-1 records only (ejabberd, Prosody) can then log
/// in with SCRAM-SHA-256 and -512 too. Off the stream's path; only when a record is missing.
fn complete_records(server: &Arc<Server>, jid: &BareJid, password: String) {
    let server = server.clone();
    let jid = jid.clone();
    server.clone().tasks().spawn(async move {
        let domain = jid.domain().as_str();
        let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
        let accounts = &server.storage().accounts;
        let mut missing = false;
        for hash in rookery_sasl::HashAlg::ALL {
            match accounts.get_credentials(domain, node, hash).await {
                Ok(Some(_)) => {}
                Ok(None) => missing = true,
                Err(e) => {
                    tracing::warn!(jid = %jid, error = %e, "credential look-up failed");
                    return;
                }
            }
        }
        if !missing {
            return;
        }
        let made = tokio::task::spawn_blocking(move || {
            rookery_sasl::generate_all(&password, rookery_storage::ScramCredentials::MIN_ITERATIONS)
        })
        .await;
        let Ok(Ok(creds)) = made else {
            tracing::warn!(jid = %jid, "SCRAM records not made from a PLAIN login");
            return;
        };
        match accounts.set_credentials(domain, node, &creds).await {
            Ok(()) => {
                tracing::info!(jid = %jid, "SCRAM records for every hash made from a PLAIN login")
            }
            Err(e) => tracing::warn!(jid = %jid, error = %e, "SCRAM records not stored"),
        }
    });
}

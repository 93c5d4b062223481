//! External components (XEP-0114, the Jabber Component Protocol) on a `component` listener.
//!
//! A component is a separate process serving one domain (a gateway, a bot platform) that
//! connects to the server over TCP and is trusted with everything addressed to that domain:
//!
//! 1. It opens `<stream:stream xmlns='jabber:component:accept' to='gateway.example.org'>`;
//!    the server answers with its header carrying a stream `id` and nothing else (the
//!    protocol has no version and no stream features). A domain with no `[component]`
//!    entry gets `host-unknown`.
//! 2. It sends `<handshake>` with the lower-case hex SHA-1 of the stream id followed by the
//!    domain's configured secret; the server compares it in constant time and answers
//!    `<handshake/>`, or `not-authorized` (one attempt per connection, XEP-0114 §3). Before
//!    the handshake nothing else is accepted, and it must come within
//!    `limits.unauthenticated_timeout_secs`.
//! 3. The server attaches a route under the domain (`Server::attach_component`): a bounded
//!    queue to this connection's task. Stanzas from the component must come from the domain
//!    or a JID in it (else `invalid-from`) and carry `to` and `from` (else
//!    `improper-addressing`); they are routed with `Server::route_from_entity`, the rules a
//!    module's service domain follows.
//! 4. When the connection ends the route is detached and whatever was still queued for the
//!    component is answered as the router answers a stanza for a domain nobody routes to.
//!
//! The connection is a [`TcpTransport`] like a client's, with the same stream parser and its
//! limits (stanza size, depth, attributes), the same input rates (`limits.max_bytes_per_second`,
//! `max_stanzas_per_second`, `rate_limit_grace_secs`) and a listener-wide connection count of
//! its own (see [`Components::connection_limits`]). Only the loop differs from a client
//! stream's: a component has no SASL, resource binding, stream management or session.

use crate::limits::{ConnectionLimits, TokenBucket};
use crate::transport::{Received, StanzaTransport};
use async_trait::async_trait;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::route::{AttachError, ExternalRoute, RouteError};
use rookery_core::settings::{Place, Section};
use rookery_core::Server;
use rookery_stanza::{
    ns, random_id, BareJid, HeaderError, IqType, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind, StreamErrorCondition,
};
use rookery_xml::{Element, Framing, StreamEvent, StreamHeader, StreamOpen};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Stanzas written in one batch before flushing, as for a client stream.
const WRITE_BATCH: usize = 64;
/// Answers to a disconnected component's queued stanzas given before other tasks may run.
const BOUNCE_BATCH: usize = 16;
/// Connections a component listener accepts beyond one per configured component: room for
/// handshakes in progress and for a component that reconnects while its old connection is
/// not yet seen gone (the new one is refused with `conflict` until then).
const SPARE_CONNECTIONS: usize = 4;

/// `[component."<domain>"]`: the external components that may connect to a `component`
/// listener, by domain.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ComponentsConfig(pub BTreeMap<String, ComponentConfig>);

/// One component's settings.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The shared secret of the handshake (XEP-0114 §3).
    pub secret: String,
}

// The secret stays out of logs and debug output.
impl std::fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentConfig")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for ComponentsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl Section for ComponentsConfig {
    const KEY: &'static str = "component";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# External components (XEP-0114) connecting to a [[listener]] of kind "component": one
# table per component domain with the secret of its handshake. The domain must not be a
# [[host]] or a module's service domain. The protocol has no TLS: bind the listener to
# loopback or a private network.
[component]
# [component."gateway.example.org"]
# secret = "a long random string"
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (domain, component) in &self.0 {
            let at = format!("{key}.\"{domain}\"");
            let bare = BareJid::new(domain)
                .ok()
                .filter(|j| j.node().is_none() && !domain.contains('/'));
            if bare.is_none() {
                return Err(ConfigError::invalid(at, "not a valid domain"));
            }
            if component.secret.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{at}.secret"),
                    "the secret must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// What the connections of the component listeners share: the server and the configured
/// components' secrets by (normalised) domain.
pub struct Components {
    server: Arc<Server>,
    secrets: HashMap<String, String>,
}

impl Components {
    /// Reads `[component]`. A configured domain that this server serves itself is reported
    /// now: such a component is refused with `conflict` when it connects.
    pub fn new(server: Arc<Server>) -> Arc<Self> {
        let config = server.config().section::<ComponentsConfig>();
        let mut secrets = HashMap::new();
        for (domain, component) in &config.0 {
            // Validated at start; normalised as the `to` of a stream header is.
            let Ok(jid) = BareJid::new(domain) else {
                continue;
            };
            let domain = jid.domain().to_string();
            if server.serves(&domain) || server.service(&domain).is_some() {
                tracing::warn!(
                    domain,
                    "component domain is served by this server: the component will be refused"
                );
            }
            secrets.insert(domain, component.secret.clone());
        }
        Arc::new(Components { server, secrets })
    }

    /// The connection count of one component listener: one per configured component plus
    /// [`SPARE_CONNECTIONS`], in total and per address. Kept apart from the clients' count
    /// so that neither can take the other's slots.
    pub fn connection_limits(&self) -> Arc<ConnectionLimits> {
        let max = self.secrets.len() + SPARE_CONNECTIONS;
        ConnectionLimits::new(max, max)
    }
}

/// Why a component connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    /// Send this stream error, then close.
    #[error("{0}: {1}")]
    Error(StreamErrorCondition, &'static str),
    /// The component closed its stream: answer with ours.
    #[error("closed by the component")]
    Closed,
    /// The connection is gone.
    #[error("connection lost")]
    Dropped,
}

/// The route to an attached component: its connection's queue. Routing never waits for the
/// component.
struct ComponentRoute {
    queue: mpsc::Sender<Stanza>,
}

#[async_trait]
impl ExternalRoute for ComponentRoute {
    async fn send(&self, stanza: Stanza) -> Result<(), RouteError> {
        match self.queue.try_send(stanza) {
            Ok(()) => Ok(()),
            // RFC 6120 §8.3.3.18 `resource-constraint` (type wait): the component is reached
            // but is not keeping up, and the sender may try again later. Not
            // `remote-server-timeout`, which says the recipient's server could not be reached
            // in time: it can, it is only behind.
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters::incr(Counter::SendQueueOverflows);
                Err(RouteError::Unroutable(StanzaError::new(
                    StanzaErrorCondition::ResourceConstraint,
                )))
            }
            // The connection is ending and detaches the route: what a stanza routed a moment
            // later gets.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RouteError::Unroutable(gone())),
        }
    }
}

/// The answer to a stanza for a component that went away: `remote-server-not-found`, what the
/// router answers for a domain with no route once the component is detached, so a sender
/// gets the same condition whether its stanza was queued a moment before the disconnection
/// or routed a moment after.
fn gone() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::RemoteServerNotFound)
        .with_text("the component is not connected")
}

/// How far the connection has come.
enum Stage {
    /// Waiting for the component's stream header.
    Opening,
    /// Header accepted for `domain`: waiting for the handshake.
    Handshake { domain: String },
    /// Attached under `domain`; `queue` holds what is routed to it.
    Attached {
        domain: String,
        queue: mpsc::Receiver<Stanza>,
    },
}

/// One component connection.
struct Connection {
    components: Arc<Components>,
    server: Arc<Server>,
    peer: SocketAddr,
    /// The stream id, which the handshake's hash covers.
    id: String,
    header_sent: bool,
    stage: Stage,
    out: Vec<u8>,
    /// When bytes were last sent (for the whitespace keepalive).
    last_write: Instant,
}

/// Runs one connection of a component listener to its end: the header and handshake, then
/// stanzas both ways; then detaches the component and answers what was left in its queue.
pub async fn run<T: StanzaTransport>(components: Arc<Components>, mut transport: T) {
    let server = components.server.clone();
    let mut conn = Connection {
        components,
        server,
        peer: transport.peer(),
        id: random_id(16),
        header_sent: false,
        stage: Stage::Opening,
        out: Vec::new(),
        last_write: Instant::now(),
    };
    let end = conn.drive(&mut transport).await;
    let domain = match &conn.stage {
        Stage::Opening => None,
        Stage::Handshake { domain } | Stage::Attached { domain, .. } => Some(domain.clone()),
    };
    tracing::info!(peer = %conn.peer, domain = ?domain, why = %end, "component connection ended");
    // Detached before the last bytes go out: the domain is free for a reconnection at once.
    conn.release().await;
    if conn.write_end(&end) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = transport.send(&conn.out).await;
            transport.close().await;
        })
        .await;
    }
}

/// Writes a stanza for the component, in the stream's content namespace.
fn write_stanza(out: &mut Vec<u8>, stanza: Stanza) {
    // Inside the server stanzas are in jabber:client; written with that as the parent
    // namespace they carry no `xmlns` and so take the stream's, jabber:component:accept.
    Framing::Stream.write_element(out, &stanza.into_element(), ns::CLIENT);
}

/// Waits for the next stanza for the attached component; pending forever before.
async fn next_outgoing(stage: &mut Stage) -> Option<Stanza> {
    match stage {
        Stage::Attached { queue, .. } => queue.recv().await,
        _ => std::future::pending().await,
    }
}

impl Connection {
    /// The read/write loop; returns why the connection ends.
    async fn drive<T: StanzaTransport>(&mut self, transport: &mut T) -> End {
        let server = self.server.clone();
        let limits = &server.config().limits;
        let shutdown = server.shutdown_token().clone();
        let deadline = Instant::now() + Duration::from_secs(limits.unauthenticated_timeout_secs);
        let grace = Duration::from_secs(limits.rate_limit_grace_secs);
        let mut bytes_bucket =
            TokenBucket::new(limits.max_bytes_per_second, limits.max_bytes_per_second * 2);
        let mut stanzas_bucket = TokenBucket::new(
            limits.max_stanzas_per_second,
            limits.max_stanzas_per_second * 2,
        );
        let mut throttled_since: Option<Instant> = None;
        // While over its rate the connection is not read (TCP pushes back on the component);
        // stanzas for it are still written.
        let mut resume_reading = Instant::now();
        // A whitespace keepalive (RFC 6120 §4.6.1) after this long without sending anything:
        // it keeps middleboxes from dropping a quiet connection, and a dead peer then fails
        // the connection through TCP's own retransmission limit. The component is not closed
        // for being silent: a gateway may have nothing to say for hours. One timer, re-armed
        // only when it fires.
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let keepalive = tokio::time::sleep(idle);
        tokio::pin!(keepalive);
        let mut events = Vec::new();
        loop {
            let attached = matches!(self.stage, Stage::Attached { .. });
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return End::Error(StreamErrorCondition::SystemShutdown, "the server is shutting down");
                }
                stanza = next_outgoing(&mut self.stage) => {
                    // The route holds the sender while attached; `None` cannot come before
                    // the connection detaches it.
                    let Some(stanza) = stanza else {
                        return End::Dropped;
                    };
                    write_stanza(&mut self.out, stanza);
                    if let Stage::Attached { queue, .. } = &mut self.stage {
                        for _ in 1..WRITE_BATCH {
                            match queue.try_recv() {
                                Ok(stanza) => write_stanza(&mut self.out, stanza),
                                Err(_) => break,
                            }
                        }
                    }
                    if let Err(end) = self.flush(transport).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(resume_reading), if resume_reading > Instant::now() => {}
                ready = transport.readable(), if resume_reading <= Instant::now() => {
                    if ready.is_err() {
                        return End::Dropped;
                    }
                    let (n, parsed) = match transport.receive(&mut events) {
                        Received::Closed => return End::Dropped,
                        Received::Nothing => continue,
                        Received::Events { bytes, parsed } => (bytes, parsed),
                    };
                    let now = Instant::now();
                    let wait = bytes_bucket
                        .charge(n as u64, now.into_std())
                        .max(stanzas_bucket.charge(events.len() as u64, now.into_std()));
                    if wait.is_zero() {
                        throttled_since = None;
                    } else {
                        let since = *throttled_since.get_or_insert_with(|| {
                            counters::incr(Counter::RateLimited);
                            tracing::warn!(peer = %self.peer, "component input rate limit reached: pausing reads");
                            now
                        });
                        if now.duration_since(since) > grace {
                            counters::incr(Counter::PolicyViolations);
                            return End::Error(
                                StreamErrorCondition::PolicyViolation,
                                "sending too fast for too long",
                            );
                        }
                        resume_reading = now + wait;
                    }
                    for ev in events.drain(..) {
                        if let Err(end) = self.on_event(ev).await {
                            return end;
                        }
                    }
                    if let Err(end) = self.flush(transport).await {
                        return end;
                    }
                    if let Err(e) = parsed {
                        counters::incr(Counter::BadXml);
                        tracing::info!(peer = %self.peer, error = %e, "component stream closed for bad XML");
                        let condition = StreamErrorCondition::from_name(e.stream_condition())
                            .unwrap_or(StreamErrorCondition::NotWellFormed);
                        return End::Error(condition, "the stream's XML was refused");
                    }
                }
                _ = &mut keepalive, if attached => {
                    if self.last_write.elapsed() >= idle {
                        self.out.push(b' ');
                        if let Err(end) = self.flush(transport).await {
                            return end;
                        }
                    }
                    keepalive.as_mut().reset(self.last_write + idle);
                }
                _ = tokio::time::sleep_until(deadline), if !attached => {
                    counters::incr(Counter::UnauthenticatedTimeouts);
                    return End::Error(
                        StreamErrorCondition::ConnectionTimeout,
                        "the handshake took too long",
                    );
                }
            }
        }
    }

    /// Sends what was written.
    async fn flush<T: StanzaTransport>(&mut self, transport: &mut T) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        if transport.send(&self.out).await.is_err() {
            return Err(End::Dropped);
        }
        self.out.clear();
        // Like a client stream's output: a burst's buffer is not kept while idle.
        if self.out.capacity() > 4096 {
            self.out = Vec::new();
        }
        self.last_write = Instant::now();
        Ok(())
    }

    async fn on_event(&mut self, event: StreamEvent) -> Result<(), End> {
        match event {
            StreamEvent::Open(header) => self.on_open(&header),
            StreamEvent::Close => Err(End::Closed),
            StreamEvent::Stanza(el) => match &self.stage {
                // The parser reports the header first; nothing precedes it.
                Stage::Opening => Err(End::Error(
                    StreamErrorCondition::NotWellFormed,
                    "an element before the stream header",
                )),
                Stage::Handshake { .. } => self.on_handshake(el),
                Stage::Attached { .. } => self.on_stanza(el).await,
            },
        }
    }

    /// XEP-0114 §3: check the component's header, answer with ours (an id, no features).
    fn on_open(&mut self, header: &StreamHeader) -> Result<(), End> {
        if !matches!(self.stage, Stage::Opening) {
            return Err(End::Error(
                StreamErrorCondition::NotWellFormed,
                "a second stream header",
            ));
        }
        let requested = header
            .attr("to")
            .and_then(|to| BareJid::new(to).ok())
            .filter(|j| j.node().is_none())
            .map(|j| j.domain().to_string());
        self.write_header(requested.as_deref());
        if header.name != "stream" || header.ns != ns::STREAMS {
            return Err(End::Error(
                StreamErrorCondition::InvalidNamespace,
                "the stream element must be <stream> in http://etherx.jabber.org/streams",
            ));
        }
        if header.default_ns.as_deref() != Some(ns::COMPONENT) {
            return Err(End::Error(
                StreamErrorCondition::InvalidNamespace,
                "the content namespace of a component stream is jabber:component:accept",
            ));
        }
        let Some(domain) = requested.filter(|d| self.components.secrets.contains_key(d)) else {
            tracing::info!(peer = %self.peer, to = ?header.attr("to"), "component refused: unknown domain");
            return Err(End::Error(
                StreamErrorCondition::HostUnknown,
                "no component is configured for that domain",
            ));
        };
        self.stage = Stage::Handshake { domain };
        Ok(())
    }

    /// XEP-0114 §3: the handshake, once; then the component is attached under its domain.
    fn on_handshake(&mut self, el: Element) -> Result<(), End> {
        let Stage::Handshake { domain } = &self.stage else {
            return Ok(());
        };
        let domain = domain.clone();
        if el.name() != "handshake" || el.ns() != ns::COMPONENT {
            return Err(End::Error(
                StreamErrorCondition::NotAuthorized,
                "the handshake comes first",
            ));
        }
        let Some(secret) = self.components.secrets.get(&domain) else {
            return Err(End::Error(
                StreamErrorCondition::HostUnknown,
                "no component is configured for that domain",
            ));
        };
        let mut hash = Sha1::new();
        hash.update(self.id.as_bytes());
        hash.update(secret.as_bytes());
        let expected = hex::encode(hash.finalize());
        let given = el.text().trim().to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            counters::incr(Counter::AuthFailures);
            tracing::warn!(peer = %self.peer, domain, "component refused: wrong handshake");
            return Err(End::Error(
                StreamErrorCondition::NotAuthorized,
                "the handshake does not match the secret",
            ));
        }
        let limits = &self.server.config().limits;
        let (tx, rx) = mpsc::channel(limits.session_send_queue);
        match self
            .server
            .attach_component(&domain, Arc::new(ComponentRoute { queue: tx }))
        {
            Ok(()) => {}
            Err(why) => {
                tracing::warn!(peer = %self.peer, domain, %why, "component refused");
                // Not attached: nothing to detach when this connection ends.
                self.stage = Stage::Opening;
                return Err(End::Error(
                    StreamErrorCondition::Conflict,
                    match why {
                        AttachError::Served => "this server serves that domain itself",
                        AttachError::Attached => "another connection serves that domain",
                    },
                ));
            }
        }
        tracing::info!(peer = %self.peer, domain, "component attached");
        Framing::Stream.write_element(
            &mut self.out,
            &Element::new("handshake", ns::COMPONENT),
            ns::COMPONENT,
        );
        self.stage = Stage::Attached { domain, queue: rx };
        Ok(())
    }

    /// A stanza from the attached component: addresses checked, then routed like a service
    /// domain's.
    async fn on_stanza(&mut self, el: Element) -> Result<(), End> {
        let Stage::Attached { domain, .. } = &self.stage else {
            return Ok(());
        };
        let stanza = Stanza::from_stream(el, ns::COMPONENT).map_err(|rejected| {
            let condition = match rejected.reason {
                HeaderError::NotAStanza => StreamErrorCondition::UnsupportedStanzaType,
                HeaderError::WrongNamespace { .. } => StreamErrorCondition::InvalidNamespace,
                // RFC 6120 §4.9.3.14: an address that violates the rules for XMPP addresses.
                HeaderError::MalformedTo | HeaderError::MalformedFrom => {
                    StreamErrorCondition::ImproperAddressing
                }
            };
            End::Error(condition, "not a stanza this stream can carry")
        })?;
        let (Some(from), Some(_)) = (stanza.from(), stanza.to()) else {
            // XEP-0114 §3 / RFC 6120 §4.9.3.14: a component stamps nothing for itself; the
            // server cannot guess either address.
            return Err(End::Error(
                StreamErrorCondition::ImproperAddressing,
                "a component's stanza needs 'to' and 'from'",
            ));
        };
        if from.domain().as_str() != domain {
            return Err(End::Error(
                StreamErrorCondition::InvalidFrom,
                "a component sends from its own domain only",
            ));
        }
        rookery_core::counters::stanza_in(stanza.name());
        self.server.route_from_entity(stanza).await;
        Ok(())
    }

    /// Writes our stream header (once): `from` the domain the component asked for, else
    /// the server's first host.
    fn write_header(&mut self, domain: Option<&str>) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        let config = self.server.config();
        let fallback = config
            .hosts
            .first()
            .map(|h| h.domain.as_str())
            .unwrap_or_default();
        Framing::Stream.write_open(
            &mut self.out,
            &StreamOpen {
                content_ns: ns::COMPONENT,
                id: &self.id,
                from: domain.unwrap_or(fallback),
                to: None,
                version: "",
                lang: "en",
            },
        );
    }

    /// Writes how the stream ends; whether anything is to be sent.
    fn write_end(&mut self, end: &End) -> bool {
        match end {
            End::Dropped => false,
            End::Closed => {
                self.write_header(None);
                Framing::Stream.write_close(&mut self.out);
                true
            }
            End::Error(condition, text) => {
                // RFC 6120 §4.9.1.2: an error before our header is sent after one.
                self.write_header(None);
                Framing::Stream.write_error(&mut self.out, &condition.to_element(Some(text)));
                Framing::Stream.write_close(&mut self.out);
                true
            }
        }
    }

    /// Detaches the component and answers what was still queued for it (RFC 6120 §8.3.1:
    /// IQ requests, messages and presence get an error; answers and errors are dropped).
    async fn release(&mut self) {
        let Stage::Attached { domain, mut queue } =
            std::mem::replace(&mut self.stage, Stage::Opening)
        else {
            return;
        };
        self.server.detach_component(&domain);
        // Whoever still holds the route from before the detach gets `Closed` and answers
        // its sender itself.
        queue.close();
        let mut bounced = 0usize;
        while let Ok(stanza) = queue.try_recv() {
            let answerable = match stanza.kind() {
                StanzaKind::Iq => stanza.iq_type().is_some_and(IqType::is_request),
                _ => !stanza.is_error(),
            };
            if answerable {
                self.server.bounce(&stanza, gone());
                bounced += 1;
                // A full queue is often one busy sender's: let its session write what it got
                // before the next answers, rather than overflowing its queue all at once.
                if bounced.is_multiple_of(BOUNCE_BATCH) {
                    tokio::task::yield_now().await;
                }
            }
        }
        tracing::info!(peer = %self.peer, domain, bounced, "component detached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_core::{Config, ModuleRegistry};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("test.toml"),
            Path::new("/tmp"),
            &crate::with_stream_sections(ModuleRegistry::new()),
        )
    }

    #[test]
    fn components_are_read_by_domain_and_validated() {
        let c = parse(
            "[[listener]]\nkind = 'component'\naddress = '127.0.0.1:5347'\n\
             [component.\"gw.example.org\"]\nsecret = 's'\n\
             [component.\"irc.example.org\"]\nsecret = 't'\n",
        )
        .expect("valid");
        let components = c.section::<ComponentsConfig>();
        assert_eq!(components.0.len(), 2);
        assert_eq!(components.0["gw.example.org"].secret, "s");
        assert_eq!(
            c.listeners[0].kind,
            rookery_core::config::ListenerKind::Component
        );
        // None unless configured.
        assert!(parse("")
            .expect("valid")
            .section::<ComponentsConfig>()
            .0
            .is_empty());

        let e = parse("[component.\"gw.example.org\"]\nsecret = ''\n")
            .expect_err("empty secret")
            .to_string();
        assert!(e.contains("component.\"gw.example.org\".secret"), "{e}");
        let e = parse("[component.\"a b\"]\nsecret = 's'\n")
            .expect_err("bad domain")
            .to_string();
        assert!(e.contains("not a valid domain"), "{e}");
        let e = parse("[component.\"user@gw.example.org\"]\nsecret = 's'\n")
            .expect_err("not a domain")
            .to_string();
        assert!(e.contains("not a valid domain"), "{e}");
        let e = parse("[component.\"gw.example.org\"]\nsecret = 's'\npassword = 'x'\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let c = ComponentConfig {
            secret: "hunter2".into(),
        };
        let shown = format!("{:?}", ComponentsConfig([("gw".to_owned(), c)].into()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

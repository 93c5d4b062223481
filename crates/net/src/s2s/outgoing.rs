//! Outgoing links: connecting to a peer server, negotiating the stream (STARTTLS, then
//! SASL EXTERNAL or Server Dialback), and writing the queued stanzas to it.

use super::wire::{Wire, WireError};
use super::{dialback, pki, AuthPolicy, Queued, S2s};
use crate::transport::{StanzaTransport, TcpSetup, TcpTransport, TlsSide};
use base64::Engine;
use rookery_stanza::{ns, StanzaError, StanzaErrorCondition};
use rookery_xml::{Element, StreamEvent, StreamHeader, NS_STREAMS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
const NS_BIDI: &str = "urn:xmpp:bidi";

/// Why a link could not be set up, and what its queued stanzas are answered.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("no server found for the domain")]
    NotFound,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("stream failed: {0}")]
    Wire(#[from] WireError),
    #[error("the peer's stream is not acceptable: {0}")]
    Protocol(String),
    #[error("the peer's certificate is not valid for its domain")]
    Untrusted,
    #[error("the peer refused to authenticate us ({0})")]
    Refused(String),
}

impl LinkError {
    fn stanza_error(&self) -> StanzaError {
        let condition = match self {
            LinkError::NotFound => StanzaErrorCondition::RemoteServerNotFound,
            _ => StanzaErrorCondition::RemoteServerTimeout,
        };
        StanzaError::new(condition).with_text(self.to_string())
    }
}

/// One outgoing link's task.
pub(super) struct Link {
    pub s2s: Arc<S2s>,
    pub local: String,
    pub remote: String,
    pub id: u64,
    pub queued_bytes: Arc<AtomicUsize>,
}

impl Link {
    pub async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let s2s = self.s2s.clone();
        let Some(server) = s2s.server() else { return };
        let shutdown = server.shutdown_token().clone();
        let deadline = Instant::now() + Duration::from_secs(s2s.config.negotiation_timeout_secs);
        let negotiated = tokio::select! {
            r = tokio::time::timeout_at(deadline, connect(&s2s, &self.local, &self.remote, Purpose::Link)) => match r {
                Ok(r) => r,
                Err(_) => Err(LinkError::Wire(WireError::Timeout)),
            },
            _ = shutdown.cancelled() => return,
        };
        let (mut wire, _, direct_tls) = match negotiated {
            Ok(ok) => ok,
            Err(e) => {
                tracing::info!(local = %self.local, remote = %self.remote, error = %e, "server-to-server link failed");
                s2s.forget_link(&self.local, &self.remote, self.id);
                rx.close();
                let error = e.stanza_error();
                while let Ok(q) = rx.try_recv() {
                    self.queued_bytes
                        .fetch_sub(q.bytes.len(), Ordering::Relaxed);
                    server.bounce(&q.stanza, error.clone());
                }
                return;
            }
        };
        tracing::info!(local = %self.local, remote = %self.remote, direct_tls, "server-to-server link up");
        let idle = Duration::from_secs(s2s.config.idle_timeout_secs);
        let keepalive =
            (s2s.config.keepalive_secs > 0).then(|| Duration::from_secs(s2s.config.keepalive_secs));
        let mut last_activity = Instant::now();
        let mut last_write = Instant::now();
        let mut seen = wire.received;
        let ended_cleanly = loop {
            tokio::select! {
                q = rx.recv() => {
                    let Some(q) = q else { break true };
                    self.queued_bytes.fetch_sub(q.bytes.len(), Ordering::Relaxed);
                    last_activity = Instant::now();
                    last_write = Instant::now();
                    if let Err(e) = wire.send(&q.bytes).await {
                        tracing::debug!(remote = %self.remote, error = %e, "write failed");
                        // The stanza may not have left: bounced rather than lost silently.
                        server.bounce(&q.stanza, StanzaError::new(StanzaErrorCondition::RemoteServerTimeout));
                        break false;
                    }
                }
                ev = wire.next() => match ev {
                    Ok(StreamEvent::Stanza(el)) if el.is("error", NS_STREAMS) => {
                        tracing::info!(remote = %self.remote, error = %el.to_xml(""), "peer ended the stream with an error");
                        break false;
                    }
                    Ok(StreamEvent::Close) | Err(_) => break false,
                    // On a bidirectional stream (XEP-0288) the peer sends its stanzas for
                    // us here, as the domain we connected to (its certificate or DNS said
                    // it is that domain, as for dialback).
                    Ok(StreamEvent::Stanza(el)) if wire.bidi && el.ns() == ns::SERVER => {
                        last_activity = Instant::now();
                        if let Err(condition) = self.incoming(&server, el).await {
                            wire.fail(condition, Some("not a stanza this stream may carry")).await;
                            break false;
                        }
                    }
                    Ok(StreamEvent::Stanza(el)) if wire.bidi && el.is("result", dialback::NS) => {
                        // Authenticating more of its domains on our stream (XEP-0288 §3) is
                        // not supported: the dialback error makes the peer use a stream of
                        // its own for them.
                        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else { continue };
                        let mut out = Vec::new();
                        dialback::write_result_error(&mut out, to, from, "feature-not-implemented", "cancel");
                        let _ = wire.send(&out).await;
                    }
                    // Anything else on an outgoing stream is ignored.
                    Ok(_) => {
                        if wire.received != seen {
                            seen = wire.received;
                            last_activity = Instant::now();
                        }
                    }
                },
                _ = sleep_until_opt(keepalive.map(|k| last_write + k)) => {
                    last_write = Instant::now();
                    if wire.send(b" ").await.is_err() {
                        tracing::debug!(remote = %self.remote, "the keepalive found the connection gone");
                        break false;
                    }
                }
                _ = tokio::time::sleep_until(last_activity + idle) => {
                    tracing::debug!(remote = %self.remote, "closing an idle server-to-server link");
                    break true;
                }
                _ = shutdown.cancelled() => break true,
            }
        };
        // Out of the table first, so new stanzas start a new link; what is still queued goes
        // there.
        s2s.forget_link(&self.local, &self.remote, self.id);
        rx.close();
        if ended_cleanly {
            wire.close().await;
        }
        while let Ok(q) = rx.try_recv() {
            self.queued_bytes
                .fetch_sub(q.bytes.len(), Ordering::Relaxed);
            s2s.requeue(q);
        }
    }
}

impl Link {
    /// A stanza the peer sent on a bidirectional stream: from the remote domain, to one this
    /// server serves.
    async fn incoming(
        &self,
        server: &Arc<rookery_core::Server>,
        el: Element,
    ) -> Result<(), rookery_stanza::StreamErrorCondition> {
        use rookery_stanza::StreamErrorCondition as C;
        let stanza = rookery_stanza::Stanza::from_stream(el, ns::SERVER)
            .map_err(|_| C::ImproperAddressing)?;
        let (Some(from), Some(to)) = (stanza.from(), stanza.to()) else {
            return Err(C::ImproperAddressing);
        };
        if from.domain().as_str() != self.remote {
            return Err(C::InvalidFrom);
        }
        if !self.s2s.is_local(to.domain().as_str()) {
            return Err(C::HostUnknown);
        }
        rookery_core::counters::stanza_in(stanza.name());
        server.route_from_entity(stanza).await;
        Ok(())
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A link that sends stanzas: the stream must be authenticated.
    Link,
    /// A connection to an authoritative server to verify a dialback key (XEP-0220 §2.1.2):
    /// encrypted if the peer offers it, not authenticated.
    Verify,
}

/// Connects to `remote`'s server for `local` and negotiates the stream. Returns it with the
/// stream id the peer gave.
pub(super) async fn connect(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    purpose: Purpose,
) -> Result<(Wire, String, bool), LinkError> {
    let candidates = s2s
        .resolver
        .candidates(remote)
        .await
        .map_err(|_| LinkError::NotFound)?;
    let mut last = LinkError::NotFound;
    // A few addresses at most: each may cost a connect timeout.
    for c in candidates.into_iter().take(4) {
        let timeout = Duration::from_secs(s2s.config.connect_timeout_secs);
        let socket = match tokio::time::timeout(timeout, TcpStream::connect(c.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last = LinkError::Connect(format!("{}: {e}", c.addr));
                continue;
            }
            Err(_) => {
                last = LinkError::Connect(format!("{}: timed out", c.addr));
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match negotiate(s2s, local, remote, socket, c.direct_tls, purpose).await {
            Ok((wire, id)) => return Ok((wire, id, c.direct_tls)),
            Err(e) => {
                tracing::debug!(remote, addr = %c.addr, error = %e, "server-to-server negotiation failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn negotiate(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    socket: TcpStream,
    direct_tls: bool,
    purpose: Purpose,
) -> Result<(Wire, String), LinkError> {
    let server = s2s
        .server()
        .ok_or(LinkError::Protocol("shutting down".into()))?;
    let peer = socket
        .peer_addr()
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let permit = s2s
        .outgoing_limits
        .try_acquire(peer.ip())
        .ok_or_else(|| LinkError::Connect("too many outgoing connections".into()))?;
    let server_name = rustls::pki_types::ServerName::try_from(remote.to_owned())
        .map_err(|_| LinkError::Protocol(format!("{remote} is not a DNS name")))?;
    let setup = TcpSetup {
        tls: s2s.tls.clone(),
        parser: s2s.parser(),
        handshake_limit: s2s.handshake_limit(),
        shutdown: server.shutdown_token().clone(),
        permit,
        side: TlsSide::S2sOut {
            config: pki::client_config(s2s.local_cert(local), direct_tls),
            server_name,
        },
    };
    let transport = if direct_tls {
        TcpTransport::direct_tls(socket, peer, setup)
            .await
            .map_err(|e| LinkError::Connect(e.to_string()))?
    } else {
        TcpTransport::plain(socket, peer, setup)
    };
    let mut wire = Wire::new(transport);
    wire.limit_input(s2s.config.max_bytes_per_second);
    let mut sasl_tried = false;
    let mut authenticated = false;
    let mut bidi_asked = false;
    loop {
        wire.send_header("", local, Some(remote)).await?;
        let header = match wire.next().await? {
            StreamEvent::Open(h) => h,
            _ => return Err(LinkError::Protocol("no stream header".into())),
        };
        check_header(&header)?;
        let id = header.attr("id").unwrap_or_default().to_owned();
        // RFC 6120 §4.7.5: a peer without version 1.0 sends no features (pre-XMPP 1.0
        // servers, which do dialback only).
        let features = if header.attr("version").is_some_and(|v| v.starts_with('1')) {
            match wire.next().await? {
                StreamEvent::Stanza(el) if el.is("features", NS_STREAMS) => el,
                StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                    return Err(LinkError::Refused(stream_error_text(&el)))
                }
                _ => return Err(LinkError::Protocol("no stream features".into())),
            }
        } else {
            Element::new("features", NS_STREAMS)
        };
        if authenticated {
            return Ok((wire, id));
        }
        let encrypted = wire.transport.is_confidential();
        if !encrypted {
            if features.has_child("starttls", ns::TLS) {
                wire.send_element(&Element::new("starttls", ns::TLS))
                    .await?;
                match wire.next().await? {
                    StreamEvent::Stanza(el) if el.is("proceed", ns::TLS) => {}
                    _ => return Err(LinkError::Protocol("STARTTLS refused".into())),
                }
                wire.transport
                    .upgrade_tls()
                    .await
                    .map_err(|e| LinkError::Connect(e.to_string()))?;
                wire.restart();
                continue;
            }
            if s2s.config.require_encryption {
                return Err(LinkError::Protocol("the peer offers no TLS".into()));
            }
        }
        if purpose == Purpose::Verify {
            return Ok((wire, id));
        }
        // XEP-0288 §3: ask for a bidirectional stream when offered, after TLS and before
        // authenticating, so the peer's stanzas to us come back on this connection.
        if !bidi_asked && features.has_child("bidi", NS_BIDI_FEATURE) {
            bidi_asked = true;
            wire.send_element(&Element::new("bidi", NS_BIDI)).await?;
            wire.bidi = true;
        }
        // Our side of authentication: is the peer the server for `remote`?
        let peer_valid = encrypted
            && wire
                .transport
                .peer_certificates()
                .is_some_and(|chain| s2s.trust.verify(&chain, remote));
        match s2s.policy(remote) {
            AuthPolicy::Refuse => return Err(LinkError::Refused("refused by policy".into())),
            AuthPolicy::Certificate if !peer_valid => return Err(LinkError::Untrusted),
            _ => {}
        }
        // Their side: SASL EXTERNAL when they offer it (XEP-0178: they do when our
        // certificate is valid for `local`), else dialback.
        let external = features
            .get_child("mechanisms", ns::SASL)
            .is_some_and(|m| m.children().any(|c| c.text().trim() == "EXTERNAL"));
        if encrypted && external && !sasl_tried {
            sasl_tried = true;
            let authzid = base64::engine::general_purpose::STANDARD.encode(local);
            wire.send_element(
                &Element::new("auth", ns::SASL)
                    .with_attr("mechanism", "EXTERNAL")
                    .with_text(authzid),
            )
            .await?;
            match wire.next().await? {
                StreamEvent::Stanza(el) if el.is("success", ns::SASL) => {
                    authenticated = true;
                    wire.restart();
                    continue;
                }
                StreamEvent::Stanza(el) if el.is("failure", ns::SASL) => {
                    tracing::debug!(remote, "SASL EXTERNAL refused; trying dialback");
                }
                _ => return Err(LinkError::Protocol("unexpected answer to <auth/>".into())),
            }
        }
        let key = s2s.secret.key(remote, local, &id);
        let mut out = Vec::new();
        dialback::write(
            &mut out,
            "result",
            &[("from", local), ("to", remote)],
            Some(&key),
        );
        wire.send(&out).await?;
        loop {
            match wire.next().await? {
                StreamEvent::Stanza(el) if el.is("result", dialback::NS) => {
                    if el.attr("from") != Some(remote) || el.attr("to") != Some(local) {
                        continue;
                    }
                    return match el.attr("type") {
                        Some("valid") => Ok((wire, id)),
                        other => Err(LinkError::Refused(format!(
                            "dialback {}",
                            other.unwrap_or("without a type")
                        ))),
                    };
                }
                StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                    return Err(LinkError::Refused(stream_error_text(&el)))
                }
                StreamEvent::Close => return Err(LinkError::Wire(WireError::Closed)),
                _ => {}
            }
        }
    }
}

fn check_header(header: &StreamHeader) -> Result<(), LinkError> {
    if header.name != "stream" || header.ns != NS_STREAMS {
        return Err(LinkError::Protocol("not a stream header".into()));
    }
    if header.default_ns.as_deref() != Some(ns::SERVER) {
        return Err(LinkError::Protocol("not a jabber:server stream".into()));
    }
    Ok(())
}

fn stream_error_text(el: &Element) -> String {
    el.children()
        .map(|c| c.name().to_owned())
        .next()
        .unwrap_or_else(|| "stream error".into())
}

/// Asks `originating`'s authoritative server whether `key` is the one it made for the
/// stream `stream_id` it opened to us as `receiving` (XEP-0220 §2.1.2, §2.2.2).
pub(super) async fn verify_key(
    s2s: &Arc<S2s>,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, LinkError> {
    let (mut wire, _, _) = connect(s2s, receiving, originating, Purpose::Verify).await?;
    let mut out = Vec::new();
    dialback::write(
        &mut out,
        "verify",
        &[("from", receiving), ("to", originating), ("id", stream_id)],
        Some(key),
    );
    wire.send(&out).await?;
    let answer = loop {
        match wire.next().await? {
            StreamEvent::Stanza(el)
                if el.is("verify", dialback::NS) && el.attr("id") == Some(stream_id) =>
            {
                break el.attr("type") == Some("valid");
            }
            StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                return Err(LinkError::Refused(stream_error_text(&el)))
            }
            StreamEvent::Close => return Err(LinkError::Wire(WireError::Closed)),
            _ => {}
        }
    };
    wire.close().await;
    Ok(answer)
}

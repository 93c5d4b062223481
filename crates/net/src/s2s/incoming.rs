//! Incoming server-to-server streams: what another server opens to the `s2s` and
//! `s2s-direct-tls` listeners.
//!
//! The stream offers STARTTLS (required unless `[s2s] require_encryption = false`), then
//! SASL EXTERNAL when the peer's certificate is valid for the domain its header names
//! (XEP-0178), and Server Dialback (XEP-0220) always: a `<db:result/>` is verified with the
//! originating domain's authoritative server in a task of its own (the stream goes on
//! meanwhile), or at once when the peer's certificate already proves the domain.
//! `<db:verify/>` requests for keys this server made are answered on any stream.
//! Stanzas are accepted only from domains the stream authenticated and only to domains
//! this server serves (`invalid-from`, `host-unknown` otherwise).

use super::outgoing::verify_key;
use super::wire::{stream_id, xml_condition, Wire, WireError};
use super::{dialback, AuthPolicy, Queued, S2s};
use crate::transport::{StanzaTransport, TcpSetup, TcpTransport, TlsSide};
use base64::Engine;
use rookery_stanza::{ns, Stanza, StanzaKind, StreamErrorCondition};
use rookery_xml::{Element, StreamEvent, NS_STREAMS};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Runs one accepted connection on a server-to-server listener to its end.
pub async fn serve_connection(
    s2s: Arc<S2s>,
    socket: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let Some(server) = s2s.server() else { return };
    let Some(permit) = s2s.incoming_limits.try_acquire(peer.ip()) else {
        tracing::warn!(%peer, "server-to-server connection refused: limit reached");
        return;
    };
    let setup = TcpSetup {
        tls: s2s.tls.clone(),
        parser: s2s.parser(),
        handshake_limit: s2s.handshake_limit(),
        shutdown: server.shutdown_token().clone(),
        permit,
        side: TlsSide::S2sIn,
    };
    let transport = if direct_tls {
        match TcpTransport::direct_tls(socket, peer, setup).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "server-to-server TLS handshake failed");
                return;
            }
        }
    } else {
        TcpTransport::plain(socket, peer, setup)
    };
    let mut stream = Incoming {
        s2s: s2s.clone(),
        wire: {
            let mut wire = Wire::new(transport);
            wire.limit_input(s2s.config.max_bytes_per_second);
            wire
        },
        authenticated: HashSet::new(),
        pending: 0,
        sasl_done: false,
        direct_tls,
        bidi: false,
        bidi_links: Vec::new(),
        bidi_queue: None,
        newly_authenticated: Vec::new(),
    };
    let shutdown = server.shutdown_token().clone();
    let outcome = tokio::select! {
        r = stream.run() => r,
        _ = shutdown.cancelled() => Err(End::Error(StreamErrorCondition::SystemShutdown, None)),
    };
    stream.release_links();
    match outcome {
        Ok(()) => stream.wire.close().await,
        Err(End::Gone) => {}
        Err(End::Error(condition, text)) => {
            tracing::debug!(%peer, %condition, "ending an incoming server-to-server stream");
            stream.wire.fail(condition, text.as_deref()).await
        }
    }
}

enum End {
    /// The connection is gone; nothing to send.
    Gone,
    /// End with this stream error.
    Error(StreamErrorCondition, Option<String>),
}

impl From<WireError> for End {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Xml(x) => End::Error(xml_condition(&x), None),
            WireError::Timeout => End::Error(StreamErrorCondition::ConnectionTimeout, None),
            _ => End::Gone,
        }
    }
}

fn fail(condition: StreamErrorCondition, text: &str) -> End {
    End::Error(condition, Some(text.to_owned()))
}

/// XEP-0288: the stream feature, and the element that asks for it.
const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
const NS_BIDI: &str = "urn:xmpp:bidi";

async fn recv_queued(
    queue: &mut Option<(
        mpsc::Sender<Queued>,
        mpsc::Receiver<Queued>,
        Arc<AtomicUsize>,
    )>,
) -> Option<Queued> {
    match queue {
        Some((_, rx, _)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A dialback verification's outcome: `(originating, receiving, valid)`.
type Verdict = (String, String, Result<bool, String>);

struct Incoming {
    s2s: Arc<S2s>,
    wire: Wire,
    /// The remote domains this stream proved (by certificate or dialback).
    authenticated: HashSet<String>,
    /// Dialback requests being verified.
    pending: usize,
    sasl_done: bool,
    /// TLS from the first byte (XEP-0368), for the logs.
    direct_tls: bool,
    /// The peer asked for a bidirectional stream (XEP-0288): once it has authenticated a
    /// domain, this server's stanzas to that domain go over this stream too.
    bidi: bool,
    /// The links this stream serves for this server's stanzas, as (local, remote, link id),
    /// and their shared queue.
    bidi_links: Vec<(String, String, u64)>,
    bidi_queue: Option<(
        mpsc::Sender<Queued>,
        mpsc::Receiver<Queued>,
        Arc<AtomicUsize>,
    )>,
    /// Domain pairs authenticated since the links were last looked at.
    newly_authenticated: Vec<(String, String)>,
}

impl Incoming {
    async fn run(&mut self) -> Result<(), End> {
        let s2s = self.s2s.clone();
        let (verdict_tx, mut verdict_rx) =
            mpsc::channel::<Verdict>(s2s.config.max_pending_dialback);
        let negotiation = Duration::from_secs(s2s.config.negotiation_timeout_secs);
        let idle = Duration::from_secs(s2s.config.idle_timeout_secs);
        loop {
            // A stream (again after STARTTLS or SASL).
            let header = match self.wire.next_by(Instant::now() + negotiation).await? {
                StreamEvent::Open(h) => h,
                _ => return Err(End::Error(StreamErrorCondition::NotWellFormed, None)),
            };
            if header.name != "stream" || header.ns != NS_STREAMS {
                return Err(fail(StreamErrorCondition::InvalidNamespace, "not a stream"));
            }
            let id = stream_id();
            let to = header.attr("to").map(str::to_ascii_lowercase);
            let from = header.attr("from").map(str::to_ascii_lowercase);
            let local = match &to {
                Some(to) if s2s.is_local(to) => to.clone(),
                _ => {
                    // The header must be answered before the error (RFC 6120 §4.9.1.2).
                    let first = s2s
                        .server()
                        .and_then(|s| s.config().hosts.first().map(|h| h.domain.clone()))
                        .unwrap_or_default();
                    self.wire.send_header(&id, &first, from.as_deref()).await?;
                    return Err(fail(StreamErrorCondition::HostUnknown, "not served here"));
                }
            };
            self.wire.send_header(&id, &local, from.as_deref()).await?;
            if header.default_ns.as_deref() != Some(ns::SERVER) {
                return Err(fail(
                    StreamErrorCondition::InvalidNamespace,
                    "expected jabber:server",
                ));
            }
            let encrypted = self.wire.transport.is_confidential();
            let cert_valid_for = |wire: &Wire, domain: &str| {
                wire.transport
                    .peer_certificates()
                    .is_some_and(|chain| s2s.trust.verify(&chain, domain))
            };
            let mut features = Vec::new();
            if !encrypted && self.wire.transport.can_upgrade() {
                let mut starttls = Element::new("starttls", ns::TLS);
                if s2s.config.require_encryption {
                    starttls.push_child(Element::new("required", ns::TLS));
                }
                features.push(starttls);
            }
            let external = encrypted
                && !self.sasl_done
                && from.as_deref().is_some_and(|f| {
                    s2s.policy(f) != AuthPolicy::Refuse && cert_valid_for(&self.wire, f)
                });
            if external {
                features.push(
                    Element::new("mechanisms", ns::SASL)
                        .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
                );
            }
            // XEP-0288 §2: offered before and after TLS.
            features.push(Element::new("bidi", NS_BIDI_FEATURE));
            if encrypted || !s2s.config.require_encryption {
                features.push(
                    Element::new("dialback", dialback::NS_FEATURE)
                        .with_child(Element::new("errors", dialback::NS_FEATURE)),
                );
            }
            self.wire.send_features(&features).await?;

            // The stream's elements until it restarts or ends.
            let mut last_activity = Instant::now();
            let restart = loop {
                let deadline = if self.authenticated.is_empty() && self.pending == 0 {
                    last_activity + negotiation
                } else {
                    last_activity + idle
                };
                let event = tokio::select! {
                    ev = self.wire.next_by(deadline) => match ev {
                        // A stream that proved a domain and then went quiet is closed in
                        // order (the peer opens another when it needs one); one that never
                        // got that far ends with `connection-timeout`.
                        Err(WireError::Timeout) if !self.authenticated.is_empty() => {
                            tracing::debug!(peer = %self.wire.transport.peer(), "closing an idle incoming server-to-server stream");
                            return Ok(());
                        }
                        ev => ev?,
                    },
                    Some(q) = recv_queued(&mut self.bidi_queue) => {
                        if let Some((_, _, bytes)) = &self.bidi_queue {
                            bytes.fetch_sub(q.bytes.len(), Ordering::Relaxed);
                        }
                        if let Err(e) = self.wire.send(&q.bytes).await {
                            if let Some(server) = s2s.server() {
                                server.bounce(&q.stanza, rookery_stanza::StanzaError::new(
                                    rookery_stanza::StanzaErrorCondition::RemoteServerTimeout,
                                ));
                            }
                            return Err(e.into());
                        }
                        last_activity = Instant::now();
                        continue;
                    }
                    Some((originating, receiving, verdict)) = verdict_rx.recv() => {
                        self.pending -= 1;
                        self.answer_result(&originating, &receiving, verdict).await?;
                        last_activity = Instant::now();
                        continue;
                    }
                };
                last_activity = Instant::now();
                let el = match event {
                    StreamEvent::Stanza(el) => el,
                    StreamEvent::Close => return Ok(()),
                    StreamEvent::Open(_) => {
                        return Err(End::Error(StreamErrorCondition::NotWellFormed, None))
                    }
                };
                let encrypted = self.wire.transport.is_confidential();
                match (el.name(), el.ns()) {
                    ("starttls", ns::TLS) if !encrypted && self.wire.transport.can_upgrade() => {
                        self.wire
                            .send_element(&Element::new("proceed", ns::TLS))
                            .await?;
                        if self.wire.transport.upgrade_tls().await.is_err() {
                            return Err(End::Gone);
                        }
                        break true;
                    }
                    ("bidi", NS_BIDI) => {
                        // XEP-0288 §3: after TLS, before authenticating.
                        if encrypted || !s2s.config.require_encryption {
                            self.bidi = true;
                        }
                    }
                    ("auth", ns::SASL) => {
                        if !external || el.attr("mechanism") != Some("EXTERNAL") {
                            self.wire
                                .send_element(
                                    &Element::new("failure", ns::SASL)
                                        .with_child(Element::new("invalid-mechanism", ns::SASL)),
                                )
                                .await?;
                            continue;
                        }
                        let Some(domain) = from.clone() else { continue };
                        // XEP-0178 §3: the authorization identity is empty ("=") or the
                        // domain of the stream header.
                        let text = el.text();
                        let authzid = match text.trim() {
                            "" | "=" => Some(domain.clone()),
                            b64 => base64::engine::general_purpose::STANDARD
                                .decode(b64)
                                .ok()
                                .and_then(|b| String::from_utf8(b).ok()),
                        };
                        if authzid.as_deref() != Some(domain.as_str()) {
                            self.wire
                                .send_element(
                                    &Element::new("failure", ns::SASL)
                                        .with_child(Element::new("invalid-authzid", ns::SASL)),
                                )
                                .await?;
                            continue;
                        }
                        self.wire
                            .send_element(&Element::new("success", ns::SASL))
                            .await?;
                        tracing::info!(remote = %domain, local = %local, direct_tls = self.direct_tls, "incoming server-to-server stream authenticated by certificate");
                        self.authenticated.insert(domain.clone());
                        self.newly_authenticated.push((local.clone(), domain));
                        self.sasl_done = true;
                        self.adopt_links();
                        break true;
                    }
                    ("result", dialback::NS) => {
                        if s2s.config.require_encryption && !encrypted {
                            return Err(fail(
                                StreamErrorCondition::PolicyViolation,
                                "TLS is required first",
                            ));
                        }
                        self.on_result(&el, &id, &verdict_tx).await?;
                    }
                    ("verify", dialback::NS) => self.on_verify(&el).await?,
                    _ => {
                        if StanzaKind::of(&el).is_none() || el.ns() != ns::SERVER {
                            return Err(fail(
                                StreamErrorCondition::UnsupportedStanzaType,
                                "not a stanza",
                            ));
                        }
                        self.on_stanza(el).await?;
                    }
                }
            };
            if restart {
                self.wire.restart();
            }
        }
    }

    /// Serves this server's stanzas to the domains the peer authenticated, when it asked for
    /// a bidirectional stream and no link serves that pair yet.
    fn adopt_links(&mut self) {
        let pairs = std::mem::take(&mut self.newly_authenticated);
        if !self.bidi {
            return;
        }
        let capacity = self.s2s.config.queue_stanzas;
        for (local, remote) in pairs {
            let (tx, _, bytes) = self.bidi_queue.get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(capacity);
                (tx, rx, Arc::new(AtomicUsize::new(0)))
            });
            if let Some(id) = self.s2s.adopt_link(&local, &remote, tx, bytes) {
                tracing::info!(%local, %remote, "server-to-server stream used both ways (XEP-0288)");
                self.bidi_links.push((local, remote, id));
            }
        }
    }

    /// Gives the links back when the stream ends: new stanzas start links of their own, and
    /// what was still queued goes to them.
    fn release_links(&mut self) {
        for (local, remote, id) in self.bidi_links.drain(..) {
            self.s2s.forget_link(&local, &remote, id);
        }
        let Some((_, mut rx, bytes)) = self.bidi_queue.take() else {
            return;
        };
        rx.close();
        while let Ok(q) = rx.try_recv() {
            bytes.fetch_sub(q.bytes.len(), Ordering::Relaxed);
            self.s2s.requeue(q);
        }
    }

    /// `<db:result/>` with a key: the peer wants to send as `from` to `to` (XEP-0220 §2.2.1).
    async fn on_result(
        &mut self,
        el: &Element,
        stream_id: &str,
        verdicts: &mpsc::Sender<Verdict>,
    ) -> Result<(), End> {
        let s2s = self.s2s.clone();
        let (Some(originating), Some(receiving)) = (
            el.attr("from").map(str::to_ascii_lowercase),
            el.attr("to").map(str::to_ascii_lowercase),
        ) else {
            return Err(fail(
                StreamErrorCondition::ImproperAddressing,
                "dialback needs from and to",
            ));
        };
        if !s2s.is_local(&receiving) {
            return self
                .answer_error(&originating, &receiving, "item-not-found", "cancel")
                .await;
        }
        let policy = s2s.policy(&originating);
        let cert_valid = self
            .wire
            .transport
            .peer_certificates()
            .is_some_and(|chain| s2s.trust.verify(&chain, &originating));
        match policy {
            AuthPolicy::Refuse => {
                return self
                    .answer_error(&originating, &receiving, "not-allowed", "cancel")
                    .await
            }
            // The certificate proves the domain: no need to ask its server (XEP-0344 §2.4).
            _ if cert_valid => return self.answer_result(&originating, &receiving, Ok(true)).await,
            AuthPolicy::Certificate => {
                return self
                    .answer_error(&originating, &receiving, "not-authorized", "auth")
                    .await
            }
            AuthPolicy::Dialback => {}
        }
        if self.pending >= s2s.config.max_pending_dialback {
            return Err(fail(
                StreamErrorCondition::PolicyViolation,
                "too many dialback requests at once",
            ));
        }
        let key = el.text();
        self.pending += 1;
        let verdicts = verdicts.clone();
        let id = stream_id.to_owned();
        let Some(server) = s2s.server() else {
            return Err(End::Gone);
        };
        let shutdown = server.shutdown_token().clone();
        server.tasks().spawn(async move {
            let verify = async {
                match s2s.verifications.try_acquire() {
                    Ok(_permit) => {
                        let limit = Duration::from_secs(s2s.config.negotiation_timeout_secs);
                        match tokio::time::timeout(
                            limit,
                            verify_key(&s2s, &receiving, &originating, &id, key.trim()),
                        )
                        .await
                        {
                            Ok(Ok(valid)) => Ok(valid),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("timed out".to_owned()),
                        }
                    }
                    Err(_) => Err("too many verifications at once".to_owned()),
                }
            };
            // A verification waiting on a slow peer must not hold up a stop.
            let verdict = tokio::select! {
                v = verify => v,
                _ = shutdown.cancelled() => return,
            };
            let _ = verdicts.send((originating, receiving, verdict)).await;
        });
        Ok(())
    }

    /// Sends the outcome of a dialback request (XEP-0220 §2.2.2, §2.4).
    async fn answer_result(
        &mut self,
        originating: &str,
        receiving: &str,
        verdict: Result<bool, String>,
    ) -> Result<(), End> {
        match verdict {
            Ok(valid) => {
                let mut out = Vec::new();
                let kind = if valid { "valid" } else { "invalid" };
                dialback::write(
                    &mut out,
                    "result",
                    &[("from", receiving), ("to", originating), ("type", kind)],
                    None,
                );
                self.wire.send(&out).await?;
                if valid {
                    tracing::info!(remote = %originating, local = %receiving, direct_tls = self.direct_tls, "incoming server-to-server stream authenticated by dialback");
                    self.authenticated.insert(originating.to_owned());
                    self.newly_authenticated
                        .push((receiving.to_owned(), originating.to_owned()));
                    self.adopt_links();
                }
                Ok(())
            }
            Err(why) => {
                tracing::info!(remote = %originating, why, "dialback verification failed");
                self.answer_error(originating, receiving, "remote-server-not-found", "cancel")
                    .await
            }
        }
    }

    async fn answer_error(
        &mut self,
        originating: &str,
        receiving: &str,
        condition: &str,
        kind: &str,
    ) -> Result<(), End> {
        let mut out = Vec::new();
        dialback::write_result_error(&mut out, receiving, originating, condition, kind);
        self.wire.send(&out).await?;
        Ok(())
    }

    /// `<db:verify/>`: a receiving server asks whether a key is one this server made
    /// (XEP-0220 §2.1.2, as the authoritative server).
    async fn on_verify(&mut self, el: &Element) -> Result<(), End> {
        let (Some(receiving), Some(originating), Some(id)) =
            (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return Err(fail(
                StreamErrorCondition::ImproperAddressing,
                "verify needs from, to and id",
            ));
        };
        let valid = self.s2s.is_local(originating)
            && self
                .s2s
                .secret
                .check(&el.text(), receiving, originating, id);
        let mut out = Vec::new();
        dialback::write(
            &mut out,
            "verify",
            &[
                ("from", originating),
                ("to", receiving),
                ("id", id),
                ("type", if valid { "valid" } else { "invalid" }),
            ],
            None,
        );
        self.wire.send(&out).await?;
        Ok(())
    }

    async fn on_stanza(&mut self, el: Element) -> Result<(), End> {
        let s2s = &self.s2s;
        let stanza = match Stanza::from_stream(el, ns::SERVER) {
            Ok(s) => s,
            Err(_) => {
                return Err(fail(
                    StreamErrorCondition::ImproperAddressing,
                    "a stanza needs valid 'from' and 'to'",
                ))
            }
        };
        let (Some(from), Some(to)) = (stanza.from(), stanza.to()) else {
            return Err(fail(
                StreamErrorCondition::ImproperAddressing,
                "a stanza needs 'from' and 'to'",
            ));
        };
        if !self.authenticated.contains(from.domain().as_str()) {
            return Err(fail(
                StreamErrorCondition::InvalidFrom,
                "the stream is not authenticated for that domain",
            ));
        }
        if !s2s.is_local(to.domain().as_str()) {
            return Err(fail(StreamErrorCondition::HostUnknown, "not served here"));
        }
        let Some(server) = s2s.server() else {
            return Err(End::Gone);
        };
        rookery_core::counters::stanza_in(stanza.name());
        server.route_from_entity(stanza).await;
        Ok(())
    }
}

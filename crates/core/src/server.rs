//! The server: virtual hosts, the session registry, storage, and the routing rules of
//! RFC 6120 §10 and RFC 6121 §8 for stanzas between local entities.

use crate::config::Config;
use crate::events::{
    ClientStanza, InboundPresence, LocalDelivery, MessageDelivered, OutboundPresence,
    PresenceBroadcast, UndeliverableMessage,
};
use crate::hooks::Flow;
use crate::host::Host;
use crate::iq::{IqRequest, IqScope};
use crate::module::{ModuleError, ModuleRegistry, SharedState};
use crate::requests::{IqRequestError, PendingIqs};
use crate::sessions::SessionRegistry;
use rookery_stanza::{
    error_reply, iq_result, ns, parse_jid, BareJid, FullJid, IqType, Jid, MessageType,
    PresenceType, StanzaError, StanzaErrorCondition, StanzaKind, StreamErrorCondition,
};
use rookery_storage::Storage;
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Server {
    config: Arc<Config>,
    hosts: HashMap<String, Arc<Host>>,
    sessions: SessionRegistry,
    storage: Storage,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    pending_iqs: Arc<PendingIqs>,
}

impl Server {
    /// Builds every configured virtual host with its modules, then starts the modules'
    /// background work (so it must run inside a Tokio runtime). A graceful stop cancels
    /// [`shutdown_token`](Self::shutdown_token) and waits for [`tasks`](Self::tasks).
    pub fn new(
        config: Config,
        storage: Storage,
        registry: &ModuleRegistry,
    ) -> Result<Arc<Server>, ModuleError> {
        let mut hosts = HashMap::new();
        let mut shared = SharedState::default();
        for h in &config.hosts {
            let host = registry.build_host_sharing(
                &h.domain,
                h.modules.as_deref(),
                &config,
                &storage,
                &mut shared,
            )?;
            hosts.insert(h.domain.clone(), Arc::new(host));
        }
        let enabled: std::collections::BTreeSet<&str> = hosts
            .values()
            .flat_map(|h: &Arc<Host>| h.modules().iter().copied())
            .collect();
        let server = Arc::new(Server {
            config: Arc::new(config),
            hosts,
            sessions: SessionRegistry::default(),
            storage,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            pending_iqs: Arc::default(),
        });
        registry.start(&server, &enabled);
        Ok(server)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn host(&self, domain: &str) -> Option<&Arc<Host>> {
        self.hosts.get(domain)
    }
    pub fn serves(&self, domain: &str) -> bool {
        self.hosts.contains_key(domain)
    }
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// Cancelled when the server begins a graceful stop.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// Connection tasks register here so a graceful stop can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Checks and stamps the `from` of a stanza a client sent (RFC 6120 §8.1.2.1): absent is
    /// stamped with the session's full JID; the full or bare JID of the session is accepted;
    /// anything else is spoofing and ends the stream with `invalid-from`. Also refuses what
    /// is not a stanza of the stream's content namespace.
    pub fn stamp_from_client(
        &self,
        session: &FullJid,
        mut stanza: Element,
    ) -> Result<Element, StreamErrorCondition> {
        if StanzaKind::of(&stanza).is_none() {
            // A server-to-server stanza on a client stream is the wrong content namespace;
            // anything else unknown at the top level is an unsupported stanza type
            // (RFC 6120 §4.9.3.10, §4.9.3.22).
            return Err(if stanza.ns() == ns::SERVER {
                StreamErrorCondition::InvalidNamespace
            } else {
                StreamErrorCondition::UnsupportedStanzaType
            });
        }
        if let Some(from) = stanza.attr("from") {
            let ok = match Jid::new(from) {
                Ok(j) => match j.try_as_full() {
                    Ok(full) => full == session,
                    Err(bare) => *bare == session.to_bare(),
                },
                Err(_) => false,
            };
            if !ok {
                return Err(StreamErrorCondition::InvalidFrom);
            }
        }
        stanza.set_attr("from", session.as_str());
        Ok(stanza)
    }

    /// Routes a stamped stanza from a local client session.
    pub async fn route_from_client(self: &Arc<Self>, from: &FullJid, stanza: Element) {
        let Some(host) = self.hosts.get(from.domain().as_str()).cloned() else {
            return;
        };
        let Some(ClientStanza { stanza, .. }) = host
            .hooks()
            .fold(
                self,
                ClientStanza {
                    from: from.clone(),
                    stanza,
                },
            )
            .await
        else {
            return;
        };
        let to = match stanza.attr("to").map(parse_jid) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(e)) => return self.bounce(&stanza, e),
        };
        match StanzaKind::of(&stanza) {
            Some(StanzaKind::Iq) => self.route_iq(from, to, stanza).await,
            Some(StanzaKind::Message) => {
                let (to, stanza) = match to {
                    Some(to) => (to, stanza),
                    // RFC 6120 §10.3.1: no 'to' means the sender's own bare JID.
                    None => {
                        let bare = from.to_bare();
                        let mut s = stanza;
                        s.set_attr("to", bare.as_str());
                        (Jid::from(bare), s)
                    }
                };
                self.route_message(to, stanza).await
            }
            Some(StanzaKind::Presence) => match to {
                None => self.client_presence(from, &host, stanza).await,
                Some(to) => {
                    let event = Arc::new(OutboundPresence {
                        from: from.clone(),
                        to: to.clone(),
                        stanza,
                    });
                    if host.hooks().run_shared(self, event.clone()).await == Flow::Stop {
                        return;
                    }
                    let stanza = Arc::try_unwrap(event)
                        .map(|e| e.stanza)
                        .unwrap_or_else(|e| e.stanza.clone());
                    self.route_presence(to, stanza).await
                }
            },
            None => {}
        }
    }

    /// Routes a stanza that did not come from a client of this server's streams (a module
    /// speaking for the server or for an account); its `from` must already be set. Presence
    /// and messages go through the same rules as a client's.
    pub async fn route(self: &Arc<Self>, stanza: Element) {
        let to = match stanza.attr("to").map(parse_jid) {
            Some(Ok(j)) => j,
            _ => return,
        };
        if !self.serves(to.domain().as_str()) {
            // No federation yet: what the server sends for an account to a remote contact
            // (presence broadcasts, probes) has nowhere to go. Not bounced: the account
            // did not send it.
            tracing::debug!(to = %to, "no route to a remote domain");
            return;
        }
        match StanzaKind::of(&stanza) {
            Some(StanzaKind::Message) => self.route_message(to, stanza).await,
            Some(StanzaKind::Presence) => self.route_presence(to, stanza).await,
            Some(StanzaKind::Iq) => {
                // Only answers and requests to full JIDs are routed this way.
                if let Ok(full) = to.try_as_full() {
                    if let Some(s) = self.sessions.get(full) {
                        let _ = s.deliver(stanza);
                    }
                }
            }
            None => {}
        }
    }

    /// Runs the [`LocalDelivery`] filters for a stanza addressed to a local account.
    /// A dropped IQ request is answered `service-unavailable` (every request gets an answer).
    async fn filter_local(self: &Arc<Self>, to: &Jid, stanza: Element) -> Option<Element> {
        let host = self.hosts.get(to.domain().as_str())?;
        let is_request =
            stanza.name() == "iq" && IqType::of(&stanza).is_some_and(IqType::is_request);
        let bounce_copy = is_request.then(|| stanza.clone());
        let passed = host
            .hooks()
            .fold(
                self,
                LocalDelivery {
                    to: to.clone(),
                    stanza,
                },
            )
            .await
            .map(|d| d.stanza);
        if passed.is_none() {
            if let Some(req) = bounce_copy {
                self.bounce(&req, StanzaError::service_unavailable());
            }
        }
        passed
    }

    /// Sends the error answer to a stanza back to its sender (never an error to an error).
    pub fn bounce(&self, stanza: &Element, error: StanzaError) {
        if let Some(reply) = error_reply(stanza, &error) {
            self.deliver_to_sender(reply);
        }
    }

    /// Delivers a reply addressed to a local full JID, if that session is still there.
    fn deliver_to_sender(&self, reply: Element) {
        let Some(Ok(to)) = reply.attr("to").map(FullJid::new) else {
            return;
        };
        if let Some(session) = self.sessions.get(&to) {
            let _ = session.deliver(reply);
        }
    }

    async fn account_exists(&self, jid: &BareJid) -> Result<bool, StanzaError> {
        let Some(node) = jid.node() else {
            return Ok(false);
        };
        if self.sessions.is_online(jid) {
            return Ok(true);
        }
        self.storage
            .accounts
            .account_exists(jid.domain().as_str(), node.as_str())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "account look-up failed");
                StanzaError::new(StanzaErrorCondition::InternalServerError)
            })
    }

    // ---- IQ (RFC 6120 §8.2.3, §10.3.3, §10.5.3) -------------------------------------------

    /// Sends an IQ get or set of the server's own, from a host or an account (`from` must be
    /// set: the domain or a local bare JID), and waits up to `timeout` for the answer. The
    /// server chooses the id. Returns the result stanza; an error answer (or the error the
    /// router would have answered, e.g. for a resource that is not online) is
    /// [`IqRequestError::Error`]. Only local full JIDs can be reached for now (no federation,
    /// and bare JIDs and hosts are answered by the server itself).
    pub async fn send_iq_request(
        self: &Arc<Self>,
        mut stanza: Element,
        timeout: Duration,
    ) -> Result<Element, IqRequestError> {
        if stanza.name() != "iq" || !IqType::of(&stanza).is_some_and(IqType::is_request) {
            return Err(IqRequestError::NotARequest);
        }
        let (Some(Ok(from)), Some(Ok(to))) = (
            stanza.attr("from").map(parse_jid),
            stanza.attr("to").map(parse_jid),
        ) else {
            return Err(IqRequestError::NotARequest);
        };
        if !self.serves(from.domain().as_str()) || from.resource().is_some() {
            return Err(IqRequestError::NotARequest);
        }
        if !self.serves(to.domain().as_str()) {
            return Err(IqRequestError::Error(StanzaError::new(
                StanzaErrorCondition::RemoteServerNotFound,
            )));
        }
        let Ok(full) = to.try_as_full() else {
            return Err(IqRequestError::Error(
                StanzaError::service_unavailable().with_text("requests reach local resources only"),
            ));
        };
        let Some(session) = self.sessions.get(full) else {
            return Err(IqRequestError::Error(StanzaError::service_unavailable()));
        };
        let (id, answer, _pending) = self.pending_iqs.register(from, to.clone());
        stanza.set_attr("id", id);
        // The addressee's delivery filters apply as to any IQ (a blocked sender is refused).
        let Some(stanza) = self.filter_local_quiet(&to, stanza).await else {
            return Err(IqRequestError::Error(StanzaError::service_unavailable()));
        };
        if session.deliver(stanza).is_err() {
            return Err(IqRequestError::Error(StanzaError::service_unavailable()));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => {
                if IqType::of(&reply) == Some(IqType::Result) {
                    Ok(reply)
                } else {
                    Err(IqRequestError::Error(
                        StanzaError::from_stanza(&reply).unwrap_or_else(|| {
                            StanzaError::new(StanzaErrorCondition::UndefinedCondition)
                        }),
                    ))
                }
            }
            // The entry is only removed with the guard, which lives until here.
            Ok(Err(_)) | Err(_) => Err(IqRequestError::Timeout(timeout)),
        }
    }

    /// The [`LocalDelivery`] filters without answering a dropped request (the caller does).
    async fn filter_local_quiet(self: &Arc<Self>, to: &Jid, stanza: Element) -> Option<Element> {
        let host = self.hosts.get(to.domain().as_str())?;
        host.hooks()
            .fold(
                self,
                LocalDelivery {
                    to: to.clone(),
                    stanza,
                },
            )
            .await
            .map(|d| d.stanza)
    }

    async fn route_iq(self: &Arc<Self>, from: &FullJid, to: Option<Jid>, stanza: Element) {
        let Some(iq_type) = IqType::of(&stanza) else {
            return self.bounce(
                &stanza,
                StanzaError::bad_request("missing or unknown IQ type"),
            );
        };
        if stanza.attr("id").is_none() {
            return self.bounce(&stanza, StanzaError::bad_request("an IQ needs an id"));
        }
        let Some(to) = to else {
            // Addressed to the sender's own account.
            let own = Jid::from(from.to_bare());
            return self
                .handle_iq(from, own, IqScope::Account, iq_type, stanza)
                .await;
        };
        if !self.serves(to.domain().as_str()) {
            if iq_type.is_request() {
                self.bounce(
                    &stanza,
                    StanzaError::new(StanzaErrorCondition::RemoteServerNotFound),
                );
            }
            return;
        }
        if to.node().is_none() {
            return self
                .handle_iq(from, to, IqScope::Host, iq_type, stanza)
                .await;
        }
        match to.try_as_full() {
            Ok(full) => match self.sessions.get(full) {
                Some(session) => {
                    if let Some(stanza) = self.filter_local(&to, stanza).await {
                        let _ = session.deliver(stanza);
                    }
                }
                None if iq_type.is_request() => {
                    self.bounce(&stanza, StanzaError::service_unavailable())
                }
                None => {}
            },
            Err(bare) => {
                if *bare != from.to_bare() {
                    match self.account_exists(bare).await {
                        Ok(true) => {}
                        Ok(false) => {
                            if iq_type.is_request() {
                                self.bounce(&stanza, StanzaError::service_unavailable());
                            }
                            return;
                        }
                        Err(e) => return self.bounce(&stanza, e),
                    }
                }
                let Some(stanza) = self.filter_local(&to, stanza).await else {
                    return;
                };
                self.handle_iq(from, to.clone(), IqScope::Account, iq_type, stanza)
                    .await
            }
        }
    }

    async fn handle_iq(
        self: &Arc<Self>,
        from: &FullJid,
        to: Jid,
        scope: IqScope,
        iq_type: IqType,
        stanza: Element,
    ) {
        if !iq_type.is_request() {
            // An answer to the server itself or to an account: only requests the server sent
            // (`send_iq_request`) await one; anything else is dropped.
            self.pending_iqs.resolve(from, &to, stanza);
            return;
        }
        let mut children = stanza.children();
        let payload = match (children.next(), children.next()) {
            (Some(p), None) => p.clone(),
            _ => {
                return self.bounce(
                    &stanza,
                    StanzaError::bad_request("an IQ request carries exactly one child element"),
                )
            }
        };
        let handler = self
            .hosts
            .get(to.domain().as_str())
            .and_then(|h| h.iq_handler(payload.ns(), scope))
            .cloned();
        let Some(handler) = handler else {
            return self.bounce(&stanza, StanzaError::service_unavailable());
        };
        let request = IqRequest {
            server: self.clone(),
            from: from.clone(),
            to,
            iq_type,
            payload,
        };
        match handler.handle(request).await {
            Ok(payload) => self.deliver_to_sender(iq_result(&stanza, payload)),
            Err(e) => self.bounce(&stanza, e),
        }
    }

    // ---- Messages (RFC 6121 §8.5) -----------------------------------------------------------

    async fn route_message(self: &Arc<Self>, to: Jid, stanza: Element) {
        let mtype = MessageType::of(&stanza);
        if !self.serves(to.domain().as_str()) {
            return self.bounce(
                &stanza,
                StanzaError::new(StanzaErrorCondition::RemoteServerNotFound),
            );
        }
        if to.node().is_none() {
            // Messages to the server itself: no module consumes them yet.
            if matches!(mtype, MessageType::Normal | MessageType::Chat) {
                self.bounce(&stanza, StanzaError::service_unavailable());
            }
            return;
        }
        let Some(stanza) = self.filter_local(&to, stanza).await else {
            return;
        };
        match to.try_as_full() {
            Ok(full) => {
                if let Some(session) = self.sessions.get(full) {
                    let copy = self.wants_delivered(full.domain().as_str(), mtype, &stanza);
                    if session.deliver(stanza).is_ok() {
                        if let Some(stanza) = copy {
                            self.delivered(full.to_bare(), stanza, vec![session.id()])
                                .await;
                        }
                    }
                    return;
                }
                // §8.5.3.2.1: resource not online.
                match mtype {
                    MessageType::Normal | MessageType::Chat => {
                        self.message_to_bare(full.to_bare(), mtype, stanza).await
                    }
                    MessageType::Groupchat => {
                        self.bounce(&stanza, StanzaError::service_unavailable())
                    }
                    MessageType::Headline | MessageType::Error => {}
                }
            }
            Err(bare) => self.message_to_bare(bare.clone(), mtype, stanza).await,
        }
    }

    /// §8.5.2: a message to a local bare JID.
    async fn message_to_bare(self: &Arc<Self>, bare: BareJid, mtype: MessageType, stanza: Element) {
        if mtype == MessageType::Error {
            return;
        }
        let resources = self.sessions.resources(&bare);
        let available: Vec<_> = resources
            .iter()
            .filter_map(|s| s.priority().filter(|p| *p >= 0).map(|p| (p, s)))
            .collect();
        if available.is_empty() {
            let exists = if resources.is_empty() {
                match self.account_exists(&bare).await {
                    Ok(e) => e,
                    Err(e) => return self.bounce(&stanza, e),
                }
            } else {
                true
            };
            if exists {
                let event = Arc::new(UndeliverableMessage { to: bare, stanza });
                if let Some(host) = self.hosts.get(event.to.domain().as_str()) {
                    if host.hooks().run_shared(self, event.clone()).await == Flow::Stop {
                        return;
                    }
                }
                if matches!(mtype, MessageType::Normal | MessageType::Chat) {
                    self.bounce(&event.stanza, StanzaError::service_unavailable());
                }
            } else {
                // §8.5.1: no such account.
                self.bounce(&stanza, StanzaError::service_unavailable());
            }
            return;
        }
        match mtype {
            MessageType::Groupchat => self.bounce(&stanza, StanzaError::service_unavailable()),
            MessageType::Headline => {
                for (_, s) in &available {
                    let _ = s.deliver(stanza.clone());
                }
            }
            MessageType::Normal | MessageType::Chat => {
                // The highest priority wins; all resources that share it get the message
                // unless configured to pick one (§8.5.2.1.1 allows either).
                let top = available.iter().map(|(p, _)| *p).max().unwrap_or(0);
                let mut targets: Vec<_> = available
                    .iter()
                    .filter(|(p, _)| *p == top)
                    .map(|(_, s)| *s)
                    .collect();
                if !self.config.messages.to_all_top_priority_resources {
                    // Sessions are registered in binding order: the last is the newest.
                    targets.drain(..targets.len().saturating_sub(1));
                }
                let copy = self.wants_delivered(bare.domain().as_str(), mtype, &stanza);
                let mut delivered = Vec::with_capacity(targets.len());
                if let Some((last, rest)) = targets.split_last() {
                    for s in rest {
                        if s.deliver(stanza.clone()).is_ok() {
                            delivered.push(s.id());
                        }
                    }
                    if last.deliver(stanza).is_ok() {
                        delivered.push(last.id());
                    }
                }
                if let Some(stanza) = copy {
                    self.delivered(bare, stanza, delivered).await;
                }
            }
            MessageType::Error => {}
        }
    }

    /// A copy of a chat/normal/error message for the [`MessageDelivered`] hook, only when
    /// some module listens (the common path pays nothing).
    fn wants_delivered(
        &self,
        domain: &str,
        mtype: MessageType,
        stanza: &Element,
    ) -> Option<Element> {
        if !matches!(
            mtype,
            MessageType::Normal | MessageType::Chat | MessageType::Error
        ) {
            return None;
        }
        let host = self.hosts.get(domain)?;
        host.hooks()
            .has_handlers::<MessageDelivered>()
            .then(|| stanza.clone())
    }

    async fn delivered(self: &Arc<Self>, to: BareJid, stanza: Element, delivered_to: Vec<u64>) {
        if let Some(host) = self.hosts.get(to.domain().as_str()).cloned() {
            host.hooks()
                .run(
                    self,
                    MessageDelivered {
                        to,
                        stanza,
                        delivered_to,
                    },
                )
                .await;
        }
    }

    /// Delivers again a message that a session accepted but never confirmed before it ended
    /// (XEP-0198 §4, stream management without resumption): to the account's other available
    /// resources, else the [`UndeliverableMessage`] hook (offline storage). The filters already
    /// ran when it was first delivered, so they do not run again; the ended session must
    /// already be unbound so it cannot get the message back.
    pub async fn redeliver_message(self: &Arc<Self>, stanza: Element) {
        let mtype = MessageType::of(&stanza);
        if !matches!(mtype, MessageType::Normal | MessageType::Chat) {
            return;
        }
        let Some(Ok(to)) = stanza.attr("to").map(parse_jid) else {
            return;
        };
        if to.node().is_none() || !self.serves(to.domain().as_str()) {
            return;
        }
        self.message_to_bare(to.to_bare(), mtype, stanza).await;
    }

    // ---- Presence (RFC 6121 §4, §8.5) -------------------------------------------------------

    async fn client_presence(self: &Arc<Self>, from: &FullJid, host: &Host, stanza: Element) {
        let Some(session) = self.sessions.get(from) else {
            return;
        };
        match PresenceType::of(&stanza) {
            Some(PresenceType::Available) => {
                let priority = stanza
                    .get_child("priority", ns::CLIENT)
                    .and_then(|p| p.text().trim().parse::<i8>().ok())
                    .unwrap_or(0);
                session.set_priority(Some(priority));
            }
            Some(PresenceType::Unavailable) => session.set_priority(None),
            _ => return,
        }
        host.hooks()
            .run(
                self,
                PresenceBroadcast {
                    from: from.clone(),
                    stanza,
                },
            )
            .await;
    }

    async fn route_presence(self: &Arc<Self>, to: Jid, stanza: Element) {
        let Some(ptype) = PresenceType::of(&stanza) else {
            return self.bounce(&stanza, StanzaError::bad_request("unknown presence type"));
        };
        if !self.serves(to.domain().as_str()) {
            return self.bounce(
                &stanza,
                StanzaError::new(StanzaErrorCondition::RemoteServerNotFound),
            );
        }
        if to.node().is_none() {
            return;
        }
        let bare = to.to_bare();
        match self.account_exists(&bare).await {
            Ok(true) => {}
            _ => return, // RFC 6121 §8.5.1: presence to no such account is silently ignored.
        }
        let Some(stanza) = self.filter_local(&to, stanza).await else {
            return;
        };
        let event = Arc::new(InboundPresence {
            to: to.clone(),
            stanza,
        });
        if let Some(host) = self.hosts.get(bare.domain().as_str()) {
            if host.hooks().run_shared(self, event.clone()).await == Flow::Stop {
                return;
            }
        }
        if !matches!(ptype, PresenceType::Available | PresenceType::Unavailable) {
            return; // Subscriptions and probes are for a roster module to act on.
        }
        match to.try_as_full() {
            Ok(full) => {
                if let Some(s) = self.sessions.get(full) {
                    let _ = s.deliver(event.stanza.clone());
                }
            }
            Err(_) => {
                for s in self.sessions.resources(&bare) {
                    if s.priority().is_some() {
                        let _ = s.deliver(event.stanza.clone());
                    }
                }
            }
        }
    }
}

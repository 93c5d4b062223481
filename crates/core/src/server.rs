//! The server: virtual hosts, the session registry, storage, and the router: where a
//! stanza goes ([`Server::destination`], see [`crate::route`]) and the rules of RFC 6120 §10
//! and RFC 6121 §8 for stanzas to local entities.

use crate::config::Config;
use crate::events::{
    ClientStanza, InboundPresence, LocalDelivery, MessageDelivered, OutboundPresence,
    PresenceBroadcast, UndeliverableMessage,
};
use crate::hooks::Flow;
use crate::host::Host;
use crate::http::{HttpEndpoint, HttpMount};
use crate::iq::{IqRequest, IqScope};
use crate::module::{ModuleError, ModuleRegistry, SharedState};
use crate::requests::{IqRequestError, PendingIqs};
use crate::route::{
    AttachError, Destination, ExternalRoute, RemoteRoutes, ServiceDomain, ServiceHandle,
};
use crate::sessions::{Resources, SessionRegistry};
use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use rookery_stanza::{
    ns, parse_jid, BareJid, Bounce, FullJid, IqType, Jid, MessageType, PresenceType, SharedStanza,
    Stanza, StanzaError, StanzaErrorCondition, StanzaKind, StreamErrorCondition,
};
use rookery_storage::Storage;
use rookery_xml::Element;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Server {
    /// The configuration in force: replaced whole by [`Server::apply_config`] (a reload);
    /// readers take the current one with [`Server::config`].
    config: ArcSwap<Config>,
    /// Told (with a new generation number) each time the configuration is replaced, for
    /// what keeps a value derived from it (the connection limits of the listeners).
    config_updates: tokio::sync::watch::Sender<u64>,
    /// Every module the build has, to build hosts a reload adds.
    registry: ModuleRegistry,
    /// The virtual hosts by domain: replaced whole when a reload adds one, so the routing
    /// path reads it with one atomic load.
    hosts: ArcSwap<HashMap<String, Arc<Host>>>,
    /// Service domains claimed by the hosts' modules, by domain.
    services: ArcSwap<HashMap<String, Arc<ServiceDomain>>>,
    /// HTTP handlers the hosts' modules registered, each path once.
    http_handlers: ArcSwap<Vec<HttpMount>>,
    /// Where the HTTP listeners are reached, once the transport bound them.
    http_endpoint: RwLock<Option<Arc<HttpEndpoint>>>,
    /// External components attached under their domain (XEP-0114), by domain.
    components: RwLock<HashMap<String, Arc<dyn ExternalRoute>>>,
    /// Routes to remote domains, once a server-to-server transport provides them.
    remote: RwLock<Option<Arc<dyn RemoteRoutes>>>,
    /// This server, for answers that must be routed from where no `Arc` is at hand.
    me: Weak<Server>,
    sessions: SessionRegistry,
    storage: Storage,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
    pending_iqs: Arc<PendingIqs>,
    /// What modules keep for the whole server ([`crate::HostBuilder::shared`]); a host a
    /// reload adds is built with the same values.
    shared: Mutex<SharedState>,
    /// The modules some host enables, each started once ([`crate::Module::start`]).
    started_modules: Mutex<BTreeSet<&'static str>>,
    /// Hosts a reload took out of the configuration ([`Server::retire_host`]): built at
    /// start, kept, but not served (nor their service domains) until listed again.
    retired: RwLock<HashSet<String>>,
    /// Whether `retired` has any entry: the routing hot path reads this one atomic, not the
    /// lock, while no host was ever retired.
    any_retired: AtomicBool,
}

/// Why a host could not be added to a running server ([`Server::add_host`]).
#[derive(Debug, thiserror::Error)]
pub enum AddHostError {
    #[error("host {0} is not in the configuration given")]
    NotConfigured(String),
    #[error("host {0} is served already")]
    Exists(String),
    #[error(transparent)]
    Module(#[from] ModuleError),
}

/// A host's service domains and HTTP handlers checked against what is served already
/// (`hosts`, `services`, `mounts`) and added to the last two.
fn claim_routes(
    host: &mut Host,
    hosts: &HashMap<String, Arc<Host>>,
    configured: &Config,
    services: &mut HashMap<String, Arc<ServiceDomain>>,
    mounts: &mut Vec<HttpMount>,
) -> Result<(), ModuleError> {
    for claim in std::mem::take(&mut host.services) {
        let domain = claim.domain.as_str().to_owned();
        if configured.hosts.iter().any(|h| h.domain == domain)
            || hosts.contains_key(&domain)
            || services.contains_key(&domain)
        {
            return Err(ModuleError::Init {
                module: claim.module,
                message: format!("the domain {domain} is already served"),
            });
        }
        services.insert(
            domain,
            Arc::new(ServiceDomain {
                domain: claim.domain,
                host: host.domain.clone(),
                module: claim.module,
                service: claim.service,
            }),
        );
    }
    for mount in std::mem::take(&mut host.http_handlers) {
        if mounts.iter().any(|m| m.path == mount.path) {
            return Err(ModuleError::Init {
                module: mount.module,
                message: format!("the HTTP path {} is already served", mount.path),
            });
        }
        mounts.push(mount);
    }
    Ok(())
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
        let mut services: HashMap<String, Arc<ServiceDomain>> = HashMap::new();
        let mut shared = SharedState::default();
        let mut http_handlers: Vec<HttpMount> = Vec::new();
        for h in &config.hosts {
            let mut host = registry.build_host_sharing(
                &h.domain,
                h.modules.as_deref(),
                &config,
                &storage,
                &mut shared,
            )?;
            claim_routes(
                &mut host,
                &hosts,
                &config,
                &mut services,
                &mut http_handlers,
            )?;
            hosts.insert(h.domain.clone(), Arc::new(host));
        }
        let enabled: BTreeSet<&'static str> = hosts
            .values()
            .flat_map(|h: &Arc<Host>| h.modules().iter().copied())
            .collect();
        let server = Arc::new_cyclic(|me| Server {
            config: ArcSwap::from_pointee(config),
            config_updates: tokio::sync::watch::Sender::new(0),
            registry: registry.clone(),
            hosts: ArcSwap::from_pointee(hosts),
            services: ArcSwap::from_pointee(services),
            http_handlers: ArcSwap::from_pointee(http_handlers),
            http_endpoint: RwLock::default(),
            components: RwLock::default(),
            remote: RwLock::default(),
            me: me.clone(),
            sessions: SessionRegistry::default(),
            storage,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            pending_iqs: Arc::default(),
            shared: Mutex::new(shared),
            started_modules: Mutex::new(enabled.clone()),
            retired: RwLock::default(),
            any_retired: AtomicBool::new(false),
        });
        registry.start(&server, &enabled);
        Ok(server)
    }

    /// The configuration in force now. A reload may replace it ([`Server::apply_config`]):
    /// keep the `Arc` for as long as one consistent view is needed, and ask again for the
    /// next decision.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts `config` in force: what reads the configuration at each use (new connections'
    /// limits, routing rules, per-host settings) sees it from now on, and the watchers of
    /// [`Server::config_updates`] are told. The caller ([`crate`]'s user, the reload) keeps
    /// what cannot change while running (listeners, storage, module sections read at start)
    /// as it was; a host listed here but not served yet is served once
    /// [`Server::add_host`] builds it.
    pub fn apply_config(&self, config: Config) {
        self.config.store(Arc::new(config));
        self.config_updates
            .send_modify(|generation| *generation += 1);
    }

    /// Told each time [`Server::apply_config`] replaces the configuration.
    pub fn config_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_updates.subscribe()
    }

    /// Builds and serves a host a reload added: `domain` must be one of the hosts of the
    /// configuration in force (put there first with [`Server::apply_config`]) and not
    /// served or retired already. Its modules are initialised with the values other hosts'
    /// modules share; the modules no host enabled before are started
    /// ([`crate::Module::start`]), the others are told ([`crate::Module::host_added`]). On
    /// an error (a module refused the configuration, a service domain or HTTP path served
    /// already) nothing is served. Returns the modules now enabled on it.
    pub fn add_host(self: &Arc<Self>, domain: &str) -> Result<Vec<&'static str>, AddHostError> {
        let config = self.config();
        let h = config
            .host(domain)
            .ok_or_else(|| AddHostError::NotConfigured(domain.to_owned()))?;
        if self.hosts.load().contains_key(domain) {
            return Err(AddHostError::Exists(domain.to_owned()));
        }
        let mut host = {
            let mut shared = self.shared.lock();
            self.registry.build_host_sharing(
                &h.domain,
                h.modules.as_deref(),
                &config,
                &self.storage,
                &mut shared,
            )?
        };
        // Hosts are added by one reload at a time (the reloader serialises them), so the
        // maps read here are the ones replaced below.
        let hosts = self.hosts.load_full();
        let mut services = (**self.services.load()).clone();
        let mut mounts = (**self.http_handlers.load()).clone();
        claim_routes(&mut host, &hosts, &config, &mut services, &mut mounts)?;
        let modules = host.modules().to_vec();
        let mut new_hosts = (*hosts).clone();
        new_hosts.insert(domain.to_owned(), Arc::new(host));
        self.services.store(Arc::new(services));
        self.http_handlers.store(Arc::new(mounts));
        self.hosts.store(Arc::new(new_hosts));
        let fresh: BTreeSet<&'static str> = {
            let mut started = self.started_modules.lock();
            modules
                .iter()
                .copied()
                .filter(|m| started.insert(m))
                .collect()
        };
        self.registry.start(self, &fresh);
        let told: BTreeSet<&'static str> = modules
            .iter()
            .copied()
            .filter(|m| !fresh.contains(m))
            .collect();
        self.registry.host_added(self, domain, &told);
        Ok(modules)
    }

    pub fn host(&self, domain: &str) -> Option<Arc<Host>> {
        self.live_host(domain)
    }
    /// Whether `domain` is one of this server's virtual hosts (its accounts' domains).
    pub fn serves(&self, domain: &str) -> bool {
        !self.is_retired(domain) && self.hosts.load().contains_key(domain)
    }
    /// The service domain `domain`, if a module of a served host claimed it.
    pub fn service(&self, domain: &str) -> Option<Arc<ServiceDomain>> {
        self.services
            .load()
            .get(domain)
            .filter(|s| !self.is_retired(&s.host))
            .cloned()
    }

    /// Every host the server was built with or a reload added (retired ones included),
    /// sorted.
    pub fn built_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.hosts.load().keys().cloned().collect();
        hosts.sort_unstable();
        hosts
    }

    fn is_retired(&self, domain: &str) -> bool {
        self.any_retired.load(Ordering::Acquire) && self.retired.read().contains(domain)
    }

    /// The host `domain`, unless a reload retired it.
    fn live_host(&self, domain: &str) -> Option<Arc<Host>> {
        if self.is_retired(domain) {
            return None;
        }
        self.hosts.load().get(domain).cloned()
    }

    /// Stops serving a host a reload no longer finds in the configuration: from now on it
    /// is unknown (new streams to it get `host-unknown`, stanzas to it and to its service
    /// domains are routed as to any other domain), and each of its sessions is closed with
    /// the `host-gone` stream error (RFC 6120 §4.9.3.7). The host's modules stay built, so
    /// listing it again ([`Server::restore_host`]) serves it as before. Returns how many
    /// sessions were asked to close; `None` if the server has no such host or it is
    /// retired already.
    pub fn retire_host(&self, domain: &str) -> Option<usize> {
        if !self.hosts.load().contains_key(domain)
            || !self.retired.write().insert(domain.to_owned())
        {
            return None;
        }
        self.any_retired.store(true, Ordering::Release);
        let mut closed = 0;
        for s in self.sessions.all() {
            if s.jid().domain().as_str() == domain {
                s.kick(
                    StreamErrorCondition::HostGone,
                    "this host is no longer served here",
                );
                closed += 1;
            }
        }
        Some(closed)
    }

    /// Serves a retired host again (a reload found it listed again); false if it was not
    /// retired.
    pub fn restore_host(&self, domain: &str) -> bool {
        let mut retired = self.retired.write();
        let was = retired.remove(domain);
        if retired.is_empty() {
            self.any_retired.store(false, Ordering::Release);
        }
        was
    }
    /// The HTTP handlers modules registered ([`crate::http`]), for the HTTP listeners to
    /// mount.
    /// The list changes when a reload adds a host whose modules serve HTTP: look a request's
    /// handler up in the list of the moment.
    pub fn http_handlers(&self) -> Arc<Vec<HttpMount>> {
        self.http_handlers.load_full()
    }
    /// Where the HTTP listeners are reached (set by the transport when it serves them).
    pub fn http_endpoint(&self) -> Option<Arc<HttpEndpoint>> {
        self.http_endpoint.read().clone()
    }
    /// Called by the transport once its HTTP listeners are bound.
    pub fn set_http_endpoint(&self, endpoint: HttpEndpoint) {
        *self.http_endpoint.write() = Some(Arc::new(endpoint));
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
    /// The value of type `T` modules of this server's hosts shared while they initialised
    /// ([`crate::HostBuilder::shared`]), for their [`crate::Module::start`]; `None` when no
    /// host asked for one.
    pub fn shared<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.shared.lock().get::<T>()
    }
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    // ---- Routes ------------------------------------------------------------------------------

    /// Where stanzas to `domain` go: the one place that decides it.
    pub fn destination(&self, domain: &str) -> Destination {
        if let Some(host) = self.live_host(domain) {
            return Destination::Host(host);
        }
        if let Some(service) = self.service(domain) {
            return Destination::Service(service);
        }
        if let Some(component) = self.components.read().get(domain) {
            return Destination::External(component.clone());
        }
        match self.remote.read().as_ref().and_then(|r| r.route_to(domain)) {
            Some(route) => Destination::External(route),
            None => Destination::Unrouted,
        }
    }

    /// Attaches an external component's route under its domain (XEP-0114). Refused for a
    /// domain that a host or a service domain serves, and for a domain a component is
    /// attached under already: the connection that holds it keeps it (as Prosody does), so
    /// a second process configured with the same secret cannot take a working component's
    /// traffic by connecting, and the owner's route is never replaced under it.
    pub fn attach_component(
        &self,
        domain: &str,
        route: Arc<dyn ExternalRoute>,
    ) -> Result<(), AttachError> {
        if self.hosts.load().contains_key(domain) || self.services.load().contains_key(domain) {
            return Err(AttachError::Served);
        }
        match self.components.write().entry(domain.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => Err(AttachError::Attached),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(route);
                Ok(())
            }
        }
    }

    /// Whether an external component is attached under `domain` now.
    pub fn has_component(&self, domain: &str) -> bool {
        self.components.read().contains_key(domain)
    }

    /// Detaches a component (its stream ended).
    pub fn detach_component(&self, domain: &str) {
        self.components.write().remove(domain);
    }

    /// Installs the routes to remote domains (a server-to-server transport).
    pub fn set_remote_routes(&self, routes: Arc<dyn RemoteRoutes>) {
        *self.remote.write() = Some(routes);
    }

    /// Whether stanzas to `domain` have somewhere to go; the error is the one a sender gets
    /// when they do not. For modules that must know before they act (a subscription request
    /// must not be recorded as pending when it cannot leave, RFC 6120 §10.4).
    pub fn check_route(&self, domain: &str) -> Result<(), StanzaError> {
        match self.destination(domain) {
            Destination::Unrouted => Err(self.no_route(domain)),
            _ => Ok(()),
        }
    }

    /// The answer to a stanza for a domain nobody routes to. Until federation exists, this
    /// is every domain that is neither served here nor attached (RFC 6120 §10.4.2).
    fn no_route(&self, domain: &str) -> StanzaError {
        tracing::debug!(domain, "no route to domain");
        StanzaError::new(StanzaErrorCondition::RemoteServerNotFound)
    }

    // ---- Entry points ------------------------------------------------------------------------

    /// Checks and stamps the `from` of a stanza a client sent (RFC 6120 §8.1.2.1): absent is
    /// stamped with the session's full JID; the full or bare JID of the session is accepted;
    /// anything else is spoofing and ends the stream with `invalid-from`. Also refuses what
    /// is not a stanza of the stream's content namespace, and parses the header once. A
    /// malformed `to` is answered `jid-malformed` here (`Ok(None)`: nothing to route).
    pub fn stamp_from_client(
        &self,
        session: &FullJid,
        mut stanza: Element,
    ) -> Result<Option<Stanza>, StreamErrorCondition> {
        let kind = match StanzaKind::of(&stanza) {
            Some(kind) if stanza.ns() == ns::CLIENT => kind,
            // A server-to-server stanza on a client stream is the wrong content namespace;
            // anything else unknown at the top level is an unsupported stanza type
            // (RFC 6120 §4.9.3.10, §4.9.3.22).
            _ if stanza.ns() == ns::SERVER => return Err(StreamErrorCondition::InvalidNamespace),
            _ => return Err(StreamErrorCondition::UnsupportedStanzaType),
        };
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
        let to = match stanza.attr("to").map(parse_jid) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(e)) => {
                self.bounce(&stanza, e);
                return Ok(None);
            }
        };
        Ok(Some(Stanza::from_parts(
            kind,
            stanza,
            to,
            Some(Jid::from(session.clone())),
        )))
    }

    /// Routes a stamped stanza from a local client session.
    pub async fn route_from_client(self: &Arc<Self>, from: &FullJid, stanza: Stanza) {
        crate::counters::stanza_in(stanza.name());
        let Some(host) = self.live_host(from.domain().as_str()) else {
            return;
        };
        let Some(ClientStanza { mut stanza, .. }) = host
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
        let sender = Jid::from(from.clone());
        match stanza.kind() {
            StanzaKind::Iq => match stanza.to().cloned() {
                Some(to) => self.dispatch(Some(&sender), to, stanza).await,
                None => {
                    // Addressed to the sender's own account (RFC 6120 §10.3.3).
                    let Some(iq_type) = self.check_iq(&stanza) else {
                        return;
                    };
                    let own = Jid::from(from.to_bare());
                    self.handle_iq(&sender, own, IqScope::Account, iq_type, stanza)
                        .await
                }
            },
            StanzaKind::Message => {
                let to = match stanza.to() {
                    Some(to) => to.clone(),
                    // RFC 6120 §10.3.1: no 'to' means the sender's own bare JID.
                    None => {
                        let bare = Jid::from(from.to_bare());
                        stanza.set_to(bare.clone());
                        bare
                    }
                };
                self.dispatch(Some(&sender), to, stanza).await
            }
            StanzaKind::Presence => match stanza.to().cloned() {
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
                    self.dispatch(Some(&sender), to, stanza).await
                }
            },
        }
    }

    /// Routes a stanza from an entity of a service domain (through its [`ServiceHandle`]),
    /// and later from a remote one: the same rules as a client's stanza after the client
    /// filters, with the sender answered when it cannot be delivered. `to` and `from` must be
    /// set.
    pub async fn route_from_entity(self: &Arc<Self>, stanza: Stanza) {
        let (Some(_), Some(to)) = (stanza.from(), stanza.to().cloned()) else {
            return;
        };
        // A message to a local account (every copy of a room's broadcast) goes as dispatch
        // would send it, without a copy of the sender's address: only IQs and stanzas
        // without a route answer the sender.
        if stanza.kind() == StanzaKind::Message
            && matches!(self.destination(to.domain().as_str()), Destination::Host(_))
        {
            return self.message_to_host(to, stanza).await;
        }
        let Some(from) = stanza.from().cloned() else {
            return;
        };
        self.dispatch(Some(&from), to, stanza).await
    }

    /// Routes a stanza that did not come from a client of this server's streams (a module
    /// speaking for the server or for an account); its `from` must already be set. Presence
    /// and messages go through the same rules as a client's; IQs reach local sessions and
    /// other routes only. What cannot be routed is dropped, not answered: the account did
    /// not send it.
    pub async fn route(self: &Arc<Self>, stanza: Element) {
        match Stanza::parse(stanza) {
            Ok(stanza) => self.route_stanza(stanza).await,
            Err(e) => tracing::debug!(error = %e, "a module routed something unroutable"),
        }
    }

    /// [`route`](Self::route) for a stanza whose header is parsed.
    pub async fn route_stanza(self: &Arc<Self>, stanza: Stanza) {
        let Some(to) = stanza.to().cloned() else {
            return;
        };
        self.dispatch(None, to, stanza).await
    }

    /// Hands a stanza to its route. `sender` is the entity that sent it, answered when it
    /// cannot be delivered; `None` for what the server itself sends on an account's behalf.
    async fn dispatch(self: &Arc<Self>, sender: Option<&Jid>, to: Jid, stanza: Stanza) {
        match stanza.kind() {
            StanzaKind::Iq if sender.is_some() && self.check_iq(&stanza).is_none() => return,
            StanzaKind::Presence if stanza.presence_type().is_none() => {
                return self.bounce(&stanza, StanzaError::bad_request("unknown presence type"));
            }
            _ => {}
        }
        match self.destination(to.domain().as_str()) {
            Destination::Host(host) => match (stanza.kind(), sender) {
                (StanzaKind::Iq, Some(sender)) => self.iq_to_host(sender, to, stanza).await,
                (StanzaKind::Iq, None) => self.server_iq_to_host(&to, stanza),
                (StanzaKind::Message, _) => self.message_to_host(to, stanza).await,
                (StanzaKind::Presence, _) => self.presence_to_host(&host, to, stanza).await,
            },
            Destination::Service(service) => {
                let handle = ServiceHandle {
                    server: Arc::downgrade(self),
                    domain: service.domain.clone(),
                };
                service.service.receive(&handle, stanza).await
            }
            Destination::External(route) => {
                let kind = crate::counters::stanza_kind(stanza.name());
                match route.send(stanza.clone()).await {
                    Ok(()) => crate::counters::stanza_out(kind),
                    Err(crate::route::RouteError::Unroutable(e)) => {
                        if sender.is_some() {
                            self.answer_unroutable(&stanza, e);
                        }
                    }
                }
            }
            Destination::Unrouted => {
                if sender.is_some() {
                    self.answer_unroutable(&stanza, self.no_route(to.domain().as_str()));
                } else {
                    // What the server sends for an account to a contact it cannot reach
                    // (presence broadcasts, probes) has nowhere to go; not bounced.
                    tracing::debug!(to = %to, "no route for a stanza the server sent");
                }
            }
        }
    }

    /// Answers the sender of a stanza that has no route: IQ requests, messages and presence
    /// get the error; IQ answers and errors are dropped (RFC 6120 §8.3.1).
    fn answer_unroutable(&self, stanza: &Stanza, error: StanzaError) {
        let answerable = match stanza.kind() {
            StanzaKind::Iq => stanza.iq_type().is_some_and(IqType::is_request),
            _ => true,
        };
        if answerable {
            self.bounce(stanza, error);
        }
    }

    /// The IQ type of a request or answer an entity sent, or `None` after answering one
    /// without a valid type or id (RFC 6120 §8.2.3).
    fn check_iq(&self, stanza: &Stanza) -> Option<IqType> {
        let Some(iq_type) = stanza.iq_type() else {
            self.bounce(
                stanza,
                StanzaError::bad_request("missing or unknown IQ type"),
            );
            return None;
        };
        if stanza.id().is_none() {
            self.bounce(stanza, StanzaError::bad_request("an IQ needs an id"));
            return None;
        }
        Some(iq_type)
    }

    /// Runs the [`LocalDelivery`] filters for a stanza addressed to a local account.
    /// A dropped IQ request is answered `service-unavailable` (every request gets an answer).
    async fn filter_local(self: &Arc<Self>, to: &Jid, stanza: Stanza) -> Option<Stanza> {
        let host = self.live_host(to.domain().as_str())?;
        let is_request =
            stanza.kind() == StanzaKind::Iq && stanza.iq_type().is_some_and(IqType::is_request);
        // A clone shares the element: nothing is copied unless a filter changes it.
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
    /// A [`Stanza`] is answered by its header, an element by its attributes.
    pub fn bounce<S: Bounce + ?Sized>(&self, stanza: &S, error: StanzaError) {
        if let Some((reply, to)) = stanza.error_answer(&error) {
            self.deliver_to_sender(reply, to);
        }
    }

    /// Delivers an answer of the server's (a result, an error) to whoever asked: a local
    /// session directly; a service, component or remote entity through the router, in a task
    /// of its own since the caller may not wait. Answers to a local bare JID are dropped (the
    /// server asked, and its own requests are resolved where they are routed).
    /// `to` is the reply's `to`, when the caller has it parsed.
    fn deliver_to_sender(&self, reply: Element, to: Option<Jid>) {
        let to = match to {
            Some(to) => to,
            None => match reply.attr("to").map(Jid::new) {
                Some(Ok(to)) => to,
                _ => return,
            },
        };
        if self.live_host(to.domain().as_str()).is_some() {
            if let Ok(full) = to.try_as_full() {
                if let Some(session) = self.sessions.get(full) {
                    let _ = session.deliver(reply);
                }
            }
            return;
        }
        let Some(server) = self.me.upgrade() else {
            return;
        };
        self.tasks.spawn(async move { server.route(reply).await });
    }

    /// [`deliver_to_sender`](Self::deliver_to_sender) in the caller's task, for the answer
    /// to `request` (whose header gives the answer's addresses).
    async fn answer(self: &Arc<Self>, reply: Element, request: &Stanza) {
        let Some(to) = request.from() else {
            return;
        };
        if self.live_host(to.domain().as_str()).is_some() {
            self.deliver_to_sender(reply, Some(to.clone()))
        } else {
            let reply = Stanza::from_parts(
                StanzaKind::Iq,
                reply,
                Some(to.clone()),
                request.to().cloned(),
            );
            // Boxed: routing the answer may lead back here (a service asking a host).
            Box::pin(self.route_stanza(reply)).await
        }
    }

    async fn account_exists(&self, jid: &BareJid) -> Result<bool, StanzaError> {
        if self.sessions.is_online(jid) {
            return Ok(true);
        }
        self.account_exists_offline(jid).await
    }

    /// Whether an account with no session exists (the caller looked the sessions up).
    async fn account_exists_offline(&self, jid: &BareJid) -> Result<bool, StanzaError> {
        let Some(node) = jid.node() else {
            return Ok(false);
        };
        self.storage
            .accounts
            .account_exists(jid.domain().as_str(), node.as_str())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "account look-up failed");
                StanzaError::new(StanzaErrorCondition::InternalServerError)
            })
    }

    // ---- IQ (RFC 6120 §8.2.3, §10.5.3) -------------------------------------------------------

    /// Sends an IQ get or set of the server's own, from a host or an account (`from` must be
    /// set: the domain or a local bare JID), and waits up to `timeout` for the answer. The
    /// server chooses the id. Returns the result stanza; an error answer (or the error the
    /// router would have answered, e.g. for a resource that is not online) is
    /// [`IqRequestError::Error`]. Local full JIDs, service domains and external routes can
    /// be reached (bare JIDs and hosts are answered by the server itself).
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
        let session = match self.destination(to.domain().as_str()) {
            Destination::Unrouted => {
                return Err(IqRequestError::Error(self.no_route(to.domain().as_str())))
            }
            Destination::Host(_) => {
                let Ok(full) = to.try_as_full() else {
                    return Err(IqRequestError::Error(
                        StanzaError::service_unavailable()
                            .with_text("requests reach local resources only"),
                    ));
                };
                let Some(session) = self.sessions.get(full) else {
                    return Err(IqRequestError::Error(StanzaError::service_unavailable()));
                };
                Some(session)
            }
            Destination::Service(_) | Destination::External(_) => None,
        };
        let (id, answer, _pending) = self.pending_iqs.register(from.clone(), to.clone());
        stanza.set_attr("id", id);
        let stanza = Stanza::from_parts(StanzaKind::Iq, stanza, Some(to.clone()), Some(from));
        match session {
            Some(session) => {
                // The addressee's delivery filters apply as to any IQ (a blocked sender is
                // refused).
                let Some(stanza) = self.filter_local_quiet(&to, stanza).await else {
                    return Err(IqRequestError::Error(StanzaError::service_unavailable()));
                };
                if session.deliver(stanza).is_err() {
                    return Err(IqRequestError::Error(StanzaError::service_unavailable()));
                }
            }
            None => self.dispatch(None, to, stanza).await,
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
    async fn filter_local_quiet(self: &Arc<Self>, to: &Jid, stanza: Stanza) -> Option<Stanza> {
        let host = self.live_host(to.domain().as_str())?;
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

    /// An IQ the server sends on an account's behalf (not a request of `send_iq_request`):
    /// only local sessions are reached this way.
    fn server_iq_to_host(&self, to: &Jid, stanza: Stanza) {
        if let Ok(full) = to.try_as_full() {
            if let Some(s) = self.sessions.get(full) {
                let _ = s.deliver(stanza);
            }
        }
    }

    /// An IQ from an entity to a host or one of its accounts (RFC 6120 §10.5.3).
    async fn iq_to_host(self: &Arc<Self>, sender: &Jid, to: Jid, stanza: Stanza) {
        let Some(iq_type) = stanza.iq_type() else {
            return;
        };
        if to.node().is_none() {
            return self
                .handle_iq(sender, to, IqScope::Host, iq_type, stanza)
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
                if *bare != sender.to_bare() {
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
                self.handle_iq(sender, to.clone(), IqScope::Account, iq_type, stanza)
                    .await
            }
        }
    }

    async fn handle_iq(
        self: &Arc<Self>,
        from: &Jid,
        to: Jid,
        scope: IqScope,
        iq_type: IqType,
        stanza: Stanza,
    ) {
        if !iq_type.is_request() {
            // An answer to the server itself or to an account: only requests the server sent
            // (`send_iq_request`) await one; anything else is dropped.
            self.pending_iqs.resolve(from, &to, stanza.into_element());
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
            .load()
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
            Ok(payload) => self.answer(stanza.iq_result(payload), &stanza).await,
            Err(e) => {
                if let Some(reply) = stanza.error_reply(&e) {
                    self.answer(reply, &stanza).await
                }
            }
        }
    }

    // ---- Messages (RFC 6121 §8.5) -----------------------------------------------------------

    async fn message_to_host(self: &Arc<Self>, to: Jid, stanza: Stanza) {
        let mtype = stanza.message_type().unwrap_or(MessageType::Normal);
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
        let bare = to.to_bare();
        // The one registry look-up of the message's way: the hooks get the sessions too.
        let sessions = self.sessions.resources(&bare);
        match to.try_as_full() {
            Ok(full) => {
                if let Some(session) = sessions.find(full) {
                    let watched = self.wants_delivered(bare.domain().as_str(), mtype);
                    let from = watched.then(|| stanza.from().cloned()).flatten();
                    let stanza = SharedStanza::from(stanza);
                    let id = session.id();
                    let copy = watched.then(|| stanza.clone());
                    if session.deliver(stanza).is_ok() {
                        if let Some(stanza) = copy {
                            self.delivered(bare, from, stanza, vec![id], sessions).await;
                        }
                    }
                    return;
                }
                // §8.5.3.2.1: resource not online.
                match mtype {
                    MessageType::Normal | MessageType::Chat => {
                        self.message_to_bare(bare, mtype, stanza, sessions).await
                    }
                    MessageType::Groupchat => {
                        self.bounce(&stanza, StanzaError::service_unavailable())
                    }
                    MessageType::Headline | MessageType::Error => {}
                }
            }
            Err(_) => self.message_to_bare(bare, mtype, stanza, sessions).await,
        }
    }

    /// §8.5.2: a message to a local bare JID, with the account's sessions.
    async fn message_to_bare(
        self: &Arc<Self>,
        bare: BareJid,
        mtype: MessageType,
        stanza: Stanza,
        sessions: Resources,
    ) {
        if mtype == MessageType::Error {
            return;
        }
        let available: Vec<_> = sessions
            .iter()
            .filter_map(|s| s.priority().filter(|p| *p >= 0).map(|p| (p, s)))
            .collect();
        if available.is_empty() {
            let exists = if sessions.is_empty() {
                match self.account_exists_offline(&bare).await {
                    Ok(e) => e,
                    Err(e) => return self.bounce(&stanza, e),
                }
            } else {
                true
            };
            if exists {
                let event = Arc::new(UndeliverableMessage {
                    to: bare,
                    stanza,
                    sessions,
                });
                if let Some(host) = self.live_host(event.to.domain().as_str()) {
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
                let stanza = SharedStanza::from(stanza);
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
                if !self.config.load().messages.to_all_top_priority_resources {
                    // Sessions are registered in binding order: the last is the newest.
                    targets.drain(..targets.len().saturating_sub(1));
                }
                let watched = self.wants_delivered(bare.domain().as_str(), mtype);
                let from = watched.then(|| stanza.from().cloned()).flatten();
                let stanza = SharedStanza::from(stanza);
                let mut delivered = Vec::with_capacity(targets.len());
                for s in &targets {
                    if s.deliver(stanza.clone()).is_ok() {
                        delivered.push(s.id());
                    }
                }
                drop(targets);
                drop(available);
                if watched {
                    self.delivered(bare, from, stanza, delivered, sessions)
                        .await;
                }
            }
            MessageType::Error => {}
        }
    }

    /// Whether some module listens to [`MessageDelivered`] for a chat/normal/error message
    /// (the common path pays nothing otherwise).
    fn wants_delivered(&self, domain: &str, mtype: MessageType) -> bool {
        matches!(
            mtype,
            MessageType::Normal | MessageType::Chat | MessageType::Error
        ) && self
            .hosts
            .load()
            .get(domain)
            .is_some_and(|h| h.hooks().has_handlers::<MessageDelivered>())
    }

    async fn delivered(
        self: &Arc<Self>,
        to: BareJid,
        from: Option<Jid>,
        stanza: SharedStanza,
        delivered_to: Vec<u64>,
        sessions: Resources,
    ) {
        if let Some(host) = self.live_host(to.domain().as_str()) {
            host.hooks()
                .run(
                    self,
                    MessageDelivered {
                        to,
                        from,
                        stanza,
                        delivered_to,
                        sessions,
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
    pub async fn redeliver_message(self: &Arc<Self>, stanza: SharedStanza) {
        let Ok(stanza) = Stanza::parse(stanza.into_element()) else {
            return;
        };
        let mtype = stanza.message_type().unwrap_or(MessageType::Normal);
        if !matches!(mtype, MessageType::Normal | MessageType::Chat) {
            return;
        }
        let Some(to) = stanza.to() else {
            return;
        };
        if to.node().is_none() || !self.serves(to.domain().as_str()) {
            return;
        }
        let bare = to.to_bare();
        let sessions = self.sessions.resources(&bare);
        self.message_to_bare(bare, mtype, stanza, sessions).await;
    }

    // ---- Presence (RFC 6121 §4, §8.5) -------------------------------------------------------

    async fn client_presence(self: &Arc<Self>, from: &FullJid, host: &Host, stanza: Stanza) {
        let Some(session) = self.sessions.get(from) else {
            return;
        };
        match stanza.presence_type() {
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
                    session,
                    stanza,
                },
            )
            .await;
    }

    /// Presence to a local account: one registry look-up, whose sessions are the ones that
    /// get it.
    async fn presence_to_host(self: &Arc<Self>, host: &Host, to: Jid, stanza: Stanza) {
        let Some(ptype) = stanza.presence_type() else {
            return;
        };
        if to.node().is_none() {
            return;
        }
        let bare = to.to_bare();
        let sessions = self.sessions.resources(&bare);
        if sessions.is_empty() {
            match self.account_exists_offline(&bare).await {
                Ok(true) => {}
                // RFC 6121 §8.5.1: presence to no such account is silently ignored.
                _ => return,
            }
        }
        let Some(stanza) = self.filter_local(&to, stanza).await else {
            return;
        };
        let event = Arc::new(InboundPresence {
            to: to.clone(),
            stanza,
        });
        if host.hooks().run_shared(self, event.clone()).await == Flow::Stop {
            return;
        }
        // Subscriptions and probes are for a roster module to act on. A presence error (a
        // room refusing to be entered, a contact's server bouncing directed presence) goes to
        // the full JID that caused it (RFC 6121 §8.5.3.1); to a bare JID it is dropped.
        let error_to_full = ptype == PresenceType::Error && to.resource().is_some();
        if !matches!(ptype, PresenceType::Available | PresenceType::Unavailable) && !error_to_full {
            return;
        }
        let stanza = SharedStanza::from(
            Arc::try_unwrap(event)
                .map(|e| e.stanza)
                .unwrap_or_else(|e| e.stanza.clone()),
        );
        match to.try_as_full() {
            Ok(full) => {
                if let Some(s) = sessions.find(full) {
                    let _ = s.deliver(stanza);
                }
            }
            Err(_) => {
                for s in &sessions {
                    if s.priority().is_some() {
                        let _ = s.deliver(stanza.clone());
                    }
                }
            }
        }
    }
}

//! The module system: each protocol feature is a [`Module`] that registers what it handles with
//! a virtual host at start (IQ handlers by namespace, hooks, filters, disco features), the way
//! Prosody's `mod_*` and ejabberd's `gen_mod` work. The core only knows the contract.

use crate::config::Config;
use crate::hooks::{Flow, Hooks, Order, OrderError};
use crate::host::{Host, Identity};
use crate::http::{HttpHandler, HttpMount};
use crate::iq::{IqHandler, IqScope};
use crate::preauth::PreAuthHandler;
use crate::route::Service;
use crate::server::Server;
use crate::settings::{Place, Section, SectionDecl};
use rookery_storage::Storage;
use rookery_xml::Element;
use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

/// A specification a module implements, for the README's list and for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// "XEP-0199", "RFC 6120 §7", ...
    pub id: &'static str,
    pub title: &'static str,
    /// The version of the document implemented.
    pub version: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("host {host}: unknown module '{name}' (known: {known})")]
    Unknown {
        host: String,
        name: String,
        known: String,
    },
    #[error("host {host}: module '{module}' needs '{dependency}', which is not enabled")]
    MissingDependency {
        host: String,
        module: &'static str,
        dependency: &'static str,
    },
    #[error("host {host}: {error}")]
    HookOrder { host: String, error: OrderError },
    #[error("module '{module}': {message}")]
    Init {
        module: &'static str,
        message: String,
    },
}

/// A feature module. Compiled in; enabled per virtual host in the configuration.
pub trait Module: 'static {
    /// The name used in the configuration's `modules` list and as the log target.
    const NAME: &'static str;
    /// The documents this module implements.
    const SPECS: &'static [Spec] = &[];
    /// Modules that must be enabled on the same host.
    const DEPENDS: &'static [&'static str] = &[];
    /// The configuration sections this module reads ([`SectionDecl::of`]). They are read
    /// and validated at start whether or not a host enables the module.
    const CONFIG: &'static [SectionDecl] = &[];
    /// The payload namespaces of the IQs this module answers on streams that are not
    /// authenticated yet (its [`HostBuilder::pre_auth_handler`]s). Declared here, and not only
    /// registered per host, so that a host that does not run the module still answers them
    /// (`service-unavailable`, the stream kept) instead of ending the stream as for any other
    /// IQ before authentication.
    const PRE_AUTH: &'static [&'static str] = &[];
    /// Registers the module's handlers with a host.
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError>;
    /// Starts what the module runs for the whole server rather than for a request: called
    /// once when the server starts, if a host enables the module. Background tasks go through
    /// [`spawn_background`], which stops them when the server shuts down.
    fn start(server: &Arc<Server>) {
        let _ = server;
    }
    /// Called when a reload adds the host `domain` enabling this module while the module runs
    /// already for other hosts (if none did, [`start`](Self::start) is called instead): for
    /// work `start` set up per host, such as a listener the new host's settings name.
    fn host_added(server: &Arc<Server>, domain: &str) {
        let _ = (server, domain);
    }
}

/// Runs a module's background task for as long as the server runs: tracked by the server's
/// tasks, so a graceful stop waits for it, and dropped at its next await once shutdown begins.
pub fn spawn_background<F>(server: &Server, name: &'static str, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let shutdown = server.shutdown_token().clone();
    server.tasks().spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => tracing::debug!(task = name, "stopped at shutdown"),
            _ = task => {}
        }
    });
}

/// A module's contract as a value, so a registry can hold modules of different types.
#[derive(Clone, Copy)]
pub struct ModuleDescriptor {
    pub name: &'static str,
    pub specs: &'static [Spec],
    pub depends: &'static [&'static str],
    pub config: &'static [SectionDecl],
    pub pre_auth: &'static [&'static str],
    init: fn(&mut HostBuilder<'_>) -> Result<(), ModuleError>,
    start: fn(&Arc<Server>),
    host_added: fn(&Arc<Server>, &str),
}

impl ModuleDescriptor {
    pub fn of<M: Module>() -> Self {
        Self {
            name: M::NAME,
            specs: M::SPECS,
            depends: M::DEPENDS,
            config: M::CONFIG,
            pre_auth: M::PRE_AUTH,
            init: M::init,
            start: M::start,
            host_added: M::host_added,
        }
    }
}

/// Every module this build contains, and the configuration sections of the build's stream
/// layer (stream management and FAST are the client stream's, not a module's).
#[derive(Clone, Default)]
pub struct ModuleRegistry {
    modules: Vec<ModuleDescriptor>,
    stream_sections: Vec<&'static [SectionDecl]>,
}

impl ModuleRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register<M: Module>(&mut self) -> &mut Self {
        self.modules.push(ModuleDescriptor::of::<M>());
        self
    }
    pub fn modules(&self) -> &[ModuleDescriptor] {
        &self.modules
    }
    /// Declares sections that no module owns: the transports' settings (`[stream_management]`
    /// and `[fast]` belong to `net`'s client stream). Read, validated and listed like a
    /// module's; declaring the same sections twice is harmless.
    pub fn declare_sections(&mut self, sections: &'static [SectionDecl]) -> &mut Self {
        self.stream_sections.push(sections);
        self
    }
    /// Starts, in registry order, the modules some host of `server` enables ([`Module::start`]).
    pub(crate) fn start(&self, server: &Arc<Server>, enabled: &BTreeSet<&str>) {
        for m in self.modules.iter().filter(|m| enabled.contains(m.name)) {
            (m.start)(server);
        }
    }

    /// Tells the modules in `running` that a reload added the host `domain` enabling them
    /// ([`Module::host_added`]).
    pub(crate) fn host_added(&self, server: &Arc<Server>, domain: &str, running: &BTreeSet<&str>) {
        for m in self.modules.iter().filter(|m| running.contains(m.name)) {
            (m.host_added)(server, domain);
        }
    }

    /// The configuration sections every module of the build declares, then the stream
    /// layer's; one that several read (the roster size limit, also the blocklist's) is listed
    /// once.
    pub fn sections(&self) -> impl Iterator<Item = &'static SectionDecl> + '_ {
        let mut seen = std::collections::HashSet::new();
        self.modules
            .iter()
            .flat_map(|m| m.config.iter())
            .chain(self.stream_sections.iter().flat_map(|s| s.iter()))
            .filter(move |s| seen.insert(s.section_type()))
    }
    pub fn get(&self, name: &str) -> Option<&ModuleDescriptor> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// Checks a host's module list without building anything (for `rookery check`).
    pub fn resolve(
        &self,
        domain: &str,
        enabled: Option<&[String]>,
    ) -> Result<Vec<ModuleDescriptor>, ModuleError> {
        let chosen: Vec<ModuleDescriptor> = match enabled {
            None => self.modules.clone(),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.get(n).copied().ok_or_else(|| ModuleError::Unknown {
                        host: domain.to_owned(),
                        name: n.clone(),
                        known: self
                            .modules
                            .iter()
                            .map(|m| m.name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        for m in &chosen {
            for dep in m.depends {
                if !chosen.iter().any(|c| c.name == *dep) {
                    return Err(ModuleError::MissingDependency {
                        host: domain.to_owned(),
                        module: m.name,
                        dependency: dep,
                    });
                }
            }
        }
        Ok(chosen)
    }

    /// Builds a virtual host with the enabled modules initialised on it.
    pub fn build_host(
        &self,
        domain: &str,
        enabled: Option<&[String]>,
        config: &Config,
        storage: &Storage,
    ) -> Result<Host, ModuleError> {
        self.build_host_sharing(
            domain,
            enabled,
            config,
            storage,
            &mut SharedState::default(),
        )
    }

    /// [`build_host`](Self::build_host) for one of a server's hosts: what modules keep with
    /// [`HostBuilder::shared`] is the same for all of them.
    pub(crate) fn build_host_sharing(
        &self,
        domain: &str,
        enabled: Option<&[String]>,
        config: &Config,
        storage: &Storage,
        shared: &mut SharedState,
    ) -> Result<Host, ModuleError> {
        let chosen = self.resolve(domain, enabled)?;
        let mut b = HostBuilder {
            domain,
            config,
            storage,
            shared,
            current: "core",
            current_pre_auth: &[],
            iq_handlers: HashMap::new(),
            features: BTreeSet::new(),
            account_features: BTreeSet::new(),
            identities: Vec::new(),
            disco_items: Vec::new(),
            stream_features: Vec::new(),
            bind_inline_features: Vec::new(),
            pre_auth_handlers: HashMap::new(),
            pre_auth_features: Vec::new(),
            info_forms: Vec::new(),
            hooks: Hooks::default(),
            services: Vec::new(),
            http_handlers: Vec::new(),
        };
        for m in &chosen {
            b.current = m.name;
            b.current_pre_auth = m.pre_auth;
            (m.init)(&mut b)?;
        }
        b.hooks
            .resolve(&|name| self.get(name).is_some())
            .map_err(|error| ModuleError::HookOrder {
                host: domain.to_owned(),
                error,
            })?;
        Ok(Host {
            domain: domain.to_owned(),
            modules: chosen.iter().map(|m| m.name).collect(),
            iq_handlers: b.iq_handlers,
            features: b.features.into_iter().collect(),
            account_features: b.account_features.into_iter().collect(),
            identities: b.identities,
            disco_items: b.disco_items,
            stream_features: b.stream_features,
            bind_inline_features: b.bind_inline_features,
            pre_auth_handlers: b.pre_auth_handlers,
            pre_auth_features: b.pre_auth_features,
            pre_auth_namespaces: self
                .modules
                .iter()
                .flat_map(|m| m.pre_auth.iter().copied())
                .collect(),
            info_forms: b.info_forms,
            hooks: b.hooks,
            services: b.services,
            http_handlers: b.http_handlers,
        })
    }
}

/// State modules keep for the whole server, one value per type ([`HostBuilder::shared`]).
#[derive(Default)]
pub(crate) struct SharedState(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl SharedState {
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|v| v.clone().downcast::<T>().ok())
    }
}

/// What a module sees while it initialises on a host.
pub struct HostBuilder<'a> {
    domain: &'a str,
    config: &'a Config,
    storage: &'a Storage,
    shared: &'a mut SharedState,
    current: &'static str,
    /// What the module initialising now declared in [`Module::PRE_AUTH`].
    current_pre_auth: &'static [&'static str],
    iq_handlers: HashMap<IqScope, HashMap<String, Arc<dyn IqHandler>>>,
    features: BTreeSet<String>,
    account_features: BTreeSet<String>,
    identities: Vec<Identity>,
    disco_items: Vec<(String, Option<String>)>,
    stream_features: Vec<Element>,
    bind_inline_features: Vec<String>,
    pre_auth_handlers: HashMap<String, Arc<dyn PreAuthHandler>>,
    pre_auth_features: Vec<Element>,
    info_forms: Vec<Element>,
    hooks: Hooks<Arc<Server>>,
    services: Vec<ServiceClaim>,
    http_handlers: Vec<HttpMount>,
}

/// A service domain a module claimed on a host (see [`HostBuilder::service_domain`]).
pub(crate) struct ServiceClaim {
    pub(crate) domain: rookery_stanza::Jid,
    pub(crate) module: &'static str,
    pub(crate) service: Arc<dyn Service>,
}

impl HostBuilder<'_> {
    pub fn domain(&self) -> &str {
        self.domain
    }
    pub fn config(&self) -> &Config {
        self.config
    }
    pub fn storage(&self) -> &Storage {
        self.storage
    }
    /// A value shared by every host of the server (created on first use), for state that is
    /// the server's rather than one host's, such as a limit per client address. The module's
    /// [`Module::start`] finds it again with [`Server::shared`].
    pub fn shared<T: Default + Send + Sync + 'static>(&mut self) -> Arc<T> {
        let value = self
            .shared
            .0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match value.clone().downcast::<T>() {
            Ok(v) => v,
            // Keyed by the type's id, so the downcast cannot fail; a fresh value is still correct.
            Err(_) => Arc::new(T::default()),
        }
    }
    /// A configuration section: the server's, or this host's for a per-host one.
    pub fn section<T: Section>(&self) -> Arc<T> {
        match T::PLACE {
            Place::Server | Place::SharedTable => self.config.section::<T>(),
            Place::Host => self
                .config
                .host(self.domain)
                .map(|h| h.section::<T>())
                .unwrap_or_default(),
        }
    }

    /// Handles IQ requests whose payload is in `ns`, addressed as `scope` says.
    pub fn iq_handler(
        &mut self,
        ns: &str,
        scope: IqScope,
        handler: impl IqHandler,
    ) -> Result<(), ModuleError> {
        let by_ns = self.iq_handlers.entry(scope).or_default();
        if by_ns.contains_key(ns) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("a handler for {ns} ({scope:?}) is already registered"),
            });
        }
        by_ns.insert(ns.to_owned(), Arc::new(handler));
        Ok(())
    }

    /// Answers IQs whose payload is in `ns` on streams of this host that are not authenticated
    /// yet ([`crate::preauth`]); `ns` must be one of the module's [`Module::PRE_AUTH`].
    pub fn pre_auth_handler(
        &mut self,
        ns: &str,
        handler: impl PreAuthHandler,
    ) -> Result<(), ModuleError> {
        if !self.current_pre_auth.contains(&ns) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("{ns} is answered before authentication but not in PRE_AUTH"),
            });
        }
        if self.pre_auth_handlers.contains_key(ns) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("a pre-authentication handler for {ns} is already registered"),
            });
        }
        self.pre_auth_handlers
            .insert(ns.to_owned(), Arc::new(handler));
        Ok(())
    }
    /// A stream feature offered before authentication (with TLS), announcing a pre-auth handler.
    pub fn add_pre_auth_feature(&mut self, feature: Element) {
        self.pre_auth_features.push(feature);
    }
    /// Advertises a feature in the server's `disco#info`. Only for what works end to end.
    pub fn add_feature(&mut self, var: &str) {
        self.features.insert(var.to_owned());
    }
    /// Advertises a feature in the `disco#info` of every account on this host: something the
    /// server does on the accounts' behalf (RFC 6121 §8.5.2.1.3), such as push notifications.
    pub fn add_account_feature(&mut self, var: &str) {
        self.account_features.insert(var.to_owned());
    }
    /// A XEP-0128 extension form (`<x xmlns='jabber:x:data' type='result'/>` with a hidden
    /// FORM_TYPE) in the server's `disco#info`.
    pub fn add_info_form(&mut self, form: Element) {
        self.info_forms.push(form);
    }
    pub fn add_identity(&mut self, category: &str, kind: &str, name: Option<&str>) {
        self.identities.push(Identity {
            category: category.to_owned(),
            kind: kind.to_owned(),
            name: name.map(str::to_owned),
        });
    }
    /// An item in the server's `disco#items` (a component or service JID).
    pub fn add_disco_item(&mut self, jid: &str, name: Option<&str>) {
        self.disco_items
            .push((jid.to_owned(), name.map(str::to_owned)));
    }
    /// A stream feature offered once the client is authenticated (stream management, CSI...).
    pub fn add_stream_feature(&mut self, feature: Element) {
        self.stream_features.push(feature);
    }
    /// A feature a client may enable inside a Bind 2 request (XEP-0386 §2.1): the module
    /// must handle [`crate::events::BindInline`] for the namespace `var`.
    pub fn add_bind_inline_feature(&mut self, var: &str) {
        self.bind_inline_features.push(var.to_owned());
    }
    /// Claims a service domain (e.g. `conference.<host>`): the router hands `service` every
    /// stanza addressed to that domain or to any JID in it, and the host's `disco#items`
    /// lists it (with `name`). The service's identity and features are its own business
    /// (it answers `disco#info` sent to its domain). A domain is claimed once on the whole
    /// server and cannot be a virtual host; both are checked when the server is built.
    pub fn service_domain(
        &mut self,
        domain: &str,
        name: Option<&str>,
        service: impl Service,
    ) -> Result<(), ModuleError> {
        let jid = rookery_stanza::parse_jid(domain)
            .ok()
            .filter(|j| j.node().is_none() && j.resource().is_none())
            .ok_or_else(|| ModuleError::Init {
                module: self.current,
                message: format!("'{domain}' is not a domain"),
            })?;
        if jid.as_str() == self.domain || self.services.iter().any(|s| s.domain == jid) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("the domain {domain} is already served"),
            });
        }
        self.add_disco_item(jid.as_str(), name);
        self.services.push(ServiceClaim {
            domain: jid,
            module: self.current,
            service: Arc::new(service),
        });
        Ok(())
    }
    /// Serves HTTP requests below `path` (relative to `[http] path_prefix`, e.g.
    /// `/upload/upload.example.org`) on every HTTP listener of the server, with `handler`
    /// ([`crate::http`]). The path is a plain one (`/` and non-empty segments of letters,
    /// digits and `-._~`); a path is mounted once on the whole server, checked when the
    /// server is built. No body limit or request time limit applies beyond the transport's
    /// own: the handler bounds what it reads.
    pub fn http_handler(
        &mut self,
        path: &str,
        handler: impl HttpHandler,
    ) -> Result<(), ModuleError> {
        if !crate::http::valid_mount(path) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("'{path}' is not an HTTP path such as /upload/example.org"),
            });
        }
        if self.http_handlers.iter().any(|m| m.path == path) {
            return Err(ModuleError::Init {
                module: self.current,
                message: format!("the HTTP path {path} is already served"),
            });
        }
        self.http_handlers.push(HttpMount {
            path: path.to_owned(),
            module: self.current,
            handler: Arc::new(handler),
        });
        Ok(())
    }
    /// Observes an event, at the place in its chain `order` declares; a handler may stop the
    /// event. The order is checked when the host is built.
    pub fn hook<E, F, Fut>(&mut self, order: Order, handler: F)
    where
        E: Send + Sync + 'static,
        F: Fn(Arc<Server>, Arc<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Flow> + Send + 'static,
    {
        self.hooks.add_handler(self.current, order, handler);
    }
    /// Transforms or drops a value, at the place in its chain `order` declares.
    pub fn filter<E, F, Fut>(&mut self, order: Order, filter: F)
    where
        E: Send + 'static,
        F: Fn(Arc<Server>, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<E>> + Send + 'static,
    {
        self.hooks.add_filter(self.current, order, filter);
    }
}

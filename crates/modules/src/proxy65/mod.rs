//! SOCKS5 Bytestreams (XEP-0065) proxy: a service on its own domain (`proxy.<host>` by
//! default) that relays file transfers between two clients that cannot reach each other
//! directly, what Prosody's and ejabberd's `mod_proxy65` do.
//!
//! * this file: the module (its `[host.proxy65]` section) and the service: disco (§4:
//!   identity proxy/bytestreams), the network address query (§4) and activation (§5.3.5),
//!   for the host's own accounts unless `allowed` says otherwise;
//! * [`socks5`]: the SOCKS5 handshake (RFC 1928, as §5.3.2 and §8.2 use it) without I/O;
//! * [`relay`]: the listener, the table where the two connections of a bytestream wait
//!   for each other and for activation, and the relay with its limits.
//!
//! The proxy runs only where `address` is set: the module is enabled on every host by
//! default, and a SOCKS5 port is something an operator opens on purpose. The listener is
//! bound when the host is built (a port in use stops the start; port 0 is resolved before
//! the streamhost is advertised) and served from [`Module::start`]. Hosts that name the
//! same address share its listener and table.

pub mod relay;
pub mod socks5;

use async_trait::async_trait;
use relay::{ActivateError, ListenerLimits, Proxy, RelayEnd, TransferLimits};
use rookery_core::config::ConfigError;
use rookery_core::{
    spawn_background, HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Server,
    Service, ServiceHandle, Spec,
};
use rookery_stanza::{
    ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "http://jabber.org/protocol/bytestreams";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Proxy65;

/// `[host.proxy65]`: the SOCKS5 bytestreams proxy of a host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy65Settings {
    /// The service's domain; `proxy.<host>` when empty.
    pub domain: String,
    /// The service's name in disco.
    pub name: String,
    /// Where the SOCKS5 listener listens (`IP:port`, port 0 picks one); empty: no proxy.
    pub address: String,
    /// The host clients connect to, as advertised in the streamhost; empty: the listening
    /// IP, or the service's domain when listening on every interface.
    pub public_host: String,
    /// The port advertised; 0: the listening port.
    pub public_port: u16,
    /// Who may use the proxy: `local` (the host's accounts), `server` (accounts of any host
    /// of this server) or `anyone`.
    pub allowed: String,
    /// Bytes one transfer may relay, both directions together.
    pub max_bytes_per_transfer: u64,
    /// How long one transfer may last.
    pub max_transfer_secs: u64,
    /// Bytes per second one transfer may relay (after a first second's worth); 0: no limit.
    pub max_bytes_per_second: u64,
    /// Transfers relayed at once by the listener.
    pub max_transfers: u64,
    /// Transfers one user (bare JID) may have relayed at once.
    pub max_transfers_per_user: u64,
    /// How long a connection waits for the other party and for activation.
    pub pending_timeout_secs: u64,
}

impl Default for Proxy65Settings {
    fn default() -> Self {
        Proxy65Settings {
            domain: String::new(),
            name: "SOCKS5 Bytestreams Proxy".into(),
            address: String::new(),
            public_host: String::new(),
            public_port: 0,
            allowed: "local".into(),
            max_bytes_per_transfer: 1024 * 1024 * 1024,
            max_transfer_secs: 3600,
            max_bytes_per_second: 10 * 1024 * 1024,
            max_transfers: 100,
            max_transfers_per_user: 5,
            pending_timeout_secs: 60,
        }
    }
}

impl Section for Proxy65Settings {
    const KEY: &'static str = "proxy65";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# SOCKS5 Bytestreams proxy (XEP-0065, the "proxy65" module): relays file transfers between
# clients that cannot connect to each other. Off until `address` is set; open that port.
[host.proxy65]
# The service's domain; empty means proxy.<host>.
domain = ""
name = "SOCKS5 Bytestreams Proxy"
# Where the SOCKS5 listener listens, "IP:port" (e.g. "0.0.0.0:7777"); empty: no proxy.
# Hosts that name the same address share the listener (with the first one's
# max_transfers and pending_timeout_secs).
address = ""
# The host and port clients are told to connect to; empty and 0: the listening IP and
# port (the service's domain when listening on 0.0.0.0 or [::], so it must resolve).
public_host = ""
public_port = 0
# Who may use the proxy: "local" (this host's accounts), "server" (accounts of any host of
# this server) or "anyone" (remote users too).
allowed = "local"
# Bytes one transfer may relay (1 GiB), both directions together; over it, both
# connections are closed.
max_bytes_per_transfer = 1073741824
# How long one transfer may last, in seconds.
max_transfer_secs = 3600
# Bytes per second one transfer may relay (10 MiB/s); 0: no limit.
max_bytes_per_second = 10485760
# Transfers relayed at once by the listener, and by one user.
max_transfers = 100
max_transfers_per_user = 5
# How long a connection waits for the other party and for activation, in seconds.
pending_timeout_secs = 60
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("max_bytes_per_transfer", self.max_bytes_per_transfer),
            ("max_transfer_secs", self.max_transfer_secs),
            ("max_transfers", self.max_transfers),
            ("max_transfers_per_user", self.max_transfers_per_user),
            ("pending_timeout_secs", self.pending_timeout_secs),
        ] {
            crate::require_positive(key, name, v)?;
        }
        for (name, v, most) in [
            ("max_transfers", self.max_transfers, 100_000),
            ("pending_timeout_secs", self.pending_timeout_secs, 3600),
            ("max_transfer_secs", self.max_transfer_secs, 7 * 86_400),
        ] {
            if v > most {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    format!("must not exceed {most}"),
                ));
            }
        }
        if !self.address.is_empty() && self.address.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.address"),
                "empty, or IP:port such as 0.0.0.0:7777 or [::]:7777",
            ));
        }
        if self
            .public_host
            .contains(|c: char| c.is_whitespace() || "/@'\"<>".contains(c))
        {
            return Err(ConfigError::invalid(
                format!("{key}.public_host"),
                "a host name or an IP address",
            ));
        }
        if !matches!(self.allowed.as_str(), "local" | "server" | "anyone") {
            return Err(ConfigError::invalid(
                format!("{key}.allowed"),
                "local, server or anyone",
            ));
        }
        crate::require_domain(key, &self.domain)
    }
}

/// The server's listeners by configured address, shared by the hosts (and found again by
/// [`Module::start`]).
#[derive(Default)]
pub struct Listeners(parking_lot::Mutex<HashMap<SocketAddr, Arc<Proxy>>>);

impl Listeners {
    /// The listener for `address`, bound now if no host named it before.
    fn get_or_bind(
        &self,
        address: SocketAddr,
        limits: ListenerLimits,
    ) -> std::io::Result<Arc<Proxy>> {
        let mut map = self.0.lock();
        if let Some(p) = map.get(&address) {
            return Ok(p.clone());
        }
        let proxy = Arc::new(Proxy::bind(address, limits)?);
        map.insert(address, proxy.clone());
        Ok(proxy)
    }
}

impl Module for Proxy65 {
    const NAME: &'static str = "proxy65";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0065",
        title: "SOCKS5 Bytestreams (proxy, mediated connections)",
        version: "1.8.2",
    }];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<Proxy65Settings>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let settings = host.section::<Proxy65Settings>();
        let Ok(address) = settings.address.parse::<SocketAddr>() else {
            // No address (validated: empty): no proxy on this host.
            return Ok(());
        };
        let domain = if settings.domain.is_empty() {
            format!("proxy.{}", host.domain())
        } else {
            settings.domain.clone()
        };
        let limits = ListenerLimits {
            pending_timeout: Duration::from_secs(settings.pending_timeout_secs),
            max_transfers: usize::try_from(settings.max_transfers).unwrap_or(usize::MAX),
            max_pending: usize::try_from(settings.max_transfers).unwrap_or(usize::MAX),
            pending_per_address: relay::PENDING_PER_ADDRESS,
        };
        let proxy = host
            .shared::<Listeners>()
            .get_or_bind(address, limits)
            .map_err(|e| ModuleError::Init {
                module: Self::NAME,
                message: format!("cannot listen on {address} (proxy65.address): {e}"),
            })?;
        let local = proxy.local_addr();
        let public_host = match settings.public_host.as_str() {
            "" if local.ip().is_unspecified() => domain.clone(),
            "" => local.ip().to_string(),
            h => h.to_owned(),
        };
        let public_port = match settings.public_port {
            0 => local.port(),
            p => p,
        };
        let inner = Arc::new(Inner {
            host: host.domain().to_owned(),
            domain: domain.clone(),
            settings: (*settings).clone(),
            proxy,
            public_host,
            public_port,
        });
        host.service_domain(&domain, Some(&settings.name), ProxyService(inner))
    }

    /// A host a reload adds may name a listener no other host has: serve it. Listeners
    /// served already are skipped (each is taken once), so this is [`start`](Self::start).
    fn host_added(server: &Arc<Server>, _domain: &str) {
        Self::start(server);
    }

    fn start(server: &Arc<Server>) {
        let Some(listeners) = server.shared::<Listeners>() else {
            return;
        };
        let proxies: Vec<Arc<Proxy>> = listeners.0.lock().values().cloned().collect();
        for proxy in proxies {
            let Some(std_listener) = proxy.take_listener() else {
                continue;
            };
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(address = %proxy.local_addr(), error = %e, "proxy65: cannot serve the listener");
                    continue;
                }
            };
            tracing::info!(address = %proxy.local_addr(), "proxy65: SOCKS5 listener");
            let weak = Arc::downgrade(server);
            spawn_background(
                server,
                "proxy65 expiry",
                Proxy::sweep(Arc::downgrade(&proxy)),
            );
            spawn_background(
                server,
                "proxy65 listener",
                proxy.serve(listener, move |connection| {
                    if let Some(server) = weak.upgrade() {
                        spawn_background(&server, "proxy65 connection", connection);
                    }
                }),
            );
        }
    }
}

/// One host's proxy service.
struct Inner {
    /// The virtual host whose accounts may use it (with `allowed = "local"`).
    host: String,
    domain: String,
    settings: Proxy65Settings,
    proxy: Arc<Proxy>,
    public_host: String,
    public_port: u16,
}

struct ProxyService(Arc<Inner>);

#[async_trait]
impl Service for ProxyService {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza) {
        let inner = &self.0;
        if stanza.kind() != StanzaKind::Iq || !stanza.iq_type().is_some_and(IqType::is_request) {
            if stanza.kind() == StanzaKind::Message && !stanza.is_error() {
                reply_error(
                    service,
                    &stanza,
                    StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                )
                .await;
            }
            return;
        }
        let to_domain = stanza
            .to()
            .is_some_and(|t| t.node().is_none() && t.resource().is_none());
        let get = stanza.iq_type() == Some(IqType::Get);
        let payload = stanza.element().children().next().cloned();
        let answer = match payload.as_ref().map(|p| (p.ns(), p.name(), p)) {
            _ if !to_domain => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
            Some((NS_DISCO_INFO, "query", p)) if get => match p.attr("node") {
                None => Ok(Some(inner.disco_info())),
                Some(_) => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
            },
            Some((NS_DISCO_ITEMS, "query", _)) if get => {
                Ok(Some(Element::new("query", NS_DISCO_ITEMS)))
            }
            Some((NS, "query", _)) if get => inner.streamhost(service, &stanza).map(Some),
            Some((NS, "query", p)) => inner.activate(service, &stanza, p).map(|()| None),
            _ => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        };
        match answer {
            Ok(payload) => {
                if let Some(to) = stanza.from() {
                    let mut el = stanza.iq_result(payload);
                    el.set_attr("to", to.as_str());
                    if let Err(e) = service.send(el).await {
                        tracing::debug!(error = %e, "a proxy65 answer was not sent");
                    }
                }
            }
            Err(e) => reply_error(service, &stanza, e).await,
        }
    }
}

async fn reply_error(service: &ServiceHandle, stanza: &Stanza, e: StanzaError) {
    let (Some(mut reply), Some(to)) = (stanza.error_reply(&e), stanza.from()) else {
        return;
    };
    reply.set_attr("to", to.as_str());
    if let Err(e) = service.send(reply).await {
        tracing::debug!(error = %e, "a proxy65 error was not sent");
    }
}

impl Inner {
    /// §4: identity proxy/bytestreams and the bytestreams feature.
    fn disco_info(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "proxy")
                .with_attr("type", "bytestreams")
                .with_attr("name", self.settings.name.clone()),
        );
        for f in [NS_DISCO_INFO, NS_DISCO_ITEMS, NS] {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        q
    }

    /// Whether `from` may use the proxy (`allowed`); §4: others get `forbidden`.
    fn check_allowed(
        &self,
        server: Option<&Server>,
        from: Option<&Jid>,
    ) -> Result<(), StanzaError> {
        let ok = from.is_some_and(|from| match self.settings.allowed.as_str() {
            "anyone" => true,
            "server" => {
                from.node().is_some() && server.is_some_and(|s| s.serves(from.domain().as_str()))
            }
            _ => from.node().is_some() && from.domain().as_str() == self.host,
        });
        if ok {
            Ok(())
        } else {
            Err(StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("This proxy is for the accounts of its server"))
        }
    }

    /// §4: the network address of the proxy.
    fn streamhost(&self, service: &ServiceHandle, stanza: &Stanza) -> Result<Element, StanzaError> {
        self.check_allowed(service.server().as_deref(), stanza.from())?;
        Ok(Element::new("query", NS).with_child(
            Element::new("streamhost", NS)
                .with_attr("jid", self.domain.clone())
                .with_attr("host", self.public_host.clone())
                .with_attr("port", self.public_port.to_string()),
        ))
    }

    /// §5.3.5: activates the bytestream of `sid` between the sender (the Requester, by its
    /// full JID) and the target named in `<activate/>`, and starts relaying.
    fn activate(
        &self,
        service: &ServiceHandle,
        stanza: &Stanza,
        query: &Element,
    ) -> Result<(), StanzaError> {
        let server = service.server();
        self.check_allowed(server.as_deref(), stanza.from())?;
        let Some(from) = stanza.from() else {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        };
        let sid = query
            .attr("sid")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| StanzaError::bad_request("The query needs a sid"))?;
        let target = query
            .get_child("activate", NS)
            .map(|a| a.text())
            .ok_or_else(|| StanzaError::bad_request("Name the target in <activate/>"))?;
        // The JIDs are hashed in their canonical form (§5.3.2: stringprep applied).
        let target = rookery_stanza::parse_jid(target.trim())
            .map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
        let key = socks5::dst_addr(sid, from.as_str(), target.as_str());
        let user = from.to_bare().to_string();
        let per_user = usize::try_from(self.settings.max_transfers_per_user).unwrap_or(usize::MAX);
        let (a, b, slot) = self
            .proxy
            .activate(&key, &user, per_user)
            .map_err(|e| match e {
                ActivateError::NotFound => StanzaError::new(StanzaErrorCondition::ItemNotFound)
                    .with_text("No bytestream waits for this sid, requester and target"),
                ActivateError::OneParty => StanzaError::new(StanzaErrorCondition::NotAllowed)
                    .with_text("Only one party is connected to the proxy"),
                ActivateError::Busy => StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_type(ErrorType::Wait)
                    .with_text("The proxy relays as many transfers as it may"),
                ActivateError::UserBusy => {
                    StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                        .with_type(ErrorType::Wait)
                        .with_text(format!(
                            "At most {per_user} transfers at once through this proxy"
                        ))
                }
            })?;
        let Some(server) = server else {
            return Err(StanzaError::new(StanzaErrorCondition::InternalServerError));
        };
        let limits = TransferLimits {
            max_bytes: self.settings.max_bytes_per_transfer,
            max_duration: Duration::from_secs(self.settings.max_transfer_secs),
            bytes_per_second: self.settings.max_bytes_per_second,
        };
        tracing::debug!(requester = %from, target = %target, sid, "proxy65: transfer activated");
        let (requester, target) = (from.to_string(), target.to_string());
        spawn_background(&server, "proxy65 transfer", async move {
            // Counted until the relay ends, also when the server stops it.
            let _slot = slot;
            let (end, bytes) = relay::relay(a, b, limits).await;
            match end {
                RelayEnd::Closed => {
                    tracing::debug!(%requester, %target, bytes, "proxy65: transfer done")
                }
                RelayEnd::Failed(e) => {
                    tracing::debug!(%requester, %target, bytes, error = %e, "proxy65: transfer failed")
                }
                limit => {
                    tracing::info!(%requester, %target, bytes, end = ?limit, "proxy65: transfer cut off at its limit")
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        let ok = Proxy65Settings::default();
        assert!(ok.validate("host[0].proxy65").is_ok());
        let with = |f: fn(&mut Proxy65Settings)| {
            let mut s = Proxy65Settings::default();
            f(&mut s);
            s.validate("host[0].proxy65").map_err(|e| e.to_string())
        };
        assert!(with(|s| s.address = "0.0.0.0:7777".into()).is_ok());
        assert!(with(|s| s.address = "[::]:0".into()).is_ok());
        type Change = fn(&mut Proxy65Settings);
        let bad: [(Change, &str); 8] = [
            (|s| s.address = "7777".into(), "address"),
            (|s| s.address = "proxy.example.org:7777".into(), "address"),
            (|s| s.allowed = "everyone".into(), "allowed"),
            (|s| s.max_transfers = 0, "max_transfers"),
            (|s| s.max_bytes_per_transfer = 0, "max_bytes_per_transfer"),
            (|s| s.pending_timeout_secs = 7200, "pending_timeout_secs"),
            (|s| s.public_host = "a host".into(), "public_host"),
            (|s| s.domain = "user@proxy.example".into(), "domain"),
        ];
        for (f, key) in bad {
            let e = with(f).expect_err(key);
            assert!(e.contains(&format!("proxy65.{key}")), "{e}");
        }
        // 0 for the rate means no limit.
        assert!(with(|s| s.max_bytes_per_second = 0).is_ok());
    }
}

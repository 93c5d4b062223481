//! Server-to-server streams (RFC 6120): federation with other XMPP servers.
//!
//! * [`S2s`] is the router's way to remote domains ([`RemoteRoutes`]): one outgoing link per
//!   (local domain, remote domain) pair, set up on the first stanza with a bounded queue,
//!   closed when idle, set up again when needed. A link that cannot be set up bounces what
//!   it queued (RFC 6120 §8.3.3.16 `remote-server-not-found` when the domain has no server,
//!   §8.3.3.17 `remote-server-timeout` when its server cannot be reached or refuses us).
//! * `outgoing`: connecting (`resolve`: overrides, SRV, XEP-0368), STARTTLS, then
//!   authenticating by SASL EXTERNAL (XEP-0178) when the peer offers it, else by Server
//!   Dialback (XEP-0220, keys as XEP-0185 recommends: `dialback`).
//! * `incoming`: streams other servers open to the `s2s` and `s2s-direct-tls` listeners;
//!   the peer's domain is authenticated by its certificate (`pki`) or by dialback, checked
//!   with the peer's authoritative server; every stanza's `from` must be in a domain the
//!   stream authenticated (`invalid-from` otherwise).
//!
//! Both directions run over the client streams' TCP transport (its parser, limits and TLS),
//! through `wire`.

pub mod dialback;
mod incoming;
mod outgoing;
pub mod pki;
pub mod resolve;
mod wire;

use crate::limits::ConnectionLimits;
use crate::tls::TlsContext;
use async_trait::async_trait;
use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::settings::{Place, Section};
use rookery_core::{ExternalRoute, RemoteRoutes, RouteError, Server};
use rookery_stanza::{ns, Stanza, StanzaError, StanzaErrorCondition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

pub use incoming::serve_connection;

/// How a peer server must prove its domain.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    /// A certificate valid for the domain (PKIX, RFC 6125), nothing else.
    Certificate,
    /// A valid certificate, else Server Dialback (XEP-0220).
    Dialback,
    /// No federation with the domain at all.
    Refuse,
}

/// `[s2s]`: federation with other servers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Whether stanzas to other domains leave this server at all.
    pub enabled: bool,
    /// Every server-to-server stream must be encrypted (STARTTLS or direct TLS).
    pub require_encryption: bool,
    /// How peers prove their domain unless `policy` says otherwise.
    pub authentication: AuthPolicy,
    pub connect_timeout_secs: u64,
    /// From connecting to an authenticated stream (TLS, SASL or dialback included).
    pub negotiation_timeout_secs: u64,
    /// A stream with no traffic for this long is closed (set up again when needed).
    pub idle_timeout_secs: u64,
    /// A whitespace keepalive (RFC 6120 §4.6.1) on an outgoing stream that wrote nothing for
    /// this long (0: none).
    pub keepalive_secs: u64,
    /// Stanzas and bytes queued per remote domain while its link is being set up.
    pub queue_stanzas: usize,
    pub queue_bytes: usize,
    /// Outgoing links at once (one per local and remote domain pair).
    pub max_outgoing: usize,
    /// Incoming streams at once, and per peer address.
    pub max_incoming: usize,
    pub max_incoming_per_ip: usize,
    /// Dialback requests one incoming stream may have waiting for verification.
    pub max_pending_dialback: usize,
    /// Bytes per second read from one server-to-server stream (0: no limit); over it the
    /// stream is not read for a while, so TCP pushes back on the peer.
    pub max_bytes_per_second: u64,
    /// Trust the system's root certificates for peers' certificates.
    pub system_roots: bool,
    /// More CA certificates (PEM files) to trust for peers' certificates.
    pub ca_files: Vec<PathBuf>,
    /// DNS servers (`ip:port`) for finding peers; empty: the system's.
    pub nameservers: Vec<String>,
    /// The secret dialback keys are made from; empty: a random one per start.
    pub dialback_secret: String,
    /// Per-domain exceptions to `authentication`.
    pub policy: BTreeMap<String, AuthPolicy>,
    /// Where a domain's server is, instead of DNS: `"[tls://]host[:port]"`.
    pub hosts: BTreeMap<String, String>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            enabled: true,
            require_encryption: true,
            authentication: AuthPolicy::Dialback,
            connect_timeout_secs: 10,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 600,
            keepalive_secs: 60,
            queue_stanzas: 1000,
            queue_bytes: 1 << 20,
            max_outgoing: 1000,
            max_incoming: 1000,
            max_incoming_per_ip: 20,
            max_pending_dialback: 10,
            max_bytes_per_second: 64 << 20,
            system_roots: true,
            ca_files: Vec::new(),
            nameservers: Vec::new(),
            dialback_secret: String::new(),
            policy: BTreeMap::new(),
            hosts: BTreeMap::new(),
        }
    }
}

impl Section for S2sConfig {
    const KEY: &'static str = "s2s";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# Federation with other servers (RFC 6120 server-to-server streams). Incoming streams need
# an `s2s` (STARTTLS, port 5269) or `s2s-direct-tls` (XEP-0368) [[listener]].
[s2s]
# false: stanzas to other domains are answered remote-server-not-found.
enabled = true
# Every server-to-server stream must be encrypted.
require_encryption = true
# How peers prove their domain: "certificate" (a valid certificate only), "dialback" (a
# valid certificate, else Server Dialback), "refuse" (no federation).
authentication = "dialback"
# Seconds to connect, and to get from connecting to an authenticated stream.
connect_timeout_secs = 10
negotiation_timeout_secs = 30
# Seconds without traffic after which a stream is closed (set up again when needed).
idle_timeout_secs = 600
# Seconds without writing after which an outgoing stream sends a whitespace keepalive, so a
# dead connection is found (0: none).
keepalive_secs = 60
# Stanzas and bytes queued per remote domain while its connection is being set up; more
# are answered resource-constraint.
queue_stanzas = 1000
queue_bytes = 1048576
# Outgoing connections at once; incoming streams at once, and per peer address.
max_outgoing = 1000
max_incoming = 1000
max_incoming_per_ip = 20
# Dialback requests one incoming stream may have waiting; more end it (policy-violation).
max_pending_dialback = 10
# Bytes per second read from one server-to-server stream (0: no limit): a peer over it is
# read more slowly (TCP pushes back), nothing is dropped.
max_bytes_per_second = 67108864
# Trust the system's root certificates, and these CA files, for peers' certificates.
system_roots = true
ca_files = []
# DNS servers ("ip:port") for finding peers; empty: the system's.
nameservers = []
# The secret dialback keys are made from; empty: a random one per start.
dialback_secret = ""

# Per-domain exceptions to `authentication`, e.g. "legacy.example" = "dialback".
[s2s.policy]

# Where a domain's server is, instead of DNS: "[tls://]host[:port]" (tls:// for direct TLS).
# Domains under .example, .invalid, .localhost and .test are reached only through here.
[s2s.hosts]
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, value, min, max) in [
            ("connect_timeout_secs", self.connect_timeout_secs, 1, 600),
            (
                "negotiation_timeout_secs",
                self.negotiation_timeout_secs,
                1,
                600,
            ),
            ("idle_timeout_secs", self.idle_timeout_secs, 1, 86_400 * 7),
            ("keepalive_secs", self.keepalive_secs, 0, 86_400),
            ("queue_stanzas", self.queue_stanzas as u64, 1, 1_000_000),
            ("queue_bytes", self.queue_bytes as u64, 1024, 1 << 32),
            ("max_outgoing", self.max_outgoing as u64, 1, u64::MAX),
            ("max_incoming", self.max_incoming as u64, 1, u64::MAX),
            (
                "max_incoming_per_ip",
                self.max_incoming_per_ip as u64,
                1,
                u64::MAX,
            ),
            (
                "max_pending_dialback",
                self.max_pending_dialback as u64,
                1,
                10_000,
            ),
        ] {
            if value < min || value > max {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    format!("between {min} and {max}"),
                ));
            }
        }
        for ns in &self.nameservers {
            if ns.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.nameservers"),
                    format!("an ip:port address, not {ns:?}"),
                ));
            }
        }
        for (i, path) in self.ca_files.iter().enumerate() {
            if let Err(e) = pki::read_pem_certs(path) {
                return Err(ConfigError::invalid(
                    format!("{key}.ca_files[{i}]"),
                    e.to_string(),
                ));
            }
        }
        for (domain, target) in &self.hosts {
            if resolve::Override::parse(target).is_none() {
                return Err(ConfigError::invalid(
                    format!("{key}.hosts.{domain}"),
                    format!("\"[tls://]host[:port]\", not {target:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Top-level domains RFC 6761 reserves, where no public server lives: reached only through
/// `[s2s.hosts]`, so a stanza to them is answered at once instead of after a DNS query.
const SPECIAL_USE: &[&str] = &["example", "invalid", "localhost", "test"];

fn is_special_use(domain: &str) -> bool {
    let tld = domain.rsplit('.').next().unwrap_or(domain);
    SPECIAL_USE.iter().any(|s| tld.eq_ignore_ascii_case(s))
}

/// A stanza waiting for its link, serialised once when queued.
struct Queued {
    stanza: Stanza,
    bytes: Vec<u8>,
}

/// The sending end of one outgoing link's queue.
#[derive(Clone)]
struct LinkHandle {
    id: u64,
    tx: mpsc::Sender<Queued>,
    /// Bytes queued and not yet written.
    queued_bytes: Arc<AtomicUsize>,
}

/// Federation: the outgoing links, the incoming streams' shared state, and what both need.
pub struct S2s {
    server: Weak<Server>,
    tls: TlsContext,
    config: Arc<S2sConfig>,
    trust: pki::TrustStore,
    resolver: resolve::Resolver,
    secret: dialback::DialbackSecret,
    links: Mutex<HashMap<(String, String), LinkHandle>>,
    next_link: AtomicU64,
    incoming_limits: Arc<ConnectionLimits>,
    outgoing_limits: Arc<ConnectionLimits>,
    /// Dialback verifications (connections to peers' authoritative servers) at once.
    verifications: Semaphore,
    me: Weak<S2s>,
}

#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

impl S2s {
    /// Sets federation up for `server` (its `[s2s]` section) and installs it as the
    /// server's route to remote domains.
    pub fn start(server: &Arc<Server>, tls: TlsContext) -> Result<Arc<S2s>, S2sError> {
        let config = server.config().sections.get::<S2sConfig>();
        let trust = pki::TrustStore::load(config.system_roots, &config.ca_files)?;
        let overrides = config
            .hosts
            .iter()
            .filter_map(|(d, t)| Some((d.to_ascii_lowercase(), resolve::Override::parse(t)?)))
            .collect();
        let nameservers: Vec<SocketAddr> = config
            .nameservers
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let secret = if config.dialback_secret.is_empty() {
            dialback::DialbackSecret::random()
        } else {
            dialback::DialbackSecret::new(config.dialback_secret.as_bytes())
        };
        let s2s = Arc::new_cyclic(|me| S2s {
            server: Arc::downgrade(server),
            tls,
            trust,
            resolver: resolve::Resolver::new(&nameservers, overrides),
            secret,
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            incoming_limits: ConnectionLimits::new(config.max_incoming, config.max_incoming_per_ip),
            outgoing_limits: ConnectionLimits::new(config.max_outgoing, config.max_outgoing),
            verifications: Semaphore::new(config.max_incoming.max(1)),
            config,
            me: me.clone(),
        });
        if s2s.config.enabled {
            server.set_remote_routes(Arc::new(Routes(s2s.clone())));
        }
        Ok(s2s)
    }

    fn server(&self) -> Option<Arc<Server>> {
        self.server.upgrade()
    }

    /// How `domain` must authenticate.
    fn policy(&self, domain: &str) -> AuthPolicy {
        self.config
            .policy
            .get(domain)
            .copied()
            .unwrap_or(self.config.authentication)
    }

    /// Whether this server speaks for `domain`: a host, a service domain, or an external
    /// component attached now (its stanzas federate like the server's own).
    fn is_local(&self, domain: &str) -> bool {
        self.server().is_some_and(|s| {
            s.serves(domain) || s.service(domain).is_some() || s.has_component(domain)
        })
    }

    /// The certificate to present for `local` (a service domain presents its host's).
    fn local_cert(&self, local: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let configs = self.tls.current();
        configs.certified_key(local).or_else(|| {
            let server = self.server()?;
            let host = server.service(local)?.host().to_owned();
            configs.certified_key(&host)
        })
    }

    /// A parser with the limits in force now (`[limits]`, which a reload may change).
    fn parser(&self) -> rookery_xml::StreamParser {
        let limits = self
            .server()
            .map(|s| s.config().limits.xml())
            .unwrap_or_default();
        rookery_xml::StreamParser::new(limits)
    }

    /// The TLS handshake time limit in force now.
    fn handshake_limit(&self) -> Duration {
        let secs = self
            .server()
            .map_or(15, |s| s.config().limits.tls_handshake_timeout_secs);
        Duration::from_secs(secs)
    }

    /// Queues a stanza on the link from `local` to `remote`, setting the link up if there is
    /// none. Never waits for the peer.
    fn enqueue(&self, local: &str, remote: &str, queued: Queued) -> Result<(), RouteError> {
        let full =
            || RouteError::Unroutable(StanzaError::new(StanzaErrorCondition::ResourceConstraint));
        let mut queued = queued;
        // Twice at most: a link that just ended is replaced once.
        for _ in 0..2 {
            let handle = {
                let mut links = self.links.lock();
                let key = (local.to_owned(), remote.to_owned());
                match links.get(&key) {
                    Some(h) => h.clone(),
                    None => {
                        if links.len() >= self.config.max_outgoing {
                            return Err(full());
                        }
                        let handle = self.spawn_link(local, remote);
                        links.insert(key, handle.clone());
                        handle
                    }
                }
            };
            let len = queued.bytes.len();
            if handle.queued_bytes.load(Ordering::Relaxed) + len > self.config.queue_bytes {
                return Err(full());
            }
            handle.queued_bytes.fetch_add(len, Ordering::Relaxed);
            match handle.tx.try_send(queued) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    handle.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    return Err(full());
                }
                Err(mpsc::error::TrySendError::Closed(q)) => {
                    handle.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    self.forget_link(local, remote, handle.id);
                    queued = q;
                }
            }
        }
        Err(RouteError::Unroutable(StanzaError::new(
            StanzaErrorCondition::RemoteServerTimeout,
        )))
    }

    fn spawn_link(&self, local: &str, remote: &str) -> LinkHandle {
        let (tx, rx) = mpsc::channel(self.config.queue_stanzas);
        let handle = LinkHandle {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            tx,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        };
        if let (Some(me), Some(server)) = (self.me.upgrade(), self.server()) {
            let link = outgoing::Link {
                s2s: me,
                local: local.to_owned(),
                remote: remote.to_owned(),
                id: handle.id,
                queued_bytes: handle.queued_bytes.clone(),
            };
            server.tasks().spawn(link.run(rx));
        }
        handle
    }

    /// Removes a link from the table if it is still the one with `id`.
    fn forget_link(&self, local: &str, remote: &str, id: u64) {
        let mut links = self.links.lock();
        let key = (local.to_owned(), remote.to_owned());
        if links.get(&key).is_some_and(|h| h.id == id) {
            links.remove(&key);
        }
    }

    /// Registers a stream the peer opened as the link for (`local`, `remote`), when it asked
    /// for a bidirectional stream (XEP-0288) and no link serves the pair. Returns the link's
    /// id, for [`forget_link`](Self::forget_link) when the stream ends.
    fn adopt_link(
        &self,
        local: &str,
        remote: &str,
        tx: &mpsc::Sender<Queued>,
        queued_bytes: &Arc<AtomicUsize>,
    ) -> Option<u64> {
        let mut links = self.links.lock();
        let key = (local.to_owned(), remote.to_owned());
        if links.contains_key(&key) {
            return None;
        }
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        links.insert(
            key,
            LinkHandle {
                id,
                tx: tx.clone(),
                queued_bytes: queued_bytes.clone(),
            },
        );
        Some(id)
    }

    /// Queues again a stanza whose link ended before writing it; bounced if that fails.
    fn requeue(&self, q: Queued) {
        let (Some(local), Some(remote)) = (
            q.stanza.from().map(|j| j.domain().as_str().to_owned()),
            q.stanza.to().map(|j| j.domain().as_str().to_owned()),
        ) else {
            return;
        };
        let stanza = q.stanza.clone();
        if let Err(RouteError::Unroutable(e)) = self.enqueue(&local, &remote, q) {
            if let Some(server) = self.server() {
                server.bounce(&stanza, e);
            }
        }
    }

    /// Incoming streams open now, authenticated or not (for metrics).
    pub fn incoming_connections(&self) -> usize {
        self.incoming_limits.open()
    }

    /// Outgoing links open now (for tests and metrics).
    pub fn outgoing_links(&self) -> usize {
        self.links.lock().len()
    }
}

/// The router's view of federation.
struct Routes(Arc<S2s>);

impl RemoteRoutes for Routes {
    fn route_to(&self, domain: &str) -> Option<Arc<dyn ExternalRoute>> {
        let s2s = &self.0;
        if !s2s.config.enabled || domain.is_empty() {
            return None;
        }
        if s2s.policy(domain) == AuthPolicy::Refuse {
            return None;
        }
        if is_special_use(domain) && !s2s.resolver.is_overridden(domain) {
            return None;
        }
        // A domain that is an IP literal has no server to federate with (RFC 6120 §13.7.2.1
        // needs a DNS domain to authenticate).
        if domain.parse::<std::net::IpAddr>().is_ok() || domain.starts_with('[') {
            return None;
        }
        Some(Arc::new(RemoteDomain {
            s2s: s2s.clone(),
            domain: domain.to_owned(),
        }))
    }
}

/// The route to one remote domain.
struct RemoteDomain {
    s2s: Arc<S2s>,
    domain: String,
}

#[async_trait]
impl ExternalRoute for RemoteDomain {
    async fn send(&self, stanza: Stanza) -> Result<(), RouteError> {
        let Some(local) = stanza.from().map(|f| f.domain().as_str().to_owned()) else {
            return Err(RouteError::Unroutable(StanzaError::bad_request(
                "no 'from'",
            )));
        };
        // Only what this server speaks for leaves it: a stanza from another remote domain is
        // not relayed (RFC 6120 §13.7.1.3: a server must not be an open relay).
        if !self.s2s.is_local(&local) {
            return Err(RouteError::Unroutable(StanzaError::new(
                StanzaErrorCondition::NotAllowed,
            )));
        }
        // The header's addresses, not the element's: a stanza shared by many recipients (a
        // presence broadcast, a room message) carries its `to` in the header only.
        let mut bytes = Vec::with_capacity(256);
        let to = stanza.to().map(|j| j.as_str());
        let from = stanza.from().map(|j| j.as_str());
        if stanza.element().attr("from") == from {
            stanza
                .element()
                .write_with_attr(&mut bytes, ns::CLIENT, "to", to);
        } else {
            let mut el = stanza.element().clone();
            if let Some(from) = from {
                el.set_attr("from", from);
            }
            el.write_with_attr(&mut bytes, ns::CLIENT, "to", to);
        }
        self.s2s
            .enqueue(&local, &self.domain, Queued { stanza, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_use_domains() {
        for d in [
            "unserved.example",
            "x.invalid",
            "localhost",
            "a.b.test",
            "EXAMPLE",
        ] {
            assert!(is_special_use(d), "{d}");
        }
        for d in ["jabber.org", "example.com", "testing.net"] {
            assert!(!is_special_use(d), "{d}");
        }
    }
}

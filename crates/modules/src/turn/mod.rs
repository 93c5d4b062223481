//! A built-in STUN/TURN server (RFC 8489 STUN, RFC 8656 TURN over UDP), for operators who
//! would rather not run coturn or eturnal beside Rookery: off by default, switched on with
//! `[turn] enabled = true` (and the address clients reach it at, `public_ip`).
//!
//! The protocol (message parsing, integrity, nonces, allocations, permissions, channels,
//! lifetimes and refreshes) is webrtc-rs's `turn` crate: a maintained, pure-Rust TURN server
//! built on tokio, the only one that is a library rather than a program. What Rookery adds
//! around it lives in [`admission`]:
//!
//! * **Credentials** are the TURN REST API ones the [`extdisco`](crate::extdisco) module
//!   hands to local users (`<expiry>:<bare JID>`, HMAC-SHA1 of the shared secret): an expired
//!   or malformed username is refused (401). Without a configured `secret` the server makes
//!   a random one at start, which only this process knows: then it serves only the
//!   credentials this server gives out.
//! * **Limits**: allocations in total and per user (`max_allocations`,
//!   `max_allocations_per_user`; refused with 508 Insufficient Capacity and 486 Allocation
//!   Quota Reached, RFC 8656 §7.2), relayed bytes per allocation (the
//!   allocation ends when they are spent) and a bandwidth per allocation (datagrams beyond it
//!   are dropped, as a congested link would). Lifetimes are the protocol's: 10 minutes unless
//!   the client asks for less, at most an hour per refresh (RFC 8656 §7.2).
//! * **Peers**: relaying to or from loopback, unspecified, multicast and broadcast addresses
//!   is refused unless `allow_loopback_peers` (for tests and single-machine setups) — a TURN
//!   server must not become a way into the machine it runs on — and so is any address in
//!   `denied_peers` (CIDR ranges, e.g. the operator's internal networks).
//!
//! When it runs, every host's external service discovery lists it (a `stun` and a `turn`
//! service at `public_host` or `public_ip`), so clients find it with no further setting.

pub mod admission;

use admission::{Admission, Gate, PeerFilter, RelayLimits, RelayPorts, RestAuth};
use rand::RngCore;
use rookery_core::config::ConfigError;
use rookery_core::{HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Server, Spec};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

pub struct Turn;

/// `[turn]`: the built-in STUN/TURN server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    /// UDP address to listen on for STUN and TURN.
    pub address: String,
    /// The address clients and their peers reach the server at: relayed addresses are
    /// announced on it. Needed when `address` is a wildcard (0.0.0.0 or ::).
    pub public_ip: String,
    /// The name announced to clients in service discovery; empty: `public_ip`.
    pub public_host: String,
    /// The TURN realm; empty: the first host's domain.
    pub realm: String,
    /// The shared secret of the TURN REST API credentials; empty: a random one per start.
    pub secret: String,
    /// The UDP ports relayed addresses are taken from (inclusive).
    pub relay_min_port: u16,
    pub relay_max_port: u16,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Bytes one allocation may relay, both directions together; then it ends.
    pub max_bytes_per_allocation: u64,
    /// Bytes per second one allocation may relay; what goes beyond is dropped.
    pub max_bytes_per_second: u64,
    /// Relay to loopback addresses and this machine's other local-only ones.
    pub allow_loopback_peers: bool,
    /// Peer addresses never relayed to or from (CIDR: `10.0.0.0/8`, `fd00::/8`).
    pub denied_peers: Vec<String>,
    /// List the server in every host's external service discovery (XEP-0215).
    pub advertise: bool,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: false,
            address: "0.0.0.0:3478".into(),
            public_ip: String::new(),
            public_host: String::new(),
            realm: String::new(),
            secret: String::new(),
            relay_min_port: 49152,
            relay_max_port: 65535,
            max_allocations: 1000,
            max_allocations_per_user: 10,
            max_bytes_per_allocation: 1 << 30,
            max_bytes_per_second: 2 << 20,
            allow_loopback_peers: false,
            denied_peers: Vec::new(),
            advertise: true,
        }
    }
}

impl TurnConfig {
    fn listen_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }

    /// The address relayed addresses are announced on.
    pub fn announced_ip(&self) -> Option<IpAddr> {
        if !self.public_ip.is_empty() {
            return self.public_ip.parse().ok();
        }
        self.listen_addr()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    }

    /// What clients are told to connect to: host name (or address) and port.
    pub fn announced_host(&self) -> Option<(String, u16)> {
        let port = self.listen_addr()?.port();
        if !self.public_host.is_empty() {
            return Some((self.public_host.clone(), port));
        }
        Some((self.announced_ip()?.to_string(), port))
    }
}

/// The shared secret in force: the configured one, or one random secret for this process.
pub fn secret(config: &TurnConfig) -> String {
    static RANDOM: OnceLock<String> = OnceLock::new();
    if !config.secret.is_empty() {
        return config.secret.clone();
    }
    RANDOM
        .get_or_init(|| {
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        })
        .clone()
}

impl Section for TurnConfig {
    const KEY: &'static str = "turn";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# The built-in STUN/TURN server (RFC 8489/8656, UDP) for calls behind NAT. Off by default;
# when on, every host's external service discovery (XEP-0215) lists it with time-limited
# credentials, so clients need no setting.
[turn]
enabled = false
address = "0.0.0.0:3478"
# The address clients and their peers reach the server at (needed with a wildcard address).
public_ip = ""
# The name announced to clients; empty: public_ip.
public_host = ""
# empty: the first host's domain
realm = ""
# The TURN REST API shared secret; empty: a random one at each start. Set it to share the
# server with other XMPP servers or to let credentials outlive a restart.
secret = ""
relay_min_port = 49152
relay_max_port = 65535
max_allocations = 1000
max_allocations_per_user = 10
# Relayed bytes per allocation (both directions); the allocation ends when spent.
max_bytes_per_allocation = 1073741824
# Bandwidth per allocation, bytes per second; datagrams beyond it are dropped.
max_bytes_per_second = 2097152
# Relay to loopback addresses (tests, a single machine). Off: a TURN server must not be a
# way into the machine it runs on.
allow_loopback_peers = false
# Peer networks never relayed to, e.g. ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"].
denied_peers = []
# List it in every host's external service discovery.
advertise = true
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let Some(listen) = self.listen_addr() else {
            return Err(ConfigError::invalid(
                format!("{key}.address"),
                "an IP address and port, like 0.0.0.0:3478",
            ));
        };
        if !self.public_ip.is_empty() && self.public_ip.parse::<IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.public_ip"),
                "an IP address",
            ));
        }
        if self.enabled && listen.ip().is_unspecified() && self.public_ip.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.public_ip"),
                "needed when the server listens on a wildcard address: the address clients reach it at",
            ));
        }
        if self.public_host.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                format!("{key}.public_host"),
                "a host name or address",
            ));
        }
        if self.relay_min_port == 0 || self.relay_max_port < self.relay_min_port {
            return Err(ConfigError::invalid(
                format!("{key}.relay_min_port"),
                "a port above 0, at most relay_max_port",
            ));
        }
        for (name, v) in [
            ("max_allocations", self.max_allocations as u64),
            (
                "max_allocations_per_user",
                self.max_allocations_per_user as u64,
            ),
            ("max_bytes_per_allocation", self.max_bytes_per_allocation),
            ("max_bytes_per_second", self.max_bytes_per_second),
        ] {
            crate::require_positive(key, name, v)?;
        }
        if let Err(bad) = PeerFilter::new(self.allow_loopback_peers, &self.denied_peers) {
            return Err(ConfigError::invalid(
                format!("{key}.denied_peers"),
                format!("{bad:?} is not a network like 10.0.0.0/8"),
            ));
        }
        Ok(())
    }
}

impl Module for Turn {
    const NAME: &'static str = "turn";
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "RFC 8489",
            title: "STUN: binding requests (built-in server, UDP)",
            version: "",
        },
        Spec {
            id: "RFC 8656",
            title: "TURN: UDP relays with REST API credentials, quotas and bandwidth limits (built-in server)",
            version: "",
        },
    ];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<TurnConfig>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        // The server is one for the process (started in `start`), and the extdisco module
        // announces it on each host. Its port is bound here, by the first host, so that a
        // taken port stops the server at start with a clear error, as a taken client or
        // proxy65 port does, instead of the server running while every host's discovery
        // announces a TURN service that is not there.
        let config = host.section::<TurnConfig>();
        if !config.enabled {
            return Ok(());
        }
        host.shared::<ListenSocket>()
            .bind_once(&config)
            .map_err(|e| ModuleError::Init {
                module: Self::NAME,
                message: format!("cannot listen on {} (turn.address): {e}", config.address),
            })
    }

    fn start(server: &Arc<Server>) {
        let config = server.config().section::<TurnConfig>();
        if !config.enabled {
            return;
        }
        let realm = if config.realm.is_empty() {
            server
                .config()
                .hosts
                .first()
                .map(|h| h.domain.clone())
                .unwrap_or_else(|| "localhost".into())
        } else {
            config.realm.clone()
        };
        // Bound by the `init` of the host that enabled the module; `start` runs once, so the
        // socket is always there (a defensive check, not a path).
        let Some(socket) = server.shared::<ListenSocket>().and_then(|s| s.take()) else {
            tracing::error!("the TURN server's port was not bound: not started");
            return;
        };
        let shutdown = server.shutdown_token().clone();
        server.tasks().spawn(async move {
            match run(&config, realm, socket).await {
                Ok(turn) => {
                    shutdown.cancelled().await;
                    if let Err(e) = turn.close().await {
                        tracing::debug!(error = %e, "TURN server close");
                    }
                }
                Err(e) => tracing::error!(address = %config.address, error = %e,
                    "the TURN server could not start"),
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("address: {0}")]
    Address(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Turn(#[from] turn::Error),
}

/// The TURN server's listening socket, from the first host's `init` (which binds it) to
/// `start` (which serves it).
#[derive(Default)]
struct ListenSocket(parking_lot::Mutex<Listen>);

#[derive(Default)]
enum Listen {
    #[default]
    Unbound,
    Bound(std::net::UdpSocket),
    /// Taken by `start`: later hosts (a reload's) find the server running.
    Serving,
}

impl ListenSocket {
    /// Binds `config.address` unless a host did already.
    fn bind_once(&self, config: &TurnConfig) -> Result<(), StartError> {
        let mut state = self.0.lock();
        if matches!(*state, Listen::Unbound) {
            *state = Listen::Bound(bind(config)?);
        }
        Ok(())
    }

    /// The bound socket, for `start` to serve; none if no host bound one or it is served.
    fn take(&self) -> Option<std::net::UdpSocket> {
        let mut state = self.0.lock();
        match std::mem::take(&mut *state) {
            Listen::Bound(socket) => {
                *state = Listen::Serving;
                Some(socket)
            }
            other => {
                *state = other;
                None
            }
        }
    }
}

/// The listening socket on `config.address`, non-blocking for tokio.
fn bind(config: &TurnConfig) -> Result<std::net::UdpSocket, StartError> {
    let listen = config
        .listen_addr()
        .ok_or_else(|| StartError::Address(config.address.clone()))?;
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Starts the TURN server on `socket` (bound by `init`); it runs until closed.
pub async fn run(
    config: &TurnConfig,
    realm: String,
    socket: std::net::UdpSocket,
) -> Result<turn::server::Server, StartError> {
    let public_ip = config
        .announced_ip()
        .ok_or_else(|| StartError::Address("no public_ip".into()))?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    admission::enlarge_buffers(&socket, admission::LISTEN_SOCKET_BUFFER);
    let local = socket.local_addr()?;
    let peers = PeerFilter::new(config.allow_loopback_peers, &config.denied_peers)
        .map_err(StartError::Address)?;
    let admission = Arc::new(Admission::new(
        secret(config),
        config.max_allocations,
        config.max_allocations_per_user,
    ));
    let relay = RelayPorts {
        admission: admission.clone(),
        limits: Arc::new(RelayLimits {
            max_bytes: config.max_bytes_per_allocation,
            bytes_per_second: config.max_bytes_per_second,
            peers,
        }),
        bind_ip: local.ip(),
        public_ip,
        min_port: config.relay_min_port,
        max_port: config.relay_max_port,
    };
    let server = turn::server::Server::new(turn::server::config::ServerConfig {
        conn_configs: vec![turn::server::config::ConnConfig {
            conn: Arc::new(Gate {
                socket,
                admission: admission.clone(),
            }),
            relay_addr_generator: Box::new(relay),
        }],
        realm,
        auth_handler: Arc::new(RestAuth(admission)),
        channel_bind_timeout: std::time::Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?;
    tracing::info!(address = %local, relay_ip = %public_ip, "TURN server listening (UDP)");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_a_wildcard_needs_a_public_ip() {
        let c = TurnConfig::default();
        assert!(c.validate("turn").is_ok(), "off by default: nothing needed");
        let on = TurnConfig {
            enabled: true,
            ..TurnConfig::default()
        };
        let e = on.validate("turn").expect_err("wildcard without public_ip");
        assert!(e.to_string().contains("public_ip"), "{e}");
        let on = TurnConfig {
            public_ip: "203.0.113.5".into(),
            ..on
        };
        assert!(on.validate("turn").is_ok());
        assert_eq!(on.announced_host(), Some(("203.0.113.5".into(), 3478)));
        let named = TurnConfig {
            public_host: "turn.example.org".into(),
            ..on.clone()
        };
        assert_eq!(
            named.announced_host(),
            Some(("turn.example.org".into(), 3478))
        );
        let local = TurnConfig {
            address: "127.0.0.1:3479".into(),
            ..TurnConfig::default()
        };
        assert_eq!(local.announced_ip(), Some("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |c: TurnConfig, field: &str| {
            let e = c.validate("turn").expect_err("invalid");
            assert!(e.to_string().contains(field), "{e}");
        };
        bad(
            TurnConfig {
                address: "nowhere".into(),
                ..TurnConfig::default()
            },
            "turn.address",
        );
        bad(
            TurnConfig {
                relay_min_port: 5000,
                relay_max_port: 4000,
                ..TurnConfig::default()
            },
            "turn.relay_min_port",
        );
        bad(
            TurnConfig {
                max_allocations_per_user: 0,
                ..TurnConfig::default()
            },
            "turn.max_allocations_per_user",
        );
        bad(
            TurnConfig {
                denied_peers: vec!["10.0.0.0/33".into()],
                ..TurnConfig::default()
            },
            "turn.denied_peers",
        );
    }

    #[test]
    fn an_unset_secret_is_random_but_stable_in_the_process() {
        let c = TurnConfig::default();
        let s = secret(&c);
        assert_eq!(s.len(), 48);
        assert_eq!(secret(&c), s);
        let set = TurnConfig {
            secret: "shared".into(),
            ..c
        };
        assert_eq!(secret(&set), "shared");
    }

    /// The port is bound once, by the first host, handed to `start` once, and a port another
    /// socket holds is an error naming the cause rather than a server without its socket.
    #[test]
    fn the_listening_socket_is_bound_once_and_taken_once() {
        let config = TurnConfig {
            enabled: true,
            address: "127.0.0.1:0".into(),
            ..TurnConfig::default()
        };
        let slot = ListenSocket::default();
        assert!(slot.take().is_none(), "nothing bound yet");
        slot.bind_once(&config).expect("a free port");
        let port = match &*slot.0.lock() {
            Listen::Bound(s) => s.local_addr().expect("bound").port(),
            _ => panic!("bound by the first host"),
        };
        slot.bind_once(&config)
            .expect("a second host binds nothing");
        let socket = slot.take().expect("the socket for start");
        assert_eq!(socket.local_addr().expect("bound").port(), port);
        assert!(slot.take().is_none(), "served once");
        slot.bind_once(&config)
            .expect("a reload's host, once serving");
        assert!(matches!(*slot.0.lock(), Listen::Serving));

        let taken = TurnConfig {
            address: format!("127.0.0.1:{port}"),
            ..config
        };
        match ListenSocket::default().bind_once(&taken) {
            Err(StartError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
            other => panic!("{other:?}"),
        }
    }
}

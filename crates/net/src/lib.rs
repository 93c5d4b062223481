//! Listeners and client streams.
//!
//! * [`tls`]: certificates per host (loaded or generated), SNI, channel-binding data.
//! * [`c2s`]: the client stream state machine (negotiation, then stanzas to and from the
//!   core), without a socket, and the loop that runs one over a transport.
//! * [`transport`]: [`transport::StanzaTransport`], what a client stream runs over, and its
//!   TCP/TLS implementation.
//! * [`limits`]: connection counting and authentication-failure slow-down.
//! * [`http`]: the HTTP(S) listener and its route table: WebSocket (RFC 7395) and BOSH
//!   (XEP-0124, XEP-0206), transports under the same client stream, and XEP-0156
//!   discovery; upload plugs in there.
//! * [`component`]: external components (XEP-0114) on a `component` listener.
//! * [`metrics`]: Prometheus metrics at `/metrics` on the HTTP listeners.
//!
//! Transports hand the core stanzas that are already parsed and stamped; the core never sees
//! bytes.

pub mod c2s;
pub mod component;
pub mod csi;
pub mod fast;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod s2s;
pub mod sasl_config;
pub mod sm;
pub mod tls;
pub mod tls_records;
pub mod transport;

use crate::c2s::StreamContext;
use rookery_core::{ModuleRegistry, SectionDecl, Spec};

/// The configuration sections of the client stream and the listeners:
/// `[stream_management]`, `[fast]`, `[http]`, `[bosh]`, `[s2s]`, `[component]` and
/// `[metrics]`.
pub const SECTIONS: &[SectionDecl] = &[
    SectionDecl::of::<sm::StreamManagementConfig>(),
    SectionDecl::of::<fast::FastConfig>(),
    SectionDecl::of::<sasl_config::SaslConfig>(),
    SectionDecl::of::<http::HttpConfig>(),
    SectionDecl::of::<http::bosh::BoshConfig>(),
    SectionDecl::of::<s2s::S2sConfig>(),
    SectionDecl::of::<component::ComponentsConfig>(),
    SectionDecl::of::<metrics::MetricsConfig>(),
];

/// The build's modules with the stream layer's configuration sections declared beside them:
/// the registry a server with client streams reads its configuration with.
pub fn with_stream_sections(mut registry: ModuleRegistry) -> ModuleRegistry {
    registry.declare_sections(SECTIONS);
    registry
}

/// What the stream layer implements (features modules register are listed by the modules).
pub const SPECS: &[Spec] = &[
    Spec {
        id: "RFC 6120",
        title: "XMPP Core",
        version: "",
    },
    Spec {
        id: "RFC 6120 server-to-server",
        title: "XMPP Core: server-to-server streams (§5, §10.4, §13.7)",
        version: "",
    },
    Spec {
        id: "XEP-0220",
        title: "Server Dialback",
        version: "1.1.1",
    },
    Spec {
        id: "XEP-0288",
        title: "Bidirectional Server-to-Server Connections",
        version: "1.0.1",
    },
    Spec {
        id: "XEP-0185",
        title: "Dialback Key Generation and Validation",
        version: "1.0",
    },
    Spec {
        id: "XEP-0178",
        title: "Best Practices for Use of SASL EXTERNAL with Certificates (server-to-server)",
        version: "1.2",
    },
    Spec {
        id: "RFC 7622",
        title: "XMPP Address Format",
        version: "",
    },
    Spec {
        id: "RFC 7590",
        title: "Use of TLS in XMPP",
        version: "",
    },
    Spec {
        id: "RFC 5802",
        title: "SCRAM (SCRAM-SHA-1, -PLUS)",
        version: "",
    },
    Spec {
        id: "RFC 7677",
        title: "SCRAM-SHA-256 (and -512, -PLUS)",
        version: "",
    },
    Spec {
        id: "RFC 9266",
        title: "Channel binding tls-exporter",
        version: "",
    },
    Spec {
        id: "RFC 5929",
        title: "Channel binding tls-server-end-point",
        version: "",
    },
    Spec {
        id: "XEP-0368",
        title: "SRV records for XMPP over TLS (direct TLS, clients and servers)",
        version: "1.1.0",
    },
    Spec {
        id: "RFC 7395",
        title: "XMPP over WebSocket",
        version: "",
    },
    Spec {
        id: "XEP-0124",
        title: "Bidirectional-streams Over Synchronous HTTP (BOSH)",
        version: "1.11.2",
    },
    Spec {
        id: "XEP-0206",
        title: "XMPP Over BOSH",
        version: "1.4",
    },
    Spec {
        id: "XEP-0156",
        title: "Discovering Alternative XMPP Connection Methods (host-meta)",
        version: "1.4.0",
    },
    Spec {
        id: "XEP-0198",
        title: "Stream Management",
        version: "1.6.3",
    },
    Spec {
        id: "XEP-0352",
        title: "Client State Indication",
        version: "1.0.0",
    },
    Spec {
        id: "XEP-0386",
        title: "Bind 2",
        version: "1.1.0",
    },
    Spec {
        id: "XEP-0388",
        title: "Extensible SASL Profile (SASL2)",
        version: "1.0.4",
    },
    Spec {
        id: "XEP-0440",
        title: "SASL Channel-Binding Type Capability",
        version: "1.0.0",
    },
    Spec {
        id: "XEP-0474",
        title: "SASL SCRAM Downgrade Protection",
        version: "0.5.0",
    },
    Spec {
        id: "XEP-0114",
        title: "Jabber Component Protocol",
        version: "1.6",
    },
    Spec {
        id: "XEP-0478",
        title: "Stream Limits Advertisement",
        version: "0.2.0",
    },
    Spec {
        id: "XEP-0484",
        title: "Fast Authentication Streamlining Tokens (HT-SHA-256-*)",
        version: "0.2.0",
    },
];
use crate::limits::ConnectionLimits;
use crate::transport::{TcpSetup, TcpTransport};
use rookery_core::config::ListenerKind;
use rookery_core::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A bound listener, before it starts accepting.
pub struct BoundListener {
    pub kind: ListenerKind,
    pub local_addr: SocketAddr,
    /// The metrics' own HTTP listener (`[metrics] address`): only `/metrics` is served.
    pub metrics_only: bool,
    listener: TcpListener,
}

/// Binds every configured listener; fails before anything is served if one address is taken.
pub async fn bind_all(server: &Server) -> std::io::Result<Vec<BoundListener>> {
    let mut out = Vec::new();
    for l in &server.config().listeners {
        let listener = listen(l.address).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address))
        })?;
        out.push(BoundListener {
            kind: l.kind,
            local_addr: listener.local_addr()?,
            metrics_only: false,
            listener,
        });
    }
    let config = server.config();
    let http_listeners = config
        .listeners
        .iter()
        .any(|l| matches!(l.kind, ListenerKind::Http | ListenerKind::Https));
    match metrics::own_listener(
        &config.sections.get::<metrics::MetricsConfig>(),
        http_listeners,
    ) {
        Some((address, metrics::Chosen::Configured)) => {
            let listener = listen(address).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("metrics.address: cannot listen on {address}: {e}"),
                )
            })?;
            out.push(BoundListener {
                kind: ListenerKind::Http,
                local_addr: listener.local_addr()?,
                metrics_only: true,
                listener,
            });
        }
        // Not asked for: a port taken (a second server on this machine) costs the metrics
        // only, with a warning, not the server.
        Some((address, metrics::Chosen::Default)) => match listen(address) {
            Ok(listener) => out.push(BoundListener {
                kind: ListenerKind::Http,
                local_addr: listener.local_addr()?,
                metrics_only: true,
                listener,
            }),
            Err(e) => tracing::warn!(
                %address,
                error = %e,
                "metrics are not served: there is no HTTP listener and the default metrics \
                 address is unavailable; set [metrics] address"
            ),
        },
        None => {}
    }
    Ok(out)
}

/// Pending connections the kernel queues for a listener (capped by `net.core.somaxconn`).
/// tokio's `TcpListener::bind` asks for 1,024: a burst of reconnecting clients after a
/// network blip or a restart overflows that, and an overflowed handshake leaves a client
/// that believes it is connected to a socket nobody will ever accept.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds and listens like `TcpListener::bind`, with [`LISTEN_BACKLOG`].
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restarted server can bind while old connections linger
    // in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What every connection on one listener shares.
struct Listener {
    streams: Arc<StreamContext>,
    tls: tls::TlsContext,
    kind: ListenerKind,
    limits: Arc<ConnectionLimits>,
    /// The configured external components (used by `component` listeners).
    components: Arc<component::Components>,
}

/// Accepts connections on the bound listeners until the server shuts down.
pub fn serve(server: Arc<Server>, tls: tls::TlsContext, listeners: Vec<BoundListener>) {
    let limits = &server.config().limits;
    let conn_limits = ConnectionLimits::new(limits.max_connections, limits.max_connections_per_ip);
    let streams = Arc::new(StreamContext::new(server.clone()));
    // A reload may change `[limits] max_connections`/`max_connections_per_ip` and the live
    // stream sections.
    server.tasks().spawn(follow_config(
        server.clone(),
        conn_limits.clone(),
        streams.clone(),
    ));
    let components = component::Components::new(server.clone());
    // Where modules' URLs point (upload slots): `[http] public_url`, else an HTTPS
    // listener's port (an HTTP one if there is none) on each host's domain.
    let port = |kind| {
        listeners
            .iter()
            .find(|l| l.kind == kind && !l.metrics_only)
            .map(|l| l.local_addr.port())
    };
    let listener = port(ListenerKind::Https)
        .map(|p| ("https", p))
        .or_else(|| port(ListenerKind::Http).map(|p| ("http", p)));
    let http_config = server.config().sections.get::<http::HttpConfig>();
    server.set_http_endpoint(rookery_core::http::HttpEndpoint {
        public_url: http_config.public_url.clone(),
        listener,
        prefix: http_config.path_prefix.clone(),
    });
    let s2s = match s2s::S2s::start(&server, tls.clone()) {
        Ok(s2s) => Some(s2s),
        Err(e) => {
            tracing::error!(error = %e, "federation is off: its configuration cannot be used");
            None
        }
    };
    let metrics = metrics::Metrics::new(server.clone(), conn_limits.clone(), s2s.clone());
    if server
        .config()
        .sections
        .get::<metrics::MetricsConfig>()
        .enabled
    {
        server
            .tasks()
            .spawn(metrics::count_archives(server.clone()));
    }
    for l in listeners {
        if matches!(l.kind, ListenerKind::S2s | ListenerKind::S2sDirectTls) {
            let Some(s2s) = s2s.clone() else { continue };
            tracing::info!(address = %l.local_addr, kind = ?l.kind, "listening");
            let direct_tls = l.kind == ListenerKind::S2sDirectTls;
            server
                .tasks()
                .spawn(s2s_accept_loop(server.clone(), s2s, l.listener, direct_tls));
            continue;
        }
        let http_tls = match l.kind {
            ListenerKind::C2s | ListenerKind::C2sDirectTls | ListenerKind::Component => None,
            ListenerKind::S2s | ListenerKind::S2sDirectTls => continue,
            ListenerKind::Http => Some(None),
            ListenerKind::Https => Some(Some(tls.clone())),
        };
        if let Some(http_tls) = http_tls {
            if l.metrics_only {
                tracing::info!(address = %l.local_addr, "metrics listening");
            } else {
                tracing::info!(address = %l.local_addr, kind = ?l.kind, "listening");
            }
            http::serve(
                streams.clone(),
                conn_limits.clone(),
                metrics.clone(),
                http_tls,
                l.listener,
                l.metrics_only,
            );
            continue;
        }
        let listener = Arc::new(Listener {
            streams: streams.clone(),
            tls: tls.clone(),
            kind: l.kind,
            // A component listener counts its own connections.
            limits: match l.kind {
                ListenerKind::Component => components.connection_limits(),
                _ => conn_limits.clone(),
            },
            components: components.clone(),
        });
        tracing::info!(address = %l.local_addr, kind = ?l.kind, "listening");
        server.tasks().spawn(accept_loop(listener, l.listener));
    }
}

/// Gives the client listeners' connection counter the maxima, and the streams the live
/// sections, of each configuration a reload puts in force, until the server shuts down.
async fn follow_config(
    server: Arc<Server>,
    limits: Arc<ConnectionLimits>,
    streams: Arc<StreamContext>,
) {
    let mut updates = server.config_updates();
    let shutdown = server.shutdown_token().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = updates.changed() => if changed.is_err() { return },
        }
        let config = server.config();
        limits.set(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        streams.refresh();
    }
}

/// Accepts server-to-server connections until the server shuts down.
async fn s2s_accept_loop(
    server: Arc<Server>,
    s2s: Arc<s2s::S2s>,
    listener: TcpListener,
    direct_tls: bool,
) {
    let shutdown = server.shutdown_token().clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                server
                    .tasks()
                    .spawn(s2s::serve_connection(s2s.clone(), socket, peer, direct_tls));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_loop(l: Arc<Listener>, listener: TcpListener) {
    let server = l.streams.server.clone();
    let shutdown = server.shutdown_token().clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Some(permit) = l.limits.try_acquire(peer.ip()) else {
                    tracing::warn!(%peer, open = l.limits.open(), "connection refused: connection limit reached");
                    rookery_core::counters::incr(
                        rookery_core::counters::Counter::ConnectionsRefused,
                    );
                    continue;
                };
                let _ = socket.set_nodelay(true);
                spawn_client_connection(&l, socket, peer, permit);
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Spawns the task of one accepted connection: a client stream over TCP (after the TLS
/// handshake on a direct-TLS port), or an external component's stream.
///
/// The stream's future is the task itself, not awaited inside a wrapper: a wrapper future
/// keeps the transport it builds beside the stream's future that took it over (both live
/// at the call), about 2.5 KiB more in every session's task for its whole life
/// (ARCHITECTURE.md, "Per-connection memory"). On a direct-TLS port the handshake is a
/// task of its own that spawns the stream's once the handshake is done.
fn spawn_client_connection(
    l: &Arc<Listener>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: limits::ConnectionPermit,
) {
    let server = &l.streams.server;
    let limits = &server.config().limits;
    let setup = TcpSetup {
        tls: l.tls.clone(),
        parser: rookery_xml::StreamParser::new(limits.xml()),
        handshake_limit: Duration::from_secs(limits.tls_handshake_timeout_secs),
        shutdown: server.shutdown_token().clone(),
        permit,
        side: crate::transport::TlsSide::Client,
    };
    match l.kind {
        ListenerKind::C2s => {
            let transport = TcpTransport::plain(socket, peer, setup);
            server.tasks().spawn(c2s::run(l.streams.clone(), transport));
        }
        // XEP-0114 streams have no STARTTLS: the transport is never asked to upgrade.
        ListenerKind::Component => {
            let transport = TcpTransport::plain(socket, peer, setup);
            server
                .tasks()
                .spawn(component::run(l.components.clone(), transport));
        }
        // Served by `http::serve` and `s2s_accept_loop`, never here.
        ListenerKind::Http
        | ListenerKind::Https
        | ListenerKind::S2s
        | ListenerKind::S2sDirectTls => {}
        ListenerKind::C2sDirectTls => {
            let streams = l.streams.clone();
            server.tasks().spawn(async move {
                match TcpTransport::direct_tls(socket, peer, setup).await {
                    Ok(transport) => {
                        let tasks = streams.server.tasks().clone();
                        tasks.spawn(c2s::run(streams, transport));
                    }
                    Err(why) => {
                        tracing::debug!(%peer, %why, "TLS handshake did not complete");
                        rookery_core::counters::incr(
                            rookery_core::counters::Counter::TlsHandshakeFailures,
                        );
                    }
                }
            });
        }
    }
}

//! End-to-end test support: a real server (the same crates the binary wires together) on
//! ephemeral loopback ports with a temporary SQLite database and generated certificate, and a
//! raw client that speaks bytes, so tests see exactly what goes over the wire.

pub mod bosh;
pub mod scram;
pub mod ws;

use rookery_core::{Config, Server};
use rookery_storage_sqlite::SqliteBackend;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Arc<Server>,
    pub c2s: SocketAddr,
    pub direct_tls: SocketAddr,
    /// The plain HTTP listener (WebSocket needs `tls.require_starttls = false` there).
    pub http: SocketAddr,
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// A `component` listener (XEP-0114), when `extra` configured one.
    pub component: Option<SocketAddr>,
    /// An `s2s` listener (server-to-server, STARTTLS), when `extra` configured one.
    pub s2s: Option<SocketAddr>,
    pub cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server; `extra` is appended to the generated configuration (e.g. `[limits]`).
    pub async fn start(extra: &str) -> TestServer {
        Self::start_with_host(extra, "").await
    }

    /// Like [`start`](Self::start), with `host_extra` added to the `localhost` host table.
    pub async fn start_with_host(extra: &str, host_extra: &str) -> TestServer {
        Self::start_with_registry(extra, host_extra, &rookery_modules::registry()).await
    }

    /// Like [`start_with_host`](Self::start_with_host), with these modules instead of the
    /// build's (a test adds its own modules to `rookery_modules::registry()`).
    pub async fn start_with_registry(
        extra: &str,
        host_extra: &str,
        registry: &rookery_core::ModuleRegistry,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml = format!(
            "data_dir = 'data'\n{extra}\n\
             [[listener]]\nkind = 'c2s'\naddress = '127.0.0.1:0'\n\
             [[listener]]\nkind = 'c2s-direct-tls'\naddress = '127.0.0.1:0'\n\
             [[listener]]\nkind = 'http'\naddress = '127.0.0.1:0'\n\
             [[listener]]\nkind = 'https'\naddress = '127.0.0.1:0'\n\
             [[host]]\ndomain = '{DOMAIN}'\n{host_extra}\n"
        );
        let config = Config::from_toml(
            &toml,
            &dir.path().join("test.toml"),
            dir.path(),
            &rookery_net::with_stream_sections(registry.clone()),
        )
        .expect("test config");
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let db = SqliteBackend::open(&config.database_path()).expect("database");
        let tls = rookery_net::tls::TlsContext::load(&config, true).expect("tls");
        let (cert_path, _, _) = rookery_net::tls::cert_paths(&config, DOMAIN);
        let pem = std::fs::read(cert_path).expect("cert");
        let cert = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("one cert")
            .expect("pem");
        let server = Server::new(config, db.storage(), registry).expect("server");
        let listeners = rookery_net::bind_all(&server).await.expect("bind");
        let addr = |k| {
            listeners
                .iter()
                .find(|l| l.kind == k)
                .map(|l| l.local_addr)
                .expect("listener")
        };
        let c2s = addr(rookery_core::config::ListenerKind::C2s);
        let direct_tls = addr(rookery_core::config::ListenerKind::C2sDirectTls);
        let http = addr(rookery_core::config::ListenerKind::Http);
        let https = addr(rookery_core::config::ListenerKind::Https);
        let component = listeners
            .iter()
            .find(|l| l.kind == rookery_core::config::ListenerKind::Component)
            .map(|l| l.local_addr);
        let s2s = listeners
            .iter()
            .find(|l| l.kind == rookery_core::config::ListenerKind::S2s)
            .map(|l| l.local_addr);
        rookery_net::serve(server.clone(), tls, listeners);
        TestServer {
            s2s,
            server,
            c2s,
            direct_tls,
            http,
            https,
            component,
            cert,
            _dir: dir,
        }
    }

    pub async fn add_user(&self, node: &str, password: &str) {
        let creds = rookery_sasl::generate_all(password, 4096).expect("credentials");
        self.server
            .storage()
            .accounts
            .create_account(DOMAIN, node, &creds)
            .await
            .expect("create account");
    }

    /// A TLS client config that trusts exactly this server's certificate.
    pub fn client_tls(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        self.client_tls_trusting(versions, &[DOMAIN])
    }

    /// A TLS client config trusting the generated certificates of these domains.
    pub fn client_tls_trusting(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        domains: &[&str],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for d in domains {
            let (path, _, _) = rookery_net::tls::cert_paths(&self.server.config(), d);
            let pem = std::fs::read(path).expect("generated cert");
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.expect("pem")).expect("trust anchor");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// Graceful stop, waiting for every connection task.
    pub async fn stop(&self) {
        self.server.shutdown_token().cancel();
        self.server.tasks().close();
        tokio::time::timeout(TIMEOUT, self.server.tasks().wait())
            .await
            .expect("server stopped in time");
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A byte-level client: send text, read until the received text contains a marker.
pub struct RawClient {
    io: Box<dyn Io>,
    pub received: String,
    /// Channel-binding data computed on the client side of the TLS connection.
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
}

impl RawClient {
    /// A client over any byte stream, such as one end of an in-memory pipe.
    pub fn over(io: impl Io + 'static) -> RawClient {
        RawClient {
            io: Box::new(io),
            received: String::new(),
            tls_exporter: None,
            tls_version: None,
        }
    }

    pub async fn plain(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        RawClient {
            io: Box::new(tcp),
            received: String::new(),
            tls_exporter: None,
            tls_version: None,
        }
    }

    pub async fn direct_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> RawClient {
        Self::direct_tls_to(addr, config, DOMAIN).await
    }

    /// Direct TLS with `sni` as the server name (and name checked in the certificate).
    pub async fn direct_tls_to(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::wrap_tls_to(tcp, config, sni).await
    }

    async fn wrap_tls(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> RawClient {
        Self::wrap_tls_to(tcp, config, DOMAIN).await
    }

    async fn wrap_tls_to(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> RawClient {
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from(sni.to_owned()).expect("name");
        let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let conn = tls.get_ref().1;
        let tls_version = conn.protocol_version();
        let tls_exporter = conn
            .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok();
        RawClient {
            io: Box::new(tls),
            received: String::new(),
            tls_exporter,
            tls_version,
        }
    }

    /// A server-to-server peer: opens a `jabber:server` stream with `header`, does STARTTLS
    /// and returns the client over TLS (before the new stream header).
    pub async fn s2s_starttls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        header: &str,
    ) -> RawClient {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(header.as_bytes()).await.expect("write");
        let mut seen = String::new();
        read_until(&mut tcp, &mut seen, "</stream:features>").await;
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .expect("write");
        read_until(&mut tcp, &mut seen, "<proceed").await;
        Self::wrap_tls(tcp, config).await
    }

    pub async fn connect_starttls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> RawClient {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(stream_header().as_bytes())
            .await
            .expect("write");
        let mut seen = String::new();
        read_until(&mut tcp, &mut seen, "</stream:features>").await;
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .expect("write");
        read_until(&mut tcp, &mut seen, "<proceed").await;
        Self::wrap_tls(tcp, config).await
    }

    /// Sends without asserting success (for clients the server may cut off).
    pub async fn try_send(&mut self, text: &str) -> std::io::Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        self.io.flush().await
    }

    pub async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Reads until `marker` appears in what was received since the last call; returns that part.
    pub async fn read_until(&mut self, marker: &str) -> String {
        let mut seen = String::new();
        read_until(&mut self.io, &mut seen, marker).await;
        self.received.push_str(&seen);
        seen
    }

    /// Reads until the server closes the connection; returns everything received.
    pub async fn read_to_end(&mut self) -> String {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, self.io.read_to_end(&mut buf))
            .await
            .expect("server closed in time");
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub async fn open_stream(&mut self) -> String {
        self.send(&stream_header()).await;
        self.read_until("</stream:features>").await
    }

    /// PLAIN authentication and the stream restart; returns the features offered after it.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        use base64::Engine as _;
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await;
        let got = self.read_until("xmpp-sasl").await;
        assert!(got.contains("<success"), "login failed: {got}");
        self.open_stream().await
    }

    /// PLAIN authentication, stream restart and resource binding; returns the bound JID.
    pub async fn login_plain(&mut self, user: &str, password: &str, resource: &str) -> String {
        self.auth_plain(user, password).await;
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let got = self.read_until("</jid>").await;
        let start = got.find("<jid>").expect("bound jid") + 5;
        let end = got.find("</jid>").expect("bound jid end");
        got[start..end].to_owned()
    }
}

pub fn stream_header() -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

async fn read_until<R: AsyncRead + Unpin + ?Sized>(io: &mut R, seen: &mut String, marker: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !seen.contains(marker) {
        let n = tokio::time::timeout_at(deadline, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {marker:?}; got {seen:?}"))
            .expect("read");
        assert!(
            n > 0,
            "connection closed while waiting for {marker:?}; got {seen:?}"
        );
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

impl RawClient {
    /// A plain TCP connection from `source` (any loopback address such as 127.0.0.7), for
    /// tests of per-address limits. Connection errors are returned, not asserted.
    pub async fn plain_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
    ) -> std::io::Result<RawClient> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        Ok(RawClient {
            io: Box::new(tcp),
            received: String::new(),
            tls_exporter: None,
            tls_version: None,
        })
    }

    /// Reads whatever arrives within `wait`; returns it and whether the peer closed the
    /// connection (end of file or an error) in that time.
    pub async fn read_for(&mut self, wait: Duration) -> (String, bool) {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return (String::from_utf8_lossy(&got).into_owned(), true)
                }
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Pings the server and waits for the answer; panics on an error or a timeout.
    pub async fn ping(&mut self, id: &str) {
        self.send(&format!(
            "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let got = self.read_until(&format!("id=\"{id}\"")).await;
        let at = got.find(&format!("id=\"{id}\"")).unwrap_or(0);
        let tag_start = got[..at].rfind("<iq").unwrap_or(0);
        assert!(
            got[tag_start..].contains("type=\"result\""),
            "ping {id} failed: {got}"
        );
    }
}

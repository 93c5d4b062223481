//! A minimal XMPP client connection: TCP (loopback only), STARTTLS or direct TLS, SASL
//! (SCRAM or PLAIN), resource binding, initial presence, and framed reading and batched
//! writing of stanzas for the scenarios.

use crate::scan::{self, Event, StreamScanner};
use crate::scram::{plain_initial, KeyCache, Mechanism, ScramClient};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP, then `<starttls/>` (RFC 6120 §5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    Direct,
    /// Plain TCP throughout, for servers configured to accept authentication without TLS:
    /// it measures what a login costs apart from the TLS handshake.
    None,
}

/// The connection's byte stream: TLS over TCP, or TCP alone (`TlsMode::None`).
type Stream = tokio_util::either::Either<Box<TlsStream<TcpStream>>, TcpStream>;

/// A failure, classified so a run can count failures by kind.
#[derive(Debug, Clone)]
pub struct ClientError {
    pub kind: &'static str,
    pub detail: String,
}

impl ClientError {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for ClientError {}

pub type Result<T> = std::result::Result<T, ClientError>;

pub fn io_err(kind: &'static str) -> impl Fn(std::io::Error) -> ClientError {
    move |e| ClientError::new(kind, e.to_string())
}

/// Accepts any server certificate. Benchmark targets run with self-signed certificates
/// generated for the run (Rookery generates its own; the bench script makes one for the other
/// servers), so there is no trust anchor to check against; the TLS handshake itself, key
/// exchange and the server's handshake signature included, is still performed in full so its
/// cost is part of every measured login.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration every connection shares: the `ring` provider, TLS 1.2 and
/// 1.3, no session resumption (every login pays a full handshake, on every server alike).
pub fn tls_connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// Where and how to connect, shared by every connection of a run.
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub tls: TlsMode,
    pub mechanism: Mechanism,
    pub user_pattern: String,
    pub password_pattern: String,
    /// Time allowed for each step of negotiation.
    pub step_timeout: Duration,
    pub connector: TlsConnector,
    pub keys: KeyCache,
    /// Local addresses to connect from, used in turn (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// The plain HTTP listener (WebSocket and BOSH scenarios), and its endpoints' paths.
    pub http_addr: SocketAddr,
    pub ws_path: String,
    pub bosh_path: String,
}

impl Target {
    pub fn user(&self, n: u64) -> String {
        self.user_pattern.replace("{n}", &n.to_string())
    }

    pub fn password(&self, n: u64) -> String {
        self.password_pattern.replace("{n}", &n.to_string())
    }

    pub fn bare_jid(&self, n: u64) -> String {
        format!("{}@{}", self.user(n), self.domain)
    }
}

/// Refuses anything but loopback: a load generator must never be pointed at another host.
pub fn resolve_loopback(host: &str, port: u16) -> std::result::Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{host} resolves to nothing"))?;
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{host} resolves to {}, which is not a loopback address: this tool only targets \
             servers on this machine",
            bad.ip()
        ));
    }
    Ok(first)
}

/// Timings of one login, in microseconds from the start of the TCP connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginTimes {
    /// TCP connected.
    pub connect_us: u64,
    /// TLS handshake done (after STARTTLS negotiation for a STARTTLS port); over WebSocket,
    /// the HTTP upgrade done; over BOSH, the session created.
    pub tls_us: u64,
    /// SASL success (server signature checked).
    pub auth_us: u64,
    /// Resource bound.
    pub bind_us: u64,
    /// Initial presence sent and a ping sent after it answered: the session is live.
    pub ready_us: u64,
}

/// An established, bound client session.
pub struct Conn {
    stream: Stream,
    pub scanner: StreamScanner,
    pub out: Vec<u8>,
    /// The full JID the server bound.
    pub jid: String,
    pub index: u64,
    read_buf: Box<[u8]>,
    /// Whether the server closed its stream or the socket.
    pub closed: bool,
}

/// What to do after binding.
#[derive(Debug, Clone, Copy)]
pub struct LoginOpts {
    /// Send initial presence (with this priority).
    pub presence: bool,
    pub priority: i8,
    /// Send a ping after the presence and wait for its answer, so the session is known to be
    /// fully set up (and the server has processed the presence) when login returns.
    pub confirm: bool,
}

impl Default for LoginOpts {
    fn default() -> Self {
        Self {
            presence: true,
            priority: 0,
            confirm: true,
        }
    }
}

fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        scan::escape(domain)
    )
}

/// Reads from a not yet TLS-wrapped socket until the scanner yields an element.
async fn read_plain_element(
    tcp: &mut TcpStream,
    sc: &mut StreamScanner,
    deadline: Duration,
) -> Result<Vec<u8>> {
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    loop {
        match sc.next_event().map_err(|e| ClientError::new("xml", e.0))? {
            Some(Event::Element(r)) => return Ok(sc.slice(r).to_vec()),
            Some(Event::StreamOpen(_)) => continue,
            Some(Event::StreamClose) => {
                return Err(ClientError::new("stream-closed", "before TLS"))
            }
            None => {}
        }
        sc.compact();
        let n = tokio::time::timeout_at(until, tcp.read(&mut buf))
            .await
            .map_err(|_| ClientError::new("timeout", "waiting for the server before TLS"))?
            .map_err(io_err("io"))?;
        if n == 0 {
            return Err(ClientError::new("eof", "connection closed before TLS"));
        }
        sc.push(&buf[..n]);
    }
}

pub fn stream_error_text(el: &[u8]) -> String {
    let cond = scan::first_child_name(el).unwrap_or(b"?");
    format!("stream error {}", String::from_utf8_lossy(cond))
}

/// One SASL exchange (SCRAM or PLAIN), as elements: whatever transport carries them (TCP,
/// WebSocket, BOSH) sends [`Sasl::start`]'s `<auth/>` and hands each element from the server
/// to [`Sasl::step`].
pub struct Sasl {
    scram: Option<ScramClient>,
    user: String,
}

/// What an element from the server means for the exchange.
pub enum SaslStep {
    /// Send this element.
    Reply(String),
    /// Authenticated (the server's SCRAM signature checked).
    Success,
    /// Not a SASL element: nothing to do.
    Other,
}

impl Sasl {
    /// The exchange for this account, and its `<auth/>` element.
    pub fn start(t: &Target, user: &str, password: &str) -> (Sasl, String) {
        let mech = t.mechanism;
        let mut scram = None;
        let initial = match mech {
            Mechanism::Plain => plain_initial(user, password),
            _ => {
                let c = ScramClient::new(mech, user, password, &ScramClient::random_nonce());
                let first = c.client_first().into_bytes();
                scram = Some(c);
                first
            }
        };
        let auth = format!(
            "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
            mech.name(),
            B64.encode(initial)
        );
        let sasl = Sasl {
            scram,
            user: user.to_owned(),
        };
        (sasl, auth)
    }

    pub fn step(&mut self, el: &[u8], keys: &KeyCache) -> Result<SaslStep> {
        let payload = || {
            let text = scan::root_text(el);
            B64.decode(text.trim_ascii())
                .map_err(|_| ClientError::new("sasl", "payload is not base64"))
                .and_then(|b| {
                    String::from_utf8(b)
                        .map_err(|_| ClientError::new("sasl", "payload is not UTF-8"))
                })
        };
        match scan::root_name(el) {
            b"challenge" => {
                let Some(c) = self.scram.as_mut() else {
                    return Err(ClientError::new("sasl", "unexpected challenge for PLAIN"));
                };
                let data = payload()?;
                if data.starts_with("v=") || data.starts_with("e=") {
                    // Server-final sent as a challenge: verify, answer empty.
                    c.verify_server_final(&data)
                        .map_err(|e| ClientError::new("sasl", e.0))?;
                    Ok(SaslStep::Reply(format!("<response xmlns='{NS_SASL}'/>")))
                } else {
                    let fin = c
                        .client_final(&data, Some(keys))
                        .map_err(|e| ClientError::new("sasl", e.0))?;
                    Ok(SaslStep::Reply(format!(
                        "<response xmlns='{NS_SASL}'>{}</response>",
                        B64.encode(fin)
                    )))
                }
            }
            b"success" => {
                if let Some(c) = self.scram.as_ref() {
                    let data = payload()?;
                    c.verify_server_final(&data)
                        .map_err(|e| ClientError::new("sasl", e.0))?;
                }
                Ok(SaslStep::Success)
            }
            b"failure" => {
                let cond = scan::first_child_name(el).unwrap_or(b"?");
                Err(ClientError::new(
                    "auth-failed",
                    format!("{}: {}", self.user, String::from_utf8_lossy(cond)),
                ))
            }
            b"error" => Err(ClientError::new("stream-error", stream_error_text(el))),
            _ => Ok(SaslStep::Other),
        }
    }
}

/// A TCP connection to `addr` (from the run's next source address, if any), Nagle off.
pub async fn connect_tcp(t: &Target, addr: SocketAddr, n: u64) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io_err("socket"))?;
    if !t.sources.is_empty() {
        let src = t.sources[(n as usize) % t.sources.len()];
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(io_err("bind-source"))?;
    }
    let tcp = tokio::time::timeout(t.step_timeout, socket.connect(addr))
        .await
        .map_err(|_| ClientError::new("timeout", "TCP connect"))?
        .map_err(io_err("connect"))?;
    tcp.set_nodelay(true).map_err(io_err("socket"))?;
    Ok(tcp)
}

impl Conn {
    /// Connects and negotiates TLS (STARTTLS or direct; none with `TlsMode::None`), then
    /// opens the stream.
    /// Returns the session before authentication, its stream features and the timings.
    async fn open(t: &Target, n: u64) -> Result<(Conn, Vec<u8>, LoginTimes, Instant)> {
        let start = Instant::now();
        let us = |s: Instant| s.elapsed().as_micros() as u64;
        let mut times = LoginTimes::default();
        let mut tcp = connect_tcp(t, t.addr, n).await?;
        times.connect_us = us(start);

        if t.tls == TlsMode::StartTls {
            let mut sc = StreamScanner::new();
            tcp.write_all(stream_header(&t.domain).as_bytes())
                .await
                .map_err(io_err("io"))?;
            let features = read_plain_element(&mut tcp, &mut sc, t.step_timeout).await?;
            if scan::root_name(&features) == b"error" {
                return Err(ClientError::new(
                    "stream-error",
                    stream_error_text(&features),
                ));
            }
            if !scan::has_child(&features, b"starttls") {
                return Err(ClientError::new(
                    "no-starttls",
                    "server does not offer STARTTLS",
                ));
            }
            tcp.write_all(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes())
                .await
                .map_err(io_err("io"))?;
            let proceed = read_plain_element(&mut tcp, &mut sc, t.step_timeout).await?;
            if scan::root_name(&proceed) != b"proceed" {
                return Err(ClientError::new(
                    "starttls-refused",
                    String::from_utf8_lossy(&proceed).into_owned(),
                ));
            }
        }
        let stream = if t.tls == TlsMode::None {
            Stream::Right(tcp)
        } else {
            let name = ServerName::try_from(t.domain.clone())
                .map_err(|e| ClientError::new("config", format!("bad domain for SNI: {e}")))?;
            let tls = tokio::time::timeout(t.step_timeout, t.connector.connect(name, tcp))
                .await
                .map_err(|_| ClientError::new("timeout", "TLS handshake"))?
                .map_err(io_err("tls"))?;
            Stream::Left(Box::new(tls))
        };
        times.tls_us = us(start);

        let mut conn = Conn {
            stream,
            scanner: StreamScanner::new(),
            out: Vec::with_capacity(1024),
            jid: String::new(),
            index: n,
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            closed: false,
        };
        let features = conn.restart(&t.domain, t.step_timeout).await?;
        Ok((conn, features, times, start))
    }

    /// A TLS-protected stream, not authenticated (for in-band registration).
    pub async fn connect_tls(t: &Target, n: u64) -> Result<Conn> {
        Ok(Self::open(t, n).await?.0)
    }

    /// Connects, negotiates TLS, authenticates as account `n`, binds `resource`, and (by
    /// default) sends initial presence and confirms the session with a ping.
    pub async fn login(
        t: &Target,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> Result<(Conn, LoginTimes)> {
        let (mut conn, features, mut times, start) = Self::open(t, n).await?;
        let us = |s: Instant| s.elapsed().as_micros() as u64;

        // SASL.
        let mechs = scan::child_texts(&features, b"mechanism");
        let want = t.mechanism.name();
        if !mechs.contains(&want.as_bytes()) {
            let offered: Vec<String> = mechs
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect();
            return Err(ClientError::new(
                "mechanism",
                format!("{want} not offered (offered: {})", offered.join(" ")),
            ));
        }
        let user = t.user(n);
        let password = t.password(n);
        conn.authenticate(t, &user, &password).await?;
        times.auth_us = us(start);

        // Bind.
        let features = conn.restart(&t.domain, t.step_timeout).await?;
        if !scan::has_child(&features, b"bind") {
            return Err(ClientError::new("no-bind", "server does not offer binding"));
        }
        let session_required =
            scan::has_child(&features, b"session") && !scan::has_child(&features, b"optional");
        let _ = write!(
            conn.out,
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
            scan::escape(resource)
        );
        if session_required {
            let _ = write!(
                conn.out,
                "<iq type='set' id='sess1'><session xmlns='{NS_SESSION}'/></iq>"
            );
        }
        conn.flush().await?;
        let bound = conn.wait_iq("bind1", t.step_timeout).await?;
        let jid = scan::child_text(&bound, b"jid").unwrap_or(b"");
        conn.jid = scan::unescape(jid).into_owned();
        if session_required {
            conn.wait_iq("sess1", t.step_timeout).await?;
        }
        times.bind_us = us(start);

        if opts.presence {
            if opts.priority != 0 {
                let _ = write!(
                    conn.out,
                    "<presence><priority>{}</priority></presence>",
                    opts.priority
                );
            } else {
                conn.out.extend_from_slice(b"<presence/>");
            }
        }
        if opts.confirm {
            let _ = write!(
                conn.out,
                "<iq type='get' id='ready1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                scan::escape(&t.domain)
            );
        }
        conn.flush().await?;
        if opts.confirm {
            conn.wait_iq("ready1", t.step_timeout).await?;
        }
        times.ready_us = us(start);
        Ok((conn, times))
    }

    /// The TLS protocol version and cipher suite of this connection.
    pub fn tls_info(&self) -> (String, String) {
        let Stream::Left(tls) = &self.stream else {
            return ("none".into(), "none".into());
        };
        let (_, session) = tls.get_ref();
        let v = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let c = session
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default();
        (v, c)
    }

    /// Sends a new stream header and returns the features.
    async fn restart(&mut self, domain: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.scanner.reset();
        self.out.extend_from_slice(stream_header(domain).as_bytes());
        self.flush().await?;
        let el = self.next_element(timeout).await?;
        match scan::root_name(&el) {
            b"features" => Ok(el),
            b"error" => Err(ClientError::new("stream-error", stream_error_text(&el))),
            other => Err(ClientError::new(
                "protocol",
                format!("expected features, got {}", String::from_utf8_lossy(other)),
            )),
        }
    }

    async fn authenticate(&mut self, t: &Target, user: &str, password: &str) -> Result<()> {
        let (mut sasl, auth) = Sasl::start(t, user, password);
        self.out.extend_from_slice(auth.as_bytes());
        self.flush().await?;
        loop {
            let el = self.next_element(t.step_timeout).await?;
            match sasl.step(&el, &t.keys)? {
                SaslStep::Reply(r) => {
                    self.out.extend_from_slice(r.as_bytes());
                    self.flush().await?;
                }
                SaslStep::Success => return Ok(()),
                SaslStep::Other => {}
            }
        }
    }

    /// Waits for the answer to the IQ with this id; other stanzas are skipped, except that
    /// pings from the server are answered.
    pub async fn wait_iq(&mut self, id: &str, timeout: Duration) -> Result<Vec<u8>> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let el = self.next_element(left).await?;
            match scan::root_name(&el) {
                b"iq" if scan::attr(&el, b"id") == Some(id.as_bytes()) => {
                    return iq_outcome(el, id);
                }
                b"iq" => self.answer_server_iq(&el),
                b"error" => return Err(ClientError::new("stream-error", stream_error_text(&el))),
                _ => {}
            }
        }
    }

    /// Answers an IQ get/set addressed to this client: a result for a ping, an error for
    /// anything else (RFC 6120 §8.2.3 wants every request answered).
    pub fn answer_server_iq(&mut self, el: &[u8]) {
        write_iq_answer(el, &mut self.out);
    }

    /// The next top-level element (owned), reading as needed.
    pub async fn next_element(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            match self
                .scanner
                .next_event()
                .map_err(|e| ClientError::new("xml", e.0))?
            {
                Some(Event::Element(r)) => return Ok(self.scanner.slice(r).to_vec()),
                Some(Event::StreamOpen(_)) => continue,
                Some(Event::StreamClose) => {
                    self.closed = true;
                    return Err(ClientError::new(
                        "stream-closed",
                        "server closed the stream",
                    ));
                }
                None => {}
            }
            tokio::time::timeout_at(until, self.read_some())
                .await
                .map_err(|_| ClientError::new("timeout", "waiting for the server"))??;
        }
    }

    /// Reads once from the socket into the scanner. Cancel-safe: the bytes are only taken
    /// when the read completes.
    pub async fn read_some(&mut self) -> Result<usize> {
        self.scanner.compact();
        let n = self
            .stream
            .read(&mut self.read_buf)
            .await
            .map_err(io_err("io"))?;
        if n == 0 {
            self.closed = true;
            return Err(ClientError::new("eof", "server closed the connection"));
        }
        self.scanner.push(&self.read_buf[..n]);
        Ok(n)
    }

    /// Writes everything queued in `out`.
    pub async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.out)
            .await
            .map_err(io_err("io"))?;
        self.stream.flush().await.map_err(io_err("io"))?;
        self.out.clear();
        Ok(())
    }

    /// Splits the session into a reader (this task) and a writer task fed through a channel,
    /// so that writing never stops reading. A scenario where the server may send a lot while
    /// the client also sends a lot (fan-out setup) needs this: a client blocked writing to a
    /// server blocked writing to it would deadlock.
    pub fn split(self) -> (ConnReader, ConnWriter) {
        let (rd, mut wr) = tokio::io::split(self.stream);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if wr.write_all(&chunk).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
            // Channel closed: end the stream, then TLS and the socket's sending side.
            let _ = wr.write_all(b"</stream:stream>").await;
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        });
        let mut scanner = self.scanner;
        let mut out = self.out;
        let pending = std::mem::take(&mut out);
        if !pending.is_empty() {
            let _ = tx.send(pending);
        }
        scanner.compact();
        (
            ConnReader {
                rd,
                scanner,
                read_buf: self.read_buf,
            },
            ConnWriter {
                tx: Some(tx),
                task: writer,
            },
        )
    }

    /// Ends the stream: `</stream:stream>`, then waits (bounded) for the server's close and
    /// closes TLS and the socket.
    pub async fn close(mut self, wait: Duration) {
        if self.closed {
            let _ = tokio::time::timeout(wait, self.stream.shutdown()).await;
            return;
        }
        self.out.extend_from_slice(b"</stream:stream>");
        if self.flush().await.is_err() {
            return;
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            match self.scanner.next_event() {
                Ok(Some(Event::StreamClose)) | Err(_) => break,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            match tokio::time::timeout_at(until, self.read_some()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(wait, self.stream.shutdown()).await;
    }
}

/// The answer to one of our IQs: the result element, or its error condition.
pub fn iq_outcome(el: Vec<u8>, id: &str) -> Result<Vec<u8>> {
    if scan::attr(&el, b"type") == Some(b"result") {
        return Ok(el);
    }
    let cond = scan::child_tag(&el, b"error")
        .and_then(|_| {
            scan::tokens(&el).skip(1).find_map(|tk| match tk {
                scan::Token::Start { name, tag, .. }
                    if scan::tag_attr(tag, b"xmlns")
                        == Some(b"urn:ietf:params:xml:ns:xmpp-stanzas") =>
                {
                    Some(String::from_utf8_lossy(name).into_owned())
                }
                _ => None,
            })
        })
        .unwrap_or_else(|| "?".to_owned());
    Err(ClientError::new("iq-error", format!("{id}: {cond}")))
}

/// Appends the answer to an IQ get/set from the server: a result for a ping, an error for
/// anything else (RFC 6120 §8.2.3 wants every request answered). Nothing for other IQs.
pub fn write_iq_answer(el: &[u8], out: &mut Vec<u8>) {
    let Some(ty) = scan::attr(el, b"type") else {
        return;
    };
    if ty != b"get" && ty != b"set" {
        return;
    }
    let id = scan::attr(el, b"id").unwrap_or(b"");
    let from = scan::attr(el, b"from");
    out.extend_from_slice(b"<iq id='");
    out.extend_from_slice(id);
    out.push(b'\'');
    if let Some(f) = from {
        out.extend_from_slice(b" to='");
        out.extend_from_slice(f);
        out.push(b'\'');
    }
    if scan::has_child(el, b"ping") {
        out.extend_from_slice(b" type='result'/>");
    } else {
        out.extend_from_slice(
            b" type='error'><error type='cancel'><service-unavailable \
                  xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        );
    }
}

/// The reading side of a split session.
pub struct ConnReader {
    rd: tokio::io::ReadHalf<Stream>,
    pub scanner: StreamScanner,
    read_buf: Box<[u8]>,
}

impl ConnReader {
    /// Reads once into the scanner (cancel-safe).
    pub async fn read_some(&mut self) -> Result<usize> {
        self.scanner.compact();
        let n = self
            .rd
            .read(&mut self.read_buf)
            .await
            .map_err(io_err("io"))?;
        if n == 0 {
            return Err(ClientError::new("eof", "server closed the connection"));
        }
        self.scanner.push(&self.read_buf[..n]);
        Ok(n)
    }
}

/// The writing side of a split session: a task writing what it is sent, in order.
pub struct ConnWriter {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnWriter {
    /// Queues bytes for the socket; false once the writer has stopped.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(bytes).is_ok())
    }

    /// Ends the stream after everything queued, then waits (bounded) for the server's close
    /// on `reader`.
    pub async fn close(mut self, mut reader: ConnReader, wait: Duration) {
        self.tx = None;
        let until = tokio::time::Instant::now() + wait;
        let _ = tokio::time::timeout_at(until, &mut self.task).await;
        loop {
            match reader.scanner.next_event() {
                Ok(Some(Event::StreamClose)) | Err(_) => break,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            match tokio::time::timeout_at(until, reader.read_some()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        self.task.abort();
    }
}

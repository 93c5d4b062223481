//! What a client stream runs over.
//!
//! [`StanzaTransport`] is the seam between the client stream state machine
//! ([`crate::c2s::ClientStream`]) and the bytes: it hands over parsed stream events, sends
//! what the stream wrote (stanzas and framing, serialised by the stream with the
//! transport's [`Framing`]), upgrades itself to TLS on request, and tells the stream what
//! it needs to know about the connection (peer address, confidentiality, channel-binding
//! data). [`TcpTransport`] is the one for TCP: plain until STARTTLS, TLS after it (or from
//! the first byte on a direct-TLS port). [`crate::http::websocket::WebSocketTransport`]
//! is the one for WebSocket (RFC 7395), [`crate::http::bosh::BoshTransport`] the one for
//! BOSH (XEP-0206); server-to-server streams will be other implementations of the same
//! trait.

use crate::limits::ConnectionPermit;
use crate::tls::{TlsConfigs, TlsContext};
use crate::tls_records::{self, TlsRecords};
use rookery_core::counters::{self, Counter};
use rookery_sasl::ChannelBindings;
use rookery_xml::{Framing, StreamEvent, StreamParser, XmlError};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Which side of a TLS handshake a [`TcpTransport`] takes, and with what configuration.
#[derive(Clone)]
pub enum TlsSide {
    /// A client stream's server side: the hosts' certificates, no client certificate asked.
    Client,
    /// An incoming server-to-server stream: the same certificates, and the peer's
    /// certificate asked for (not required) so it can be checked for its domain afterwards
    /// (RFC 6120 §13.7.2, XEP-0178).
    S2sIn,
    /// An outgoing server-to-server stream: the client side of the handshake, presenting
    /// the local domain's certificate and showing `server_name` (the remote domain) by SNI.
    S2sOut {
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}
use tokio_util::sync::CancellationToken;

/// Bytes read from the socket at once, into a stack buffer lent for the read only (an idle
/// connection holds none); stanzas larger than it are assembled by the parser.
const READ_BUFFER: usize = 4096;
/// A client that accepts none of our bytes for this long is gone or hostile: the connection
/// is dropped rather than holding its task and buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one [`StanzaTransport::receive`] gave.
#[derive(Debug)]
pub enum Received {
    /// End of stream or an error: the connection is gone.
    Closed,
    /// Nothing to take after all (a spurious wake-up, or TLS records not complete yet).
    Nothing,
    /// `bytes` bytes arrived and were parsed into the events appended to the caller's
    /// list; `parsed` is the parser's verdict on them (an error ends the stream after the
    /// events before it were handled).
    Events {
        bytes: usize,
        parsed: Result<(), XmlError>,
    },
}

/// The transport could not be upgraded to TLS; the connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("this transport cannot be upgraded to TLS")]
    Unsupported,
    #[error("TLS handshake did not complete: {0}")]
    Handshake(String),
}

/// A bidirectional stream of XMPP framing and stanzas under a [`crate::c2s::ClientStream`].
///
/// The stream never waits on anything but [`readable`](Self::readable),
/// [`send`](Self::send), [`upgrade_tls`](Self::upgrade_tls) and [`close`](Self::close);
/// an idle transport should hold no read buffer (wait for readiness, then read into a
/// buffer lent for that read).
pub trait StanzaTransport: Send {
    /// How stream framing is written on this transport.
    fn framing(&self) -> Framing;
    /// The address of the other end (for limits and logs).
    fn peer(&self) -> SocketAddr;
    /// Whether what is sent is confidential now (TLS, or a channel that is by nature).
    fn is_confidential(&self) -> bool;
    /// Whether [`upgrade_tls`](Self::upgrade_tls) can be asked for (STARTTLS offered).
    fn can_upgrade(&self) -> bool;
    /// Channel-binding data of the TLS layer under this stream, if any.
    fn channel_bindings(&self) -> ChannelBindings;
    /// Resolves when [`receive`](Self::receive) may have something.
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Takes what arrived, parsed into stream events.
    fn receive(&mut self, events: &mut Vec<StreamEvent>) -> Received;
    /// A new stream starts (after STARTTLS or SASL, RFC 6120 §4.3.3): anything received
    /// after the element that ended the old one is discarded and a new header is expected.
    fn restart(&mut self);
    /// Sends bytes the stream wrote; resolves when they are handed to the other end.
    fn send(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Upgrades to TLS in place (RFC 6120 §5.4.3.3), after `<proceed/>` was sent.
    fn upgrade_tls(&mut self) -> impl Future<Output = Result<(), UpgradeError>> + Send;
    /// Closes the connection after the last bytes were sent.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// Asks the other end to show it is alive below the XMPP stream (a WebSocket ping,
    /// RFC 6455 §5.5.2), when the stream has been silent for its idle time; any answer is a
    /// read. `Ok(false)`: the transport has no such check, and the stream asks in XMPP.
    fn keepalive(&mut self) -> impl Future<Output = io::Result<bool>> + Send {
        std::future::ready(Ok(false))
    }
}

/// A client connection over TCP, plain or TLS, with its stream parser.
pub struct TcpTransport {
    io: Option<Transport>,
    parser: StreamParser,
    peer: SocketAddr,
    tls: TlsContext,
    /// STARTTLS is possible (a plain connection on a STARTTLS port).
    starttls: bool,
    side: TlsSide,
    channel_bindings: ChannelBindings,
    handshake_limit: Duration,
    shutdown: CancellationToken,
    /// TLS may hold decrypted bytes the socket no longer signals (e.g. data that came with
    /// the end of the handshake, or more than one read buffer): read at once, before
    /// waiting on readiness.
    more_buffered: bool,
    /// The TLS layer asked to be polled again without a socket event.
    again: bool,
    _permit: ConnectionPermit,
}

/// How a [`TcpTransport`] starts.
pub struct TcpSetup {
    pub tls: TlsContext,
    pub parser: StreamParser,
    pub handshake_limit: Duration,
    pub shutdown: CancellationToken,
    pub permit: ConnectionPermit,
    /// Which side of the TLS handshake this transport takes.
    pub side: TlsSide,
}

impl TcpTransport {
    /// A connection on a STARTTLS port: plain until the client asks for TLS.
    pub fn plain(socket: TcpStream, peer: SocketAddr, setup: TcpSetup) -> Self {
        Self::new(Transport::Plain(socket), peer, setup, true)
    }

    /// A connection on a direct-TLS port (XEP-0368): the handshake runs first, bounded in
    /// time and abandoned at shutdown.
    pub async fn direct_tls(
        socket: TcpStream,
        peer: SocketAddr,
        setup: TcpSetup,
    ) -> Result<Self, UpgradeError> {
        // The configurations current now: a reload may replace them during the handshake,
        // and the channel-binding data must match the certificate this client was shown.
        let configs = setup.tls.current();
        let io = match &setup.side {
            TlsSide::S2sOut {
                config,
                server_name,
            } => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = handshake(
                    connector.connect(server_name.clone(), socket),
                    setup.handshake_limit,
                    &setup.shutdown,
                )
                .await
                .map_err(UpgradeError::Handshake)?;
                Transport::TlsClient(Box::new(tls))
            }
            TlsSide::S2sIn => {
                let acceptor = tokio_rustls::TlsAcceptor::from(configs.s2s_direct.clone());
                let tls = handshake(
                    acceptor.accept(socket),
                    setup.handshake_limit,
                    &setup.shutdown,
                )
                .await
                .map_err(UpgradeError::Handshake)?;
                Transport::Tls(Box::new(tls))
            }
            TlsSide::Client => {
                let (records, bindings) = handshake(
                    accept_client(socket, configs.direct.clone(), &configs),
                    setup.handshake_limit,
                    &setup.shutdown,
                )
                .await
                .map_err(UpgradeError::Handshake)?;
                let mut t = Self::new(Transport::Records(Box::new(records)), peer, setup, false);
                t.channel_bindings = bindings;
                return Ok(t);
            }
        };
        let mut t = Self::new(io, peer, setup, false);
        t.update_channel_bindings(&configs);
        Ok(t)
    }

    /// The certificate chain the other end presented in the TLS handshake, if any.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let certs = match self.io.as_ref()? {
            Transport::Plain(_) | Transport::Records(_) => return None,
            Transport::Tls(tls) => tls.get_ref().1.peer_certificates()?,
            Transport::TlsClient(tls) => tls.get_ref().1.peer_certificates()?,
        };
        Some(certs.iter().map(|c| c.clone().into_owned()).collect())
    }

    fn new(io: Transport, peer: SocketAddr, setup: TcpSetup, starttls: bool) -> Self {
        TcpTransport {
            io: Some(io),
            parser: setup.parser,
            peer,
            tls: setup.tls,
            starttls,
            side: setup.side,
            channel_bindings: ChannelBindings::default(),
            handshake_limit: setup.handshake_limit,
            shutdown: setup.shutdown,
            more_buffered: true,
            again: false,
            _permit: setup.permit,
        }
    }

    fn is_tls(&self) -> bool {
        self.io.as_ref().is_some_and(Transport::is_tls)
    }

    /// `configs`: those the handshake used (not the current ones, which a reload may have
    /// replaced since).
    fn update_channel_bindings(&mut self, configs: &TlsConfigs) {
        if let Some(Transport::Tls(tls)) = &self.io {
            self.channel_bindings = configs.channel_bindings(tls.get_ref().1);
        }
    }
}

impl StanzaTransport for TcpTransport {
    fn framing(&self) -> Framing {
        Framing::Stream
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn is_confidential(&self) -> bool {
        self.is_tls()
    }

    fn can_upgrade(&self) -> bool {
        self.starttls && !self.is_tls()
    }

    fn channel_bindings(&self) -> ChannelBindings {
        self.channel_bindings.clone()
    }

    async fn readable(&mut self) -> io::Result<()> {
        if self.again {
            // Let other tasks run before polling TLS again.
            self.again = false;
            tokio::task::yield_now().await;
            return Ok(());
        }
        if self.more_buffered {
            return Ok(());
        }
        match self.io.as_ref() {
            Some(io) => io.readable().await,
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn receive(&mut self, events: &mut Vec<StreamEvent>) -> Received {
        let Some(io) = self.io.as_mut() else {
            return Received::Closed;
        };
        let mut buf = [0u8; READ_BUFFER];
        match io.read_now(&mut buf) {
            ReadNow::Eof | ReadNow::Error(_) => Received::Closed,
            ReadNow::Wait => {
                self.more_buffered = false;
                Received::Nothing
            }
            ReadNow::Again => {
                self.more_buffered = false;
                self.again = true;
                Received::Nothing
            }
            ReadNow::Data(n) => {
                self.more_buffered = n == buf.len();
                Received::Events {
                    bytes: n,
                    parsed: self.parser.feed(&buf[..n], events),
                }
            }
        }
    }

    fn restart(&mut self) {
        self.parser.reset();
        self.more_buffered = true;
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(io) = self.io.as_mut() else {
            return Ok(());
        };
        tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client is not reading",
            ))
        })
    }

    async fn upgrade_tls(&mut self) -> Result<(), UpgradeError> {
        if !self.can_upgrade() {
            return Err(UpgradeError::Unsupported);
        }
        let Some(Transport::Plain(tcp)) = self.io.take() else {
            return Err(UpgradeError::Unsupported);
        };
        let configs = self.tls.current();
        let done = match &self.side {
            TlsSide::S2sOut {
                config,
                server_name,
            } => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                handshake(
                    connector.connect(server_name.clone(), tcp),
                    self.handshake_limit,
                    &self.shutdown,
                )
                .await
                .map(|tls| Transport::TlsClient(Box::new(tls)))
            }
            TlsSide::S2sIn => {
                let acceptor = tokio_rustls::TlsAcceptor::from(configs.s2s_starttls.clone());
                handshake(acceptor.accept(tcp), self.handshake_limit, &self.shutdown)
                    .await
                    .map(|tls| Transport::Tls(Box::new(tls)))
            }
            TlsSide::Client => handshake(
                accept_client(tcp, configs.starttls.clone(), &configs),
                self.handshake_limit,
                &self.shutdown,
            )
            .await
            .map(|(records, bindings)| {
                self.channel_bindings = bindings;
                Transport::Records(Box::new(records))
            }),
        };
        match done {
            Ok(io) => {
                self.io = Some(io);
                self.update_channel_bindings(&configs);
                Ok(())
            }
            Err(why) => {
                tracing::debug!(peer = %self.peer, why, "STARTTLS handshake did not complete");
                counters::incr(Counter::TlsHandshakeFailures);
                Err(UpgradeError::Handshake(why))
            }
        }
    }

    async fn close(&mut self) {
        if let Some(io) = self.io.as_mut() {
            let _ = io.shutdown().await;
        }
    }
}

/// A client stream's TLS handshake: rustls's, after which this server protects the records
/// itself (`crate::tls_records`, for an idle session's memory), with the channel-binding data
/// taken from the finished handshake.
async fn accept_client(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    configs: &TlsConfigs,
) -> io::Result<(TlsRecords, ChannelBindings)> {
    tls_records::accept(tcp, config, |conn| configs.channel_bindings(conn)).await
}

/// A TLS handshake bounded in time and abandoned at shutdown.
pub(crate) async fn handshake<T>(
    accept: impl Future<Output = io::Result<T>>,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Result<T, String> {
    tokio::select! {
        r = tokio::time::timeout(limit, accept) => match r {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        },
        _ = shutdown.cancelled() => Err("server shutting down".into()),
    }
}

/// The byte stream under a [`TcpTransport`].
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS where this server connected (an outgoing server-to-server stream).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A client stream's TLS: rustls's handshake, then records protected here.
    Records(Box<TlsRecords>),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            Transport::Tls(_) | Transport::TlsClient(_) | Transport::Records(_)
        )
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0,
            Transport::TlsClient(s) => s.get_ref().0,
            Transport::Records(s) => s.tcp(),
        }
    }

    /// Waits until the socket has something to read, without holding a read buffer: an
    /// idle connection then owns no buffer at all (see `read_now`).
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp().readable().await
    }

    /// Reads what can be read now into `buf` (a buffer the caller lends for this call only).
    ///
    /// TLS may hold decrypted bytes that no longer show as socket readiness, and may ask to
    /// be polled again without any socket event: `Again` says so, and the caller must call
    /// again before waiting on [`readable`](Self::readable).
    pub fn read_now(&mut self, buf: &mut [u8]) -> ReadNow {
        WOKEN.with(|w| w.set(false));
        let mut cx = Context::from_waker(flag_waker());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(self).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => ReadNow::Eof,
            Poll::Ready(Ok(())) => ReadNow::Data(rb.filled().len()),
            Poll::Ready(Err(e)) => ReadNow::Error(e),
            Poll::Pending if WOKEN.with(|w| w.get()) => ReadNow::Again,
            Poll::Pending => ReadNow::Wait,
        }
    }
}

/// The outcome of [`Transport::read_now`].
#[derive(Debug)]
pub enum ReadNow {
    Data(usize),
    Eof,
    Error(io::Error),
    /// Nothing now: wait for the socket to be readable.
    Wait,
    /// Nothing now, but the TLS layer wants to be polled again without waiting.
    Again,
}

thread_local! {
    /// Set when the waker of the current `read_now` poll is woken during the poll itself.
    static WOKEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A waker that only records, on the polling thread, that it was woken: `read_now` polls
/// once and the caller then waits on readiness with its own waker. A wake from another
/// thread is irrelevant (the caller is about to wait on readiness anyway) and ignored.
fn flag_waker() -> &'static std::task::Waker {
    struct Flag;
    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            WOKEN.with(|w| w.set(true));
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            WOKEN.with(|w| w.set(true));
        }
    }
    static WAKER: std::sync::OnceLock<std::task::Waker> = std::sync::OnceLock::new();
    WAKER.get_or_init(|| std::task::Waker::from(std::sync::Arc::new(Flag)))
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Records(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Records(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Records(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Records(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

//! A WebSocket client for tests (tokio-tungstenite, independent of the server's axum side):
//! RFC 7395 framing as text messages, plus raw HTTP requests for the listener's limits.

use crate::{Io, TestServer, DOMAIN, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

pub use tokio_tungstenite::tungstenite::Error as WsError;

/// An RFC 7395 `<open/>` for the test domain.
pub fn open_frame() -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>")
}

/// A WebSocket connection to the test server.
pub struct WsClient {
    ws: WebSocketStream<Box<dyn Io>>,
    /// Every text message received, in order.
    pub messages: Vec<String>,
    /// Channel-binding data computed on the client side of the TLS connection (wss).
    pub tls_exporter: Option<Vec<u8>>,
}

/// How to connect.
pub struct WsOptions<'a> {
    /// TLS (wss) with this client configuration, or plain (ws).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub path: &'a str,
    /// Extra request headers (`Sec-WebSocket-Protocol`, `Origin`, `X-Forwarded-For`...).
    pub headers: Vec<(&'a str, String)>,
}

impl WsOptions<'static> {
    /// wss to `/xmpp-websocket` with the `xmpp` subprotocol, trusting the test server.
    pub fn xmpp(t: &TestServer) -> Self {
        WsOptions {
            tls: Some(t.client_tls(&[&rustls::version::TLS13])),
            path: "/xmpp-websocket",
            headers: vec![("Sec-WebSocket-Protocol", "xmpp".to_owned())],
        }
    }
}

impl WsClient {
    /// The usual connection: wss, `xmpp` subprotocol; panics if refused.
    pub async fn connect(t: &TestServer) -> WsClient {
        Self::try_connect(t.https, WsOptions::xmpp(t))
            .await
            .expect("WebSocket handshake")
    }

    /// Connects with these options; the handshake's error (an HTTP refusal) is returned.
    pub async fn try_connect(addr: SocketAddr, opts: WsOptions<'_>) -> Result<WsClient, WsError> {
        let tcp = TcpStream::connect(addr).await.map_err(WsError::Io)?;
        let scheme = if opts.tls.is_some() { "wss" } else { "ws" };
        let (io, tls_exporter): (Box<dyn Io>, _) = match opts.tls {
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(config);
                let name = ServerName::try_from(DOMAIN.to_owned()).expect("name");
                let tls = connector.connect(name, tcp).await.map_err(WsError::Io)?;
                let exporter = tls
                    .get_ref()
                    .1
                    .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok();
                (Box::new(tls), exporter)
            }
            None => (Box::new(tcp), None),
        };
        let mut request =
            format!("{scheme}://{DOMAIN}:{}{}", addr.port(), opts.path).into_client_request()?;
        for (name, value) in opts.headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(&value).expect("header value"),
            );
        }
        let (ws, _response) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async_with_config(
                request,
                io,
                Some(WebSocketConfig::default()),
            ),
        )
        .await
        .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))??;
        Ok(WsClient {
            ws,
            messages: Vec::new(),
            tls_exporter,
        })
    }

    /// Sends one text message.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends any message (binary, ping...), without asserting success.
    pub async fn send_raw(&mut self, m: Message) -> Result<(), WsError> {
        self.ws.send(m).await
    }

    /// The next message that is not a ping or pong (answered by tungstenite); `None` once
    /// the connection is closed. Panics after [`TIMEOUT`].
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a message in time");
            match m {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads text messages until one contains `marker`; returns them joined.
    pub async fn read_until(&mut self, marker: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(marker) {
            match self.next_message().await {
                Some(Message::Text(t)) => {
                    self.messages.push(t.to_string());
                    seen.push_str(&t);
                }
                Some(Message::Close(_)) | None => {
                    panic!("closed while waiting for {marker:?}; got {seen:?}")
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        seen
    }

    /// Reads until the connection closes; returns the text messages received.
    pub async fn read_to_close(&mut self) -> String {
        let mut seen = String::new();
        loop {
            match self.next_message().await {
                Some(Message::Text(t)) => {
                    self.messages.push(t.to_string());
                    seen.push_str(&t);
                }
                Some(Message::Close(_)) | None => return seen,
                Some(_) => {}
            }
        }
    }

    /// Sends `<open/>`; returns what came up to the end of the features.
    pub async fn open(&mut self) -> String {
        self.send(&open_frame()).await;
        self.read_until("</stream:features>").await
    }

    /// Answers an incoming ping and waits for the next non-control message.
    pub async fn ping(&mut self, id: &str) {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let got = self.read_until(&format!("id=\"{id}\"")).await;
        assert!(got.contains("type=\"result\""), "ping {id} failed: {got}");
    }

    /// The underlying stream, for tests of WebSocket control frames.
    pub fn inner(&mut self) -> &mut WebSocketStream<Box<dyn Io>> {
        &mut self.ws
    }
}

/// What an HTTP status line said, for refusals.
pub fn http_status(e: &WsError) -> Option<u16> {
    match e {
        tungstenite::Error::Http(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

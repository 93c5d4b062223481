//! XMPP over WebSocket (RFC 7395): the upgrade handler and the transport a client stream
//! runs over.
//!
//! A WebSocket session is an ordinary client stream: [`WebSocketTransport`] implements
//! [`StanzaTransport`] and [`crate::c2s::run`] drives it, so SASL, SASL2/FAST, Bind 2,
//! stream management (a session resumes on any transport), CSI and every module behave as
//! on TCP. What differs is the transport's business: the framing
//! ([`Framing::WebSocket`]: `<open/>`, `<close/>`, one element per message), no STARTTLS
//! (TLS is the `wss` connection's), and WebSocket pings for the idle check.
//!
//! WebSocket framing is axum's `ws` (tokio-tungstenite underneath): the maintained
//! implementation the HTTP router already comes with, so the upgrade, masking, control
//! frames, fragmentation and size limits are not ours to get wrong.

use super::{refuse, Connection, HttpContext};
use crate::c2s;
use crate::limits::ConnectionPermit;
use crate::transport::{Received, StanzaTransport, UpgradeError};
use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket, WebSocketUpgrade,
};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use rookery_sasl::ChannelBindings;
use rookery_xml::{websocket_messages, Framing, MessageParser, StreamEvent, XmlError};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// Where the endpoint is, under `[http] path_prefix` (the path Prosody, ejabberd and
/// Openfire use, which clients try first).
pub const PATH: &str = "/xmpp-websocket";
/// The WebSocket subprotocol of XMPP (RFC 7395 §3.2).
pub const SUBPROTOCOL: &str = "xmpp";

/// A client that accepts none of our bytes for this long is gone or hostile (as on TCP).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// tungstenite reads into a buffer of this size (its default, 128 KiB, would be kept by
/// every idle session); messages larger than it are assembled as they come.
const READ_BUFFER: usize = 4096;
/// Bytes written before tungstenite writes to the socket on its own; a batch is flushed
/// at its end anyway.
const WRITE_BUFFER: usize = 8192;

/// `GET <prefix>/xmpp-websocket`: checks the request, then upgrades it to a WebSocket and
/// runs a client stream over it.
pub async fn upgrade(
    State(ctx): State<Arc<HttpContext>>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            rookery_core::counters::incr(rookery_core::counters::Counter::HttpRefused);
            return rejection.into_response();
        }
    };
    // RFC 7395 §3.2: the client offers `xmpp`; a WebSocket without it would not be an XMPP
    // stream, so the handshake is refused rather than answered without a subprotocol.
    let offers_xmpp = ws
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_xmpp {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the xmpp WebSocket subprotocol is required (RFC 7395)",
        );
    }
    // RFC 6455 §10.2: a browser says which page opened the WebSocket; when the operator
    // restricted origins, others are refused. Clients that are not browsers send none, and
    // cannot be made to act for a user by someone else's page.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| ctx.config.origin_allowed(o));
        if !ok {
            return refuse(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    let client = ctx.client(&conn, &headers);
    let server = &ctx.streams.server;
    // As on a STARTTLS port that requires TLS: no stream (and no authentication) in the
    // clear. A WebSocket is confidential over wss, or behind a trusted proxy that
    // terminated TLS and says so.
    if !client.secure && server.config().tls.require_starttls {
        return refuse(
            StatusCode::FORBIDDEN,
            "XMPP over WebSocket needs TLS here: use wss",
        );
    }
    let Some(permit) = ctx.permit(&conn, &client) else {
        tracing::warn!(peer = %client.addr, "WebSocket refused: connection limit reached");
        rookery_core::counters::incr(rookery_core::counters::Counter::ConnectionsRefused);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let limits = &server.config().limits;
    let max = limits.max_stanza_bytes;
    let parser = MessageParser::new(limits.xml());
    let streams = ctx.streams.clone();
    // Over wss the stream binds to this TLS connection; behind a proxy, to none we know.
    let channel_bindings = if conn.tls {
        conn.channel_bindings.clone()
    } else {
        ChannelBindings::none()
    };
    tracing::debug!(peer = %client.addr, proxied = client.proxied, "WebSocket upgrade");
    ws.protocols([SUBPROTOCOL])
        // One message is one stanza (RFC 7395 §3.3.3): the stanza limit bounds both, and a
        // larger one is refused while it arrives, before it is buffered whole.
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let transport = WebSocketTransport {
                socket,
                parser,
                peer: client.addr,
                confidential: client.secure,
                channel_bindings,
                incoming: None,
                close_code: CLOSE_NORMAL,
                _permit: permit,
            };
            // Tracked like every connection task, so a graceful stop waits for it.
            let tasks = streams.server.tasks().clone();
            tasks.track_future(c2s::run(streams, transport))
        })
}

/// What [`StanzaTransport::readable`] took from the WebSocket for `receive`.
enum Incoming {
    Message(Message),
    /// A message over the size limit, refused as it arrived.
    TooLarge,
    Closed,
}

/// RFC 6455 §7.4.1 close codes.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_TOO_BIG: u16 = 1009;

/// A client stream over a WebSocket.
pub struct WebSocketTransport {
    socket: WebSocket,
    parser: MessageParser,
    /// The client's address (through a trusted proxy: the one it gave).
    peer: SocketAddr,
    confidential: bool,
    channel_bindings: ChannelBindings,
    incoming: Option<Incoming>,
    /// The code of the close frame we send (RFC 6455 §7.4.1).
    close_code: u16,
    /// The connection's slot in the connection limits, shared with the HTTP connection.
    _permit: Arc<ConnectionPermit>,
}

impl StanzaTransport for WebSocketTransport {
    fn framing(&self) -> Framing {
        Framing::WebSocket
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn is_confidential(&self) -> bool {
        self.confidential
    }

    /// TLS is the WebSocket connection's (`wss`); there is no STARTTLS (RFC 7395 §3.9).
    fn can_upgrade(&self) -> bool {
        false
    }

    fn channel_bindings(&self) -> ChannelBindings {
        self.channel_bindings.clone()
    }

    async fn readable(&mut self) -> io::Result<()> {
        if self.incoming.is_none() {
            // Cancel-safe: tungstenite keeps a partly received message in its own buffer.
            // Reading also sends the answers to pings and to a close (RFC 6455 §5.5).
            self.incoming = Some(match self.socket.next().await {
                Some(Ok(m)) => Incoming::Message(m),
                Some(Err(e)) => match e.into_inner().downcast::<tungstenite::Error>() {
                    Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => Incoming::TooLarge,
                    _ => Incoming::Closed,
                },
                None => Incoming::Closed,
            });
        }
        Ok(())
    }

    fn receive(&mut self, events: &mut Vec<StreamEvent>) -> Received {
        match self.incoming.take() {
            None => Received::Nothing,
            Some(Incoming::Closed) | Some(Incoming::Message(Message::Close(_))) => Received::Closed,
            // Like a stanza over the limit on TCP: `policy-violation`, then a close frame
            // saying why.
            Some(Incoming::TooLarge) => {
                self.close_code = CLOSE_TOO_BIG;
                Received::Events {
                    bytes: 0,
                    parsed: Err(XmlError::StanzaTooLarge),
                }
            }
            Some(Incoming::Message(Message::Text(text))) => Received::Events {
                bytes: text.len(),
                parsed: self.parser.feed_message(text.as_bytes(), events),
            },
            Some(Incoming::Message(Message::Binary(data))) => Received::Events {
                bytes: data.len(),
                parsed: Err(XmlError::NotWellFormed(
                    "a binary WebSocket message: XMPP is sent in text messages (RFC 7395 §3.2)"
                        .to_owned(),
                )),
            },
            // A ping (answered by tungstenite) or the answer to ours: the client is there.
            Some(Incoming::Message(Message::Ping(d) | Message::Pong(d))) => Received::Events {
                bytes: d.len(),
                parsed: Ok(()),
            },
        }
    }

    fn restart(&mut self) {
        // RFC 7395 §3.7: after SASL the client sends a new <open/>.
        self.parser.reset();
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let socket = &mut self.socket;
        let write = async {
            for message in websocket_messages(bytes) {
                let text = std::str::from_utf8(message)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                socket
                    .feed(Message::Text(text.to_owned().into()))
                    .await
                    .map_err(io::Error::other)?;
            }
            socket.flush().await.map_err(io::Error::other)
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client is not reading",
                ))
            })
    }

    async fn upgrade_tls(&mut self) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unsupported)
    }

    /// RFC 7395 §3.6: after our `<close/>`, the WebSocket closing handshake (RFC 6455
    /// §7.1.2), waiting for the client's close frame (the caller bounds the wait).
    async fn close(&mut self) {
        let frame = CloseFrame {
            code: self.close_code,
            reason: "".into(),
        };
        if self.socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = self.socket.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    }

    /// RFC 7395 §3.8 leaves keepalives to WebSocket: a ping, whose pong counts as a read.
    async fn keepalive(&mut self) -> io::Result<bool> {
        self.socket
            .send(Message::Ping(Default::default()))
            .await
            .map_err(io::Error::other)?;
        Ok(true)
    }
}

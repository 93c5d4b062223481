//! A server-to-server stream's connection: the client streams' TCP transport (its parser,
//! limits and TLS) with what both directions of negotiation need on top — the next stream
//! event within a deadline, and writing headers, elements and stream errors.

use crate::limits::TokenBucket;
use crate::transport::{Received, StanzaTransport, TcpTransport, UpgradeError};
use rookery_stanza::{ns, StreamErrorCondition};
use rookery_xml::{Element, Framing, StreamEvent, StreamOpen, XmlError};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

use super::dialback;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("malformed stream: {0}")]
    Xml(#[from] XmlError),
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] UpgradeError),
}

pub struct Wire {
    pub transport: TcpTransport,
    events: VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
    /// A parse error comes after the events before it.
    failed: Option<XmlError>,
    /// Bytes received in total (for the idle check: any input counts).
    pub received: u64,
    /// The stream carries stanzas both ways (XEP-0288), as the initiating side asked.
    pub bidi: bool,
    /// The peer's input rate (`[s2s] max_bytes_per_second`); over it, reading pauses, so
    /// TCP pushes back on the peer.
    rate: Option<TokenBucket>,
    /// Reading is paused until then (kept here: `next` may be cancelled while it waits).
    paused_until: Option<Instant>,
}

impl Wire {
    pub fn new(transport: TcpTransport) -> Wire {
        Wire {
            transport,
            events: VecDeque::new(),
            scratch: Vec::new(),
            failed: None,
            received: 0,
            bidi: false,
            rate: None,
            paused_until: None,
        }
    }

    /// Limits the bytes read per second (0: no limit), with a burst of two seconds' worth.
    pub fn limit_input(&mut self, bytes_per_second: u64) {
        self.rate = (bytes_per_second > 0)
            .then(|| TokenBucket::new(bytes_per_second, bytes_per_second.saturating_mul(2)));
    }

    /// The next stream event, waiting until `deadline` at most.
    pub async fn next_by(&mut self, deadline: Instant) -> Result<StreamEvent, WireError> {
        match tokio::time::timeout_at(deadline, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout),
        }
    }

    /// The next stream event.
    pub async fn next(&mut self) -> Result<StreamEvent, WireError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if let Some(e) = self.failed.take() {
                return Err(WireError::Xml(e));
            }
            if let Some(until) = self.paused_until {
                tokio::time::sleep_until(until).await;
                self.paused_until = None;
            }
            self.transport.readable().await?;
            match self.transport.receive(&mut self.scratch) {
                Received::Closed => return Err(WireError::Closed),
                Received::Nothing => {}
                Received::Events { bytes, parsed } => {
                    self.received += bytes as u64;
                    if let Some(rate) = self.rate.as_mut() {
                        let now = Instant::now();
                        let wait = rate.charge(bytes as u64, now.into_std());
                        if !wait.is_zero() {
                            self.paused_until = Some(now + wait);
                        }
                    }
                    self.events.extend(self.scratch.drain(..));
                    if let Err(e) = parsed {
                        self.failed = Some(e);
                    }
                }
            }
        }
    }

    /// Starts a new stream on the same connection (after TLS or SASL): what was received
    /// after the element that ended the old one is discarded.
    pub fn restart(&mut self) {
        self.events.clear();
        self.failed = None;
        self.transport.restart();
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        Ok(self.transport.send(bytes).await?)
    }

    pub async fn send_element(&mut self, el: &Element) -> Result<(), WireError> {
        let mut out = Vec::with_capacity(256);
        el.write_to(&mut out, ns::SERVER);
        self.send(&out).await
    }

    /// Writes `<stream:features>` with these features.
    pub async fn send_features(&mut self, features: &[Element]) -> Result<(), WireError> {
        let mut out = Vec::with_capacity(256);
        Framing::Stream.write_features(&mut out, ns::SERVER, features);
        self.send(&out).await
    }

    /// Writes a `jabber:server` stream header declaring the dialback prefix.
    pub async fn send_header(
        &mut self,
        id: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<(), WireError> {
        let mut out = Vec::with_capacity(256);
        Framing::Stream.write_open_declaring(
            &mut out,
            &StreamOpen {
                content_ns: ns::SERVER,
                id,
                from,
                to,
                version: "1.0",
                lang: "en",
            },
            &[("db", dialback::NS)],
        );
        self.send(&out).await
    }

    /// Sends a stream error and closes the stream and the connection.
    pub async fn fail(&mut self, condition: StreamErrorCondition, text: Option<&str>) {
        let mut out = Vec::with_capacity(256);
        Framing::Stream.write_error(&mut out, &condition.to_element(text));
        Framing::Stream.write_close(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.transport.send(&out)).await;
        self.transport.close().await;
    }

    /// Closes the stream in order (RFC 6120 §4.4) and the connection.
    pub async fn close(&mut self) {
        let mut out = Vec::new();
        Framing::Stream.write_close(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.transport.send(&out)).await;
        self.transport.close().await;
    }
}

/// The stream error condition a parse error stands for.
pub fn xml_condition(e: &XmlError) -> StreamErrorCondition {
    StreamErrorCondition::from_name(e.stream_condition())
        .unwrap_or(StreamErrorCondition::NotWellFormed)
}

/// A random stream id.
pub fn stream_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
        .collect()
}

//! A BOSH client for tests (XEP-0124, XEP-0206): raw HTTP/1.1 requests over TLS, one
//! connection per request (as a browser's parallel requests may be), `<body/>` wrappers
//! written by hand, so tests see exactly what goes over the wire.

use crate::{TestServer, DOMAIN, TIMEOUT};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";

/// Where to send requests: cheap to clone, so requests can run concurrently.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub path: String,
}

/// An HTTP response: status, headers (lowercase names) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Endpoint {
    /// `https://localhost/http-bind` of the test server.
    pub fn of(t: &TestServer) -> Endpoint {
        Endpoint {
            addr: t.https,
            tls: t.client_tls(&[&rustls::version::TLS13]),
            path: "/http-bind".to_owned(),
        }
    }

    /// POSTs `body` and returns the response.
    pub async fn post(&self, body: &str) -> HttpResponse {
        self.raw(&format!(
            "POST {} HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: text/xml; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            body.len()
        ))
        .await
    }

    /// Sends a raw HTTP request and reads the whole response.
    pub async fn raw(&self, request: &str) -> HttpResponse {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = ServerName::try_from(DOMAIN.to_owned()).expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        // A held request may take up to its wait: longer than the usual test timeout.
        tokio::time::timeout(TIMEOUT * 7, tls.read_to_end(&mut out))
            .await
            .expect("response in time")
            .expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        HttpResponse {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }
}

/// One BOSH session, its requests sent one after another.
pub struct BoshClient {
    pub endpoint: Endpoint,
    pub sid: String,
    /// The rid of the last request sent.
    pub rid: u64,
    /// Every response body received, in order.
    pub bodies: Vec<String>,
}

impl BoshClient {
    /// Creates a session (`extra`: attributes such as `hold='1' ack='1'`); returns the
    /// client and the session creation response.
    pub async fn create(endpoint: Endpoint, extra: &str) -> (BoshClient, HttpResponse) {
        let rid = 1_000_000 + u64::from(rand::random::<u16>());
        let r = endpoint.post(&creation_body(rid, extra)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let sid = attr(&r.body, "sid").unwrap_or_default();
        let client = BoshClient {
            endpoint,
            sid,
            rid,
            bodies: vec![r.body.clone()],
        };
        (client, r)
    }

    /// A session with the usual terms (`wait='5' hold='1'`), checked; returns the features.
    pub async fn connect(t: &TestServer) -> (BoshClient, String) {
        let (c, r) = Self::create(Endpoint::of(t), "wait='5' hold='1'").await;
        assert!(!c.sid.is_empty(), "{r:?}");
        (c, r.body)
    }

    /// The next request's body with these attributes and payloads.
    pub fn next_body(&mut self, attrs: &str, payload: &str) -> String {
        self.rid += 1;
        body(self.rid, &self.sid, attrs, payload)
    }

    /// Sends the next request and returns its response body.
    pub async fn request(&mut self, attrs: &str, payload: &str) -> String {
        let b = self.next_body(attrs, payload);
        let r = self.endpoint.post(&b).await;
        assert_eq!(r.status, 200, "{r:?}");
        self.bodies.push(r.body.clone());
        r.body
    }

    /// Sends payloads; returns the response.
    pub async fn send(&mut self, payload: &str) -> String {
        self.request("", payload).await
    }

    /// Polls until `marker` appears in what came since the call began; returns all of it.
    pub async fn read_until(&mut self, marker: &str) -> String {
        self.read_until_after(String::new(), marker).await
    }

    /// As [`read_until`](Self::read_until), counting `seen` (a response already received).
    pub async fn read_until_after(&mut self, mut seen: String, marker: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT * 3;
        while !seen.contains(marker) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {marker:?}; got {seen:?}"
            );
            let got = self.request("", "").await;
            assert!(
                !got.contains("type='terminate'") && !got.contains("type=\"terminate\""),
                "session ended while waiting for {marker:?}: {got}"
            );
            seen.push_str(&got);
        }
        seen
    }

    /// The stream restart after SASL success (XEP-0206 §5); returns the new features.
    pub async fn restart(&mut self) -> String {
        let got = self
            .request(
                &format!(
                    "to='{DOMAIN}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'"
                ),
                "",
            )
            .await;
        self.read_until_after(got, "</stream:features>").await
    }
}

/// A session creation request (XEP-0124 §7.1, XEP-0206 §3).
pub fn creation_body(rid: u64, extra: &str) -> String {
    format!(
        "<body content='text/xml; charset=utf-8' rid='{rid}' to='{DOMAIN}' ver='1.6' \
         xml:lang='en' xmpp:version='1.0' {extra} xmlns='{NS_HTTPBIND}' \
         xmlns:xmpp='urn:xmpp:xbosh'/>"
    )
}

/// A request body for session `sid`.
pub fn body(rid: u64, sid: &str, attrs: &str, payload: &str) -> String {
    if payload.is_empty() {
        format!("<body rid='{rid}' sid='{sid}' {attrs} xmlns='{NS_HTTPBIND}'/>")
    } else {
        format!("<body rid='{rid}' sid='{sid}' {attrs} xmlns='{NS_HTTPBIND}'>{payload}</body>")
    }
}

/// The value of the first attribute `name` in `text` (either quote).
pub fn attr(text: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = text.find(&pat) {
            let rest = &text[i + pat.len()..];
            return rest.find(q).map(|j| rest[..j].to_owned());
        }
    }
    None
}

/// The `condition` of a terminate body, `Some("")` for one without, `None` if not one.
pub fn terminate_condition(body: &str) -> Option<String> {
    let head = body.split('>').next().unwrap_or("");
    (attr(head, "type").as_deref() == Some("terminate"))
        .then(|| attr(head, "condition").unwrap_or_default())
}

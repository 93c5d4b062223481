//! HTTP handlers of modules: the seam through which a module serves paths of the server's
//! HTTP listeners without knowing the HTTP library that runs them.
//!
//! A module registers an [`HttpHandler`] under a path with
//! [`HostBuilder::http_handler`](crate::HostBuilder::http_handler); `net::http` mounts
//! every registered handler under `[http] path_prefix` and turns each request below the
//! mount into an [`HttpRequest`]. The types are the `http` crate's (`Request`,
//! `Response`, headers, status codes), which every Rust HTTP stack shares; what the core
//! adds is the body on both sides, as chunks:
//!
//! * [`RequestBody`]: the request's body read one chunk at a time as it arrives, so a
//!   handler can write a large upload to disk without holding it in memory;
//! * [`ResponseBody`]: empty, bytes in memory, or chunks produced on demand (a file read
//!   piece by piece).
//!
//! The transport enforces what it enforces for every connection (connection limits, the
//! header time limit, a stalled body cut after its idle limit); size limits are the
//! handler's, since only it knows what it expects (an upload slot's announced size).

use async_trait::async_trait;
use std::net::SocketAddr;

pub use bytes::Bytes;
pub use http;

/// Why reading a request body failed: the connection broke, stalled past the transport's
/// limit, or sent something malformed. The handler answers nothing more useful than
/// dropping what it read.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct BodyError(pub String);

/// A source of body chunks: implemented by the transport for request bodies and by
/// handlers for streamed responses.
#[async_trait]
pub trait Chunks: Send + 'static {
    /// The next chunk, `None` at the end of the body.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError>;
}

/// A request's body, read chunk by chunk as it arrives.
pub struct RequestBody(Box<dyn Chunks>);

impl RequestBody {
    pub fn new(chunks: impl Chunks) -> Self {
        RequestBody(Box::new(chunks))
    }
    /// A body with no bytes.
    pub fn empty() -> Self {
        RequestBody::new(Once(None))
    }
    /// A body of these bytes (tests, small bodies).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        RequestBody::new(Once(Some(bytes.into())))
    }
    /// The next chunk, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        self.0.next_chunk().await
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

struct Once(Option<Bytes>);

#[async_trait]
impl Chunks for Once {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

/// A response's body.
pub enum ResponseBody {
    Empty,
    Bytes(Bytes),
    /// Produced on demand while the response is written; a failure mid-way aborts the
    /// connection (the status line is already out).
    Stream(Box<dyn Chunks>),
}

impl ResponseBody {
    pub fn stream(chunks: impl Chunks) -> Self {
        ResponseBody::Stream(Box::new(chunks))
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Empty => f.write_str("Empty"),
            ResponseBody::Bytes(b) => write!(f, "Bytes({})", b.len()),
            ResponseBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Who sent a request, as the transport established it (after a trusted proxy's
/// forwarding headers): a request extension of every [`HttpRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClient {
    pub addr: SocketAddr,
    /// The client reached the server over TLS (here or at a trusted proxy).
    pub secure: bool,
}

/// The path of a request below the handler's mount point (`/abc/file.png` for
/// `/upload/example.org/abc/file.png` mounted at `/upload/example.org`), exactly as the
/// client sent it (still percent-encoded): a request extension of every [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPath(pub String);

pub type HttpRequest = http::Request<RequestBody>;
pub type HttpResponse = http::Response<ResponseBody>;

/// A module's handler of the requests below its mount point.
#[async_trait]
pub trait HttpHandler: Send + Sync + 'static {
    /// Answers one request (any method: the handler refuses what it does not serve). The
    /// request carries [`HttpClient`] and [`SubPath`] as extensions.
    async fn handle(&self, request: HttpRequest) -> HttpResponse;
}

/// A handler and where it is mounted, relative to `[http] path_prefix`.
#[derive(Clone)]
pub struct HttpMount {
    /// `/upload/upload.example.org`: starts with `/`, no trailing `/`.
    pub path: String,
    pub module: &'static str,
    pub handler: std::sync::Arc<dyn HttpHandler>,
}

/// Where the server's HTTP listeners are reached, as the transport knows it once they are
/// bound: for modules that hand out URLs over XMPP (upload slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// The configured public root (`https://chat.example.org`), if any.
    pub public_url: Option<String>,
    /// Otherwise the scheme and port of a listener (HTTPS preferred), with the host's
    /// domain as the host name.
    pub listener: Option<(&'static str, u16)>,
    /// `[http] path_prefix`.
    pub prefix: String,
}

impl HttpEndpoint {
    /// The URL of mount point `path` for a virtual host, or `None` when nothing serves
    /// HTTP.
    pub fn url(&self, host: &str, path: &str) -> Option<String> {
        let root = match (&self.public_url, self.listener) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Some((scheme, port))) => format!("{scheme}://{host}:{port}"),
            (None, None) => return None,
        };
        Some(format!("{root}{}{path}", self.prefix))
    }
}

/// Whether `path` may be a mount point: `/` then non-empty segments of unreserved
/// characters, no `.` or `..` segment, no trailing `/`.
pub fn valid_mount(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_plain_paths() {
        for ok in ["/upload", "/upload/upload.example.org", "/a-b/c_d~"] {
            assert!(valid_mount(ok), "{ok}");
        }
        for bad in [
            "", "/", "upload", "/upload/", "//x", "/a/../b", "/a/./b", "/a b", "/a%2F", "/{x}",
        ] {
            assert!(!valid_mount(bad), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls() {
        let mut e = HttpEndpoint {
            public_url: None,
            listener: Some(("https", 5443)),
            prefix: "/x".into(),
        };
        assert_eq!(
            e.url("example.org", "/upload/u").as_deref(),
            Some("https://example.org:5443/x/upload/u")
        );
        e.public_url = Some("https://chat.example.org/".into());
        assert_eq!(
            e.url("example.org", "/upload/u").as_deref(),
            Some("https://chat.example.org/x/upload/u")
        );
        e.public_url = None;
        e.listener = None;
        assert_eq!(e.url("example.org", "/u"), None);
    }

    #[tokio::test]
    async fn bodies_yield_their_chunks() {
        let mut b = RequestBody::from_bytes("abc");
        assert_eq!(
            b.chunk().await.expect("chunk").as_deref(),
            Some(&b"abc"[..])
        );
        assert!(b.chunk().await.expect("end").is_none());
        assert!(RequestBody::empty().chunk().await.expect("end").is_none());
    }
}

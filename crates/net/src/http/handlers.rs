//! Modules' HTTP handlers ([`rookery_core::http`]) mounted in the route table: each at
//! `<path_prefix><mount>/...`, any method, with the request body handed over chunk by chunk
//! as it arrives and the response body streamed out the same way.
//!
//! These routes are merged beside the XMPP endpoints, not behind their guard: an upload's
//! body is far larger than `[http] max_request_bytes` and takes longer than
//! `request_timeout_secs`, so the handler bounds the size it accepts, and here a body that
//! stalls for `request_timeout_secs` between two chunks is cut (a client holding a
//! connection open by trickling nothing). The connection limits and the header time limit
//! apply as to every connection.

use super::{Connection, HttpContext, HttpRouter};
use async_trait::async_trait;
use axum::body::{Body, BodyDataStream};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::{Extension, Router};
use futures_util::StreamExt as _;
use rookery_core::http::{
    BodyError, Bytes, Chunks, HttpClient, HttpHandler, RequestBody, ResponseBody, SubPath,
};
use std::sync::Arc;
use std::time::Duration;

/// The routes of the mounted handlers, paths under `prefix`: the router's fallback, which
/// looks the request's handler up in the server's list of the moment, since a reload that
/// adds a host may add handlers ([`rookery_core::Server::http_handlers`]). A handler at
/// `/upload/example.org` answers `<prefix>/upload/example.org/...`; any other path not
/// routed is `404 Not Found`.
pub(crate) fn router(prefix: &str) -> HttpRouter {
    let prefix: Arc<str> = prefix.into();
    Router::new().fallback(
        move |State(ctx): State<Arc<HttpContext>>,
              Extension(conn): Extension<Connection>,
              req: Request| {
            let prefix = prefix.clone();
            async move {
                let mounts = ctx.streams.server.http_handlers();
                let found = req.uri().path().strip_prefix(&*prefix).and_then(|rest| {
                    mounts.iter().find(|m| {
                        rest.strip_prefix(m.path.as_str())
                            .is_some_and(|sub| sub.starts_with('/'))
                    })
                });
                match found {
                    Some(mount) => {
                        let base = format!("{prefix}{}", mount.path);
                        call(&*mount.handler, &base, &ctx, &conn, req).await
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        },
    )
}

async fn call(
    handler: &dyn HttpHandler,
    base: &str,
    ctx: &HttpContext,
    conn: &Connection,
    req: Request,
) -> Response {
    let client = ctx.client(conn, req.headers());
    let sub = req
        .uri()
        .path()
        .strip_prefix(base)
        .unwrap_or_default()
        .to_owned();
    let idle = Duration::from_secs(ctx.config.request_timeout_secs);
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(HttpClient {
        addr: client.addr,
        secure: client.secure,
    });
    parts.extensions.insert(SubPath(sub));
    let body = RequestBody::new(Incoming {
        stream: body.into_data_stream(),
        idle,
    });
    let response = handler
        .handle(rookery_core::http::http::Request::from_parts(parts, body))
        .await;
    let (parts, body) = response.into_parts();
    let body = match body {
        ResponseBody::Empty => Body::empty(),
        ResponseBody::Bytes(b) => Body::from(b),
        ResponseBody::Stream(chunks) => Body::from_stream(futures_util::stream::unfold(
            Some(chunks),
            |chunks| async move {
                let mut chunks = chunks?;
                match chunks.next_chunk().await {
                    Ok(Some(b)) => Some((Ok::<Bytes, BodyError>(b), Some(chunks))),
                    Ok(None) => None,
                    // The status line is out: the error aborts the connection, and the
                    // stream ends after it.
                    Err(e) => Some((Err(e), None)),
                }
            },
        )),
    };
    Response::from_parts(parts, body)
}

/// A request body as chunks, each awaited at most `idle`.
struct Incoming {
    stream: BodyDataStream,
    idle: Duration,
}

#[async_trait]
impl Chunks for Incoming {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match tokio::time::timeout(self.idle, self.stream.next()).await {
            Err(_) => Err(BodyError("no data within the request time limit".into())),
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(BodyError(e.to_string())),
        }
    }
}

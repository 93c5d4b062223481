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
use axum::response::Response;
use axum::routing::any;
use axum::{Extension, Router};
use futures_util::StreamExt as _;
use rookery_core::http::{
    BodyError, Bytes, Chunks, HttpClient, HttpHandler, HttpMount, RequestBody, ResponseBody,
    SubPath,
};
use std::sync::Arc;
use std::time::Duration;

/// The routes of every mounted handler, paths under `prefix`.
pub(crate) fn router(prefix: &str, mounts: &[HttpMount]) -> HttpRouter {
    let mut router = Router::new();
    for mount in mounts {
        let base = format!("{prefix}{}", mount.path);
        let handler = mount.handler.clone();
        let at = base.clone();
        router = router.route(
            &format!("{base}/{{*rest}}"),
            any(
                move |State(ctx): State<Arc<HttpContext>>,
                      Extension(conn): Extension<Connection>,
                      req: Request| {
                    let handler = handler.clone();
                    let at = at.clone();
                    async move { call(&*handler, &at, &ctx, &conn, req).await }
                },
            ),
        );
    }
    router
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

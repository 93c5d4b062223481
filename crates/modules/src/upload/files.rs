//! The HTTP side of uploads, mounted at `<path_prefix>/upload/<service domain>`:
//!
//! * `PUT /<id>/<name>?v=<expiry>&s=<signature>`: the slot's record must exist, the
//!   signature match the record's path, size and content type and the expiry, and the
//!   URL not be expired (403 otherwise); `Content-Length` must be the slot's size (413 if
//!   larger, 400 if smaller or missing); a slot takes one upload (409 for a second, also
//!   while the first is still running). The body goes to `tmp/<id>` as it arrives, and
//!   only once it is complete and synced is it linked to `files/<id>`: a partial upload is
//!   never served, and a broken one leaves nothing (the temporary file is removed however
//!   the request ends, a dropped connection included).
//! * `GET` and `HEAD /<id>/<name>`: the file with its recorded content type, and headers
//!   that keep a browser from running what a user uploaded (`nosniff`, a sandboxing
//!   `Content-Security-Policy`, `Content-Disposition: attachment` for anything but
//!   images, audio and video), with CORS for web clients.
//!
//! Paths are matched exactly against the record (`/<id>/<encoded name>`): `..`, encoded
//! slashes or any other spelling is not found, and the name on disk is the id alone.

use super::{slot, Inner};
use async_trait::async_trait;
use rookery_core::http::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use rookery_core::http::{
    BodyError, Bytes, Chunks, HttpHandler, HttpRequest, HttpResponse, ResponseBody, SubPath,
};
use rookery_storage::{Storage, StorageError, UploadRecord};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Size of the chunks a file is served in.
const READ_CHUNK: usize = 64 * 1024;

/// What browsers may do with a served file: nothing but show it (no script, no plugin,
/// not even in a frame of another site).
const CSP: &str = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'";

/// The module's HTTP handler.
pub struct Files(pub Arc<Inner>);

fn files_dir(dir: &Path) -> PathBuf {
    dir.join("files")
}
fn tmp_dir(dir: &Path) -> PathBuf {
    dir.join("tmp")
}

fn respond(status: StatusCode, why: &'static str) -> HttpResponse {
    let mut r = Response::new(ResponseBody::Bytes(Bytes::from_static(why.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cors(r.headers_mut());
    r
}

/// Web clients fetch and upload from their own origin (XEP-0363 §"Implementation
/// Notes"); the URLs themselves are the capability, so any origin may use them.
fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

#[async_trait]
impl HttpHandler for Files {
    async fn handle(&self, request: HttpRequest) -> HttpResponse {
        let sub = request
            .extensions()
            .get::<SubPath>()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        // `/<id>/<name>`, nothing more.
        let mut parts = sub.strip_prefix('/').unwrap_or_default().splitn(3, '/');
        let (Some(id), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return respond(StatusCode::NOT_FOUND, "not found");
        };
        if !slot::valid_id(id) || name.is_empty() {
            return respond(StatusCode::NOT_FOUND, "not found");
        }
        let (id, name) = (id.to_owned(), name.to_owned());
        match *request.method() {
            Method::OPTIONS => preflight(),
            Method::GET | Method::HEAD => {
                let head = request.method() == Method::HEAD;
                self.0.get(&id, &name, head).await
            }
            Method::PUT => self.0.put(&id, &name, request).await,
            _ => {
                let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
                );
                r
            }
        }
    }
}

/// A CORS preflight (Fetch standard §3.2.2) for a PUT with its content type, or a GET.
fn preflight() -> HttpResponse {
    let mut r = Response::new(ResponseBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    r
}

/// The query's `v` (expiry) and `s` (signature).
fn signed_query(query: Option<&str>) -> Option<(i64, String)> {
    let mut v = None;
    let mut s = None;
    for pair in query?.split('&') {
        match pair.split_once('=') {
            Some(("v", x)) => v = x.parse::<i64>().ok(),
            Some(("s", x)) => s = Some(x.to_owned()),
            _ => {}
        }
    }
    Some((v?, s?))
}

/// Removes a temporary file when the upload does not complete, however the request ends
/// (an error, or the connection dropped and the handler with it).
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Inner {
    /// The record of `/<id>/<name>` if the name is the record's and the slot belongs to
    /// this host's service.
    async fn record(&self, id: &str, name: &str) -> Result<Option<UploadRecord>, StorageError> {
        Ok(self
            .storage
            .upload
            .get_upload(id)
            .await?
            .filter(|r| r.domain == self.host && slot::encode_segment(&r.file_name) == name))
    }

    async fn put(&self, id: &str, name: &str, request: HttpRequest) -> HttpResponse {
        let record = match self.record(id, name).await {
            Ok(Some(r)) => r,
            Ok(None) => return respond(StatusCode::FORBIDDEN, "no such upload slot"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an upload record");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
            }
        };
        let Some((expires, sig)) = signed_query(request.uri().query()) else {
            return respond(StatusCode::FORBIDDEN, "unsigned upload URL");
        };
        let path = slot::file_path(&record.id, &record.file_name);
        if !slot::verify(
            &self.secret,
            &path,
            record.size,
            &record.content_type,
            expires,
            &sig,
        ) {
            return respond(StatusCode::FORBIDDEN, "bad signature");
        }
        if super::now_unix() > expires {
            return respond(StatusCode::FORBIDDEN, "upload URL expired");
        }
        let final_path = files_dir(&self.dir).join(&record.id);
        if tokio::fs::try_exists(&final_path).await.unwrap_or(true) {
            return respond(StatusCode::CONFLICT, "already uploaded");
        }
        let length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            Some(n) if n > record.size => {
                return respond(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot")
            }
            Some(n) if n == record.size => {}
            _ => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "Content-Length must be the slot's size",
                )
            }
        }
        let tmp = tmp_dir(&self.dir);
        if let Err(e) = tokio::fs::create_dir_all(&tmp).await {
            tracing::warn!(error = %e, "cannot create the upload directory");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
        // create_new: a second PUT while the first is running finds the file and stops.
        let tmp_path = tmp.join(&record.id);
        let mut file = match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .await
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return respond(StatusCode::CONFLICT, "an upload to this slot is running")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create an upload file");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
            }
        };
        let guard = TempFile {
            path: tmp_path,
            keep: false,
        };
        let mut body = request.into_body();
        let mut written: u64 = 0;
        loop {
            let chunk = match body.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, id = %record.id, "upload body broken");
                    return respond(StatusCode::BAD_REQUEST, "incomplete body");
                }
            };
            written = written.saturating_add(chunk.len() as u64);
            if written > record.size {
                return respond(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot");
            }
            if let Err(e) = file.write_all(&chunk).await {
                tracing::warn!(error = %e, "cannot write an upload");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
            }
        }
        if written != record.size {
            return respond(StatusCode::BAD_REQUEST, "shorter than the slot");
        }
        if let Err(e) = file.sync_all().await {
            tracing::warn!(error = %e, "cannot sync an upload");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
        drop(file);
        if let Err(e) = tokio::fs::create_dir_all(files_dir(&self.dir)).await {
            tracing::warn!(error = %e, "cannot create the upload directory");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
        // A hard link, not a rename: it fails if the name exists, so a complete file is
        // never replaced; the temporary name goes with the guard.
        match tokio::fs::hard_link(&guard.path, &final_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return respond(StatusCode::CONFLICT, "already uploaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store an upload");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
            }
        }
        // The temporary name goes; the complete file keeps its final one.
        drop(guard);
        // The record may have gone meanwhile (the account deleted): then so does the file.
        if let Ok(None) = self.storage.upload.get_upload(&record.id).await {
            let _ = tokio::fs::remove_file(&final_path).await;
            return respond(StatusCode::FORBIDDEN, "no such upload slot");
        }
        tracing::debug!(id = %record.id, size = record.size, "upload complete");
        respond(StatusCode::CREATED, "created")
    }

    async fn get(&self, id: &str, name: &str, head: bool) -> HttpResponse {
        let record = match self.record(id, name).await {
            Ok(Some(r)) => r,
            Ok(None) => return respond(StatusCode::NOT_FOUND, "not found"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an upload record");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
            }
        };
        let file = match tokio::fs::File::open(files_dir(&self.dir).join(&record.id)).await {
            Ok(f) => f,
            // Not uploaded (yet): a slot whose PUT has not completed has no file.
            Err(_) => return respond(StatusCode::NOT_FOUND, "not found"),
        };
        let len = match file.metadata().await {
            Ok(m) => m.len(),
            Err(_) => return respond(StatusCode::NOT_FOUND, "not found"),
        };
        let body = if head {
            ResponseBody::Empty
        } else {
            ResponseBody::stream(FileChunks { file, left: len })
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        cors(h);
        // The recorded type was checked for header safety when the slot was issued.
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&record.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let disposition = if slot::shown_inline(&record.content_type) {
            "inline"
        } else {
            "attachment"
        };
        // RFC 6266 with RFC 8187's encoding: the name is percent-encoded, so nothing in it
        // can end the header or add a parameter.
        let value = format!(
            "{disposition}; filename*=UTF-8''{}",
            slot::encode_segment(&record.file_name)
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        r
    }
}

/// A file served in chunks.
struct FileChunks {
    file: tokio::fs::File,
    left: u64,
}

#[async_trait]
impl Chunks for FileChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        let mut buf = vec![0u8; want];
        let n = self
            .file
            .read(&mut buf)
            .await
            .map_err(|e| BodyError(e.to_string()))?;
        if n == 0 {
            // Shorter than its length said: end the response as broken.
            return Err(BodyError("file shorter than announced".into()));
        }
        buf.truncate(n);
        self.left -= n as u64;
        Ok(Some(Bytes::from(buf)))
    }
}

/// One expiry pass: records older than `cutoff` (if files expire) are deleted in batches
/// of `batch` with their files, then every file whose record is gone (its account was
/// deleted, or an earlier pass stopped between the two) is deleted, and so are temporary
/// files nobody is writing (older than a day). Returns how many files were removed.
pub async fn expire(
    storage: &Storage,
    dir: &Path,
    cutoff: Option<i64>,
    batch: usize,
) -> Result<usize, StorageError> {
    let files = files_dir(dir);
    let mut removed = 0;
    if let Some(cutoff) = cutoff {
        loop {
            let ids = storage.upload.expire_uploads(cutoff, batch).await?;
            for id in &ids {
                if tokio::fs::remove_file(files.join(id)).await.is_ok() {
                    removed += 1;
                }
            }
            if ids.len() < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    // The sweep: files without a record.
    if let Ok(mut entries) = tokio::fs::read_dir(&files).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if !slot::valid_id(id) {
                continue;
            }
            if let Ok(None) = storage.upload.get_upload(id).await {
                if tokio::fs::remove_file(entry.path()).await.is_ok() {
                    removed += 1;
                }
            }
        }
    }
    if let Ok(mut entries) = tokio::fs::read_dir(tmp_dir(dir)).await {
        let day = std::time::Duration::from_secs(86_400);
        while let Ok(Some(entry)) = entries.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
    if removed > 0 {
        tracing::info!(files = removed, "uploads expired or orphaned removed");
    }
    Ok(removed)
}

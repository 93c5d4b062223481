//! TLS to PostgreSQL, with the `sslmode` semantics libpq documents
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>, table "SSL Mode Descriptions").
//!
//! tokio-postgres 0.7 itself only knows `disable`, `prefer` and `require` and refuses the
//! other `sslmode` values and `sslrootcert` in a connection string, so [`split_url`] takes
//! those two parameters out of the URL before tokio-postgres reads it, and the certificate
//! check of each mode lives in the rustls verifier of [`MakeRustlsConnect`]. The
//! `MakeTlsConnect` is this module's own (over tokio-rustls) rather than a crate's: the
//! `verify-ca` mode needs a verifier of its own anyway (chain checked, name not), and the
//! workspace's rustls/ring provider is used as it is.
//!
//! * `disable`: no TLS.
//! * `prefer` (the default, as in libpq): TLS when the server offers it, else plain; the
//!   certificate is not checked.
//! * `require`: TLS or no connection; the certificate is not checked — this protects
//!   against passive eavesdropping only. As in libpq, a `sslrootcert` given with `require`
//!   makes it `verify-ca`.
//! * `verify-ca`: TLS; the chain must lead to a root of `sslrootcert` (or of the system's
//!   store); the host name is not compared.
//! * `verify-full`: as `verify-ca`, and the certificate must name the host connected to
//!   (a DNS name, or an IP address SAN when the host is an address).
//!
//! `sslrootcert=PATH` is a PEM file of CA certificates; `sslrootcert=system` (as in
//! libpq 16) or no `sslrootcert` uses the system's store.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rookery_storage::StorageError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Most bytes of a `sslrootcert` file: a CA bundle is kilobytes; this bounds what a wrong
/// path (a log, a device) could make the server read.
pub const MAX_ROOT_CERT_FILE: u64 = 4 * 1024 * 1024;

/// The `sslmode` of a connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<Self, StorageError> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            // libpq's `allow` tries plain first and TLS second; tokio-postgres can't.
            other => {
                return Err(StorageError::Backend(format!(
                    "storage.url: sslmode={other} is not supported (use disable, prefer, \
                     require, verify-ca or verify-full)"
                )))
            }
        })
    }

    /// The name as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is tried and whether it is required.
    pub(crate) fn wire(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }
}

/// Where the CA certificates for `verify-ca`/`verify-full` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The system's store (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// A connection string with `sslmode` and `sslrootcert` taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitUrl {
    /// The rest, for tokio-postgres.
    pub rest: String,
    pub mode: TlsMode,
    pub root_cert: RootCert,
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres[ql]://...?k=v&...`) or a
/// key-value string (`k=v k='v w' ...`).
pub fn split_url(url: &str) -> Result<SplitUrl, StorageError> {
    let (rest, params) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_uri(url)?
    } else {
        split_key_values(url)?
    };
    let mut mode = None;
    let mut root = None;
    for (k, v) in params {
        match k.as_str() {
            "sslmode" => mode = Some(TlsMode::parse(&v)?),
            _ => root = Some(v),
        }
    }
    let root_cert = match root.as_deref() {
        None | Some("system") => RootCert::System,
        Some("") => {
            return Err(StorageError::Backend(
                "storage.url: sslrootcert is empty".into(),
            ))
        }
        Some(path) => RootCert::File(PathBuf::from(path)),
    };
    let mut mode = mode.unwrap_or(TlsMode::Prefer);
    // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same
    // as that of verify-ca".
    if mode == TlsMode::Require && matches!(root_cert, RootCert::File(_)) {
        mode = TlsMode::VerifyCa;
    }
    Ok(SplitUrl {
        rest,
        mode,
        root_cert,
    })
}

fn is_tls_key(k: &str) -> bool {
    k == "sslmode" || k == "sslrootcert"
}

/// The URI form: the query's `sslmode`/`sslrootcert` pairs (percent-decoded) taken out.
fn split_uri(url: &str) -> Result<(String, Vec<(String, String)>), StorageError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        if is_tls_key(&key) {
            taken.push((key, percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn percent_decode(s: &str) -> Result<String, StorageError> {
    let bad = || StorageError::Backend("invalid PostgreSQL URL: bad percent-encoding".into());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The key-value form (libpq's rules: `key = value`, a value single-quoted with `\`
/// escapes, or unquoted up to white space): the `sslmode`/`sslrootcert` pairs taken out,
/// the other pairs kept as written.
fn split_key_values(s: &str) -> Result<(String, Vec<(String, String)>), StorageError> {
    let bad = |why: &str| StorageError::Backend(format!("invalid PostgreSQL URL: {why}"));
    let b = s.as_bytes();
    let mut i = 0;
    let mut kept: Vec<&str> = Vec::new();
    let mut taken = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(bad(&format!("missing \"=\" after \"{key}\"")));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(bad("unterminated quoted value")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b
                            .get(i + 1)
                            .ok_or_else(|| bad("unterminated quoted value"))?;
                        value.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        if is_tls_key(key) {
            let value = String::from_utf8(value).map_err(|_| bad("value is not UTF-8"))?;
            taken.push((key.to_owned(), value));
        } else {
            kept.push(&s[start..i]);
        }
    }
    Ok((kept.join(" "), taken))
}

/// The rustls provider of the workspace.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the CA certificates of `sslrootcert` (or the system's store).
fn load_roots(root: &RootCert) -> Result<rustls::RootCertStore, StorageError> {
    let mut store = rustls::RootCertStore::empty();
    match root {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StorageError::Backend(
                    "storage.url: no CA certificate found in the system's store for \
                     sslmode=verify-ca/verify-full (set sslrootcert=PATH)"
                        .into(),
                ));
            }
        }
        RootCert::File(path) => {
            let err = |why: String| {
                StorageError::Backend(format!(
                    "storage.url: sslrootcert {}: {why}",
                    path.display()
                ))
            };
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.len() > MAX_ROOT_CERT_FILE {
                return Err(err(format!(
                    "larger than {MAX_ROOT_CERT_FILE} bytes, not a CA certificate file"
                )));
            }
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("not PEM: {e}")))?;
            for c in certs {
                store
                    .add(c)
                    .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
            }
            if store.is_empty() {
                return Err(err("no PEM certificate in the file".into()));
            }
        }
    }
    Ok(store)
}

/// The TLS client setup of a connection string's `sslmode`; None for `disable`.
pub(crate) fn client_config(
    mode: TlsMode,
    root: &RootCert,
) -> Result<Option<Arc<rustls::ClientConfig>>, StorageError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => Arc::new(NoCertificateCheck { algorithms }),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(load_roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| StorageError::Backend(format!("storage.url: sslrootcert: {e}")))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::Backend(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// `prefer`/`require`: any certificate is accepted (libpq does the same); the handshake's
/// signatures are still checked, so the session is with the holder of the key presented.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check except the name. rustls checks the chain (and
/// validity dates, key usage) before the name, so a name mismatch is the only error
/// forgiven and only reached with a good chain.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The `MakeTlsConnect` given to tokio-postgres (and the pool): one rustls client setup,
/// a connector per host.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    /// None under `sslmode=disable` (tokio-postgres then never asks for TLS).
    config: Option<Arc<rustls::ClientConfig>>,
}

impl MakeRustlsConnect {
    pub(crate) fn new(config: Option<Arc<rustls::ClientConfig>>) -> Self {
        MakeRustlsConnect { config }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        // A unix-socket host has no name (""): PostgreSQL answers "no TLS" on a unix
        // socket, so such a connector is never used; it fails if it were.
        let name = ServerName::try_from(domain.to_owned()).ok();
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// The TLS handshake for one connection.
pub struct RustlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (Some(config), Some(name)) = (self.config, self.name) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS to the database needs a host name or address",
                ));
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS session with the database.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // No tls-server-end-point binding (RFC 5929 §4.1 needs the hash named by the
        // certificate's signature algorithm): SCRAM runs without -PLUS, as over
        // connections without TLS.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_params_are_taken_out() {
        let s = split_url("postgresql://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
            .expect("split");
        assert_eq!(s.rest, "postgresql://u@h/db?application_name=x");
        assert_eq!(s.mode, TlsMode::VerifyFull);
        assert_eq!(s.root_cert, RootCert::File("/tmp/ca.pem".into()));
        let s = split_url("postgres://u@h/db?sslmode=disable").expect("split");
        assert_eq!(s.rest, "postgres://u@h/db");
        assert_eq!(s.mode, TlsMode::Disable);
        let s = split_url("postgres://u@h/db").expect("split");
        assert_eq!(s.mode, TlsMode::Prefer);
        assert_eq!(s.root_cert, RootCert::System);
    }

    #[test]
    fn key_values_are_taken_out() {
        let s = split_url(
            r"host=h  sslrootcert = '/a b/c\'d.pem' user=u sslmode=verify-ca password='x y'",
        )
        .expect("split");
        assert_eq!(s.rest, "host=h user=u password='x y'");
        assert_eq!(s.mode, TlsMode::VerifyCa);
        assert_eq!(s.root_cert, RootCert::File("/a b/c'd.pem".into()));
        // require with a CA file checks the chain, as in libpq.
        let s = split_url("host=h sslmode=require sslrootcert=/ca.pem").expect("split");
        assert_eq!(s.mode, TlsMode::VerifyCa);
        let s = split_url("host=h sslmode=require sslrootcert=system").expect("split");
        assert_eq!(s.mode, TlsMode::Require);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "host=h sslmode=allow",
            "host=h sslmode=bogus",
            "host=h sslrootcert='open",
            "host=h sslmode",
            "postgresql://h/db?sslmode=%zz",
            "postgresql://h/db?sslrootcert=",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}

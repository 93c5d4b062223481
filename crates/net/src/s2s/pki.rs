//! Peer servers' certificates (RFC 6120 §13.7.2, RFC 6125, XEP-0178).
//!
//! A server-to-server TLS handshake accepts whatever certificate the peer shows (and checks
//! its handshake signature): whether it proves the peer's domain is decided afterwards,
//! against the domain the peer claims on the stream, by [`TrustStore::verify`]. An
//! untrusted certificate still gives an encrypted stream, on which the peer may then prove
//! its domain with Server Dialback where the policy allows it — what a handshake failure
//! would make impossible.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Accepts any certificate in the handshake (checking the handshake's signatures with it),
/// for the domain check that follows on the stream. Used on both sides: asking an
/// incoming peer for a certificate without requiring one, and connecting to one.
#[derive(Debug)]
pub struct AnyPeerCertificate {
    provider: Arc<CryptoProvider>,
}

impl AnyPeerCertificate {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AnyPeerCertificate { provider }
    }
}

impl ClientCertVerifier for AnyPeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for AnyPeerCertificate {
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
        <Self as ClientCertVerifier>::verify_tls12_signature(self, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        <Self as ClientCertVerifier>::verify_tls13_signature(self, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        <Self as ClientCertVerifier>::supported_verify_schemes(self)
    }
}

/// The certificate authorities peer servers' certificates are checked against: the
/// system's roots (unless turned off) and the CA files the configuration adds.
#[derive(Clone)]
pub struct TrustStore {
    /// `None` when no root is trusted at all: no certificate is then valid.
    verifier: Option<Arc<WebPkiServerVerifier>>,
    roots: usize,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("roots", &self.roots)
            .finish()
    }
}

impl TrustStore {
    /// Loads the roots. A CA file that cannot be read or holds no certificate is an error
    /// (the operator named it); a system store with unreadable entries is logged and used
    /// for what it has.
    pub fn load(system_roots: bool, ca_files: &[PathBuf]) -> Result<TrustStore, PkiError> {
        let mut store = rustls::RootCertStore::empty();
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "a system root certificate could not be read");
            }
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates");
        }
        for path in ca_files {
            for cert in read_pem_certs(path)? {
                store.add(cert).map_err(|e| PkiError::File {
                    path: path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        let roots = store.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = if store.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .ok()
        };
        Ok(TrustStore { verifier, roots })
    }

    /// Whether `chain` (end entity first) is a valid certificate for `domain` now: it
    /// chains to a trusted root, is valid at this time and names the domain as a DNS
    /// identifier (RFC 6125 §6.4, wildcards in the left-most label included).
    pub fn verify(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let (Some(verifier), Some((end_entity, intermediates))) =
            (self.verifier.as_ref(), chain.split_first())
        else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        match verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(domain, error = %e, "peer certificate not valid for its domain");
                false
            }
        }
    }
}

pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let err = |message: String| PkiError::File {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The client configuration for connecting to peer servers: TLS 1.2/1.3, any server
/// certificate accepted in the handshake (checked for the domain afterwards), and this
/// server's certificate for `local` presented when asked (XEP-0178 §3).
pub fn client_config(
    local_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    alpn: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyPeerCertificate::new(provider)));
    let mut config = match local_cert {
        Some(key) => builder.with_client_cert_resolver(Arc::new(OwnCertificate(key))),
        None => builder.with_no_client_auth(),
    };
    if alpn {
        // XEP-0368 §2: direct TLS to a server names the protocol.
        config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    }
    Arc::new(config)
}

/// Presents this server's certificate for the local domain of an outgoing stream.
#[derive(Debug)]
struct OwnCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

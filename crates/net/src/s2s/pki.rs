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
    /// identifier (RFC 6125 §6.4, wildcards in the left-most label included), an XmppAddr or
    /// an SRVName (RFC 6120 §13.7.1.4).
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
            // The chain is good but no DNS name matches (names are checked last): an XMPP
            // certificate may name the domain as an XmppAddr or an SRVName instead.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => names_domain_as_xmpp_service(end_entity, domain),
            Err(e) => {
                tracing::debug!(domain, error = %e, "peer certificate not valid for its domain");
                false
            }
        }
    }
}

/// id-on-xmppAddr (RFC 6120 §13.7.1.4) and id-on-dnsSRV (RFC 4985) other names.
const OID_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
const OID_SRV_NAME: &str = "1.3.6.1.5.5.7.8.7";

/// Whether a certificate names `domain` as an XMPP server by an XmppAddr (the domain itself)
/// or an SRVName (`_xmpp-server.<domain>` or `_xmpps-server.<domain>`), the identifiers RFC
/// 6120 §13.7.1.4 and RFC 6125 allow beside DNS names. Wildcards do not apply to either.
fn names_domain_as_xmpp_service(cert: &CertificateDer<'_>, domain: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        let GeneralName::OtherName(oid, raw) = name else {
            return false;
        };
        let Some(value) = other_name_string(raw) else {
            return false;
        };
        match oid.to_id_string().as_str() {
            OID_XMPP_ADDR => value.eq_ignore_ascii_case(domain),
            OID_SRV_NAME => ["_xmpp-server.", "_xmpps-server."].iter().any(|service| {
                value
                    .get(..service.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(service))
                    && value[service.len()..].eq_ignore_ascii_case(domain)
            }),
            _ => false,
        }
    })
}

/// The string in an otherName's value: `[0] EXPLICIT` around a UTF8String or IA5String (a
/// few bytes of DER, read here rather than with a general ASN.1 decoder).
fn other_name_string(raw: &[u8]) -> Option<&str> {
    fn tlv(bytes: &[u8]) -> Option<(u8, &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            n if n < 0x80 => (usize::from(n), rest),
            0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
            0x82 => (
                usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
                rest.get(2..)?,
            ),
            _ => return None,
        };
        Some((tag, rest.get(..len)?))
    }
    let (wrapper, inner) = tlv(raw)?;
    if wrapper != 0xA0 {
        return None;
    }
    match tlv(inner)? {
        (0x0C | 0x16, value) => std::str::from_utf8(value).ok(),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signs with these subject alternative names.
    fn chain(names: Vec<rcgen::SanType>) -> (String, Vec<CertificateDer<'static>>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names = names;
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("leaf");
        (ca.pem(), vec![leaf.der().clone()])
    }

    fn store(ca_pem: &str) -> (TrustStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem).expect("write");
        (TrustStore::load(false, &[path]).expect("store"), dir)
    }

    #[test]
    fn dns_names_and_xmpp_addrs_name_the_domain() {
        let xmpp_addr = rcgen::SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            rcgen::OtherNameValue::Utf8String("chat.example".into()),
        ));
        let dns = rcgen::SanType::DnsName("*.other.example".try_into().expect("name"));
        let (ca, leaf) = chain(vec![dns, xmpp_addr]);
        let (trust, _dir) = store(&ca);
        assert!(
            trust.verify(&leaf, "a.other.example"),
            "a wildcard DNS name"
        );
        assert!(trust.verify(&leaf, "chat.example"), "an XmppAddr");
        assert!(
            trust.verify(&leaf, "CHAT.example"),
            "names compare without case"
        );
        assert!(
            !trust.verify(&leaf, "other.example"),
            "a wildcard does not cover its parent"
        );
        assert!(!trust.verify(&leaf, "evil.example"));
        // Another CA's store does not trust it, whatever the names.
        let (other_ca, _) = chain(vec![]);
        let (other, _dir2) = store(&other_ca);
        assert!(!other.verify(&leaf, "chat.example"));
    }

    #[test]
    fn other_name_values_are_read_from_their_der() {
        // [0] { UTF8String "a.example" } and [0] { IA5String "_xmpp-server.a.example" }.
        let utf8 = [
            0xA0, 11, 0x0C, 9, b'a', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e',
        ];
        assert_eq!(other_name_string(&utf8), Some("a.example"));
        let srv = b"_xmpp-server.a.example";
        let mut ia5 = vec![0xA0, (srv.len() + 2) as u8, 0x16, srv.len() as u8];
        ia5.extend_from_slice(srv);
        assert_eq!(other_name_string(&ia5), Some("_xmpp-server.a.example"));
        assert_eq!(
            other_name_string(&[0xA0, 5, 0x0C, 9, b'a']),
            None,
            "a length past the end"
        );
        assert_eq!(other_name_string(&[0x30, 2, 0x0C, 0]), None, "not [0]");
    }
}

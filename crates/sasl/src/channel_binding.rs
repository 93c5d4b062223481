//! Channel-binding types (RFC 5929 `tls-server-end-point`, RFC 9266 `tls-exporter`).

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;

use crate::SaslError;

/// A channel-binding type usable with SCRAM-*-PLUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelBindingType {
    /// RFC 9266: the TLS 1.3 exporter with label `EXPORTER-Channel-Binding`,
    /// empty context, 32 bytes.
    TlsExporter,
    /// RFC 5929 §4: a hash of the server's certificate.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// Preference order: tls-exporter first.
    pub const ALL: [ChannelBindingType; 2] = [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ];

    /// The IANA "channel-binding unique prefix": `tls-exporter`, `tls-server-end-point`.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// Inverse of [`ChannelBindingType::name`] (exact match).
    pub fn from_name(s: &str) -> Option<Self> {
        ChannelBindingType::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl std::fmt::Display for ChannelBindingType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel-binding data available on this connection (None when that type is unavailable).
///
/// The server fills this from its TLS layer: `tls_exporter` only on TLS 1.3 (RFC 9266
/// §3 forbids it on TLS ≤ 1.2 without extended master secret), `tls_server_end_point`
/// from [`tls_server_end_point`] of the certificate it presented.
#[derive(Debug, Clone, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// No channel binding at all (e.g. plaintext connection).
    pub fn none() -> Self {
        Self::default()
    }

    /// The types with data available, in preference order (tls-exporter first).
    /// Advertise -PLUS mechanisms only if this is non-empty.
    pub fn supported(&self) -> Vec<ChannelBindingType> {
        ChannelBindingType::ALL
            .into_iter()
            .filter(|t| self.get(*t).is_some())
            .collect()
    }

    /// The data for `t`, if available on this connection.
    pub fn get(&self, t: ChannelBindingType) -> Option<&[u8]> {
        match t {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }
}

enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn hash_for_digest_oid(oid: &str) -> Option<CertHash> {
    // RFC 5929 §4.1: MD5 and SHA-1 are replaced by SHA-256.
    match oid {
        "1.2.840.113549.2.5" | "1.3.14.3.2.26" => Some(CertHash::Sha256), // md5, sha1
        "2.16.840.1.101.3.4.2.4" => Some(CertHash::Sha224),
        "2.16.840.1.101.3.4.2.1" => Some(CertHash::Sha256),
        "2.16.840.1.101.3.4.2.2" => Some(CertHash::Sha384),
        "2.16.840.1.101.3.4.2.3" => Some(CertHash::Sha512),
        _ => None,
    }
}

fn hash_for_signature_oid(oid: &str) -> Option<CertHash> {
    match oid {
        // RSA PKCS#1 v1.5
        "1.2.840.113549.1.1.4" | "1.2.840.113549.1.1.5" => Some(CertHash::Sha256), // md5, sha1
        "1.2.840.113549.1.1.14" => Some(CertHash::Sha224),
        "1.2.840.113549.1.1.11" => Some(CertHash::Sha256),
        "1.2.840.113549.1.1.12" => Some(CertHash::Sha384),
        "1.2.840.113549.1.1.13" => Some(CertHash::Sha512),
        // ECDSA
        "1.2.840.10045.4.1" => Some(CertHash::Sha256), // ecdsa-with-SHA1
        "1.2.840.10045.4.3.1" => Some(CertHash::Sha224),
        "1.2.840.10045.4.3.2" => Some(CertHash::Sha256),
        "1.2.840.10045.4.3.3" => Some(CertHash::Sha384),
        "1.2.840.10045.4.3.4" => Some(CertHash::Sha512),
        // DSA
        "1.2.840.10040.4.3" => Some(CertHash::Sha256), // dsa-with-sha1
        "2.16.840.1.101.3.4.3.1" => Some(CertHash::Sha224),
        "2.16.840.1.101.3.4.3.2" => Some(CertHash::Sha256),
        _ => None,
    }
}

/// tls-server-end-point data for a DER certificate (RFC 5929 §4.1): the hash of the
/// whole certificate with the hash function of its signature algorithm, SHA-256 when
/// that is MD5 or SHA-1.
///
/// Fails with [`SaslError::UnsupportedChannelBinding`] when the signature algorithm
/// uses no single hash function (Ed25519, Ed448, ...), for which RFC 5929 leaves the
/// binding undefined; the server must then not offer `tls-server-end-point`.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, SaslError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| SaslError::Internal(format!("cannot parse certificate: {e}")))?;
    let alg = &cert.signature_algorithm;
    let oid = alg.algorithm.to_id_string();
    let hash = if oid == "1.2.840.113549.1.1.10" {
        // RSASSA-PSS: the hash is in the parameters (default SHA-1, RFC 4055).
        let params = alg
            .parameters
            .as_ref()
            .ok_or_else(|| SaslError::Internal("RSASSA-PSS signature without parameters".into()))?;
        let pss = RsaSsaPssParams::try_from(params)
            .map_err(|e| SaslError::Internal(format!("bad RSASSA-PSS parameters: {e}")))?;
        let digest_oid = pss.hash_algorithm_oid().to_id_string();
        hash_for_digest_oid(&digest_oid).ok_or_else(|| {
            SaslError::UnsupportedChannelBinding(format!(
                "tls-server-end-point: unsupported PSS hash {digest_oid}"
            ))
        })?
    } else {
        hash_for_signature_oid(&oid).ok_or_else(|| {
            SaslError::UnsupportedChannelBinding(format!(
                "tls-server-end-point: undefined for signature algorithm {oid}"
            ))
        })?
    };
    Ok(match hash {
        CertHash::Sha224 => Sha224::digest(cert_der).to_vec(),
        CertHash::Sha256 => Sha256::digest(cert_der).to_vec(),
        CertHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        CertHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

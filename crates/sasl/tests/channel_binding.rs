//! tls-server-end-point data from real certificates (RFC 5929 §4.1).

use rookery_sasl::{tls_server_end_point, SaslError};
use sha2::{Digest, Sha256, Sha384};

fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let params = rcgen::CertificateParams::new(vec!["example.org".to_owned()]).expect("params");
    params.self_signed(&key).expect("sign").der().to_vec()
}

#[test]
fn ecdsa_sha256_cert_hashes_with_sha256() {
    let der = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
    let cb = tls_server_end_point(&der).expect("cb");
    assert_eq!(cb, Sha256::digest(&der).to_vec());
}

#[test]
fn ecdsa_sha384_cert_hashes_with_sha384() {
    let der = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
    let cb = tls_server_end_point(&der).expect("cb");
    assert_eq!(cb, Sha384::digest(&der).to_vec());
}

#[test]
fn ed25519_cert_has_no_defined_binding() {
    let der = cert(&rcgen::PKCS_ED25519);
    assert!(matches!(
        tls_server_end_point(&der),
        Err(SaslError::UnsupportedChannelBinding(_))
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(tls_server_end_point(b"").is_err());
    assert!(tls_server_end_point(b"\x30\x82\xff\xff garbage").is_err());
}

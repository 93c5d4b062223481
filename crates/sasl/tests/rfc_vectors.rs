//! The worked examples of RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256),
//! reproduced byte for byte.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rookery_sasl::{ChannelBindings, HashAlg, Mechanism, ScramCredentials, ServerSession, Step};

fn run_vector(
    mech: Mechanism,
    salt_b64: &str,
    client_first: &str,
    server_nonce: &str,
    expected_server_first: &str,
    client_final: &str,
    expected_server_final: &str,
) {
    let hash = mech.hash().expect("scram");
    let salt = B64.decode(salt_b64).expect("salt");
    let creds = ScramCredentials::derive(hash, "pencil", &salt, 4096).expect("derive");
    let mut s = ServerSession::new(mech, ChannelBindings::default(), false, true)
        .with_nonce_for_test(server_nonce);
    match s.start(client_first.as_bytes()).expect("start") {
        Step::NeedCredentials { username, authzid } => {
            assert_eq!(username, "user");
            assert_eq!(authzid, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    let Step::Challenge(sf) = s.credentials(Some(creds)).expect("credentials") else {
        panic!("expected challenge");
    };
    assert_eq!(
        std::str::from_utf8(&sf).expect("utf8"),
        expected_server_first
    );
    match s.step(client_final.as_bytes()).expect("final") {
        Step::Success {
            username,
            authzid,
            additional_data,
        } => {
            assert_eq!(username, "user");
            assert_eq!(authzid, None);
            assert_eq!(
                additional_data.as_deref(),
                Some(expected_server_final.as_bytes())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Anything after success is refused.
    assert!(s.step(b"").is_err());
}

#[test]
fn rfc5802_scram_sha1_example() {
    run_vector(
        Mechanism::ScramSha1,
        "QSXCR+Q6sek8bf92",
        "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    );
}

#[test]
fn rfc7677_scram_sha256_example() {
    run_vector(
        Mechanism::ScramSha256,
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    );
}

#[test]
fn rfc5802_derived_keys() {
    // StoredKey/ServerKey of the RFC 5802 example, computed independently.
    let salt = B64.decode("QSXCR+Q6sek8bf92").expect("salt");
    let c = ScramCredentials::derive(HashAlg::Sha1, "pencil", &salt, 4096).expect("derive");
    // SaltedPassword = 1d96ee3a529b5a5f9e47c01f229a2cb8a6e15f7d (well-known intermediate)
    let salted = hex::decode("1d96ee3a529b5a5f9e47c01f229a2cb8a6e15f7d").expect("hex");
    let client_key = common_hmac_sha1(&salted, b"Client Key");
    use sha1::Digest;
    assert_eq!(c.stored_key, sha1::Sha1::digest(client_key).to_vec());
    assert_eq!(c.server_key, common_hmac_sha1(&salted, b"Server Key"));
    assert!(c.verify_password("pencil"));
    assert!(!c.verify_password("pencil2"));
}

fn common_hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

//! Random input never panics the server session.

mod common;

use proptest::prelude::*;
use rookery_sasl::{ChannelBindings, HashAlg, Mechanism, ScramCredentials, ServerSession, Step};

fn bindings() -> ChannelBindings {
    ChannelBindings {
        tls_exporter: Some(vec![1; 32]),
        tls_server_end_point: Some(vec![2; 32]),
    }
}

fn mech() -> impl Strategy<Value = Mechanism> {
    proptest::sample::select(Mechanism::ALL.to_vec())
}

/// Byte strings biased towards SCRAM syntax so the fuzzer gets past the first checks.
fn scramish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "(n|y|p=tls-exporter|p=tls-server-end-point|p=x),(a=[a-z=,]{0,5})?,(m=x,)?n=[a-z=,0-9]{0,8},r=[ -~]{0,12}(,[a-z]=[a-z]{0,3}){0,2}"
            .prop_map(String::into_bytes),
        "c=[A-Za-z0-9+/=]{0,12},r=[ -~]{0,40}(,[a-z]=[^,]{0,3}){0,2},p=[A-Za-z0-9+/=]{0,44}"
            .prop_map(String::into_bytes),
        "[\\x00a-z\u{e4}\u{ad}]{0,10}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn start_and_step_never_panic(
        mech in mech(),
        plus_adv in any::<bool>(),
        tls in any::<bool>(),
        initial in scramish(),
        fin in scramish(),
        known in any::<bool>(),
    ) {
        let mut s = ServerSession::new(mech, bindings(), plus_adv, tls);
        let mut step = s.start(&initial);
        if let Ok(Step::Challenge(_)) = step {
            step = s.step(&fin);
        }
        if let Ok(Step::NeedCredentials { .. }) = step {
            let hash = mech.hash().unwrap_or(HashAlg::Sha256);
            let rec = known.then(|| {
                ScramCredentials::derive(hash, "pw", b"salt", 2).expect("derive")
            });
            if let Ok(Step::Challenge(_)) = s.credentials(rec) {
                let _ = s.step(&fin);
                let _ = s.step(&fin);
            }
        }
    }

    #[test]
    fn client_final_with_valid_first_never_panics(fin in scramish(), hash_i in 0usize..3) {
        let hash = HashAlg::ALL[hash_i];
        let mut s = ServerSession::new(Mechanism::scram(hash, false), bindings(), false, true);
        let c = common::Client::new(hash, "juliet", "pw");
        let first_ok = matches!(s.start(&c.first()), Ok(Step::NeedCredentials { .. }));
        prop_assert!(first_ok);
        let rec = ScramCredentials::derive(hash, "pw", b"salt", 2).expect("derive");
        let challenged = matches!(s.credentials(Some(rec)), Ok(Step::Challenge(_)));
        prop_assert!(challenged);
        let r = s.step(&fin);
        prop_assert!(r.is_err(), "random client-final must not authenticate: {:?}", r);
    }
}

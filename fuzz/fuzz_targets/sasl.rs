//! Every SASL mechanism's message parsing, on both steps of the exchange: never panics and
//! never authenticates without the right proof. The FAST (HT-SHA-256-*) initial response is
//! parsed and verified too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rookery_sasl::{ChannelBindings, HashAlg, Mechanism, ScramCredentials, ServerSession, Step};
use std::sync::OnceLock;

/// Records derived once: key derivation is deliberately slow.
fn record(hash: HashAlg) -> Option<ScramCredentials> {
    static RECORDS: OnceLock<Vec<ScramCredentials>> = OnceLock::new();
    RECORDS
        .get_or_init(|| {
            HashAlg::ALL
                .iter()
                .filter_map(|h| ScramCredentials::derive(*h, "password", b"fuzz-salt-16byte", 4096).ok())
                .collect()
        })
        .iter()
        .find(|r| r.hash == hash)
        .cloned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let cb = ChannelBindings {
        tls_exporter: Some(vec![1; 32]),
        tls_server_end_point: Some(vec![2; 32]),
    };
    if usize::from(pick) % (Mechanism::ALL.len() + 1) == Mechanism::ALL.len() {
        // FAST: parse, then verify against a token the input cannot know.
        use rookery_sasl::ht::{parse_initial, HtMechanism};
        if let Ok(initial) = parse_initial(rest) {
            for m in HtMechanism::ALL {
                let ok = m.verify(b"fuzz-token", &cb, &initial.proof).unwrap_or(false);
                assert!(!ok || initial.proof == m.initiator_proof(b"fuzz-token", &cb).unwrap_or_default());
            }
        }
        return;
    }
    let mech = Mechanism::ALL[usize::from(pick) % Mechanism::ALL.len()];
    let (first, second) = rest.split_at(rest.len() / 2);
    let mut s = ServerSession::new(mech, cb, true, true);
    let mut step = s.start(first);
    for _ in 0..3 {
        step = match step {
            Ok(Step::NeedCredentials { .. }) => {
                s.credentials(record(mech.hash().unwrap_or(HashAlg::Sha256)))
            }
            Ok(Step::Challenge(_)) => s.step(second),
            Ok(Step::Success { .. }) => {
                // Only PLAIN with the right password can succeed on fuzzed input.
                assert_eq!(mech, Mechanism::Plain);
                return;
            }
            Err(_) => return,
        };
    }
});

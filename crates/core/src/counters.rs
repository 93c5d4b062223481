//! Process-wide counters of limits that were hit and of session events, so an operator can
//! see what the server is refusing and why: logged each minute when they change, and
//! printed by `rookery stats`, and exposed to Prometheus (`GET /metrics`) with the stanza
//! counts below. Plain atomics: incrementing one costs one relaxed add.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// One counted event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The name used in logs and `rookery stats`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// What it counts: its documentation, for the metrics' help text.
            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

counters! {
    /// A connection refused by the total or per-address connection limit.
    ConnectionsRefused => "connections_refused",
    /// An HTTP request refused: a limit (body size, time), a WebSocket without the `xmpp`
    /// subprotocol or from an origin not allowed, an unknown host.
    HttpRefused => "http_refused",
    /// A TLS handshake that failed or took too long.
    TlsHandshakeFailures => "tls_handshake_failures",
    /// A failed SASL attempt (each one is slowed down).
    AuthFailures => "auth_failures",
    /// A stream closed after too many failed SASL attempts.
    AuthAttemptsExceeded => "auth_attempts_exceeded",
    /// A connection that did not authenticate in time.
    UnauthenticatedTimeouts => "unauthenticated_timeouts",
    /// A connection that went over its byte or stanza rate and was paused.
    RateLimited => "rate_limited",
    /// A stream closed with `policy-violation` (rate kept too long, stanza too big, queue
    /// overflow, too many unacknowledged stanzas...).
    PolicyViolations => "policy_violations",
    /// A stream closed for XML that is not well-formed or not allowed.
    BadXml => "bad_xml",
    /// A delivery refused because the session's send queue was full (its client, which
    /// does not read, is disconnected).
    SendQueueOverflows => "send_queue_overflows",
    /// A bound client that went silent and did not answer the liveness check.
    IdleTimeouts => "idle_timeouts",
    /// An in-band registration refused by the per-address rate.
    RegistrationsRefused => "registrations_refused",
    /// A session kept for stream-management resumption after its connection dropped.
    SmParked => "sm_parked",
    /// A session resumed on a new connection.
    SmResumed => "sm_resumed",
    /// A kept session that nobody resumed in time.
    SmExpired => "sm_expired",
}

static VALUES: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

/// Counts one event.
pub fn incr(c: Counter) {
    VALUES[c as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn get(c: Counter) -> u64 {
    VALUES[c as usize].load(Ordering::Relaxed)
}

/// Every counter with its current value, in declaration order.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    Counter::ALL.iter().map(|c| (c.name(), get(*c))).collect()
}

/// The kinds of stanza (RFC 6120 §8), in the order of [`stanzas`].
pub const STANZA_KINDS: [&str; 3] = ["message", "presence", "iq"];

static STANZAS_IN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static STANZAS_OUT: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// A stanza's place in [`STANZA_KINDS`] by its element's name; `None` for what is not a
/// stanza.
pub fn stanza_kind(name: &str) -> Option<usize> {
    match name {
        "message" => Some(0),
        "presence" => Some(1),
        "iq" => Some(2),
        _ => None,
    }
}

/// Counts a stanza received on a stream (from a client, a peer server or a component) as
/// it enters the router; `name` is its element's name.
pub fn stanza_in(name: &str) {
    if let Some(i) = stanza_kind(name) {
        STANZAS_IN[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a stanza handed to a stream: queued for a client's session, or for a peer server
/// or a component. `kind` is from [`stanza_kind`].
pub fn stanza_out(kind: Option<usize>) {
    if let Some(i) = kind {
        STANZAS_OUT[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Stanzas in and out by kind: `(kind, in, out)`, in the order of [`STANZA_KINDS`].
pub fn stanzas() -> [(&'static str, u64, u64); 3] {
    let at = |i: usize| {
        (
            STANZA_KINDS[i],
            STANZAS_IN[i].load(Ordering::Relaxed),
            STANZAS_OUT[i].load(Ordering::Relaxed),
        )
    };
    [at(0), at(1), at(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_have_help() {
        for c in Counter::ALL {
            let help = c.help();
            assert!(!help.is_empty() && !help.starts_with(' '), "{help:?}");
            assert!(!help.contains('\n'), "{help:?}");
        }
        assert!(Counter::BadXml
            .help()
            .starts_with("A stream closed for XML"));
    }

    #[test]
    fn stanzas_are_counted_by_kind() {
        let before = stanzas();
        stanza_in("message");
        stanza_out(stanza_kind("iq"));
        stanza_out(stanza_kind("iq"));
        stanza_out(stanza_kind("stream:features"));
        stanza_in("open");
        let after = stanzas();
        assert_eq!(after[0].1, before[0].1 + 1);
        assert_eq!(after[2].2, before[2].2 + 2);
        assert_eq!(after[1].1, before[1].1);
        assert_eq!(after.map(|s| s.0), STANZA_KINDS);
    }

    #[test]
    fn counters_fit_and_count() {
        assert!(Counter::ALL.len() <= VALUES.len());
        let before = get(Counter::IdleTimeouts);
        incr(Counter::IdleTimeouts);
        assert_eq!(get(Counter::IdleTimeouts), before + 1);
        let names: Vec<_> = snapshot().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"idle_timeouts"));
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "names are unique");
    }
}

//! Process-wide counters of limits that were hit and of session events, so an operator can
//! see what the server is refusing and why: logged each minute when they change, and
//! printed by `rookery stats`. Plain atomics: incrementing one costs one relaxed add.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// One counted event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The name used in logs and `rookery stats`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
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

#[cfg(test)]
mod tests {
    use super::*;

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

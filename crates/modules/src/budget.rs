//! A token bucket for the modules' rate limits (MUC presence per user and room, joins per
//! address; PubSub publications per publisher): `burst` tokens, refilled by one every `interval_ms`, one taken per event.

/// One bucket: its tokens at a time in milliseconds (any clock, as long as it is the same
/// for every call on the bucket).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    tokens: f64,
    at_ms: u64,
}

/// The shape of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub interval_ms: u64,
}

impl Budget {
    /// A full bucket.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Budget {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    fn tokens_at(&self, rate: Rate, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        (self.tokens + elapsed / rate.interval_ms.max(1) as f64).min(f64::from(rate.burst))
    }

    /// Takes one token; false (and nothing taken) when there is none.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        let tokens = self.tokens_at(rate, now_ms);
        if tokens < 1.0 {
            return false;
        }
        *self = Budget {
            tokens: tokens - 1.0,
            at_ms: now_ms,
        };
        true
    }

    /// Whether the bucket has refilled completely (it then carries nothing worth keeping).
    pub fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        self.tokens_at(rate, now_ms) >= f64::from(rate.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let rate = Rate {
            burst: 3,
            interval_ms: 1000,
        };
        let mut b = Budget::full(rate, 0);
        assert!(b.take(rate, 0) && b.take(rate, 0) && b.take(rate, 0));
        assert!(!b.take(rate, 10));
        assert!(!b.take(rate, 999));
        assert!(b.take(rate, 1000));
        assert!(!b.take(rate, 1500));
        assert!(!b.is_full(rate, 3000));
        assert!(b.is_full(rate, 4000));
        // A clock that went back takes nothing extra.
        assert!(!b.take(rate, 0));
    }
}

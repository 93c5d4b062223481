//! Connection counting and the slow-down of repeated authentication failures.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts open connections in total and per address.
pub struct ConnectionLimits {
    /// The maxima: a reload may change them ([`ConnectionLimits::set`]); connections open
    /// beyond a lowered maximum stay, new ones wait until the count is under it.
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Held by a connection task; gives its slot back when dropped.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            state: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut st = self.state.lock();
        if st.0 >= self.max_total.load(Ordering::Relaxed) {
            return None;
        }
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip.load(Ordering::Relaxed) {
            return None;
        }
        *n += 1;
        st.0 += 1;
        Some(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// New maxima, for the connections accepted from now on.
    pub fn set(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.state.lock().0
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut st = self.limits.state.lock();
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.ip);
            }
        }
    }
}

/// Failed SASL attempts, by source address and by account. Each failure doubles the delay
/// before the next failure answer (from 250 ms up to 8 s); both counts decay after a quiet
/// period. Answers for one key are also queued one after another, so opening many
/// connections in parallel doesn't multiply a guesser's rate. Only failures wait: the real
/// user, from another address and with the right password, is not locked out.
pub struct AuthThrottle {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    failures: u32,
    last: Instant,
    /// When the last queued failure answer for this key goes out.
    next_slot: Instant,
}

const FORGET_AFTER: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 100_000;

impl Default for AuthThrottle {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl AuthThrottle {
    /// Records a failure and returns how long to wait before answering it.
    pub fn failure(&self, ip: IpAddr, account: Option<&str>) -> Duration {
        let now = Instant::now();
        let mut map = self.entries.lock();
        if map.len() > MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        let keys = [
            Some(format!("ip:{ip}")),
            account.map(|a| format!("user:{a}")),
        ];
        let mut answer_at = now;
        for key in keys.into_iter().flatten() {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
                next_slot: now,
            });
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.next_slot = e.next_slot.max(now) + Self::delay(e.failures);
            answer_at = answer_at.max(e.next_slot);
        }
        answer_at.duration_since(now)
    }

    /// A success clears the address's record (not the account's: the guesser may be elsewhere).
    pub fn success(&self, ip: IpAddr) {
        self.entries.lock().remove(&format!("ip:{ip}"));
    }

    fn delay(failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(5);
        Duration::from_millis(250u64 << exp)
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. Charging may drive it
/// negative; the debt says how long the connection must stop reading.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `amount` tokens; returns how long to wait until the bucket is out of debt.
    pub fn charge(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_hold_and_release() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let p1 = l.try_acquire(a).expect("1");
        let _p2 = l.try_acquire(a).expect("2");
        assert!(l.try_acquire(a).is_none(), "per-ip limit");
        let _p3 = l.try_acquire(b).expect("3");
        assert!(l.try_acquire(b).is_none(), "total limit");
        drop(p1);
        assert!(l.try_acquire(a).is_some());
    }

    #[test]
    fn parallel_failures_are_queued_not_multiplied() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        // Twenty failures at once: each answer waits for the ones before it.
        let waits: Vec<_> = (0..20).map(|_| t.failure(ip, None)).collect();
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert!(waits[19] > Duration::from_secs(100), "{:?}", waits[19]);
    }

    #[test]
    fn token_bucket_allows_bursts_then_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200);
        assert_eq!(b.charge(200, t0), Duration::ZERO, "the burst is free");
        let wait = b.charge(50, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // After the wait the debt is paid; tokens accumulate at the rate, capped at burst.
        assert_eq!(b.charge(0, t0 + Duration::from_millis(500)), Duration::ZERO);
        assert_eq!(b.charge(200, t0 + Duration::from_secs(100)), Duration::ZERO);
        assert!(b.charge(1, t0 + Duration::from_secs(100)) > Duration::ZERO);
    }

    #[test]
    fn failures_slow_down_exponentially_with_a_cap() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let d: Vec<_> = (0..8).map(|_| t.failure(ip, Some("u@x"))).collect();
        // Each answer waits for the previous one, plus a delay that doubles up to 8 s.
        let near = |a: Duration, ms: u64| a.as_millis().abs_diff(u128::from(ms)) < 20;
        assert!(near(d[0], 250), "{d:?}");
        assert!(near(d[1] - d[0], 500), "{d:?}");
        assert!(near(d[7] - d[6], 8000), "{d:?}");
        // Another address guessing the same account is slowed too (per-account count), and
        // queued behind the answers already waiting for that account.
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(t.failure(other, Some("u@x")) >= Duration::from_secs(8));
        t.success(ip);
        assert_eq!(t.failure(ip, None), Duration::from_millis(250));
    }
}

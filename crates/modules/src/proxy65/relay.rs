//! The SOCKS5 side of the proxy: one listener per configured address, the table where the
//! two connections of a bytestream wait for each other and for activation, and the relay
//! between them once activated, with its limits.
//!
//! A connection that completes the handshake is put in the table under its DST.ADDR; the
//! first one for an address waits, the second one joins it, a third is refused. Nothing is
//! read from a waiting connection (what a party sends early is relayed after activation,
//! in order). Activation takes both out of the table and relays until both sides have
//! closed, the transfer's bytes or time run out (then both connections are closed), or
//! the server stops. Waiting entries older than the pending timeout are dropped, which
//! closes their connections.

use super::socks5::{self, Parsed, Reply, Socks5Error};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Time a new connection has to complete the SOCKS5 handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections from one address that may wait in the table at once.
pub const PENDING_PER_ADDRESS: usize = 32;
/// How often the table is swept for connections that waited too long.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// What a refused connection may still send, and for how long, before it is closed.
const LINGER_BYTES: usize = 4096;
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Bytes read at once by the relay in each direction.
const RELAY_BUFFER: usize = 16 * 1024;

/// What limits a listener (from the first host that names its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// How long a connection waits for its peer and for activation.
    pub pending_timeout: Duration,
    /// Bytestreams being relayed at once.
    pub max_transfers: usize,
    /// Addresses waiting in the table (each holds one or two connections).
    pub max_pending: usize,
    /// Connections from one client address waiting in the table.
    pub pending_per_address: usize,
}

/// What limits one transfer (from the host of the requester that activated it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Bytes relayed in both directions together.
    pub max_bytes: u64,
    pub max_duration: Duration,
    /// Bytes per second in both directions together, after a first second's worth; 0: no limit.
    pub bytes_per_second: u64,
}

/// Why a connection was not put in the table (the SOCKS5 reply it gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Both parties of this address are connected already.
    Taken,
    /// The table is full.
    Full,
    /// The client's address has too many connections waiting.
    AddressFull,
}

impl Refusal {
    pub fn reply(self) -> Reply {
        match self {
            Refusal::Taken => Reply::NotAllowed,
            Refusal::Full | Refusal::AddressFull => Reply::GeneralFailure,
        }
    }
}

/// Why an activation failed (§5.3.5's conditions, and the proxy's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateError {
    /// No connection waits under this address: wrong SID, requester or target.
    NotFound,
    /// Only one party is connected.
    OneParty,
    /// The proxy relays as many transfers as it may.
    Busy,
    /// The requester has as many transfers as one user may.
    UserBusy,
}

struct Waiting<C> {
    conns: Vec<(C, IpAddr)>,
    since: Instant,
}

/// The waiting connections by DST.ADDR, and the transfers being relayed, with the counts
/// their limits need. Generic over the connection so its rules are tested without sockets.
pub struct Table<C, U = String> {
    waiting: HashMap<String, Waiting<C>>,
    per_address: HashMap<IpAddr, usize>,
    active: usize,
    per_user: HashMap<U, usize>,
}

impl<C, U> Default for Table<C, U> {
    fn default() -> Self {
        Table {
            waiting: HashMap::new(),
            per_address: HashMap::new(),
            active: 0,
            per_user: HashMap::new(),
        }
    }
}

impl<C, U: Eq + Hash + Clone> Table<C, U> {
    /// Whether a connection from `ip` for `key` would be taken.
    pub fn check(&self, key: &str, ip: IpAddr, limits: &ListenerLimits) -> Result<(), Refusal> {
        match self.waiting.get(key) {
            Some(w) if w.conns.len() >= 2 => return Err(Refusal::Taken),
            None if self.waiting.len() >= limits.max_pending => return Err(Refusal::Full),
            _ => {}
        }
        if self.per_address.get(&ip).copied().unwrap_or(0) >= limits.pending_per_address {
            return Err(Refusal::AddressFull);
        }
        Ok(())
    }

    /// Puts a connection in the table: the first for `key` waits, the second joins it.
    pub fn offer(
        &mut self,
        key: String,
        conn: C,
        ip: IpAddr,
        now: Instant,
        limits: &ListenerLimits,
    ) -> Result<(), (Refusal, C)> {
        if let Err(r) = self.check(&key, ip, limits) {
            return Err((r, conn));
        }
        *self.per_address.entry(ip).or_default() += 1;
        self.waiting
            .entry(key)
            .or_insert_with(|| Waiting {
                conns: Vec::with_capacity(2),
                since: now,
            })
            .conns
            .push((conn, ip));
        Ok(())
    }

    /// Takes both connections of `key` out of the table for a transfer of `user`, counted
    /// until [`finished`](Self::finished).
    pub fn activate(
        &mut self,
        key: &str,
        user: &U,
        max_transfers: usize,
        max_per_user: usize,
    ) -> Result<(C, C), ActivateError> {
        match self.waiting.get(key) {
            None => return Err(ActivateError::NotFound),
            Some(w) if w.conns.len() < 2 => return Err(ActivateError::OneParty),
            Some(_) => {}
        }
        if self.active >= max_transfers {
            return Err(ActivateError::Busy);
        }
        if self.per_user.get(user).copied().unwrap_or(0) >= max_per_user {
            return Err(ActivateError::UserBusy);
        }
        let w = self.waiting.remove(key).ok_or(ActivateError::NotFound)?;
        let mut conns = Vec::with_capacity(2);
        for (c, ip) in w.conns {
            self.release(ip);
            conns.push(c);
        }
        let (Some(b), Some(a)) = (conns.pop(), conns.pop()) else {
            return Err(ActivateError::OneParty);
        };
        self.active += 1;
        *self.per_user.entry(user.clone()).or_default() += 1;
        Ok((a, b))
    }

    /// A transfer of `user` ended.
    pub fn finished(&mut self, user: &U) {
        self.active = self.active.saturating_sub(1);
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    /// Removes the entries that have waited `timeout` or longer; the caller drops (closes)
    /// their connections.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<C> {
        let old: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in old {
            if let Some(w) = self.waiting.remove(&k) {
                for (c, ip) in w.conns {
                    self.release(ip);
                    out.push(c);
                }
            }
        }
        out
    }

    fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn active(&self) -> usize {
        self.active
    }
}

/// One SOCKS5 listener and its table, shared by the hosts that name its address.
pub struct Proxy {
    local: SocketAddr,
    /// Bound when the hosts are built, served once the server starts.
    listener: Mutex<Option<std::net::TcpListener>>,
    limits: ListenerLimits,
    table: Mutex<Table<TcpStream>>,
    /// Connections in the SOCKS5 handshake.
    negotiating: AtomicUsize,
}

impl Proxy {
    /// Binds `address` now, so a port in use is an error at start and port 0 is known.
    pub fn bind(address: SocketAddr, limits: ListenerLimits) -> std::io::Result<Proxy> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(Proxy {
            local: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            limits,
            table: Mutex::new(Table::default()),
            negotiating: AtomicUsize::new(0),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The bound listener, once (to serve it).
    pub fn take_listener(&self) -> Option<std::net::TcpListener> {
        self.listener.lock().take()
    }

    /// Activates the bytestream waiting under `key` for `user` (a bare JID).
    pub fn activate(
        self: &Arc<Self>,
        key: &str,
        user: &str,
        max_per_user: usize,
    ) -> Result<(TcpStream, TcpStream, TransferSlot), ActivateError> {
        let user = user.to_owned();
        let (a, b) =
            self.table
                .lock()
                .activate(key, &user, self.limits.max_transfers, max_per_user)?;
        Ok((
            a,
            b,
            TransferSlot {
                proxy: self.clone(),
                user,
            },
        ))
    }

    /// Accepts connections until the task is dropped; each runs its handshake in a task of
    /// its own through `spawn`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: let connections close before trying again.
                    tracing::warn!(error = %e, "proxy65: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The handshakes in flight are bounded like the waiting connections.
            let cap = self.limits.max_pending.saturating_mul(2);
            if self.negotiating.fetch_add(1, Ordering::AcqRel) >= cap {
                self.negotiating.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%peer, "proxy65: too many connections in handshake");
                continue;
            }
            let proxy = self.clone();
            spawn(Box::pin(async move {
                let result =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy.clone().accept(stream, peer))
                        .await;
                proxy.negotiating.fetch_sub(1, Ordering::AcqRel);
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "proxy65: connection refused"),
                    Err(_) => tracing::debug!(%peer, "proxy65: handshake timed out"),
                }
            }));
        }
    }

    async fn accept(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let key = match negotiate(&mut stream).await {
            Ok(key) => key,
            Err(e) => {
                linger(stream).await;
                return Err(e);
            }
        };
        let ip = peer.ip();
        let checked = self.table.lock().check(&key, ip, &self.limits);
        if let Err(r) = checked {
            let _ = stream.write_all(&socks5::reply(r.reply(), &key)).await;
            linger(stream).await;
            return Err(format!("{r:?}"));
        }
        stream
            .write_all(&socks5::reply(Reply::Succeeded, &key))
            .await
            .map_err(|e| e.to_string())?;
        let offered = self
            .table
            .lock()
            .offer(key, stream, ip, Instant::now(), &self.limits);
        // Taken by another connection since the check: this one closes.
        offered.map_err(|(r, _)| format!("{r:?}"))
    }

    /// Drops waiting connections older than the pending timeout, every second, until the
    /// task is dropped or the proxy is gone.
    pub async fn sweep(proxy: Weak<Self>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            let Some(proxy) = proxy.upgrade() else { return };
            let expired = proxy
                .table
                .lock()
                .expire(Instant::now(), proxy.limits.pending_timeout);
            if !expired.is_empty() {
                tracing::debug!(
                    connections = expired.len(),
                    "proxy65: closed connections that waited too long"
                );
            }
        }
    }
}

/// A transfer being relayed, counted until this is dropped.
pub struct TransferSlot {
    proxy: Arc<Proxy>,
    user: String,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        self.proxy.table.lock().finished(&self.user);
    }
}

/// Closes a refused connection so that its reply arrives: closing a socket with unread
/// input resets it, and a reset may discard the reply before the client reads it. So the
/// sending side closes first and a little of what the client still sends is read away.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 512];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Runs the server side of the handshake on `s`: the method selection, then the request.
/// Returns DST.ADDR; refusals get their reply before the error is returned.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<String, String> {
    let mut buf = Vec::with_capacity(2 + 255);
    loop {
        match socks5::parse_greeting(&buf) {
            Ok(Parsed::Need(n)) => read_more(s, &mut buf, n).await?,
            Ok(Parsed::Done(())) => break,
            Err(e) => {
                if e == Socks5Error::NoAcceptableMethod {
                    let _ = s
                        .write_all(&socks5::method_reply(socks5::NO_ACCEPTABLE_METHOD))
                        .await;
                }
                return Err(e.to_string());
            }
        }
    }
    s.write_all(&socks5::method_reply(socks5::NO_AUTH))
        .await
        .map_err(|e| e.to_string())?;
    buf.clear();
    loop {
        match socks5::parse_request(&buf) {
            Ok(Parsed::Need(n)) => read_more(s, &mut buf, n).await?,
            Ok(Parsed::Done(addr)) => return Ok(addr),
            Err(e) => {
                if let Some(r) = e.reply() {
                    let _ = s.write_all(&socks5::reply(r, "")).await;
                }
                return Err(e.to_string());
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<(), String> {
    let at = buf.len();
    buf.resize(at + n, 0);
    s.read_exact(&mut buf[at..])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// The transfer's byte limit was reached; both connections were closed.
    ByteLimit,
    /// The transfer's time ran out.
    TimeLimit,
    Failed(std::io::Error),
}

/// What both directions of a relay count against.
struct Meter {
    limits: TransferLimits,
    relayed: AtomicU64,
    start: tokio::time::Instant,
}

impl Meter {
    /// Takes up to `n` bytes from the transfer's allowance; how many may be sent.
    fn take(&self, n: usize) -> u64 {
        let want = n as u64;
        let mut granted = 0;
        let _ = self
            .relayed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| {
                granted = want.min(self.limits.max_bytes.saturating_sub(done));
                Some(done + granted)
            });
        granted
    }

    /// Waits until the bytes relayed so far fit the rate (after a first second's worth).
    async fn pace(&self) {
        let rate = self.limits.bytes_per_second;
        if rate == 0 {
            return;
        }
        let done = self.relayed.load(Ordering::Acquire);
        let ahead = done.saturating_sub(rate);
        let due = self.start + Duration::from_secs_f64(ahead as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}

/// Relays between `a` and `b` in both directions within `limits`.
pub async fn relay<A, B>(a: A, b: B, limits: TransferLimits) -> (RelayEnd, u64)
where
    A: AsyncRead + AsyncWrite + Send + 'static,
    B: AsyncRead + AsyncWrite + Send + 'static,
{
    let meter = Meter {
        limits,
        relayed: AtomicU64::new(0),
        start: tokio::time::Instant::now(),
    };
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let both = async { tokio::try_join!(pipe(ar, bw, &meter), pipe(br, aw, &meter)) };
    let end = match tokio::time::timeout(limits.max_duration, both).await {
        Ok(Ok(_)) => RelayEnd::Closed,
        Ok(Err(Stop::Limit)) => RelayEnd::ByteLimit,
        Ok(Err(Stop::Io(e))) => RelayEnd::Failed(e),
        Err(_) => RelayEnd::TimeLimit,
    };
    (end, meter.relayed.load(Ordering::Acquire))
}

enum Stop {
    Limit,
    Io(std::io::Error),
}

/// One direction: copies until the reader's end, then closes the writer's side.
async fn pipe<R, W>(mut r: R, mut w: W, meter: &Meter) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = r.read(&mut buf).await.map_err(Stop::Io)?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        let granted = meter.take(n) as usize;
        if granted > 0 {
            meter.pace().await;
            w.write_all(&buf[..granted]).await.map_err(Stop::Io)?;
        }
        if granted < n {
            return Err(Stop::Limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LIMITS: ListenerLimits = ListenerLimits {
        pending_timeout: Duration::from_secs(60),
        max_transfers: 2,
        max_pending: 3,
        pending_per_address: 4,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn user(u: &str) -> String {
        u.to_owned()
    }

    #[test]
    fn the_second_connection_pairs_and_a_third_is_refused() {
        let now = Instant::now();
        let mut t: Table<u32> = Table::default();
        t.offer("k".into(), 1, ip(1), now, &LIMITS)
            .expect("first waits");
        assert_eq!(
            t.activate("k", &user("a"), 2, 2).unwrap_err(),
            ActivateError::OneParty
        );
        t.offer("k".into(), 2, ip(2), now, &LIMITS)
            .expect("second joins");
        assert_eq!(
            t.offer("k".into(), 3, ip(3), now, &LIMITS).unwrap_err().0,
            Refusal::Taken
        );
        assert_eq!(
            t.activate("other", &user("a"), 2, 2).unwrap_err(),
            ActivateError::NotFound
        );
        assert_eq!(t.activate("k", &user("a"), 2, 2), Ok((1, 2)));
        assert_eq!((t.waiting(), t.active()), (0, 1));
        // Activated once: the address is free again.
        assert_eq!(
            t.activate("k", &user("a"), 2, 2).unwrap_err(),
            ActivateError::NotFound
        );
        t.finished(&user("a"));
        assert_eq!(t.active(), 0);
        assert!(t.per_address.is_empty() && t.per_user.is_empty());
    }

    #[test]
    fn the_table_and_each_address_are_bounded() {
        let now = Instant::now();
        let mut t: Table<u32> = Table::default();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            t.offer((*k).into(), i as u32, ip(9), now, &LIMITS)
                .expect("room");
        }
        assert_eq!(
            t.offer("d".into(), 9, ip(1), now, &LIMITS).unwrap_err().0,
            Refusal::Full
        );
        // Joining a waiting entry adds no entry, but the address has its share.
        t.offer("a".into(), 4, ip(9), now, &LIMITS).expect("joins");
        assert_eq!(
            t.offer("b".into(), 5, ip(9), now, &LIMITS).unwrap_err().0,
            Refusal::AddressFull
        );
        t.offer("b".into(), 5, ip(1), now, &LIMITS)
            .expect("another address");
    }

    #[test]
    fn transfers_are_limited_in_total_and_per_user() {
        let now = Instant::now();
        let mut t: Table<u32> = Table::default();
        for k in ["a", "b", "c"] {
            t.offer(k.into(), 0, ip(1), now, &LIMITS).expect("room");
            t.offer(k.into(), 1, ip(2), now, &LIMITS).expect("room");
        }
        t.activate("a", &user("u"), 2, 1).expect("first of u");
        assert_eq!(
            t.activate("b", &user("u"), 2, 1).unwrap_err(),
            ActivateError::UserBusy
        );
        t.activate("b", &user("v"), 2, 1).expect("first of v");
        assert_eq!(
            t.activate("c", &user("w"), 2, 1).unwrap_err(),
            ActivateError::Busy
        );
        // Refused activations leave the entry waiting.
        assert_eq!(t.waiting(), 1);
        t.finished(&user("u"));
        t.activate("c", &user("w"), 2, 1).expect("room again");
    }

    #[test]
    fn waiting_entries_expire() {
        let now = Instant::now();
        let mut t: Table<u32> = Table::default();
        t.offer("old".into(), 1, ip(1), now, &LIMITS).expect("room");
        t.offer("old".into(), 2, ip(1), now, &LIMITS).expect("room");
        let later = now + Duration::from_secs(30);
        t.offer("new".into(), 3, ip(1), later, &LIMITS)
            .expect("room");
        let mut gone = t.expire(now + Duration::from_secs(60), Duration::from_secs(60));
        gone.sort();
        assert_eq!(gone, vec![1, 2]);
        assert_eq!(t.waiting(), 1);
        assert_eq!(t.per_address.get(&ip(1)), Some(&1));
    }

    #[tokio::test]
    async fn negotiate_reads_the_request_and_nothing_after() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let hash = socks5::dst_addr("s", "a@x/r", "b@y/r");
        let mut hello = vec![5, 1, 0, 5, 1, 0, 3, 40];
        hello.extend_from_slice(hash.as_bytes());
        hello.extend_from_slice(&[0, 0]);
        hello.extend_from_slice(b"data");
        client.write_all(&hello).await.expect("write");
        assert_eq!(negotiate(&mut server).await, Ok(hash));
        let mut method = [0u8; 2];
        client.read_exact(&mut method).await.expect("method");
        assert_eq!(method, [5, 0]);
        let mut rest = [0u8; 4];
        server
            .read_exact(&mut rest)
            .await
            .expect("left for the relay");
        assert_eq!(&rest, b"data");
    }

    #[tokio::test]
    async fn negotiate_refuses_with_the_reply_owed() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&[5, 1, 2])
            .await
            .expect("username/password only");
        assert!(negotiate(&mut server).await.is_err());
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply, [5, 0xFF]);

        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80])
            .await
            .expect("an IPv4 CONNECT");
        assert!(negotiate(&mut server).await.is_err());
        let mut reply = [0u8; 9];
        client.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply, [5, 0, 5, 8, 0, 3, 0, 0, 0]);
    }

    fn limits(max_bytes: u64, bytes_per_second: u64) -> TransferLimits {
        TransferLimits {
            max_bytes,
            max_duration: Duration::from_secs(10),
            bytes_per_second,
        }
    }

    #[tokio::test]
    async fn relay_copies_both_ways_until_both_close() {
        let (mut a, a_proxy) = tokio::io::duplex(64 * 1024);
        let (mut b, b_proxy) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(relay(a_proxy, b_proxy, limits(1 << 20, 0)));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.expect("write");
            a.shutdown().await.expect("close");
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.expect("read");
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
        b.write_all(b"thanks").await.expect("answer");
        b.shutdown().await.expect("close");
        assert_eq!(writer.await.expect("writer"), b"thanks");
        let (end, bytes) = task.await.expect("relay");
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(bytes, 100_006);
    }

    #[tokio::test]
    async fn relay_stops_at_the_byte_limit() {
        let (mut a, a_proxy) = tokio::io::duplex(64 * 1024);
        let (mut b, b_proxy) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(relay(a_proxy, b_proxy, limits(1000, 0)));
        let _ = a.write_all(&[7u8; 5000]).await;
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("closed at the limit");
        assert_eq!(got, vec![7u8; 1000]);
        let (end, bytes) = task.await.expect("relay");
        assert!(matches!(end, RelayEnd::ByteLimit), "{end:?}");
        assert_eq!(bytes, 1000);
    }

    #[tokio::test]
    async fn relay_keeps_to_the_rate() {
        let (mut a, a_proxy) = tokio::io::duplex(64 * 1024);
        let (mut b, b_proxy) = tokio::io::duplex(64 * 1024);
        // A second's worth at once, then 20 000 bytes at 20 000 per second.
        let task = tokio::spawn(relay(a_proxy, b_proxy, limits(1 << 20, 20_000)));
        let started = std::time::Instant::now();
        a.write_all(&[1u8; 40_000]).await.expect("write");
        a.shutdown().await.expect("close");
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        b.shutdown().await.expect("close");
        assert_eq!(got.len(), 40_000);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
        let _ = task.await;
    }

    #[tokio::test]
    async fn relay_ends_when_the_time_is_up() {
        let (_a, a_proxy) = tokio::io::duplex(1024);
        let (_b, b_proxy) = tokio::io::duplex(1024);
        let (end, _) = relay(
            a_proxy,
            b_proxy,
            TransferLimits {
                max_bytes: 1000,
                max_duration: Duration::from_millis(50),
                bytes_per_second: 0,
            },
        )
        .await;
        assert!(matches!(end, RelayEnd::TimeLimit), "{end:?}");
    }
}

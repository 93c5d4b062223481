//! What the built-in TURN server allows: whose credentials it accepts ([`Gate`],
//! [`RestAuth`]), how many allocations there may be ([`Admission`]), where relayed addresses
//! come from ([`RelayPorts`]) and how much one relay may carry, to whom ([`RelayConn`]).
//!
//! The `turn` crate asks an [`AuthHandler`] for the key of every authenticated request and a
//! [`RelayAddressGenerator`] for the socket of every new allocation, and reads requests from
//! the listening socket it is given. Rookery gives it a [`Gate`] in front of that socket,
//! which reads each request first: it answers bad credentials with 401 and an allocation
//! beyond a quota with 486 or 508 itself, as RFC 8489 §9.2.4 and RFC 8656 §7.2 say (the
//! crate answers the first with a 400 that clients ignore, and cannot refuse the second),
//! and notes whose Allocate request it lets through. The crate handles one listening
//! socket's datagrams one at a time, creating an allocation before it reads the next, so
//! when the generator is asked for a relay the note names that allocation's user.

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use parking_lot::Mutex;
use sha1::Sha1;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use turn::auth::AuthHandler;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

/// Allocation counts, in total and per user.
pub struct Admission {
    secret: String,
    max_total: usize,
    max_per_user: usize,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
    /// The user of the request last authenticated (see the module's comment).
    current_user: Option<String>,
}

/// Why an allocation is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoUser,
    ServerFull,
    UserQuota,
}

impl Admission {
    pub fn new(secret: String, max_total: usize, max_per_user: usize) -> Self {
        Admission {
            secret,
            max_total,
            max_per_user,
            state: Mutex::new(Counts::default()),
        }
    }

    /// The key (RFC 8489 §9.2.2: MD5 of `username:realm:password`) for a TURN REST API
    /// username `<expiry>:<user>`, whose password is base64(HMAC-SHA1(secret, username));
    /// `None` for a malformed or expired username.
    pub fn key_for(&self, username: &str, realm: &str, now_unix: u64) -> Option<Vec<u8>> {
        let (expiry, user) = username.split_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        if expiry < now_unix || user.is_empty() {
            return None;
        }
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(self.secret.as_bytes()).ok()?;
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Some(turn::auth::generate_auth_key(username, realm, &password))
    }

    /// Whether `user` may have one more allocation; if so, notes them as the user of the
    /// allocation about to be made.
    pub fn check(&self, user: &str) -> Result<(), Refusal> {
        let mut s = self.state.lock();
        if s.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        if s.per_user.get(user).copied().unwrap_or(0) >= self.max_per_user {
            return Err(Refusal::UserQuota);
        }
        s.current_user = Some(user.to_owned());
        Ok(())
    }

    /// Counts a new allocation for the user noted by [`Admission::check`], within the quotas.
    pub fn admit(self: &Arc<Self>) -> Result<Lease, Refusal> {
        let mut s = self.state.lock();
        // Not taken: the crate may ask for several sockets for one request (it probes for an
        // even port, RFC 8656 §7.2 EVEN-PORT, dropping the probes at once).
        let user = s.current_user.clone().ok_or(Refusal::NoUser)?;
        if s.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        let mine = s.per_user.entry(user.clone()).or_default();
        if *mine >= self.max_per_user {
            return Err(Refusal::UserQuota);
        }
        *mine += 1;
        s.total += 1;
        Ok(Lease {
            admission: self.clone(),
            user,
        })
    }

    pub fn allocations(&self) -> usize {
        self.state.lock().total
    }

    fn release(&self, user: &str) {
        let mut s = self.state.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_user.remove(user);
            }
        }
    }
}

/// One counted allocation; dropping it gives the place back.
pub struct Lease {
    admission: Arc<Admission>,
    user: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.admission.release(&self.user);
    }
}

/// The crate's authentication hook, answered by [`Admission::key_for`].
pub struct RestAuth(pub Arc<Admission>);

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.0
            .key_for(username, realm, now_unix())
            .ok_or_else(|| turn::Error::Other("expired or malformed TURN username".into()))
    }
}

/// Which peers a relay may exchange datagrams with.
#[derive(Debug, Clone)]
pub struct PeerFilter {
    allow_loopback: bool,
    denied: Vec<IpNet>,
}

impl PeerFilter {
    /// `Err` names the first entry of `denied` that is not a network.
    pub fn new(allow_loopback: bool, denied: &[String]) -> Result<Self, String> {
        let denied = denied
            .iter()
            .map(|d| d.parse::<IpNet>().map_err(|_| d.clone()))
            .collect::<Result<_, _>>()?;
        Ok(PeerFilter {
            allow_loopback,
            denied,
        })
    }

    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            // An IPv4 peer written as IPv6 is judged as the IPv4 address it is.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        let never = peer.is_unspecified()
            || peer.is_multicast()
            || matches!(peer, IpAddr::V4(v4) if v4.is_broadcast());
        if never || (peer.is_loopback() && !self.allow_loopback) {
            return false;
        }
        !self.denied.iter().any(|n| n.contains(&peer))
    }
}

/// What one allocation may relay.
#[derive(Debug)]
pub struct RelayLimits {
    pub max_bytes: u64,
    pub bytes_per_second: u64,
    pub peers: PeerFilter,
}

/// A relay's account: a token bucket of one second's bytes, and the bytes relayed so far.
/// (Not [`crate::budget::Budget`], whose tokens come one per whole millisecond or slower:
/// bytes come millions a second.)
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    relayed: u64,
    spent: bool,
}

/// The crate's relay-address hook: UDP sockets from the configured port range, each wrapped
/// in a [`RelayConn`] that holds the allocation's [`Lease`] and enforces its limits.
pub struct RelayPorts {
    pub admission: Arc<Admission>,
    pub limits: Arc<RelayLimits>,
    pub bind_ip: IpAddr,
    pub public_ip: IpAddr,
    pub min_port: u16,
    pub max_port: u16,
}

/// Random ports tried before an allocation is refused for want of one.
const PORT_TRIES: usize = 32;

/// The kernel buffer asked for a relay socket. Media arrives in bursts (a video frame is
/// several datagrams at once) and the default buffer (about 200 KiB) overflows under many
/// allocations; the kernel caps the request at `net.core.rmem_max`/`wmem_max`.
pub const RELAY_SOCKET_BUFFER: usize = 1 << 20;
/// The same for the listening socket, which every client's datagrams share.
pub const LISTEN_SOCKET_BUFFER: usize = 8 << 20;

/// Asks for larger kernel buffers; a refusal leaves the defaults, which work, only with more
/// loss under load.
pub fn enlarge_buffers(socket: &UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(bytes)
        .and_then(|()| s.set_send_buffer_size(bytes))
    {
        tracing::debug!(error = %e, "UDP buffer size not changed");
    }
}

#[async_trait]
impl RelayAddressGenerator for RelayPorts {
    fn validate(&self) -> Result<(), turn::Error> {
        if self.min_port == 0 || self.max_port < self.min_port {
            return Err(turn::Error::Other("bad relay port range".into()));
        }
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.bind_ip.is_ipv4() {
            return Err(turn::Error::Other("address family not served".into()));
        }
        let lease = self.admission.admit().map_err(|r| {
            tracing::info!(refusal = ?r, "TURN allocation refused");
            turn::Error::Other(format!("{r:?}"))
        })?;
        let socket = if requested_port != 0 {
            UdpSocket::bind(SocketAddr::new(self.bind_ip, requested_port))
                .await
                .map_err(|e| turn::Error::Other(e.to_string()))?
        } else {
            let mut bound = None;
            for _ in 0..PORT_TRIES {
                let port =
                    rand::Rng::gen_range(&mut rand::thread_rng(), self.min_port..=self.max_port);
                if let Ok(s) = UdpSocket::bind(SocketAddr::new(self.bind_ip, port)).await {
                    bound = Some(s);
                    break;
                }
            }
            bound.ok_or_else(|| turn::Error::Other("no free relay port".into()))?
        };
        enlarge_buffers(&socket, RELAY_SOCKET_BUFFER);
        let port = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?
            .port();
        let conn = RelayConn {
            socket,
            limits: self.limits.clone(),
            bucket: Mutex::new(Bucket {
                tokens: self.limits.bytes_per_second as f64,
                last: Instant::now(),
                relayed: 0,
                spent: false,
            }),
            lease: Mutex::new(Some(lease)),
        };
        Ok((Arc::new(conn), SocketAddr::new(self.public_ip, port)))
    }
}

/// An allocation's relay socket, with its limits.
pub struct RelayConn {
    socket: UdpSocket,
    limits: Arc<RelayLimits>,
    bucket: Mutex<Bucket>,
    lease: Mutex<Option<Lease>>,
}

/// What to do with a datagram.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Relay,
    Drop,
    /// The allocation's bytes are spent: it ends.
    Spent,
}

impl RelayConn {
    fn judge(&self, peer: SocketAddr, len: usize) -> Verdict {
        if !self.limits.peers.allows(peer.ip()) {
            return Verdict::Drop;
        }
        let mut b = self.bucket.lock();
        if b.spent || b.relayed + len as u64 > self.limits.max_bytes {
            b.spent = true;
            return Verdict::Spent;
        }
        let now = Instant::now();
        let rate = self.limits.bytes_per_second as f64;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens < len as f64 {
            return Verdict::Drop;
        }
        b.tokens -= len as f64;
        b.relayed += len as u64;
        Verdict::Relay
    }
}

fn spent() -> webrtc_util::Error {
    webrtc_util::Error::Other("the allocation's relayed bytes are spent".into())
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.recv_from(buf).await?.0)
    }

    /// From a peer to the client: datagrams the limits refuse are dropped here, so the crate
    /// never sees them; once the bytes are spent, an error ends the allocation's relay.
    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            match self.judge(from, n) {
                Verdict::Relay => return Ok((n, from)),
                Verdict::Drop => continue,
                Verdict::Spent => return Err(spent()),
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send(buf).await?)
    }

    /// From the client to a peer: a refused datagram is dropped (UDP promises nothing).
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        match self.judge(target, buf.len()) {
            Verdict::Relay => Ok(self.socket.send_to(buf, target).await?),
            Verdict::Drop => Ok(buf.len()),
            Verdict::Spent => Err(spent()),
        }
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The allocation is over: its place is given back now (the socket closes when the
    /// crate's last handle on it goes).
    async fn close(&self) -> Result<(), webrtc_util::Error> {
        self.lease.lock().take();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The listening socket as the crate sees it: requests with bad credentials or beyond a
/// quota are answered here and never reach the crate (see the module's comment).
pub struct Gate {
    pub socket: UdpSocket,
    pub admission: Arc<Admission>,
}

/// What the gate does with a datagram.
#[derive(Debug, PartialEq)]
enum Pass {
    /// To the crate.
    On,
    /// Answered here with this message.
    Answer(Vec<u8>),
}

impl Gate {
    fn inspect(&self, datagram: &[u8], now_unix: u64) -> Pass {
        use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        use stun::message::{Message, CLASS_REQUEST, METHOD_ALLOCATE};
        use stun::textattrs::TextAttribute;
        // ChannelData and anything else that is not a STUN message passes: the crate reads
        // (or discards) it, and only requests carry credentials.
        if !stun::message::is_message(datagram) {
            return Pass::On;
        }
        let mut m = Message::new();
        if m.unmarshal_binary(datagram).is_err()
            || m.typ.class != CLASS_REQUEST
            || !m.contains(ATTR_MESSAGE_INTEGRITY)
        {
            return Pass::On;
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            TextAttribute::get_from_as(&m, ATTR_USERNAME),
            TextAttribute::get_from_as(&m, ATTR_REALM),
            TextAttribute::get_from_as(&m, ATTR_NONCE),
        ) else {
            // The crate answers a request that lacks them with 400, as it should.
            return Pass::On;
        };
        let key = self
            .admission
            .key_for(&username.text, &realm.text, now_unix);
        let verified = key.filter(|k| {
            stun::integrity::MessageIntegrity(k.clone())
                .check(&mut m.clone())
                .is_ok()
        });
        let Some(key) = verified else {
            // RFC 8489 §9.2.4: a username not valid now, or a wrong MESSAGE-INTEGRITY, is 401,
            // with the realm and a nonce to try again with (the request's, which the crate
            // still knows or answers 438 to).
            return Pass::Answer(error_response(
                &m,
                stun::error_code::CODE_UNAUTHORIZED,
                vec![
                    Box::new(TextAttribute::new(ATTR_REALM, realm.text)),
                    Box::new(TextAttribute::new(ATTR_NONCE, nonce.text)),
                ],
                None,
            ));
        };
        if m.typ.method == METHOD_ALLOCATE {
            let user = username
                .text
                .split_once(':')
                .map(|(_, u)| u)
                .unwrap_or_default();
            if let Err(refusal) = self.admission.check(user) {
                tracing::info!(user, ?refusal, "TURN allocation refused");
                let code = match refusal {
                    Refusal::UserQuota => stun::error_code::CODE_ALLOC_QUOTA_REACHED,
                    Refusal::ServerFull | Refusal::NoUser => {
                        stun::error_code::CODE_INSUFFICIENT_CAPACITY
                    }
                };
                return Pass::Answer(error_response(&m, code, Vec::new(), Some(key)));
            }
        }
        Pass::On
    }
}

/// An error response to `request`, signed with `key` when the request was authenticated
/// (RFC 8489 §9.2.5: responses to an authenticated request carry MESSAGE-INTEGRITY).
fn error_response(
    request: &stun::message::Message,
    code: stun::error_code::ErrorCode,
    mut attrs: Vec<Box<dyn stun::message::Setter>>,
    key: Option<Vec<u8>>,
) -> Vec<u8> {
    use stun::message::{Message, MessageType, CLASS_ERROR_RESPONSE};
    let mut setters: Vec<Box<dyn stun::message::Setter>> = vec![
        Box::new(Message {
            transaction_id: request.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(stun::error_code::ErrorCodeAttribute {
            code,
            reason: Vec::new(),
        }),
    ];
    setters.append(&mut attrs);
    if let Some(key) = key {
        setters.push(Box::new(stun::integrity::MessageIntegrity(key)));
    }
    setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    let mut out = Message::new();
    match out.build(&setters) {
        Ok(()) => out.raw,
        // Only a setter's own failure (none of these fail on valid input) gets here.
        Err(_) => Vec::new(),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[async_trait]
impl Conn for Gate {
    async fn connect(&self, addr: SocketAddr) -> Result<(), webrtc_util::Error> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), webrtc_util::Error> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            match self.inspect(&buf[..n], now_unix()) {
                Pass::On => return Ok((n, from)),
                Pass::Answer(answer) => {
                    if !answer.is_empty() {
                        // A lost answer is a lost datagram: the client retransmits.
                        let _ = self.socket.send_to(&answer, from).await;
                    }
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> Result<SocketAddr, webrtc_util::Error> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest_password(secret: &str, username: &str) -> String {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn keys_follow_the_rest_api_and_refuse_expired_names() {
        let a = Admission::new("north".into(), 10, 2);
        let name = "1700000000:alice@example.org";
        let key = a
            .key_for(name, "example.org", 1_600_000_000)
            .expect("valid");
        let password = rest_password("north", name);
        assert_eq!(
            password, "PZI+z4ibN1IQ7v4pzuL4fO8lnhI=",
            "the extdisco test vector"
        );
        assert_eq!(
            key,
            turn::auth::generate_auth_key(name, "example.org", &password)
        );
        assert!(
            a.key_for(name, "example.org", 1_700_000_001).is_none(),
            "expired"
        );
        assert!(a.key_for("alice", "example.org", 0).is_none(), "no expiry");
        assert!(a.key_for("soon:alice", "example.org", 0).is_none());
        assert!(
            a.key_for("1700000000:", "example.org", 0).is_none(),
            "no user"
        );
    }

    #[test]
    fn quotas_count_per_user_and_in_total_and_leases_give_back() {
        let a = Arc::new(Admission::new("s".into(), 3, 2));
        assert_eq!(a.admit().err(), Some(Refusal::NoUser));
        let admit = |user: &str| {
            a.check(user)?;
            a.admit()
        };
        let l1 = admit("alice@x").expect("first");
        let _l2 = admit("alice@x").expect("second");
        assert_eq!(admit("alice@x").err(), Some(Refusal::UserQuota));
        drop(l1);
        let _l3 = admit("alice@x").expect("a place again");
        let _b1 = admit("bob@x").expect("bob's first");
        assert_eq!(a.allocations(), 3);
        assert_eq!(admit("carol@x").err(), Some(Refusal::ServerFull));
    }

    #[test]
    fn peers_on_this_machine_and_denied_networks_are_refused() {
        let f = PeerFilter::new(false, &["10.0.0.0/8".into(), "fd00::/8".into()]).expect("nets");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(f.allows(ip("198.51.100.7")));
        assert!(f.allows(ip("2001:db8::1")));
        for refused in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "10.1.2.3",
            "fd12::5",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!f.allows(ip(refused)), "{refused}");
        }
        let tests = PeerFilter::new(true, &[]).expect("none");
        assert!(tests.allows(ip("127.0.0.1")));
        assert!(!tests.allows(ip("0.0.0.0")));
        assert_eq!(
            PeerFilter::new(false, &["ten".into()]).err(),
            Some("ten".to_owned())
        );
    }

    #[tokio::test]
    async fn a_relay_drops_beyond_its_rate_and_ends_when_spent() {
        let a = Arc::new(Admission::new("s".into(), 10, 10));
        a.check("alice@x").expect("room");
        let limits = Arc::new(RelayLimits {
            max_bytes: 3000,
            bytes_per_second: 1000,
            peers: PeerFilter::new(true, &[]).expect("filter"),
        });
        let ports = RelayPorts {
            admission: a.clone(),
            limits,
            bind_ip: "127.0.0.1".parse().expect("ip"),
            public_ip: "192.0.2.1".parse().expect("ip"),
            min_port: 40000,
            max_port: 60000,
        };
        let (conn, announced) = ports.allocate_conn(true, 0).await.expect("relay");
        assert_eq!(announced.ip(), "192.0.2.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(a.allocations(), 1);
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        let to = peer.local_addr().expect("addr");
        let relay = conn
            .as_any()
            .downcast_ref::<RelayConn>()
            .expect("our relay");
        assert_eq!(relay.judge(to, 600), Verdict::Relay);
        assert_eq!(
            relay.judge(to, 600),
            Verdict::Drop,
            "beyond one second's bytes"
        );
        assert_eq!(
            relay.judge(to, 2500),
            Verdict::Spent,
            "beyond the allocation's bytes"
        );
        assert!(conn.send_to(b"x", to).await.is_err(), "spent stays spent");
        conn.close().await.expect("close");
        assert_eq!(a.allocations(), 0, "closing gives the place back");
    }

    fn allocate_request(username: &str, password: &str) -> Vec<u8> {
        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        use stun::message::{Message, MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE};
        use stun::textattrs::TextAttribute;
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.into())),
            Box::new(TextAttribute::new(ATTR_REALM, "x".into())),
            Box::new(TextAttribute::new(ATTR_NONCE, "n0".into())),
            Box::new(stun::integrity::MessageIntegrity::new_long_term_integrity(
                username.into(),
                "x".into(),
                password.into(),
            )),
        ];
        m.build(&setters).expect("request");
        m.raw
    }

    fn error_code_of(answer: &[u8]) -> (u16, bool) {
        use stun::message::Getter;
        let mut m = stun::message::Message::new();
        m.unmarshal_binary(answer).expect("a STUN message");
        let mut code = stun::error_code::ErrorCodeAttribute::default();
        code.get_from(&m).expect("an error code");
        let signed = m.contains(stun::attributes::ATTR_MESSAGE_INTEGRITY);
        (code.code.0, signed)
    }

    #[tokio::test]
    async fn the_gate_answers_bad_credentials_and_quotas_itself() {
        let admission = Arc::new(Admission::new("north".into(), 10, 1));
        let gate = Gate {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("socket"),
            admission: admission.clone(),
        };
        let name = "1700000000:alice@x";
        let good = allocate_request(name, &rest_password("north", name));
        assert_eq!(gate.inspect(&good, 1_600_000_000), Pass::On);
        let _lease = admission.admit().expect("the allocation the crate makes");
        match gate.inspect(&good, 1_600_000_000) {
            Pass::Answer(a) => assert_eq!(error_code_of(&a), (486, true), "quota, signed"),
            Pass::On => panic!("beyond the quota"),
        }
        let wrong = allocate_request(name, "guess");
        match gate.inspect(&wrong, 1_600_000_000) {
            Pass::Answer(a) => assert_eq!(error_code_of(&a), (401, false)),
            Pass::On => panic!("a wrong password"),
        }
        match gate.inspect(&good, 1_700_000_001) {
            Pass::Answer(a) => assert_eq!(error_code_of(&a).0, 401, "expired"),
            Pass::On => panic!("an expired username"),
        }
        assert_eq!(
            gate.inspect(b"\x40\x00\x00\x04abcd", 0),
            Pass::On,
            "ChannelData passes"
        );
    }
}

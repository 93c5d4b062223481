//! The server side of the SOCKS5 handshake (RFC 1928) as XEP-0065 uses it, without I/O:
//! a greeting offering "no authentication" (method X'00'), then a CONNECT (X'01') to a
//! domain name (ATYP X'03') that is the 40 hex digits of SHA1(SID + Requester JID + Target
//! JID), port 0 (§5.3.2, §8.2). The reply echoes that address as BND.ADDR and BND.PORT.
//!
//! SOCKS5 crates exist (general proxy servers and protocol codecs), but the part used here is
//! three short messages of fixed shape, read under the proxy's own limits; written out here
//! it is smaller than the glue to a general-purpose server, which is built to connect out
//! to the requested address, and it adds no dependency. The parsers ask for exactly the
//! bytes they still need, so the connection never reads past the handshake: anything a
//! client sends after its request stays in the socket for the relay.

use sha1::{Digest, Sha1};

/// The protocol version byte of every SOCKS5 message.
pub const VERSION: u8 = 5;
/// Method X'00': no authentication required.
pub const NO_AUTH: u8 = 0x00;
/// Method X'FF': no acceptable methods.
pub const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
/// Length of DST.ADDR: SHA-1 in hex.
pub const DST_ADDR_LEN: usize = 40;

/// Reply codes (RFC 1928 §6) this proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// What a parser made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// This many more bytes are needed (read exactly that many, then parse again).
    Need(usize),
    Done(T),
}

/// Why a handshake ends. `reply` is the answer the client should get before the connection
/// closes, when the request got that far.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    #[error("not SOCKS version 5")]
    Version,
    #[error("no authentication methods offered")]
    NoMethods,
    #[error("the client does not offer 'no authentication'")]
    NoAcceptableMethod,
    #[error("the reserved byte is not 0")]
    Reserved,
    #[error("command {0:#04x} is not CONNECT")]
    Command(u8),
    #[error("address type {0:#04x} is not a domain name")]
    AddressType(u8),
    #[error("the address is not 40 hex digits")]
    Address,
    #[error("port {0} is not 0")]
    Port(u16),
}

impl Socks5Error {
    /// The reply owed to a client whose CONNECT request was refused; `None` for a broken
    /// greeting (then the method reply, or nothing, is sent).
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Socks5Error::Version | Socks5Error::NoMethods | Socks5Error::NoAcceptableMethod => None,
            Socks5Error::Reserved => Some(Reply::GeneralFailure),
            Socks5Error::Command(_) => Some(Reply::CommandNotSupported),
            Socks5Error::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            Socks5Error::Address | Socks5Error::Port(_) => Some(Reply::NotAllowed),
        }
    }
}

/// The greeting: VER, NMETHODS, METHODS. Done when the client offers "no authentication".
pub fn parse_greeting(buf: &[u8]) -> Result<Parsed<()>, Socks5Error> {
    if buf.len() < 2 {
        return Ok(Parsed::Need(2 - buf.len()));
    }
    if buf[0] != VERSION {
        return Err(Socks5Error::Version);
    }
    let n = usize::from(buf[1]);
    if n == 0 {
        return Err(Socks5Error::NoMethods);
    }
    if buf.len() < 2 + n {
        return Ok(Parsed::Need(2 + n - buf.len()));
    }
    if buf[2..2 + n].contains(&NO_AUTH) {
        Ok(Parsed::Done(()))
    } else {
        Err(Socks5Error::NoAcceptableMethod)
    }
}

/// The request: VER, CMD, RSV, ATYP, then (for a domain) its length, the name and DST.PORT.
/// Done with DST.ADDR, lower-cased: the key both parties of a bytestream meet under.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<String>, Socks5Error> {
    const HEAD: usize = 5; // VER CMD RSV ATYP LEN
    if buf.is_empty() {
        return Ok(Parsed::Need(HEAD));
    }
    if buf[0] != VERSION {
        return Err(Socks5Error::Version);
    }
    if let Some(&cmd) = buf.get(1) {
        if cmd != CMD_CONNECT {
            return Err(Socks5Error::Command(cmd));
        }
    }
    if buf.get(2).is_some_and(|&r| r != 0) {
        return Err(Socks5Error::Reserved);
    }
    if let Some(&atyp) = buf.get(3) {
        if atyp != ATYP_DOMAIN {
            return Err(Socks5Error::AddressType(atyp));
        }
    }
    if buf.len() < HEAD {
        return Ok(Parsed::Need(HEAD - buf.len()));
    }
    let len = usize::from(buf[4]);
    if len != DST_ADDR_LEN {
        return Err(Socks5Error::Address);
    }
    let total = HEAD + len + 2;
    if buf.len() < total {
        return Ok(Parsed::Need(total - buf.len()));
    }
    let addr = &buf[HEAD..HEAD + len];
    if !addr.iter().all(u8::is_ascii_hexdigit) {
        return Err(Socks5Error::Address);
    }
    let port = u16::from_be_bytes([buf[HEAD + len], buf[HEAD + len + 1]]);
    if port != 0 {
        return Err(Socks5Error::Port(port));
    }
    Ok(Parsed::Done(
        String::from_utf8_lossy(addr).to_ascii_lowercase(),
    ))
}

/// The method selection message.
pub fn method_reply(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// A reply to a CONNECT request. BND.ADDR and BND.PORT are the request's DST.ADDR and port
/// 0 (§5.3.2), or an empty domain when the request was not understood.
pub fn reply(code: Reply, dst_addr: &str) -> Vec<u8> {
    let addr = dst_addr.as_bytes();
    let addr = &addr[..addr.len().min(255)];
    let mut out = Vec::with_capacity(7 + addr.len());
    out.extend_from_slice(&[VERSION, code as u8, 0, ATYP_DOMAIN, addr.len() as u8]);
    out.extend_from_slice(addr);
    out.extend_from_slice(&[0, 0]);
    out
}

/// DST.ADDR for a bytestream: hex SHA1(SID + Requester JID + Target JID) (§5.3.2).
pub fn dst_addr(sid: &str, requester: &str, target: &str) -> String {
    let mut h = Sha1::new();
    h.update(sid.as_bytes());
    h.update(requester.as_bytes());
    h.update(target.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "98b8d688d0f5d895fd41c5e7309a2e9e33ba32ff";

    fn request(cmd: u8, atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
        let mut r = vec![VERSION, cmd, 0, atyp, addr.len() as u8];
        r.extend_from_slice(addr);
        r.extend_from_slice(&port.to_be_bytes());
        r
    }

    /// Feeds `bytes` as a connection would: only as many as the parser asks for.
    fn drive<T>(
        bytes: &[u8],
        parse: fn(&[u8]) -> Result<Parsed<T>, Socks5Error>,
    ) -> (Result<T, Socks5Error>, usize) {
        let mut buf = Vec::new();
        loop {
            match parse(&buf) {
                Err(e) => return (Err(e), buf.len()),
                Ok(Parsed::Done(v)) => return (Ok(v), buf.len()),
                Ok(Parsed::Need(n)) => {
                    assert!(n > 0);
                    let end = buf.len() + n;
                    assert!(end <= bytes.len(), "asked past the input");
                    buf.extend_from_slice(&bytes[buf.len()..end]);
                }
            }
        }
    }

    #[test]
    fn dst_addr_of_the_spec_example() {
        // SID, Requester and Target of XEP-0065's mediated example; the digest was computed
        // independently (Python's hashlib).
        assert_eq!(
            dst_addr(
                "vxf9n471bn46",
                "requester@example.com/foo",
                "target@example.org/bar"
            ),
            HASH
        );
    }

    #[test]
    fn greeting_needs_no_auth_among_the_methods() {
        assert_eq!(drive(&[5, 1, 0], parse_greeting), (Ok(()), 3));
        assert_eq!(drive(&[5, 3, 2, 1, 0], parse_greeting), (Ok(()), 5));
        assert_eq!(
            drive(&[5, 2, 1, 2], parse_greeting).0,
            Err(Socks5Error::NoAcceptableMethod)
        );
        assert_eq!(
            drive(&[4, 1, 0], parse_greeting).0,
            Err(Socks5Error::Version)
        );
        assert_eq!(
            drive(&[5, 0], parse_greeting).0,
            Err(Socks5Error::NoMethods)
        );
        // An HTTP request is not a greeting.
        assert_eq!(parse_greeting(b"GE"), Err(Socks5Error::Version));
    }

    #[test]
    fn connect_to_the_hash_is_read_exactly() {
        let mut bytes = request(1, 3, HASH.as_bytes(), 0);
        bytes.extend_from_slice(b"early data stays in the socket");
        let (addr, used) = drive(&bytes, parse_request);
        assert_eq!(addr.as_deref(), Ok(HASH));
        assert_eq!(used, 5 + 40 + 2);
        let upper = request(1, 3, HASH.to_ascii_uppercase().as_bytes(), 0);
        assert_eq!(drive(&upper, parse_request).0.as_deref(), Ok(HASH));
    }

    #[test]
    fn other_requests_are_refused_with_their_reply() {
        let cases: [(Vec<u8>, Socks5Error); 6] = [
            (request(2, 3, HASH.as_bytes(), 0), Socks5Error::Command(2)),
            (
                request(1, 1, &[127, 0, 0, 1], 0),
                Socks5Error::AddressType(1),
            ),
            (request(1, 3, b"example.org", 0), Socks5Error::Address),
            (request(1, 3, &[b'g'; 40], 0), Socks5Error::Address),
            (request(1, 3, HASH.as_bytes(), 80), Socks5Error::Port(80)),
            ([5, 1, 1, 3, 40].to_vec(), Socks5Error::Reserved),
        ];
        for (bytes, want) in cases {
            let (got, used) = drive(&bytes, parse_request);
            assert_eq!(got, Err(want.clone()), "{bytes:?}");
            assert!(used <= bytes.len());
            assert!(want.reply().is_some());
        }
        // A refused command is known from its first two bytes.
        assert_eq!(parse_request(&[5, 3]), Err(Socks5Error::Command(3)));
        assert_eq!(parse_request(&[6]), Err(Socks5Error::Version));
    }

    #[test]
    fn replies_echo_the_address() {
        let r = reply(Reply::Succeeded, HASH);
        assert_eq!(&r[..5], &[5, 0, 0, 3, 40]);
        assert_eq!(&r[5..45], HASH.as_bytes());
        assert_eq!(&r[45..], &[0, 0]);
        assert_eq!(reply(Reply::NotAllowed, ""), vec![5, 2, 0, 3, 0, 0, 0]);
        assert_eq!(method_reply(NO_ACCEPTABLE_METHOD), [5, 0xFF]);
    }
}

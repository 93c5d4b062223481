//! TLS record protection for a client stream once rustls has done the handshake.
//!
//! rustls runs the handshake and derives the keys; this module frames, seals and opens the
//! records of the established connection with the keys rustls hands over
//! (`dangerous_extract_secrets`, the interface rustls offers for kernel TLS offload), using
//! ring's AEAD, the same code rustls's own record layer calls: TLS 1.3 records (RFC 8446
//! §5.2–5.5) with key updates (§4.6.3, §7.2, from the traffic secrets rustls's key log
//! gives), and TLS 1.2's AEAD suites (AES-GCM, RFC 5288; ChaCha20-Poly1305, RFC 7905).
//!
//! Why by hand: rustls's buffered connection keeps a 4 KiB receive buffer, its record
//! encrypters and decrypters with expanded keys, and the rest of its connection state for
//! the connection's whole life. Measured with 14,000 idle STARTTLS sessions, that was 7.8 KiB
//! per session beside 7.1 KiB for everything else a session holds, and an XMPP server holds
//! mostly idle sessions. Here an idle session holds its keys, secrets and sequence numbers and
//! no buffer: AEAD keys are expanded for each read or write (well under a microsecond), and a
//! partial record, decrypted bytes the reader has not taken and records the socket has not
//! taken are held only while they exist. rustls's unbuffered API would free the buffers too,
//! but offers no keying-material exporter (channel binding, RFC 9266), and kernel TLS is not
//! available everywhere. No crate offers a record layer over rustls's extracted keys.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest plaintext in one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest protected payload accepted: TLS 1.3 allows 2^14 + 256 (RFC 8446 §5.2), TLS 1.2
/// 2^14 + 2048 (RFC 5246 §6.2.3).
const MAX_PROTECTED_13: usize = MAX_PLAINTEXT + 256;
const MAX_PROTECTED_12: usize = MAX_PLAINTEXT + 2048;
/// How much is read from the socket at once when no record length asks for more.
const READ_CHUNK: usize = 4096;

const CT_CHANGE_CIPHER_SPEC: u8 = 20;
const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;

const HS_KEY_UPDATE: u8 = 24;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_NO_RENEGOTIATION: u8 = 100;

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

/// The AEAD of the negotiated cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    fn ring(self) -> &'static ring::aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &ring::aead::AES_128_GCM,
            Aead::Aes256Gcm => &ring::aead::AES_256_GCM,
            Aead::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        }
    }

    /// The TLS 1.3 suite's hash, which drives its key updates: SHA-384 for
    /// TLS_AES_256_GCM_SHA384, SHA-256 for the other two (RFC 8446 §B.4).
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Aead::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }
}

/// RFC 8446 §7.1: HKDF-Expand-Label(secret, label, "", out.len()).
fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    out: &mut [u8],
) -> io::Result<()> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len())
        .map_err(io::Error::other)?
        .to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(io::Error::other)?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(alg, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| io::Error::other("HKDF expansion failed"))
}

/// One direction's keys and the sequence number of its next record.
struct Direction {
    aead: Aead,
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 12],
    /// TLS 1.3: the traffic secret the keys come from, for key updates (RFC 8446 §7.2).
    secret: Option<Zeroizing<Vec<u8>>>,
    seq: u64,
    /// `secret` was checked against the keys (at the first update).
    secret_checked: bool,
}

impl Direction {
    /// From what rustls hands over, with the TLS 1.3 traffic secret its key log gave.
    fn new(
        seq: u64,
        secrets: ConnectionTrafficSecrets,
        secret: Option<Zeroizing<Vec<u8>>>,
    ) -> io::Result<Self> {
        let (aead, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Aead::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Aead::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Aead::Chacha20Poly1305, key, iv)
            }
            _ => return Err(io::Error::other("unsupported TLS cipher suite")),
        };
        let mut d = Direction {
            aead,
            key: Zeroizing::new([0u8; 32]),
            iv: iv
                .as_ref()
                .try_into()
                .map_err(|_| io::Error::other("bad TLS traffic IV"))?,
            secret,
            seq,
            secret_checked: false,
        };
        let key = key.as_ref();
        if key.len() != aead.ring().key_len() {
            return Err(io::Error::other("bad TLS traffic key"));
        }
        d.key[..key.len()].copy_from_slice(key);
        Ok(d)
    }

    /// RFC 8446 §7.2: the next traffic secret, its keys, and a sequence number from zero.
    ///
    /// The first time, the secret is checked against the keys rustls gave (done here rather
    /// than at the handshake, which every login pays for): a secret that is not this
    /// connection's is never used.
    fn update(&mut self) -> io::Result<()> {
        let Some(secret) = &self.secret else {
            return Err(io::Error::other("no traffic secret to update"));
        };
        let alg = self.aead.hkdf();
        let n = self.aead.ring().key_len();
        if !self.secret_checked {
            let (mut k, mut iv) = (Zeroizing::new([0u8; 32]), [0u8; 12]);
            expand_label(alg, secret, b"key", &mut k[..n])?;
            expand_label(alg, secret, b"iv", &mut iv)?;
            if k[..n] != self.key[..n] || iv != self.iv {
                return Err(io::Error::other(
                    "TLS traffic secret does not match the keys",
                ));
            }
        }
        let mut next = Zeroizing::new(vec![0u8; secret.len()]);
        expand_label(alg, secret, b"traffic upd", &mut next)?;
        expand_label(alg, &next, b"key", &mut self.key[..n])?;
        expand_label(alg, &next, b"iv", &mut self.iv)?;
        self.secret = Some(next);
        self.seq = 0;
        self.secret_checked = true;
        Ok(())
    }

    /// The expanded AEAD key; built per read or write, not kept, so an idle connection holds
    /// 32 bytes of key instead of ring's expanded key schedule.
    fn key(&self) -> io::Result<(LessSafeKey, [u8; 12])> {
        let n = self.aead.ring().key_len();
        let key = UnboundKey::new(self.aead.ring(), &self.key[..n])
            .map_err(|_| io::Error::other("bad TLS traffic key"))?;
        Ok((LessSafeKey::new(key), self.iv))
    }

    fn is_gcm(&self) -> bool {
        self.aead != Aead::Chacha20Poly1305
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes
    /// (RFC 8446 §5.3; RFC 7905 §2; for TLS 1.2 GCM rustls derives the explicit part the
    /// same way, and the record carries it).
    fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
        let mut n = *iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next_seq(&mut self) -> io::Result<u64> {
        let seq = self.seq;
        // RFC 8446 §5.3: the sequence number must not wrap.
        self.seq = seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS sequence number exhausted"))?;
        Ok(seq)
    }
}

/// TLS 1.3 traffic secrets logged by rustls during the handshake step running on this thread.
#[derive(Default)]
struct Captured {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

thread_local! {
    /// Set only while [`accept`] runs one synchronous rustls step on this thread, so what
    /// [`TrafficSecrets`] is given belongs to that connection.
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// rustls's key log, used to learn the first TLS 1.3 application traffic secrets of a
/// client stream (rustls hands over keys, not secrets, and key updates need the secrets).
/// Nothing is written anywhere: the secrets go to the connection whose handshake step is
/// running on this thread and nowhere else.
#[derive(Debug)]
pub struct TrafficSecrets;

impl rustls::KeyLog for TrafficSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURE.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                match label {
                    CLIENT_TRAFFIC_SECRET => c.client = Some(Zeroizing::new(secret.to_vec())),
                    SERVER_TRAFFIC_SECRET => c.server = Some(Zeroizing::new(secret.to_vec())),
                    _ => {}
                }
            }
        });
    }
}

/// Runs one rustls step with the key log capturing for this connection.
fn captured<T>(into: &mut Captured, step: impl FnOnce() -> T) -> T {
    CAPTURE.with(|c| *c.borrow_mut() = Some(std::mem::take(into)));
    let out = step();
    *into = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    out
}

/// The TLS 1.2 additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The length of the record starting `buf`, header included, once its header is there.
fn record_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER).then(|| HEADER + usize::from(u16::from_be_bytes([buf[3], buf[4]])))
}

/// A fatal TLS error: the alert to send and the error to report.
fn fatal(alert: u8, why: &str) -> (u8, io::Error) {
    (
        alert,
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {why}")),
    )
}

/// What opening one record gave the reader.
enum Opened {
    /// Application data at this range of the record buffer.
    Data(std::ops::Range<usize>),
    /// A record for the TLS layer itself (a key update, a warning).
    Nothing,
    /// The peer's close_notify: the end of the stream.
    Closed,
}

/// An established server-side TLS connection over TCP whose records this module protects.
pub struct TlsRecords {
    tcp: TcpStream,
    version: Version,
    tx: Direction,
    rx: Direction,
    /// Bytes received that do not make a whole record yet; no allocation while empty.
    incoming: Vec<u8>,
    /// Decrypted application data the reader has not taken yet.
    plain: Vec<u8>,
    plain_at: usize,
    /// Records sealed but not yet written to the socket.
    out: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify: reads see the end of the stream.
    read_closed: bool,
    /// Our close_notify is sealed.
    close_sent: bool,
    /// A fatal error was met: nothing more is read or written.
    failed: bool,
}

/// Runs rustls's server handshake over `tcp`, then takes the connection over.
///
/// Records are given to rustls one at a time and only while the handshake runs, so nothing
/// the client sent after its Finished (typically the stream header, in the same segment) is
/// inside rustls when the secrets are taken — rustls would drop it — but stays here, as the
/// start of the first record to open. `inspect` sees the finished rustls connection before it
/// is taken apart (channel-binding data: the exporter needs the key schedule).
pub async fn accept<R>(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
    inspect: impl FnOnce(&ServerConnection) -> R,
) -> io::Result<(TlsRecords, R)> {
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut secrets = Captured::default();
    let mut incoming: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let failure = loop {
            // A whole record received: give it to rustls.
            match record_len(&incoming) {
                Some(n) if n > HEADER + MAX_PROTECTED_12 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS record too large",
                    ))
                }
                Some(n) if incoming.len() >= n => {
                    let mut record = &incoming[..n];
                    while !record.is_empty() {
                        if conn.read_tls(&mut record)? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    incoming.drain(..n);
                    if let Err(e) = captured(&mut secrets, || conn.process_new_packets()) {
                        break Some(e);
                    }
                    if !conn.is_handshaking() || conn.wants_write() {
                        break None;
                    }
                }
                _ => break None,
            }
        };
        while conn.wants_write() {
            out.clear();
            conn.write_tls(&mut out)?;
            tcp.write_all(&out).await?;
        }
        if let Some(e) = failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if !conn.is_handshaking() {
            break;
        }
        if record_len(&incoming).is_some_and(|n| incoming.len() >= n) {
            continue;
        }
        let mut buf = [0u8; READ_CHUNK];
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        incoming.extend_from_slice(&buf[..n]);
    }
    // Nothing but handshake records went in, so no application data waits in rustls.
    let seen = inspect(&conn);
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => Version::Tls13,
        Some(ProtocolVersion::TLSv1_2) => Version::Tls12,
        _ => return Err(io::Error::other("unsupported TLS version")),
    };
    // rustls's deprecation note on this call: it supports neither session tickets nor key
    // updates. None are sent (`send_tls13_tickets = 0`), and key updates are done here from
    // the traffic secrets rustls logged.
    #[allow(deprecated)]
    let keys = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    let (client, server) = match version {
        Version::Tls13 => (
            Some(
                secrets
                    .client
                    .take()
                    .ok_or_else(|| io::Error::other("no client traffic secret"))?,
            ),
            Some(
                secrets
                    .server
                    .take()
                    .ok_or_else(|| io::Error::other("no server traffic secret"))?,
            ),
        ),
        Version::Tls12 => (None, None),
    };
    let incoming = if incoming.is_empty() {
        Vec::new()
    } else {
        incoming
    };
    Ok((
        TlsRecords {
            tcp,
            version,
            tx: Direction::new(keys.tx.0, keys.tx.1, server)?,
            rx: Direction::new(keys.rx.0, keys.rx.1, client)?,
            incoming,
            plain: Vec::new(),
            plain_at: 0,
            out: Vec::new(),
            out_at: 0,
            read_closed: false,
            close_sent: false,
            failed: false,
        },
        seen,
    ))
}

impl TlsRecords {
    /// The TCP connection under the records (for readiness).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Seals `data` of content type `typ` into as many records as it needs, after what is
    /// already waiting to be written.
    fn seal(&mut self, typ: u8, data: &[u8]) -> io::Result<()> {
        let (key, iv) = self.tx.key()?;
        for chunk in data.chunks(MAX_PLAINTEXT) {
            let seq = self.tx.next_seq()?;
            let nonce = Direction::nonce(&iv, seq);
            let start = self.out.len();
            match self.version {
                Version::Tls13 => {
                    // RFC 8446 §5.2: the outer type is application_data; the real type
                    // follows the content, inside the protection.
                    let len = chunk.len() + 1 + TAG;
                    self.out.reserve(HEADER + len);
                    self.out.extend_from_slice(&[CT_APPLICATION_DATA, 3, 3]);
                    self.out.extend_from_slice(&(len as u16).to_be_bytes());
                    self.out.extend_from_slice(chunk);
                    self.out.push(typ);
                    let header: [u8; HEADER] = self.out[start..start + HEADER]
                        .try_into()
                        .map_err(io::Error::other)?;
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(header),
                            &mut self.out[start + HEADER..],
                        )
                        .map_err(|_| io::Error::other("TLS seal failed"))?;
                    self.out.extend_from_slice(tag.as_ref());
                }
                Version::Tls12 => {
                    let explicit = if self.tx.is_gcm() { 8 } else { 0 };
                    let len = explicit + chunk.len() + TAG;
                    self.out.reserve(HEADER + len);
                    self.out.extend_from_slice(&[typ, 3, 3]);
                    self.out.extend_from_slice(&(len as u16).to_be_bytes());
                    // RFC 5288 §3: the record carries the nonce's explicit part.
                    self.out.extend_from_slice(&nonce[12 - explicit..]);
                    let body = self.out.len();
                    self.out.extend_from_slice(chunk);
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(aad12(seq, typ, chunk.len())),
                            &mut self.out[body..],
                        )
                        .map_err(|_| io::Error::other("TLS seal failed"))?;
                    self.out.extend_from_slice(tag.as_ref());
                }
            }
        }
        Ok(())
    }

    /// Opens the whole record `rec` in place. `keys`: the receive key expanded for this read,
    /// made on first use and dropped when a key update replaces it.
    fn open(
        &mut self,
        rec: &mut [u8],
        keys: &mut Option<(LessSafeKey, [u8; 12])>,
    ) -> Result<Opened, (u8, io::Error)> {
        let typ = rec[0];
        let protected = rec.len() - HEADER;
        if keys.is_none() {
            *keys = Some(self.rx.key().map_err(|e| (ALERT_DECODE_ERROR, e))?);
        }
        let Some((key, iv)) = keys.as_ref() else {
            return Err(fatal(ALERT_DECODE_ERROR, "no key"));
        };
        let iv = *iv;
        let seq = self.rx.next_seq().map_err(|e| (ALERT_DECODE_ERROR, e))?;
        let (typ, content) = match self.version {
            Version::Tls13 => {
                if typ == CT_CHANGE_CIPHER_SPEC {
                    // RFC 8446 §5: after the handshake, an unexpected record type.
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "change_cipher_spec"));
                }
                if typ != CT_APPLICATION_DATA {
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unprotected record"));
                }
                if protected > MAX_PROTECTED_13 {
                    return Err(fatal(ALERT_RECORD_OVERFLOW, "record too large"));
                }
                if protected < TAG + 1 {
                    return Err(fatal(ALERT_DECODE_ERROR, "record too short"));
                }
                let (header, body) = rec.split_at_mut(HEADER);
                let aad: [u8; HEADER] = (&*header)
                    .try_into()
                    .map_err(|_| fatal(ALERT_DECODE_ERROR, "header"))?;
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(Direction::nonce(&iv, seq)),
                        Aad::from(aad),
                        body,
                    )
                    .map_err(|_| fatal(ALERT_BAD_RECORD_MAC, "record authentication failed"))?;
                // RFC 8446 §5.4: the real type is the last non-zero byte; zeros after it pad.
                let Some(end) = plain.iter().rposition(|b| *b != 0) else {
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "record without a type"));
                };
                if end > MAX_PLAINTEXT {
                    return Err(fatal(ALERT_RECORD_OVERFLOW, "plaintext too large"));
                }
                (plain[end], HEADER..HEADER + end)
            }
            Version::Tls12 => {
                if !matches!(typ, CT_ALERT | CT_HANDSHAKE | CT_APPLICATION_DATA) {
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected record type"));
                }
                if protected > MAX_PROTECTED_12 {
                    return Err(fatal(ALERT_RECORD_OVERFLOW, "record too large"));
                }
                let explicit = if self.rx.is_gcm() { 8 } else { 0 };
                if protected < explicit + TAG {
                    return Err(fatal(ALERT_DECODE_ERROR, "record too short"));
                }
                let mut nonce = Direction::nonce(&iv, seq);
                if explicit > 0 {
                    // RFC 5288 §3: the salt from the key block, the rest from the record.
                    nonce[4..].copy_from_slice(&rec[HEADER..HEADER + 8]);
                }
                let len = protected - explicit - TAG;
                if len > MAX_PLAINTEXT {
                    return Err(fatal(ALERT_RECORD_OVERFLOW, "plaintext too large"));
                }
                let body = HEADER + explicit;
                key.open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad12(seq, typ, len)),
                    &mut rec[body..],
                )
                .map_err(|_| fatal(ALERT_BAD_RECORD_MAC, "record authentication failed"))?;
                (typ, body..body + len)
            }
        };
        match typ {
            CT_APPLICATION_DATA => Ok(Opened::Data(content)),
            CT_ALERT => {
                let alert = &rec[content];
                if alert.len() != 2 {
                    return Err(fatal(ALERT_DECODE_ERROR, "bad alert"));
                }
                match (alert[0], alert[1]) {
                    (_, ALERT_CLOSE_NOTIFY) => Ok(Opened::Closed),
                    // TLS 1.3 has no warnings but user_canceled, which close_notify follows
                    // (RFC 8446 §6.1); TLS 1.2 warnings are ignored.
                    (ALERT_WARNING, ALERT_USER_CANCELED) => Ok(Opened::Nothing),
                    (ALERT_WARNING, _) if self.version == Version::Tls12 => Ok(Opened::Nothing),
                    (_, d) => Err((
                        0,
                        io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("TLS: the client sent alert {d}"),
                        ),
                    )),
                }
            }
            CT_HANDSHAKE => {
                let content = content.clone();
                // A key update replaces the receive key.
                *keys = None;
                self.handshake_message(&rec[content])?;
                Ok(Opened::Nothing)
            }
            _ => Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected content type")),
        }
    }

    /// A handshake message after the handshake: a TLS 1.3 key update (RFC 8446 §4.6.3), or
    /// TLS 1.2 renegotiation, which is refused with a warning as rustls does.
    fn handshake_message(&mut self, msg: &[u8]) -> Result<(), (u8, io::Error)> {
        if self.version == Version::Tls12 {
            self.seal(CT_ALERT, &[ALERT_WARNING, ALERT_NO_RENEGOTIATION])
                .map_err(|e| (0, e))?;
            return Ok(());
        }
        // A key update is the whole of its record: the keys change after it, and handshake
        // messages must not span a key change (RFC 8446 §5.1). Post-handshake messages are
        // never split across records by clients; one that is gets unexpected_message.
        match msg {
            [HS_KEY_UPDATE, 0, 0, 1, request] if *request <= 1 => {
                self.rx
                    .update()
                    .map_err(|e| (ALERT_UNEXPECTED_MESSAGE, e))?;
                if *request == 1 {
                    // update_requested: answer with our own update before any more data.
                    self.seal(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0])
                        .map_err(|e| (0, e))?;
                    self.tx.update().map_err(|e| (0, e))?;
                }
                Ok(())
            }
            [HS_KEY_UPDATE, ..] => Err(fatal(ALERT_DECODE_ERROR, "bad key update")),
            _ => Err(fatal(
                ALERT_UNEXPECTED_MESSAGE,
                "unexpected post-handshake message",
            )),
        }
    }

    /// Reports a fatal error to the peer (best effort: the alert goes out only if the socket
    /// takes it now) and to the caller.
    fn fail(&mut self, alert: u8, e: io::Error) -> io::Error {
        self.failed = true;
        if alert != 0 && !self.close_sent {
            self.close_sent = true;
            if self.seal(CT_ALERT, &[ALERT_FATAL, alert]).is_ok() {
                let _ = self.tcp.try_write(&self.out[self.out_at..]);
            }
        }
        self.out = Vec::new();
        self.out_at = 0;
        self.incoming = Vec::new();
        self.plain = Vec::new();
        self.plain_at = 0;
        e
    }

    /// Writes sealed records until none is left (then frees the buffer) or the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves decrypted bytes waiting in `plain` into `buf`.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.plain.len() - self.plain_at);
        buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }

    /// Opens the whole records at the start of `src` into `buf` while it has room; returns
    /// how many bytes of `src` they took.
    fn open_from(&mut self, src: &mut [u8], buf: &mut ReadBuf<'_>) -> io::Result<usize> {
        let mut done = 0;
        let mut keys = None;
        let max = match self.version {
            Version::Tls13 => MAX_PROTECTED_13,
            Version::Tls12 => MAX_PROTECTED_12,
        };
        while buf.remaining() > 0 && !self.read_closed {
            let rest = &mut src[done..];
            let Some(n) = record_len(rest) else { break };
            if n > HEADER + max {
                let (alert, e) = fatal(ALERT_RECORD_OVERFLOW, "record too large");
                return Err(self.fail(alert, e));
            }
            if rest.len() < n {
                break;
            }
            let record = &mut rest[..n];
            match self.open(record, &mut keys) {
                Ok(Opened::Data(range)) => {
                    let data = &record[range];
                    let now = data.len().min(buf.remaining());
                    buf.put_slice(&data[..now]);
                    if now < data.len() {
                        self.plain = data[now..].to_vec();
                        self.plain_at = 0;
                    }
                }
                Ok(Opened::Nothing) => {}
                Ok(Opened::Closed) => self.read_closed = true,
                Err((alert, e)) => return Err(self.fail(alert, e)),
            }
            done += n;
        }
        Ok(done)
    }

    /// Opens the whole records kept in `incoming` into `buf`, keeping the rest.
    fn open_incoming(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let done = self.open_from(&mut incoming, buf)?;
        incoming.drain(..done);
        if !incoming.is_empty() {
            self.incoming = incoming;
        }
        Ok(())
    }
}

impl AsyncRead for TlsRecords {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let start = buf.filled().len();
        loop {
            if this.plain_at < this.plain.len() {
                this.take_plain(buf);
            }
            if buf.remaining() > 0 && this.plain.is_empty() && !this.incoming.is_empty() {
                this.open_incoming(buf)?;
            }
            // A key update's answer, or a refusal, waits in `out`: send it with the data.
            if this.out_at < this.out.len() {
                if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if buf.filled().len() > start || this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Read into a buffer on the stack: the records it holds whole are opened from
            // there, and only a partial record's bytes are kept (`incoming`).
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.tcp).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let n = rb.filled().len();
            if n == 0 {
                if !this.incoming.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: connection closed inside a record",
                    )));
                }
                // No close_notify: a truncation, which XMPP notices by the missing stream
                // end; reported as rustls reports an unclean close.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if this.incoming.is_empty() {
                let done = this.open_from(&mut chunk[..n], buf)?;
                this.incoming.extend_from_slice(&chunk[done..n]);
            } else {
                this.incoming.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

impl AsyncWrite for TlsRecords {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed || this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What is already sealed goes first; take more only once it is written.
        ready!(this.poll_write_out(cx))?;
        // Bounded, so one call seals at most four full records.
        let n = data.len().min(4 * MAX_PLAINTEXT);
        this.seal(CT_APPLICATION_DATA, &data[..n])?;
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.failed {
            this.close_sent = true;
            this.seal(CT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY])?;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring as provider;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::SupportedCipherSuite;
    use std::io::{Read, Write};

    fn configs(suite: SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["example.org".into()]).expect("cert");
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let p = Arc::new(provider::default_provider());
        let mut server = ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        server.send_tls13_tickets = 0;
        server.enable_secret_extraction = true;
        server.key_log = Arc::new(TrafficSecrets);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client_provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..provider::default_provider()
        });
        let client = rustls::ClientConfig::builder_with_provider(client_provider)
            .with_protocol_versions(&[suite.version()])
            .expect("client versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A server that echoes what it reads until the end of the stream, then closes cleanly;
    /// returns the negotiated version, the exporter it saw and how the reading ended.
    async fn echo_server(
        listener: tokio::net::TcpListener,
        config: Arc<ServerConfig>,
    ) -> (Option<ProtocolVersion>, Vec<u8>, io::Result<()>) {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut records, (version, exporter)) = accept(tcp, config, |c| {
            let exporter = c
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .expect("exporter");
            (c.protocol_version(), exporter)
        })
        .await
        .expect("handshake");
        let mut buf = [0u8; 4096];
        let ended = loop {
            match records.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => records.write_all(&buf[..n]).await.expect("echo"),
                Err(e) => break Err(e),
            }
        };
        if ended.is_ok() {
            records.shutdown().await.expect("close_notify");
        }
        // Nothing is held once the stream is idle.
        assert_eq!(records.incoming.capacity(), 0);
        assert_eq!(records.plain.capacity(), 0);
        assert_eq!(records.out.capacity(), 0);
        (version, exporter, ended)
    }

    /// An echo server for `suite` on a free loopback port, and a rustls client connection to
    /// it (blocking, for a `spawn_blocking` task) with data written before its handshake.
    async fn echo_pair(
        suite: SupportedCipherSuite,
    ) -> (
        tokio::task::JoinHandle<(Option<ProtocolVersion>, Vec<u8>, io::Result<()>)>,
        impl FnOnce() -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    ) {
        let (server_config, client_config) = configs(suite);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(echo_server(listener, server_config));
        let connect = move || {
            let name = ServerName::try_from("example.org").expect("name");
            let conn = rustls::ClientConnection::new(client_config, name).expect("client");
            let tcp = std::net::TcpStream::connect(addr).expect("connect");
            rustls::StreamOwned::new(conn, tcp)
        };
        (server, connect)
    }

    fn read_exact(s: &mut impl Read, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).expect("echo back");
        got
    }

    /// Data sent with the client's Finished, small and large messages both ways, a key update
    /// asked of the server (TLS 1.3), and close_notify both ways; the server's exporter matches
    /// the client's.
    async fn echo_with(suite: SupportedCipherSuite, key_update: bool) {
        let (server, connect) = echo_pair(suite).await;
        let client = tokio::task::spawn_blocking(move || {
            let mut s = connect();
            // Written before the handshake: rustls sends it right after its Finished.
            s.conn
                .writer()
                .write_all(b"<stream:stream>")
                .expect("early write");
            assert_eq!(read_exact(&mut s, 15), b"<stream:stream>");
            let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            s.write_all(&big).expect("big write");
            assert_eq!(read_exact(&mut s, big.len()), big);
            if key_update {
                s.conn.refresh_traffic_keys().expect("key update");
                for i in 0..3u8 {
                    s.write_all(&[b'a' + i; 300]).expect("write after update");
                    assert_eq!(read_exact(&mut s, 300), [b'a' + i; 300]);
                }
            }
            let exporter = s
                .conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .expect("exporter");
            s.conn.send_close_notify();
            s.flush().expect("close");
            let mut rest = Vec::new();
            // The server's close_notify: a clean end, not an error.
            s.read_to_end(&mut rest).expect("clean end");
            assert!(rest.is_empty());
            exporter
        });
        let client_exporter = client.await.expect("client");
        let (version, exporter, ended) = server.await.expect("server");
        assert_eq!(version, Some(suite.version().version));
        assert_eq!(exporter, client_exporter);
        ended.expect("the server read to a clean end");
    }

    #[tokio::test]
    async fn tls13_suites_with_key_updates() {
        echo_with(provider::cipher_suite::TLS13_AES_128_GCM_SHA256, true).await;
        echo_with(provider::cipher_suite::TLS13_AES_256_GCM_SHA384, true).await;
        echo_with(provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256, true).await;
    }

    #[tokio::test]
    async fn tls12_suites() {
        use provider::cipher_suite as cs;
        echo_with(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, false).await;
        echo_with(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, false).await;
        echo_with(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, false).await;
    }

    /// A record whose protection does not verify ends the connection with bad_record_mac,
    /// for the server and for the client that sent it.
    #[tokio::test]
    async fn a_forged_record_is_refused() {
        for suite in [
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ] {
            let (server, connect) = echo_pair(suite).await;
            let client = tokio::task::spawn_blocking(move || {
                let mut s = connect();
                s.write_all(b"ping").expect("write");
                assert_eq!(read_exact(&mut s, 4), b"ping");
                // An application-data record of the right shape with garbage inside.
                let mut forged = vec![CT_APPLICATION_DATA, 3, 3, 0, 40];
                forged.extend_from_slice(&[0x5a; 40]);
                s.sock.write_all(&forged).expect("forged record");
                let mut rest = Vec::new();
                let e = s.read_to_end(&mut rest).expect_err("the server's alert");
                e.to_string()
            });
            let client_saw = client.await.expect("client");
            let (_, _, ended) = server.await.expect("server");
            let e = ended.expect_err("the server refused the record");
            assert!(e.to_string().contains("authentication failed"), "{e}");
            assert!(client_saw.contains("BadRecordMac"), "{client_saw}");
        }
    }

    #[test]
    fn a_traffic_secret_that_does_not_give_the_keys_is_never_used() {
        let secret = vec![7u8; 32];
        let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
        expand_label(hkdf::HKDF_SHA256, &secret, b"key", &mut key[..16]).expect("key");
        expand_label(hkdf::HKDF_SHA256, &secret, b"iv", &mut iv).expect("iv");
        let mut wrong = Direction {
            aead: Aead::Aes128Gcm,
            key: Zeroizing::new(key),
            iv,
            secret: Some(Zeroizing::new(vec![8u8; 32])),
            seq: 5,
            secret_checked: false,
        };
        let e = wrong.update().expect_err("a secret not matching the keys");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(wrong.seq, 5, "nothing changed");
        let mut right = Direction {
            secret: Some(Zeroizing::new(secret)),
            ..wrong
        };
        right.update().expect("the matching secret");
        assert_eq!(right.seq, 0);
        assert_ne!(right.key[..16], key[..16]);
        // Later updates follow from the derived secret without checking again.
        right.update().expect("a second update");
    }

    #[test]
    fn expand_label_matches_rfc8448() {
        // RFC 8448 §3 (simple 1-RTT): the server's application traffic secret and the key
        // and IV derived from it (TLS_AES_128_GCM_SHA256).
        let secret =
            hex::decode("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643")
                .expect("hex");
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        expand_label(hkdf::HKDF_SHA256, &secret, b"key", &mut key).expect("key");
        expand_label(hkdf::HKDF_SHA256, &secret, b"iv", &mut iv).expect("iv");
        assert_eq!(hex::encode(key), "9f02283b6c9c07efc26bb9f2ac92e356");
        assert_eq!(hex::encode(iv), "cf782b88dd83549aadf1e984");
    }
}

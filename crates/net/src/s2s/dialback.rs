//! Server Dialback (XEP-0220): keys and elements.
//!
//! The key is the one XEP-0185 §2 recommends (and XEP-0220 §2.1.1 adopts):
//! `HMAC-SHA256(hex(SHA256(secret)), receiving + ' ' + originating + ' ' + stream id)`,
//! hex-encoded. Only this server checks the keys it made, so the secret need not be shared
//! with anyone; it must only outlive the streams it keyed (one per process, or configured).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Server Dialback namespace (`db:` on the stream).
pub const NS: &str = "jabber:server:dialback";
/// The stream feature a receiving server announces (XEP-0220 §2.4, with `<errors/>`).
pub const NS_FEATURE: &str = "urn:xmpp:features:dialback";

/// The secret dialback keys are derived from.
#[derive(Clone)]
pub struct DialbackSecret {
    /// hex(SHA256(secret)), the HMAC key of XEP-0185 §2.
    hmac_key: String,
}

impl std::fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackSecret(..)")
    }
}

impl DialbackSecret {
    pub fn new(secret: &[u8]) -> Self {
        DialbackSecret {
            hmac_key: hex(&Sha256::digest(secret)),
        }
    }

    /// A secret drawn at random (a process's own when none is configured).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self::new(&bytes)
    }

    /// The key for a stream `stream_id` from `originating` to `receiving`.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hmac_key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `key` is the one this server made for that stream (compared in constant time).
    pub fn check(&self, key: &str, receiving: &str, originating: &str, stream_id: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        expected.as_bytes().ct_eq(key.trim().as_bytes()).into()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Writes `<db:result/>` or `<db:verify/>` (`name`) with the `db:` prefix the stream header
/// declared (XEP-0220 §2: dialback elements MUST carry the advertised prefix, which the
/// general element writer, declaring a default namespace instead, would not give).
pub fn write(out: &mut Vec<u8>, name: &str, attrs: &[(&str, &str)], key: Option<&str>) {
    out.extend_from_slice(b"<db:");
    out.extend_from_slice(name.as_bytes());
    for (k, v) in attrs {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        rookery_xml::escape_attr(v, out);
        out.push(b'\'');
    }
    match key {
        Some(key) => {
            out.push(b'>');
            // A key is hex; escaped all the same, as an attribute value is.
            rookery_xml::escape_attr(key, out);
            out.extend_from_slice(b"</db:");
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
        }
        None => out.extend_from_slice(b"/>"),
    }
}

/// Writes `<db:result type='error'/>` from `from` to `to` carrying a stanza error
/// (XEP-0220 §2.4): `condition` of type `kind`.
pub fn write_result_error(out: &mut Vec<u8>, from: &str, to: &str, condition: &str, kind: &str) {
    write(
        out,
        "result",
        &[("from", from), ("to", to), ("type", "error")],
        None,
    );
    // `<db:result .../>` becomes `<db:result ...><error/></db:result>`.
    out.truncate(out.len() - 2);
    out.push(b'>');
    rookery_xml::Element::new("error", "jabber:server")
        .with_attr("type", kind)
        .with_child(rookery_xml::Element::new(
            condition,
            "urn:ietf:params:xml:ns:xmpp-stanzas",
        ))
        .write_to(out, "jabber:server");
    out.extend_from_slice(b"</db:result>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_xep_0185_example() {
        // XEP-0220 §2.1.1, example 2: secret "s3cr3tf0rd14lb4ck", receiving
        // "montague.example", originating "capulet.example", stream id "D60000229F".
        let secret = DialbackSecret::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            secret.hmac_key,
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        let (r, o) = ("montague.example", "capulet.example");
        let key = secret.key(r, o, "D60000229F");
        assert_eq!(
            key,
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
        assert!(secret.check(&key, r, o, "D60000229F"));
        assert!(!secret.check(&key, r, o, "D60000229G"));
        assert!(!secret.check(&key, o, r, "D60000229F"));
        assert!(!DialbackSecret::random().check(&key, r, o, "D60000229F"));
    }

    #[test]
    fn elements_carry_the_db_prefix() {
        let mut out = Vec::new();
        write(
            &mut out,
            "result",
            &[("from", "a.example"), ("to", "b.example")],
            Some("k1"),
        );
        write(
            &mut out,
            "verify",
            &[("id", "x'y"), ("type", "valid")],
            None,
        );
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "<db:result from='a.example' to='b.example'>k1</db:result>\
             <db:verify id='x&apos;y' type='valid'/>"
        );
    }
}

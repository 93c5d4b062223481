//! Entity capabilities (XEP-0115) of the generator's sessions: the verification string
//! (§5.1), the `<c/>` element for presence and the disco#info answer the server checks it
//! against. Servers that filter notifications by `+notify` features (XEP-0163) learn them
//! this way, and ejabberd and Prosody both recompute the hash of the answer, so it must be
//! exact.

use crate::scan;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// A service discovery identity (XEP-0030).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub category: String,
    pub kind: String,
    pub lang: String,
    pub name: String,
}

/// What a client tells about itself: identities and features, the caps node, and the
/// verification string computed from them.
#[derive(Debug, Clone)]
pub struct Caps {
    pub node: String,
    pub identities: Vec<Identity>,
    pub features: Vec<String>,
    pub ver: String,
}

/// The SHA-1 verification string of XEP-0115 §5.1, for an answer without extended forms
/// (the generator sends none): identities sorted by category, type and language, then the
/// features sorted, each followed by `<`, hashed and base64-encoded. Sorting is by octets
/// (i;octet), which is what `Ord` on `str` does.
pub fn ver(identities: &[Identity], features: &[String]) -> String {
    // By the fields, not by the joined strings: "a/…" would sort after "a-b/…" ('-' is
    // below '/'), where category "a" comes before "a-b".
    let mut ids: Vec<&Identity> = identities.iter().collect();
    ids.sort_by(|x, y| {
        (&x.category, &x.kind, &x.lang, &x.name).cmp(&(&y.category, &y.kind, &y.lang, &y.name))
    });
    let mut feats: Vec<&str> = features.iter().map(String::as_str).collect();
    feats.sort();
    let mut s = String::new();
    for i in ids {
        s.push_str(&format!("{}/{}/{}/{}<", i.category, i.kind, i.lang, i.name));
    }
    for f in feats {
        s.push_str(f);
        s.push('<');
    }
    B64.encode(Sha1::digest(s.as_bytes()))
}

impl Caps {
    pub fn new(node: &str, identities: Vec<Identity>, features: Vec<String>) -> Self {
        let ver = ver(&identities, &features);
        Caps {
            node: node.to_owned(),
            identities,
            features,
            ver,
        }
    }

    /// The `<c/>` element to put in presence.
    pub fn element(&self) -> String {
        format!(
            "<c xmlns='{NS_CAPS}' hash='sha-1' node='{}' ver='{}'/>",
            scan::escape(&self.node),
            scan::escape(&self.ver)
        )
    }

    /// If `el` is a disco#info get, appends the answer and returns true. A query for this
    /// client's `node#ver` (or for no node) gets the identities and features that hash to
    /// `ver`; a query for another node gets `item-not-found` (XEP-0030 §3.1).
    pub fn answer_disco_info(&self, el: &[u8], out: &mut Vec<u8>) -> bool {
        if scan::root_name(el) != b"iq" || scan::attr(el, b"type") != Some(b"get") {
            return false;
        }
        let Some(query) = scan::child_tag(el, b"query") else {
            return false;
        };
        if scan::tag_attr(query, b"xmlns") != Some(NS_DISCO_INFO.as_bytes()) {
            return false;
        }
        let node = scan::tag_attr(query, b"node");
        let id = scan::attr(el, b"id").unwrap_or(b"");
        out.extend_from_slice(b"<iq id='");
        out.extend_from_slice(id);
        out.push(b'\'');
        if let Some(from) = scan::attr(el, b"from") {
            out.extend_from_slice(b" to='");
            out.extend_from_slice(from);
            out.push(b'\'');
        }
        let ours = match node {
            None => true,
            Some(n) => scan::unescape(n) == format!("{}#{}", self.node, self.ver),
        };
        if !ours {
            out.extend_from_slice(
                b" type='error'><error type='cancel'><item-not-found \
                  xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            );
            return true;
        }
        out.extend_from_slice(b" type='result'><query xmlns='");
        out.extend_from_slice(NS_DISCO_INFO.as_bytes());
        out.push(b'\'');
        if let Some(n) = node {
            // Echoed as received (still escaped), as XEP-0115 §6.2 asks.
            out.extend_from_slice(b" node='");
            out.extend_from_slice(n);
            out.push(b'\'');
        }
        out.push(b'>');
        for i in &self.identities {
            out.extend_from_slice(b"<identity category='");
            out.extend_from_slice(scan::escape(&i.category).as_bytes());
            out.extend_from_slice(b"' type='");
            out.extend_from_slice(scan::escape(&i.kind).as_bytes());
            out.push(b'\'');
            if !i.lang.is_empty() {
                out.extend_from_slice(b" xml:lang='");
                out.extend_from_slice(scan::escape(&i.lang).as_bytes());
                out.push(b'\'');
            }
            if !i.name.is_empty() {
                out.extend_from_slice(b" name='");
                out.extend_from_slice(scan::escape(&i.name).as_bytes());
                out.push(b'\'');
            }
            out.extend_from_slice(b"/>");
        }
        for f in &self.features {
            out.extend_from_slice(b"<feature var='");
            out.extend_from_slice(scan::escape(f).as_bytes());
            out.extend_from_slice(b"'/>");
        }
        out.extend_from_slice(b"</query></iq>");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exodus() -> Caps {
        Caps::new(
            "http://code.google.com/p/exodus",
            vec![Identity {
                category: "client".into(),
                kind: "pc".into(),
                lang: String::new(),
                name: "Exodus 0.9.1".into(),
            }],
            // Unsorted on purpose: the hash must not depend on the order given.
            vec![
                "http://jabber.org/protocol/muc".into(),
                "http://jabber.org/protocol/disco#info".into(),
                "http://jabber.org/protocol/caps".into(),
                "http://jabber.org/protocol/disco#items".into(),
            ],
        )
    }

    /// XEP-0115 §5.2, the simple generation example.
    #[test]
    fn verification_string_of_the_simple_example() {
        assert_eq!(exodus().ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn identities_sort_by_category_type_and_language() {
        let id = |c: &str, t: &str, l: &str, n: &str| Identity {
            category: c.into(),
            kind: t.into(),
            lang: l.into(),
            name: n.into(),
        };
        let a = [
            id("client", "pc", "en", "Psi"),
            id("client", "pc", "el", "Ψ"),
            id("automation", "x", "", ""),
        ];
        let mut b = a.clone();
        b.reverse();
        let f = vec!["urn:x".to_owned()];
        assert_eq!(ver(&a, &f), ver(&b, &f));
        let s = "automation/x//<client/pc/el/Ψ<client/pc/en/Psi<urn:x<";
        assert_eq!(ver(&a, &f), B64.encode(Sha1::digest(s.as_bytes())));
        // A category that is a prefix of another sorts first, whatever follows it.
        let c = [id("a-b", "x", "", ""), id("a", "x", "", "")];
        let s = "a/x//<a-b/x//<urn:x<";
        assert_eq!(ver(&c, &f), B64.encode(Sha1::digest(s.as_bytes())));
    }

    #[test]
    fn answers_a_disco_info_query_for_its_node() {
        let caps = exodus();
        let q = format!(
            "<iq from='localhost' to='a@localhost/r' id='d1' type='get'>\
             <query xmlns='{NS_DISCO_INFO}' node='http://code.google.com/p/exodus#{}'/></iq>",
            caps.ver
        );
        let mut out = Vec::new();
        assert!(caps.answer_disco_info(q.as_bytes(), &mut out));
        let a = String::from_utf8(out).expect("utf-8");
        assert!(
            a.starts_with("<iq id='d1' to='localhost' type='result'>"),
            "{a}"
        );
        assert!(a.contains("node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='"));
        assert!(a.contains("<identity category='client' type='pc' name='Exodus 0.9.1'/>"));
        assert_eq!(a.matches("<feature ").count(), 4);

        let mut out = Vec::new();
        let other = format!(
            "<iq from='localhost' id='d2' type='get'><query xmlns='{NS_DISCO_INFO}' node='x#y'/></iq>"
        );
        assert!(caps.answer_disco_info(other.as_bytes(), &mut out));
        assert!(String::from_utf8_lossy(&out).contains("item-not-found"));

        let mut out = Vec::new();
        let ping = b"<iq id='p' type='get'><ping xmlns='urn:xmpp:ping'/></iq>";
        assert!(!caps.answer_disco_info(ping, &mut out));
        assert!(out.is_empty());
    }
}

//! What an upload slot is made of, with no I/O: cleaned file names, content types, the
//! signature of a PUT URL, and the paths of both URLs.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a slot id: 24 letters and digits, about 143 random bits, so a GET URL cannot
/// be guessed.
pub const ID_LEN: usize = 24;
/// The longest cleaned file name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest content type accepted, in bytes.
pub const MAX_TYPE_BYTES: usize = 128;

/// The file name as stored and served: its last path segment (no directory can be named),
/// without control characters, separators, quotes or characters that mean something in a
/// URL or a header, without leading dots (no `..`, no hidden file), at most
/// [`MAX_NAME_BYTES`]. `None` when nothing is left.
pub fn clean_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in last.chars() {
        if c.is_control() || "\"'<>:|?*%;#&=+$,`{}[]^~".contains(c) || c == '\u{feff}' {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(if c.is_whitespace() { ' ' } else { c });
    }
    let out = out.trim().trim_start_matches('.').trim();
    (!out.is_empty()).then(|| out.to_owned())
}

/// A content type as recorded and served: `type/subtype` with optional parameters, in
/// visible ASCII (nothing that could end a header), the type and subtype lowercased.
/// `None` when it is not one.
pub fn clean_content_type(ct: &str) -> Option<String> {
    let ct = ct.trim();
    if ct.is_empty() || ct.len() > MAX_TYPE_BYTES || !ct.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let (essence, params) = match ct.split_once(';') {
        Some((e, p)) => (e.trim(), Some(p.trim())),
        None => (ct, None),
    };
    let (t, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(t) || !token(sub) {
        return None;
    }
    let essence = format!("{}/{}", t.to_ascii_lowercase(), sub.to_ascii_lowercase());
    Some(match params {
        Some(p) if !p.is_empty() => format!("{essence}; {p}"),
        _ => essence,
    })
}

/// The `type/subtype` of a content type.
pub fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or_default().trim()
}

/// Whether a content type matches a pattern of the allow or deny list: `image/png`,
/// `image/*` or `*`.
pub fn type_matches(pattern: &str, ct: &str) -> bool {
    let ct = essence(ct);
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_suffix("/*") {
        _ if pattern == "*" => true,
        Some(prefix) => ct.split('/').next() == Some(prefix),
        None => pattern == ct,
    }
}

/// Whether a browser shows the type in place without running anything: images (but SVG,
/// which is a document with scripts), audio and video. Everything else is served as an
/// attachment.
pub fn shown_inline(ct: &str) -> bool {
    let e = essence(ct);
    (e.starts_with("image/") && !e.contains("svg"))
        || e.starts_with("audio/")
        || e.starts_with("video/")
}

/// A path segment as it goes into a URL: every byte but RFC 3986 unreserved characters
/// percent-encoded.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a slot id is one this module made (letters and digits of [`ID_LEN`]).
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The path of a slot's file below the module's mount: `/<id>/<encoded name>`.
pub fn file_path(id: &str, name: &str) -> String {
    format!("/{id}/{}", encode_segment(name))
}

/// What a PUT URL's signature covers: the file's path, its size, its content type and the
/// URL's expiry, so none can be changed without the secret.
fn signed_text(path: &str, size: u64, content_type: &str, expires: i64) -> Vec<u8> {
    format!("PUT\n{path}\n{size}\n{content_type}\n{expires}").into_bytes()
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// The signature of a PUT URL (HMAC-SHA-256, hex).
pub fn sign(secret: &[u8], path: &str, size: u64, content_type: &str, expires: i64) -> String {
    let mut m = mac(secret);
    m.update(&signed_text(path, size, content_type, expires));
    hex::encode(m.finalize().into_bytes())
}

/// Whether `signature` is the one of these values (compared in constant time).
pub fn verify(
    secret: &[u8],
    path: &str,
    size: u64,
    content_type: &str,
    expires: i64,
    signature: &str,
) -> bool {
    let Ok(sig) = hex::decode(signature) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(&signed_text(path, size, content_type, expires));
    m.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_directories_and_dangerous_characters() {
        for (given, cleaned) in [
            ("photo.jpg", Some("photo.jpg")),
            ("../../etc/passwd", Some("passwd")),
            ("..\\..\\boot.ini", Some("boot.ini")),
            ("..", None),
            (".hidden", Some("hidden")),
            ("a\r\nSet-Cookie: x=1", Some("aSet-Cookie x1")),
            ("\"quoted\";.png", Some("quoted.png")),
            ("100%.txt", Some("100.txt")),
            ("   ", None),
            ("dir/", None),
            ("Grüße 😀.txt", Some("Grüße 😀.txt")),
        ] {
            assert_eq!(clean_file_name(given).as_deref(), cleaned, "{given:?}");
        }
        let long = "a".repeat(500);
        assert_eq!(
            clean_file_name(&long).map(|n| n.len()),
            Some(MAX_NAME_BYTES)
        );
    }

    #[test]
    fn content_types_are_checked() {
        assert_eq!(
            clean_content_type("Image/PNG").as_deref(),
            Some("image/png")
        );
        assert_eq!(
            clean_content_type("text/plain;charset=utf-8").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        for bad in [
            "",
            "text",
            "text/",
            "/x",
            "text/html\r\nX: y",
            "a b/c",
            "ü/x",
        ] {
            assert_eq!(clean_content_type(bad), None, "{bad:?}");
        }
        assert!(type_matches("image/*", "image/png"));
        assert!(type_matches("*", "text/html"));
        assert!(type_matches("text/html", "text/html; charset=utf-8"));
        assert!(!type_matches("image/*", "imagex/png"));
        assert!(shown_inline("image/png"));
        assert!(!shown_inline("image/svg+xml"));
        assert!(!shown_inline("text/html"));
        assert!(!shown_inline("application/pdf"));
    }

    #[test]
    fn signatures_cover_every_value() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let sig = sign(secret, "/id/a.png", 10, "image/png", 1000);
        assert!(verify(secret, "/id/a.png", 10, "image/png", 1000, &sig));
        assert!(!verify(secret, "/id/b.png", 10, "image/png", 1000, &sig));
        assert!(!verify(secret, "/id/a.png", 11, "image/png", 1000, &sig));
        assert!(!verify(secret, "/id/a.png", 10, "text/html", 1000, &sig));
        assert!(!verify(secret, "/id/a.png", 10, "image/png", 1001, &sig));
        assert!(!verify(b"other", "/id/a.png", 10, "image/png", 1000, &sig));
        assert!(!verify(secret, "/id/a.png", 10, "image/png", 1000, "zz"));
        assert!(!verify(secret, "/id/a.png", 10, "image/png", 1000, ""));
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(encode_segment("a b/c.png"), "a%20b%2Fc.png");
        assert_eq!(file_path("abc", "x y.png"), "/abc/x%20y.png");
        assert!(valid_id(&"a".repeat(ID_LEN)));
        assert!(!valid_id(".."));
        assert!(!valid_id(&format!("{}/", "a".repeat(ID_LEN - 1))));
    }
}

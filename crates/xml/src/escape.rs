//! Output escaping.
//!
//! Runs of bytes that need no treatment are copied with a single
//! `extend_from_slice`; a 256-entry table decides per byte.

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

const fn table(attr: bool, apos: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        // C0 controls are not representable in XML 1.0 except TAB, LF, CR.
        // TAB and LF are fine literally in text; in attribute values they
        // would be normalized to spaces, so they are escaped there.
        t[i] = attr || !(i == 0x09 || i == 0x0A);
        i += 1;
    }
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    if attr {
        t[b'"' as usize] = true;
    }
    if apos {
        t[b'\'' as usize] = true;
    }
    // possible start of U+FFFE / U+FFFF (EF BF BE / EF BF BF)
    t[0xEF] = true;
    t
}

static TEXT: [bool; 256] = table(false, false);
static ATTR: [bool; 256] = table(true, false);
static ATTR_ANY_QUOTE: [bool; 256] = table(true, true);

#[inline]
fn escape(s: &str, out: &mut Vec<u8>, tbl: &[bool; 256]) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !tbl[c as usize] {
            i += 1;
            continue;
        }
        let (rep, len): (&[u8], usize) = match c {
            b'&' => (b"&amp;", 1),
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'"' => (b"&quot;", 1),
            b'\'' => (b"&apos;", 1),
            b'\r' => (b"&#xD;", 1),
            b'\n' => (b"&#xA;", 1),
            b'\t' => (b"&#x9;", 1),
            0xEF => match b.get(i + 1..i + 3) {
                Some([0xBF, 0xBE]) | Some([0xBF, 0xBF]) => (REPLACEMENT, 3),
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => (REPLACEMENT, 1),
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(rep);
        i += len;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
}

/// Escape character data: `&`, `<`, `>` and CR (as `&#xD;` so that it is
/// not turned into LF by the receiver's line-end normalization).
pub(crate) fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape(s, out, &TEXT)
}

/// Escape an attribute value for use inside double quotes: `&`, `<`, `>`,
/// `"`, and CR, LF, TAB as character references so they survive attribute
/// value normalization.
pub(crate) fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape(s, out, &ATTR)
}

/// Escape an attribute value for use inside either kind of quote (the
/// stream header is written with single quotes).
pub(crate) fn escape_attr_any_quote(s: &str, out: &mut Vec<u8>) {
    escape(s, out, &ATTR_ANY_QUOTE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        let mut v = Vec::new();
        escape_text(s, &mut v);
        String::from_utf8(v).expect("utf8")
    }
    fn a(s: &str) -> String {
        let mut v = Vec::new();
        escape_attr(s, &mut v);
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn text_escaping() {
        assert_eq!(t("plain"), "plain");
        assert_eq!(t("a<b>&c\"d'e"), "a&lt;b&gt;&amp;c\"d'e");
        assert_eq!(t("x\r\n\ty"), "x&#xD;\n\ty");
        assert_eq!(t("]]>"), "]]&gt;");
        assert_eq!(t("\u{0}\u{1b}z"), "\u{FFFD}\u{FFFD}z");
        assert_eq!(
            t("\u{FFFE}\u{FFFF}\u{FFFD}\u{FF21}é"),
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{FF21}é"
        );
    }

    #[test]
    fn attr_escaping() {
        assert_eq!(a("a<b>&c\"d'e"), "a&lt;b&gt;&amp;c&quot;d'e");
        assert_eq!(a("x\r\n\ty"), "x&#xD;&#xA;&#x9;y");
        assert_eq!(a(""), "");
        assert_eq!(a("\u{7}"), "\u{FFFD}");
    }
}

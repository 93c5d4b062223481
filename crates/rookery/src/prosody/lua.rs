//! A reader for the Lua data files of Prosody's `internal` storage: the subset of Lua that
//! Prosody's `util.serialization` writes (and `util.datamanager` wraps in `return …;` or in
//! `item(…);` lines).
//!
//! It is written by hand because no maintained Rust crate parses these files, and running
//! them through a Lua interpreter would execute whatever an imported directory contains. It
//! reads data only — strings (double- or single-quoted with Lua's escapes, `\ddd` decimal
//! bytes included, and long brackets `[[…]]`/`[==[…]==]`), numbers (also `(1/0)`, `(-1/0)`,
//! `(0/0)`), booleans, `nil` and tables of `[key] = value`, `name = value` and list items —
//! and refuses anything else. Nesting is capped at [`MAX_DEPTH`]; the caller caps the size
//! of the text.

use std::collections::HashSet;

/// Nesting depth of tables: a stanza nested 8 deep is about 17 tables deep (an element and
/// its `attr` table per level), and Prosody writes at most 127.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {what}")]
pub struct LuaError {
    pub line: usize,
    pub what: String,
}

/// A value of the data subset.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Lua strings are bytes; UTF-8 is checked where text is expected.
    Str(Vec<u8>),
    Table(Table),
}

/// A table's entries in file order; list items get the keys 1, 2, … as in Lua.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub entries: Vec<(Key, Value)>,
}

/// A table key. Floats, tables and `nil` are refused as keys (Prosody writes none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Int(i64),
    Bool(bool),
    Str(Vec<u8>),
}

impl Table {
    /// The value of a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| matches!(k, Key::Str(s) if s == key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The list part: the values of the keys 1, 2, … up to the first missing one.
    pub fn list(&self) -> Vec<&Value> {
        let mut out = Vec::new();
        loop {
            let want = out.len() as i64 + 1;
            match self.entries.iter().find(|(k, _)| *k == Key::Int(want)) {
                Some((_, v)) => out.push(v),
                None => return out,
            }
        }
    }
}

impl Value {
    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string that is UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Table(_) => "a table",
        }
    }
}

/// A `.dat` file: `return VALUE;` (the `;` optional, surrounding white space allowed).
pub fn parse_return(text: &[u8]) -> Result<Value, LuaError> {
    let mut p = Parser::new(text);
    p.skip_space();
    p.keyword("return")?;
    let v = p.value(0)?;
    p.skip_space();
    p.eat(b';');
    p.skip_space();
    if !p.at_end() {
        return Err(p.err("unexpected text after the returned value"));
    }
    Ok(v)
}

/// A `.list` file: `item(VALUE);` entries, in order.
pub fn parse_items(text: &[u8]) -> Result<Vec<Value>, LuaError> {
    let mut p = Parser::new(text);
    let mut out = Vec::new();
    loop {
        p.skip_space();
        if p.at_end() {
            return Ok(out);
        }
        p.keyword("item")?;
        p.skip_space();
        p.expect(b'(')?;
        out.push(p.value(0)?);
        p.skip_space();
        p.expect(b')')?;
        p.skip_space();
        p.eat(b';');
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Parser { s, pos: 0 }
    }

    fn err(&self, what: impl Into<String>) -> LuaError {
        let upto = self.pos.min(self.s.len());
        LuaError {
            line: 1 + self.s[..upto].iter().filter(|&&b| b == b'\n').count(),
            what: what.into(),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), LuaError> {
        if self.eat(b) {
            Ok(())
        } else if self.at_end() {
            Err(self.err(format!("the file ends where '{}' was expected", b as char)))
        } else {
            Err(self.err(format!("'{}' expected", b as char)))
        }
    }

    fn skip_space(&mut self) {
        while matches!(
            self.peek(),
            Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
        ) {
            self.pos += 1;
        }
    }

    fn name(&mut self) -> &'a [u8] {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c == b'_' || c.is_ascii_alphanumeric()) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn keyword(&mut self, word: &str) -> Result<(), LuaError> {
        let start = self.pos;
        if self.name() == word.as_bytes() {
            Ok(())
        } else {
            self.pos = start;
            Err(self.err(format!("'{word}' expected")))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, LuaError> {
        self.skip_space();
        match self.peek() {
            None => Err(self.err("the file ends where a value was expected")),
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("tables nested deeper than {MAX_DEPTH}")));
                }
                self.table(depth + 1).map(Value::Table)
            }
            Some(b'"' | b'\'') => self.quoted().map(Value::Str),
            Some(b'[') if matches!(self.s.get(self.pos + 1), Some(b'[' | b'=')) => {
                self.long_string().map(Value::Str)
            }
            Some(b'(') => self.special_number(),
            Some(c) if c == b'-' || c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => match self.name() {
                b"true" => Ok(Value::Bool(true)),
                b"false" => Ok(Value::Bool(false)),
                b"nil" => Ok(Value::Nil),
                other => Err(self.err(format!(
                    "'{}' is not a value (only data is read)",
                    String::from_utf8_lossy(other)
                ))),
            },
            Some(c) => Err(self.err(format!("unexpected '{}'", c.escape_ascii()))),
        }
    }

    fn table(&mut self, depth: usize) -> Result<Table, LuaError> {
        self.expect(b'{')?;
        let mut t = Table::default();
        let mut seen = HashSet::new();
        let mut next_index = 1i64;
        loop {
            self.skip_space();
            if self.eat(b'}') {
                return Ok(t);
            }
            let key = match self.peek() {
                Some(b'[') if !matches!(self.s.get(self.pos + 1), Some(b'[' | b'=')) => {
                    self.pos += 1;
                    let k = self.value(depth)?;
                    self.skip_space();
                    self.expect(b']')?;
                    self.skip_space();
                    self.expect(b'=')?;
                    Some(match k {
                        Value::Str(s) => Key::Str(s),
                        Value::Int(i) => Key::Int(i),
                        Value::Bool(b) => Key::Bool(b),
                        other => return Err(self.err(format!("{} as a table key", other.kind()))),
                    })
                }
                Some(c) if c == b'_' || c.is_ascii_alphabetic() => {
                    let start = self.pos;
                    let name = self.name();
                    self.skip_space();
                    if self.peek() == Some(b'=') {
                        self.pos += 1;
                        Some(Key::Str(name.to_vec()))
                    } else {
                        // `true`, `false`, `nil` as a list item.
                        self.pos = start;
                        None
                    }
                }
                _ => None,
            };
            let value = self.value(depth)?;
            let key = match key {
                Some(k) => k,
                None => {
                    let k = Key::Int(next_index);
                    next_index += 1;
                    k
                }
            };
            if !seen.insert(key.clone()) {
                return Err(self.err("a table key appears twice"));
            }
            // A nil value is no entry in Lua.
            if value != Value::Nil {
                t.entries.push((key, value));
            }
            self.skip_space();
            if !(self.eat(b';') || self.eat(b',')) {
                self.skip_space();
                self.expect(b'}')?;
                return Ok(t);
            }
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, LuaError> {
        let quote = self.s[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match c {
                b'\n' | b'\r' => return Err(self.err("unterminated string")),
                c if c == quote => return Ok(out),
                b'\\' => self.escape(&mut out)?,
                c => out.push(c),
            }
        }
    }

    /// After a backslash: Lua 5.4's escapes.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), LuaError> {
        let Some(c) = self.peek() else {
            return Err(self.err("unterminated string"));
        };
        self.pos += 1;
        match c {
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'\\' | b'"' | b'\'' => out.push(c),
            b'\n' => out.push(b'\n'),
            b'z' => self.skip_space(),
            b'x' => {
                let hex = self
                    .s
                    .get(self.pos..self.pos + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| self.err("bad \\x escape"))?;
                self.pos += 2;
                out.push(hex);
            }
            b'0'..=b'9' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ b'0'..=b'9') => {
                            n = n * 10 + u32::from(d - b'0');
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                let byte = u8::try_from(n).map_err(|_| self.err("decimal escape above 255"))?;
                out.push(byte);
            }
            b'u' => {
                self.expect(b'{')?;
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_hexdigit())
                    && self.pos - start < 8
                {
                    self.pos += 1;
                }
                let code = std::str::from_utf8(&self.s[start..self.pos])
                    .ok()
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| self.err("bad \\u escape"))?;
                self.expect(b'}')?;
                let mut buf = [0; 4];
                out.extend_from_slice(code.encode_utf8(&mut buf).as_bytes());
            }
            other => return Err(self.err(format!("unknown escape '\\{}'", other.escape_ascii()))),
        }
        Ok(())
    }

    /// `[[…]]` or `[==[…]==]`; a newline right after the opening is not part of the string.
    fn long_string(&mut self) -> Result<Vec<u8>, LuaError> {
        self.pos += 1;
        let mut level = 0;
        while self.eat(b'=') {
            level += 1;
        }
        self.expect(b'[')?;
        if self.eat(b'\r') {
            self.eat(b'\n');
        } else if self.eat(b'\n') {
            self.eat(b'\r');
        }
        let mut close = vec![b']'];
        close.extend(std::iter::repeat_n(b'=', level));
        close.push(b']');
        let rest = &self.s[self.pos..];
        let end = rest
            .windows(close.len())
            .position(|w| w == close.as_slice())
            .ok_or_else(|| self.err("unterminated long string"))?;
        let out = rest[..end].to_vec();
        self.pos += end + close.len();
        Ok(out)
    }

    fn number(&mut self) -> Result<Value, LuaError> {
        let start = self.pos;
        self.eat(b'-');
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'.'
            || ((c == b'+' || c == b'-') && matches!(self.s[self.pos - 1], b'e' | b'E')))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        let plain = text
            .bytes()
            .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c));
        match text.parse::<f64>() {
            Ok(f) if plain && f.is_finite() => Ok(Value::Float(f)),
            _ => Err(self.err(format!("'{text}' is not a number"))),
        }
    }

    /// `(1/0)`, `(-1/0)` and `(0/0)`: how Prosody writes infinities and NaN.
    fn special_number(&mut self) -> Result<Value, LuaError> {
        for (text, v) in [
            (&b"(1/0)"[..], f64::INFINITY),
            (b"(-1/0)", f64::NEG_INFINITY),
            (b"(0/0)", f64::NAN),
        ] {
            if self.s[self.pos..].starts_with(text) {
                self.pos += text.len();
                return Ok(Value::Float(v));
            }
        }
        Err(self.err("an expression (only data is read)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.as_bytes().to_vec())
    }

    #[test]
    fn reads_what_prosody_writes() {
        let text = br#"return {
	[false] = {
		["version"] = 3;
		["pending"] = {
			["carol@localhost"] = true;
		};
	};
	["bob@localhost"] = {
		["groups"] = {
			["Friends"] = true;
		};
		["subscription"] = "both";
		["name"] = "Bob \"the\" \195\169l\226\130\172ve\\";
	};
	when = 1701234567.1234567;
	n = -12;
	inf = (1/0);
	long = [==[
a]]b]==];
	'single';
};
"#;
        let v = parse_return(text).unwrap();
        let t = v.as_table().unwrap();
        let bob = t.get("bob@localhost").unwrap().as_table().unwrap();
        assert_eq!(
            bob.get("name").unwrap().as_str(),
            Some("Bob \"the\" él€ve\\")
        );
        assert_eq!(bob.get("subscription"), Some(&s("both")));
        let meta = t
            .entries
            .iter()
            .find(|(k, _)| *k == Key::Bool(false))
            .unwrap()
            .1
            .as_table()
            .unwrap();
        assert_eq!(meta.get("version"), Some(&Value::Int(3)));
        assert_eq!(t.get("when"), Some(&Value::Float(1701234567.1234567)));
        assert_eq!(t.get("n"), Some(&Value::Int(-12)));
        assert_eq!(t.get("inf"), Some(&Value::Float(f64::INFINITY)));
        assert_eq!(t.get("long"), Some(&s("a]]b")));
        assert_eq!(t.list(), vec![&s("single")]);
    }

    #[test]
    fn reads_list_files() {
        let text = b"item({\n\tname = \"message\";\n\tattr = { to = \"a@b\"; };\n\t[1] = \"x\";\n});\nitem({ \"y\", \"z\" });\n";
        let items = parse_items(text).unwrap();
        assert_eq!(items.len(), 2);
        let first = items[0].as_table().unwrap();
        assert_eq!(first.get("name"), Some(&s("message")));
        assert_eq!(first.list(), vec![&s("x")]);
        assert_eq!(items[1].as_table().unwrap().list(), vec![&s("y"), &s("z")]);
        assert_eq!(parse_items(b"").unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn refuses_code_and_malformed_data() {
        for (text, what) in [
            (&b"return os.execute('rm -rf /');"[..], "not a value"),
            (b"return { a = 1 ", "ends where"),
            (b"return \"abc", "unterminated string"),
            (b"return \"\\300\"", "above 255"),
            (b"return \"\\q\"", "unknown escape"),
            (b"return { a = 1; a = 2 }", "appears twice"),
            (b"return { [{}] = 1 }", "as a table key"),
            (b"return 1 + 1", "after the returned value"),
            (b"return 0x10", "not a number"),
            (b"return [==[abc]=]", "unterminated long string"),
            (b"return (2/0)", "expression"),
            (b"x = 1", "'return' expected"),
            (b"item({}) item(", "ends where"),
        ] {
            let err = if text.starts_with(b"item") {
                parse_items(text).unwrap_err()
            } else {
                parse_return(text).unwrap_err()
            };
            assert!(
                err.what.contains(what),
                "{}: {err}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn nesting_is_capped() {
        let ok = format!("return {}{}", "{".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(parse_return(ok.as_bytes()).is_ok());
        let deep = format!("return {}{}", "{".repeat(100_000), "}".repeat(100_000));
        let err = parse_return(deep.as_bytes()).unwrap_err();
        assert!(err.what.contains("nested deeper"), "{err}");
    }
}

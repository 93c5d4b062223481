//! Owned XML element tree and its serializer.

use std::fmt;
use std::io::Write as _;

use compact_str::CompactString;

use crate::escape::{escape_attr, escape_text};
use crate::ns::Ns;
use crate::NS_XML;

/// An XML element: local name, resolved namespace, attributes (in document
/// order) and child nodes.
///
/// Invariants kept by the API: adjacent text children are merged and empty
/// text is never stored, so two elements with the same logical content
/// compare equal. Namespace declarations are not attributes; the namespace of
/// an element is its [`ns`](Self::ns) and declarations are generated on
/// output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub(crate) name: CompactString,
    pub(crate) ns: Ns,
    pub(crate) attrs: Vec<(CompactString, String)>,
    pub(crate) nodes: Vec<Node>,
}

/// A child node of an [`Element`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entities and character references already expanded).
    Text(String),
}

impl Node {
    /// The element, if this node is one.
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
    }

    /// The text, if this node is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Node::Element(_) => None,
            Node::Text(t) => Some(t),
        }
    }
}

/// Normalize the attribute naming convention: `{}local` → `local`,
/// `{http://www.w3.org/XML/1998/namespace}local` → `xml:local`.
fn normalize_attr_name(name: String) -> CompactString {
    if let Some(rest) = name.strip_prefix('{') {
        if let Some((uri, local)) = rest.split_once('}') {
            if uri.is_empty() {
                return CompactString::from(local);
            }
            if uri == NS_XML {
                let mut s = CompactString::with_capacity(4 + local.len());
                s.push_str("xml:");
                s.push_str(local);
                return s;
            }
        }
    }
    CompactString::from(name)
}

impl Element {
    /// Create an element with the given local name and namespace URI
    /// (`""` for no namespace).
    ///
    /// Names are not validated; they must be XML NCNames for the output of
    /// [`write_to`](Self::write_to) to be well-formed.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: CompactString::from(name.into()),
            ns: Ns::from_string(ns.into()),
            attrs: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// Local name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolved namespace URI (`""` if none).
    #[inline]
    pub fn ns(&self) -> &str {
        self.ns.as_str()
    }

    /// Whether the element has this local name and namespace.
    #[inline]
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns.as_str() == ns
    }

    /// Value of an attribute (see the crate docs for the naming convention).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set an attribute, replacing the value if it is already present (the
    /// attribute keeps its position then).
    ///
    /// `name` follows the crate's naming convention (`to`, `xml:lang`,
    /// `{urn:example}attr`). Attributes named `xmlns` or `xmlns:*` are
    /// stored but never serialized: namespaces are controlled by
    /// [`ns`](Self::ns).
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = normalize_attr_name(name.into());
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Remove an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// All attributes as `(name, value)`, in document / insertion order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Builder form of [`set_attr`](Self::set_attr).
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`push_child`](Self::push_child).
    pub fn with_child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Builder form of [`push_text`](Self::push_text).
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// Append a child element.
    pub fn push_child(&mut self, child: Element) {
        self.nodes.push(Node::Element(child));
    }

    /// Append text. Empty text is ignored; text directly following a text
    /// node is merged into it.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        self.push_text_string(text);
    }

    #[inline]
    pub(crate) fn push_text_string(&mut self, text: String) {
        if let Some(Node::Text(last)) = self.nodes.last_mut() {
            last.push_str(&text);
        } else {
            self.nodes.push(Node::Text(text));
        }
    }

    /// All child nodes in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Element children only.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Element children only, mutably.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.nodes.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    /// First child element with this name and namespace, mutably.
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|e| e.is(name, ns))
    }

    /// Whether a child element with this name and namespace exists.
    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Remove and return the first child element with this name and
    /// namespace. Text nodes around it that become adjacent are merged.
    pub fn remove_child(&mut self, name: &str, ns: &str) -> Option<Element> {
        let pos = self
            .nodes
            .iter()
            .position(|n| matches!(n, Node::Element(e) if e.is(name, ns)))?;
        let removed = match self.nodes.remove(pos) {
            Node::Element(e) => e,
            // unreachable by construction of `pos`; keep the node intact
            Node::Text(t) => {
                self.nodes.insert(pos, Node::Text(t));
                return None;
            }
        };
        // keep the "no adjacent text nodes" invariant
        if pos > 0 && pos < self.nodes.len() {
            if let (Node::Text(_), Node::Text(_)) = (&self.nodes[pos - 1], &self.nodes[pos]) {
                if let Node::Text(next) = self.nodes.remove(pos) {
                    if let Node::Text(prev) = &mut self.nodes[pos - 1] {
                        prev.push_str(&next);
                    }
                }
            }
        }
        Some(removed)
    }

    /// Keeps only the child elements `keep` selects (text is kept; text nodes that become
    /// adjacent are merged).
    pub fn retain_children(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        let before = self.nodes.len();
        self.nodes.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
        if self.nodes.len() == before {
            return;
        }
        let mut merged: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for n in self.nodes.drain(..) {
            match (merged.last_mut(), n) {
                (Some(Node::Text(prev)), Node::Text(next)) => prev.push_str(&next),
                (_, n) => merged.push(n),
            }
        }
        self.nodes = merged;
    }

    /// Moves this element and every descendant in namespace `from` to namespace `to`
    /// (elements in other namespaces, and their subtrees' other elements, are left alone).
    ///
    /// This is how a stream's content namespace is mapped at the edge: a stanza read from a
    /// `jabber:server` stream has its `jabber:server` elements (the stanza, `<body/>`,
    /// `<error/>`...) moved to the namespace the rest of the program uses.
    pub fn rename_ns(&mut self, from: &str, to: &str) {
        if self.ns.as_str() == from {
            self.ns = Ns::from_string(to.to_owned());
        }
        for child in self.children_mut() {
            child.rename_ns(from, to);
        }
    }

    /// Concatenation of the direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialize into `out`.
    ///
    /// An `xmlns` attribute is written only where the element's namespace
    /// differs from `parent_ns` (pass the stream's content namespace, e.g.
    /// `"jabber:client"`, for top-level stanzas so they go out without a
    /// redundant `xmlns`; pass `""` to always declare it at the root).
    /// Attributes named `{uri}local` get a generated prefix (`ns0`, `ns1`,
    /// ...) declared on the same element; `xml:*` attributes use the
    /// predeclared `xml` prefix. Elements without children are written as
    /// empty-element tags (`<a/>`).
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_start(out, parent_ns);
        if !self.attrs.is_empty() {
            write_attrs(&self.attrs, out);
        }
        self.write_rest(out);
    }

    /// Serializes like [`write_to`](Self::write_to), except that the attribute `name` (a
    /// plain name such as `to`) is written with `value`, or left out for `None`, whatever the
    /// element holds; it keeps its place among the attributes (first if the element has none
    /// of that name). Returns the offset, from where this element starts in `out`, at which
    /// the attribute is (or would be) written: a serialisation made with `None` can be written
    /// again with any value by inserting it there with [`write_attr`](Self::write_attr), and
    /// gives the same bytes as serializing the element with that value.
    pub fn write_with_attr(
        &self,
        out: &mut Vec<u8>,
        parent_ns: &str,
        name: &str,
        value: Option<&str>,
    ) -> usize {
        let start = out.len();
        self.write_start(out, parent_ns);
        let at = if self.attrs.iter().any(|(k, _)| k == name) {
            write_attrs_replacing(&self.attrs, out, Some((name, value))).unwrap_or(out.len())
        } else {
            // Not among the attributes: it goes first.
            let at = out.len();
            if let Some(value) = value {
                Self::write_attr(out, name, value);
            }
            write_attrs(&self.attrs, out);
            at
        };
        self.write_rest(out);
        at - start
    }

    /// Writes ` name="value"` (the value escaped), for a plain attribute name.
    pub fn write_attr(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(value, out);
        out.push(b'"');
    }

    /// `<name` and, where the namespace differs from the parent's, its declaration.
    fn write_start(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns.as_str() != parent_ns {
            out.extend_from_slice(b" xmlns=\"");
            escape_attr(self.ns.as_str(), out);
            out.push(b'"');
        }
    }

    /// The end of the start tag, the children and the end tag.
    fn write_rest(&self, out: &mut Vec<u8>) {
        if self.nodes.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        let ns = self.ns.as_str();
        for n in &self.nodes {
            match n {
                Node::Element(e) => e.write_to(out, ns),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serialize to a string; see [`write_to`](Self::write_to).
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        bytes_to_string(out)
    }
}

pub(crate) fn bytes_to_string(out: Vec<u8>) -> String {
    // The serializer only ever writes valid UTF-8 (all inputs are `str`, all
    // replacements are UTF-8), so this never takes the lossy path.
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Write ` name="value"` for every attribute, generating prefix
/// declarations for `{uri}local` names.
pub(crate) fn write_attrs<K: AsRef<str>, V: AsRef<str>>(attrs: &[(K, V)], out: &mut Vec<u8>) {
    write_attrs_replacing(attrs, out, None);
}

/// [`write_attrs`], with the attribute named `replace.0` (a plain name) written with the value
/// `replace.1` (left out for `None`). Returns where in `out` that attribute was, if the
/// element has it.
fn write_attrs_replacing<K: AsRef<str>, V: AsRef<str>>(
    attrs: &[(K, V)],
    out: &mut Vec<u8>,
    replace: Option<(&str, Option<&str>)>,
) -> Option<usize> {
    let mut replaced_at = None;
    // URIs that got a generated prefix on this element; index = prefix number
    let mut declared: Vec<&str> = Vec::new();
    for (k, v) in attrs {
        let k = k.as_ref();
        if k == "xmlns" || k.starts_with("xmlns:") {
            continue;
        }
        if let Some((name, value)) = replace {
            if k == name {
                replaced_at = Some(out.len());
                if let Some(value) = value {
                    Element::write_attr(out, name, value);
                }
                continue;
            }
        }
        out.push(b' ');
        match k.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((uri, local)) if uri == NS_XML => {
                out.extend_from_slice(b"xml:");
                out.extend_from_slice(local.as_bytes());
            }
            Some(("", local)) => out.extend_from_slice(local.as_bytes()),
            Some((uri, local)) => {
                let idx = match declared.iter().position(|d| *d == uri) {
                    Some(i) => i,
                    None => {
                        declared.push(uri);
                        let i = declared.len() - 1;
                        let _ = write!(out, "xmlns:ns{i}=\"");
                        escape_attr(uri, out);
                        out.extend_from_slice(b"\" ");
                        i
                    }
                };
                let _ = write!(out, "ns{idx}:");
                out.extend_from_slice(local.as_bytes());
            }
            None => out.extend_from_slice(k.as_bytes()),
        }
        out.extend_from_slice(b"=\"");
        escape_attr(v.as_ref(), out);
        out.push(b'"');
    }
    replaced_at
}

impl fmt::Display for Element {
    /// Same as `to_xml("")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml(""))
    }
}

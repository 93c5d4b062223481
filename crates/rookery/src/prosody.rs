//! `rookery import --prosody DIR`: accounts and their data from a Prosody data directory
//! (its default `internal` storage, as Prosody 0.12 lays it out).
//!
//! Layout: `DIR/<host>/<store>/<user>.dat` (or `.list` for archive stores), with host and
//! user names escaped by `util.datamanager` (every byte that is not a letter or digit as
//! `%xx`: `example%2eorg`), each file Lua data (see [`lua`]). Read per host that has an
//! `accounts` store:
//!
//! * `accounts`: `internal_hashed` keeps a SCRAM-SHA-1 record (`salt`, `iteration_count`,
//!   `stored_key` and `server_key` in hex), carried over as it is; `internal_plain` keeps the
//!   `password`, made into SCRAM records for every hash;
//! * `roster`: items (`subscription`, `name`, `groups` as a set, `ask`), the pending incoming
//!   requests in the metadata entry (`[false] = { pending = {…} }`, or the older top-level
//!   `pending`);
//! * `vcard` (mod_vcard) and `private` (mod_private, a map of `name:namespace` to the element);
//! * `offline`: an archive (`offline/<user>.list`, one `item({…});` per message) of stanzas
//!   stored as tables (`{ name = "message"; attr = {…}; [1] = child, … }`).
//!
//! * `pep` (mod_pep: per node its `config`, `affiliations` and `subscribers`) and the items of
//!   each node in the archive store `pep_<node>` (oldest first, the publisher in `with`);
//! * `archive` (mod_mam's message archive; `archive2` in older versions): per message the
//!   stanza, its archive id in `key` and its time in `when` (seconds);
//! * `blocklist` (mod_blocklist: the blocked JIDs as keys, metadata under `[false]`).
//!
//! Other stores (MUC logs, privacy lists, …) and node settings Rookery has no field for are
//! named on stderr as skipped.
//!
//! The data is turned into a XEP-0227 document and read by [`pie::parse_with`], so an import
//! from Prosody passes exactly the checks of `rookery import FILE` (JIDs, SCRAM records,
//! shapes, then the configuration and the database) before anything is written.

pub mod lua;

use crate::pie;
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lua::{Key, Table, Value};
use rookery_xml::Element;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes of one data file; larger ones are refused before being read. A file is one user's
/// store; the whole directory shares [`pie::MAX_DOCUMENT_BYTES`].
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Hosts and users read from one directory.
pub const MAX_ENTRIES: usize = 100_000;
/// Prosody's stores this importer reads.
const STORES: [&str; 8] = [
    "accounts",
    "roster",
    "vcard",
    "private",
    "offline",
    "archive",
    "archive2",
    "blocklist",
];
const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Reads a Prosody data directory into a validated document.
pub fn read(dir: &Path) -> Result<pie::Document> {
    let mut skipped = Vec::new();
    let root = to_pie(dir, &mut skipped)
        .with_context(|| format!("{} is not a readable Prosody data directory", dir.display()))?;
    let mut doc = pie::parse_with(&root.to_xml(""), &mut |href: &str| {
        bail!("unexpected include of {href}")
    })
    .with_context(|| format!("the Prosody data in {} is not valid", dir.display()))?;
    doc.skipped.extend(skipped_stores(dir)?);
    doc.skipped.extend(skipped);
    Ok(doc)
}

/// The directory as a `<server-data>` element.
fn to_pie(dir: &Path, skipped: &mut Vec<String>) -> Result<Element> {
    let mut budget = pie::MAX_DOCUMENT_BYTES;
    let mut root = Element::new("server-data", pie::NS);
    for (domain, host_dir) in entries(dir, None)? {
        let accounts = host_dir.join("accounts");
        if !accounts.is_dir() {
            continue;
        }
        let mut host = Element::new("host", pie::NS).with_attr("jid", domain.as_str());
        for (user, path) in entries(&accounts, Some("dat"))? {
            let ctx = |store: &str| format!("{store} of {user}@{domain}");
            let mut u = Element::new("user", pie::NS).with_attr("name", user.as_str());
            let file = |store: &str,
                        ext: &str,
                        budget: &mut usize|
             -> Result<Option<(PathBuf, Vec<u8>)>> {
                let p = host_dir
                    .join(store)
                    .join(format!("{}.{ext}", encode(&user)));
                Ok(read_file(&p, budget)?.map(|text| (p, text)))
            };
            let text = read_file(&path, &mut budget)?.unwrap_or_default();
            account(&mut u, &load(&text, &path)?).with_context(|| ctx("the account"))?;
            if let Some((p, text)) = file("roster", "dat", &mut budget)? {
                roster(&mut u, &format!("{user}@{domain}"), &load(&text, &p)?)
                    .with_context(|| ctx("the roster"))?;
            }
            if let Some((p, text)) = file("vcard", "dat", &mut budget)? {
                let vcard = element(&load(&text, &p)?, "", 0).with_context(|| ctx("the vCard"))?;
                u.push_child(vcard);
            }
            if let Some((p, text)) = file("private", "dat", &mut budget)? {
                u.push_child(private(&load(&text, &p)?).with_context(|| ctx("the private XML"))?);
            }
            if let Some((p, text)) = file("offline", "list", &mut budget)? {
                let items = lua::parse_items(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
                let mut box_ = Element::new("offline-messages", pie::NS);
                for (i, item) in items.iter().enumerate() {
                    let m = offline(item, &domain)
                        .with_context(|| ctx(&format!("offline message {}", i + 1)))?;
                    box_.push_child(m);
                }
                u.push_child(box_);
            }
            if let Some((p, text)) = file("pep", "dat", &mut budget)? {
                let nodes = load(&text, &p)?;
                let mut items = |node: &str, budget: &mut usize| -> Result<Option<DataFile>> {
                    let p = host_dir
                        .join(encode_store(&format!("pep_{node}")))
                        .join(format!("{}.list", encode(&user)));
                    Ok(read_file(&p, budget)?.map(|text| (p, text)))
                };
                for el in pep(&nodes, &mut items, &mut budget, skipped)
                    .with_context(|| ctx("the PEP nodes"))?
                {
                    u.push_child(el);
                }
            }
            if let Some((p, text)) = file("blocklist", "dat", &mut budget)? {
                u.push_child(blocklist(&load(&text, &p)?).with_context(|| ctx("the blocklist"))?);
            }
            // mod_mam's store; `archive2` before Prosody 0.11 renamed it.
            for store in ["archive", "archive2"] {
                if let Some((p, text)) = file(store, "list", &mut budget)? {
                    let items =
                        lua::parse_items(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
                    u.push_child(archive(&items).with_context(|| ctx("the message archive"))?);
                    break;
                }
            }
            host.push_child(u);
        }
        // A host without accounts (Prosody's default `localhost`, say) is nothing to
        // import, and no reason to refuse a configuration that does not serve it.
        if host.children().next().is_some() {
            root.push_child(host);
        } else {
            skipped.push(format!("the Prosody data of {domain} (it has no accounts)"));
        }
    }
    Ok(root)
}

/// The entries of a directory, sorted, with their decoded names: subdirectories (`ext`
/// None) or files `NAME.ext`. Other files are left alone (Prosody's `*.dat~` of an
/// interrupted write, a README).
fn entries(dir: &Path, ext: Option<&str>) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in read {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let ty = e
            .file_type()
            .with_context(|| format!("cannot read {}", e.path().display()))?;
        let stem = match ext {
            None if ty.is_dir() => name,
            Some(ext) if ty.is_file() => match name.strip_suffix(&format!(".{ext}")) {
                Some(stem) => stem,
                None => continue,
            },
            _ => continue,
        };
        let decoded = decode(stem)
            .ok_or_else(|| anyhow!("{}: not a name Prosody writes", e.path().display()))?;
        if out.len() >= MAX_ENTRIES {
            bail!("{} has more than {MAX_ENTRIES} entries", dir.display());
        }
        out.insert(decoded, e.path());
    }
    Ok(out)
}

/// `util.datamanager`'s escaping: `%xx` for every byte that is not a letter or a digit.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// `util.datamanager`'s escaping of store names: `%xx` for every byte that is not a letter,
/// a digit or `_`.
fn encode_store(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn decode(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// A data file read: its path (for error messages) and its bytes.
type DataFile = (PathBuf, Vec<u8>);

/// A file's bytes (None if it does not exist), within [`MAX_FILE_BYTES`] and the budget
/// left for the whole directory.
fn read_file(path: &Path, budget: &mut usize) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let limit = MAX_FILE_BYTES.min(*budget);
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > limit {
        if limit == MAX_FILE_BYTES {
            bail!(
                "{} is larger than {} MiB",
                path.display(),
                MAX_FILE_BYTES / (1024 * 1024)
            );
        }
        bail!(
            "the data directory holds more than {} MiB (at {})",
            pie::MAX_DOCUMENT_BYTES / (1024 * 1024),
            path.display()
        );
    }
    *budget -= bytes.len();
    Ok(Some(bytes))
}

fn load(text: &[u8], path: &Path) -> Result<Value> {
    lua::parse_return(text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn table<'a>(v: &'a Value, what: &str) -> Result<&'a Table> {
    v.as_table()
        .ok_or_else(|| anyhow!("{what} is {}, not a table", v.kind()))
}

fn text<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    match v {
        Value::Str(_) => v
            .as_str()
            .ok_or_else(|| anyhow!("{what} is not UTF-8 text")),
        other => bail!("{what} is {}, not a string", other.kind()),
    }
}

fn hex(v: &Value, what: &str) -> Result<Vec<u8>> {
    let t = text(v, what)?;
    if t.len() % 2 != 0 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{what} is not hexadecimal");
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| anyhow!("{what}: bad hex")))
        .collect()
}

/// `accounts/<user>.dat` into the user's SCRAM record and/or password.
fn account(u: &mut Element, v: &Value) -> Result<()> {
    let t = table(v, "the account")?;
    if let Some(p) = t.get("password") {
        u.set_attr("password", text(p, "the password")?);
    }
    if let Some(stored) = t.get("stored_key") {
        let field = |name: &str| {
            t.get(name)
                .ok_or_else(|| anyhow!("a stored_key without {name}"))
        };
        let iterations = match field("iteration_count")? {
            Value::Int(i) => *i,
            other => bail!("the iteration_count is {}, not an integer", other.kind()),
        };
        // Prosody's salt is a string (a UUID), used as its bytes.
        let salt = field("salt")?
            .as_bytes()
            .ok_or_else(|| anyhow!("the salt is not a string"))?;
        u.push_child(
            Element::new("scram-credentials", pie::NS_SCRAM)
                .with_attr("mechanism", "SCRAM-SHA-1")
                .with_child(
                    Element::new("iter-count", pie::NS_SCRAM).with_text(iterations.to_string()),
                )
                .with_child(Element::new("salt", pie::NS_SCRAM).with_text(BASE64.encode(salt)))
                .with_child(
                    Element::new("server-key", pie::NS_SCRAM)
                        .with_text(BASE64.encode(hex(field("server_key")?, "the server_key")?)),
                )
                .with_child(
                    Element::new("stored-key", pie::NS_SCRAM)
                        .with_text(BASE64.encode(hex(stored, "the stored_key")?)),
                ),
        );
    }
    Ok(())
}

/// `roster/<user>.dat` into a roster query and pending subscription requests.
fn roster(u: &mut Element, own: &str, v: &Value) -> Result<()> {
    let t = table(v, "the roster")?;
    let mut query = Element::new("query", "jabber:iq:roster");
    // Pending requests: the contact, and the request as Prosody kept it (0.12 keeps the
    // stanza; older versions `true`).
    let mut pending: Vec<(String, Option<Element>)> = Vec::new();
    let mut add_pending = |p: &Value| -> Result<()> {
        for (k, v) in &table(p, "pending")?.entries {
            let Key::Str(s) = k else {
                bail!("a pending entry is not a JID");
            };
            let jid =
                String::from_utf8(s.clone()).map_err(|_| anyhow!("a pending JID is not UTF-8"))?;
            let stanza = match v {
                Value::Table(_) => Some(
                    element(v, "jabber:client", 0)
                        .with_context(|| format!("the pending request of {jid}"))?,
                ),
                _ => None,
            };
            pending.push((jid, stanza));
        }
        Ok(())
    };
    for (k, item) in &t.entries {
        let jid = match k {
            // The metadata entry: the roster version and the pending incoming requests.
            Key::Bool(false) => {
                if let Some(p) = table(item, "the roster metadata")?.get("pending") {
                    add_pending(p)?;
                }
                continue;
            }
            Key::Str(s) => std::str::from_utf8(s).map_err(|_| anyhow!("a JID is not UTF-8"))?,
            _ => bail!("a roster key is neither a JID nor the metadata entry"),
        };
        let it = table(item, &format!("item {jid}"))?;
        // Before 0.9 the pending requests were a top-level entry named `pending` (a set,
        // where an item has a `subscription`).
        if jid == "pending" && !matches!(it.get("subscription"), Some(Value::Str(_))) {
            add_pending(item)?;
            continue;
        }
        let mut el = Element::new("item", "jabber:iq:roster").with_attr("jid", jid);
        let sub = match it.get("subscription") {
            Some(s) => text(s, "a subscription")?,
            None => "none",
        };
        el.set_attr("subscription", sub);
        if let Some(n) = it.get("name") {
            el.set_attr("name", text(n, "a name")?);
        }
        if let Some(a) = it.get("ask") {
            el.set_attr("ask", text(a, "an ask")?);
        }
        if let Some(g) = it.get("groups") {
            let mut groups = Vec::new();
            for (k, _) in &table(g, "the groups")?.entries {
                match k {
                    Key::Str(s) => groups.push(
                        String::from_utf8(s.clone())
                            .map_err(|_| anyhow!("a group name is not UTF-8"))?,
                    ),
                    _ => bail!("a group name is not a string"),
                }
            }
            groups.sort();
            for g in groups {
                el.push_child(Element::new("group", "jabber:iq:roster").with_text(g));
            }
        }
        query.push_child(el);
    }
    if query.children().next().is_some() {
        u.push_child(query);
    }
    for (from, stanza) in pending {
        let p = match stanza {
            Some(p) if p.is("presence", "jabber:client") => {
                if p.attr("type") != Some("subscribe") {
                    bail!("the pending request of {from} is not a subscription request");
                }
                let mut p = p;
                // It is redelivered as the request of the pending contact.
                p.set_attr("from", from);
                p
            }
            Some(p) => bail!("the pending request of {from} is a <{}>", p.name()),
            None => Element::new("presence", "jabber:client")
                .with_attr("from", from)
                .with_attr("to", own)
                .with_attr("type", "subscribe"),
        };
        u.push_child(p);
    }
    Ok(())
}

/// `private/<user>.dat`: a map from `name:namespace` to the stored element.
fn private(v: &Value) -> Result<Element> {
    let mut query = Element::new("query", "jabber:iq:private");
    let mut stored: Vec<(&[u8], &Value)> = Vec::new();
    for (k, v) in &table(v, "the private store")?.entries {
        match k {
            Key::Str(k) => stored.push((k, v)),
            _ => bail!("a private store key is not a string"),
        }
    }
    // The order of a Lua table is arbitrary: sorted, an import is reproducible.
    stored.sort_by(|a, b| a.0.cmp(b.0));
    for (_, el) in stored {
        query.push_child(element(el, "", 0)?);
    }
    Ok(query)
}

/// One stored offline message. The archive adds `stamp` (when it was stored) to the
/// stanza's attributes: it becomes the XEP-0203 delay Rookery's offline storage adds.
fn offline(v: &Value, domain: &str) -> Result<Element> {
    let mut m = element(v, "jabber:client", 0)?;
    if !m.is("message", "jabber:client") {
        bail!("<{}> in '{}', not a message", m.name(), m.ns());
    }
    if let Some(stamp) = m.remove_attr("stamp") {
        if !m.has_child("delay", "urn:xmpp:delay") {
            m.push_child(
                Element::new("delay", "urn:xmpp:delay")
                    .with_attr("from", domain)
                    .with_attr("stamp", stamp)
                    .with_text("Offline Storage"),
            );
        }
    }
    Ok(m)
}

/// mod_blocklist's record: `{ [false] = { created = … }; ["jid"] = when; … }` (0.12 keeps
/// the time of the block, older versions `true`), as XEP-0227 carries it
/// (`<blocklist xmlns='urn:xmpp:blocking'>`).
fn blocklist(v: &Value) -> Result<Element> {
    let mut list = Element::new("blocklist", rookery_modules::blocking::NS);
    for (k, value) in &table(v, "the blocklist")?.entries {
        match (k, value) {
            // The metadata entry.
            (Key::Bool(false), _) => {}
            (Key::Str(_), Value::Bool(false)) => {}
            (Key::Str(jid), Value::Bool(true) | Value::Int(_) | Value::Float(_)) => {
                let jid = std::str::from_utf8(jid)
                    .map_err(|_| anyhow!("a blocked JID is not UTF-8 text"))?;
                list.push_child(
                    Element::new("item", rookery_modules::blocking::NS).with_attr("jid", jid),
                );
            }
            (_, other) => bail!("an entry is {}, not a blocked JID", other.kind()),
        }
    }
    Ok(list)
}

/// mod_mam's archive as XEP-0227 carries it (see [`pie`]): each item is the stanza as stored
/// (with the `stamp` attribute storage adds, which is not the message's), its archive id in
/// `key` and its time in `when` (seconds since the epoch, fractional or not). The other party
/// is taken from the message itself on import.
fn archive(items: &[Value]) -> Result<Element> {
    const NS_MAM: &str = "urn:xmpp:mam:2";
    let mut archive = Element::new("archive", "urn:xmpp:pie:0#mam");
    for (i, v) in items.iter().enumerate() {
        let what = || format!("archived message {}", i + 1);
        let t = table(v, "an archived message")?;
        let mut m = element(v, "jabber:client", 0).with_context(what)?;
        m.remove_attr("stamp");
        m.remove_attr("stamp_legacy");
        if !m.is("message", "jabber:client") {
            bail!("{}: <{}> in '{}', not a message", what(), m.name(), m.ns());
        }
        let id = match t.get("key") {
            Some(k) => text(k, "an archive id")?,
            None => bail!("{} has no key", what()),
        };
        let seconds = match t.get("when") {
            Some(Value::Int(s)) => *s as f64,
            Some(Value::Float(s)) => *s,
            Some(other) => bail!("{}: its time is {}", what(), other.kind()),
            None => bail!("{} has no time", what()),
        };
        let micros = seconds * 1e6;
        // Within XEP-0082's years (0000-9999), and a number.
        if !micros.is_finite() || !(-62_167_219_200e6..=253_402_300_799e6).contains(&micros) {
            bail!("{}: its time {seconds} is out of range", what());
        }
        let stamp = rookery_modules::mam::query::stamp(micros.round() as i64);
        archive.push_child(
            Element::new("result", NS_MAM)
                .with_attr("id", id)
                .with_child(
                    Element::new("forwarded", "urn:xmpp:forward:0")
                        .with_child(
                            Element::new("delay", "urn:xmpp:delay").with_attr("stamp", stamp),
                        )
                        .with_child(m),
                ),
        );
    }
    Ok(archive)
}

/// Prosody's node settings (`util.pubsub` config keys) and the XEP-0060 §16.4.4 fields they
/// are in the configuration form Rookery reads.
const NODE_FIELDS: [(&str, &str); 15] = [
    ("title", "pubsub#title"),
    ("description", "pubsub#description"),
    ("type", "pubsub#type"),
    ("access_model", "pubsub#access_model"),
    ("roster_groups_allowed", "pubsub#roster_groups_allowed"),
    ("publish_model", "pubsub#publish_model"),
    ("max_items", "pubsub#max_items"),
    ("persist_items", "pubsub#persist_items"),
    ("deliver_notifications", "pubsub#deliver_notifications"),
    ("include_payload", "pubsub#deliver_payloads"),
    ("notify_config", "pubsub#notify_config"),
    ("notify_delete", "pubsub#notify_delete"),
    ("notify_retract", "pubsub#notify_retract"),
    (
        "send_last_published_item",
        "pubsub#send_last_published_item",
    ),
    ("notification_type", "pubsub#notification_type"),
];

/// A form value of a Prosody setting.
fn form_value(v: &Value, what: &str) -> Result<Vec<String>> {
    Ok(match v {
        Value::Bool(b) => vec![if *b { "1" } else { "0" }.to_owned()],
        Value::Int(i) => vec![i.to_string()],
        Value::Str(_) => vec![text(v, what)?.to_owned()],
        Value::Table(t) => {
            let mut out = Vec::new();
            for item in t.list() {
                out.push(text(item, what)?.to_owned());
            }
            out
        }
        other => bail!("{what} is {}", other.kind()),
    })
}

/// `pep/<user>.dat` and the `pep_<node>` item archives into XEP-0227's two `<pubsub>`
/// elements (see [`pie`]).
fn pep(
    nodes: &Value,
    items_of: &mut dyn FnMut(&str, &mut usize) -> Result<Option<DataFile>>,
    budget: &mut usize,
    skipped: &mut Vec<String>,
) -> Result<Vec<Element>> {
    const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
    const NS_DATA: &str = "jabber:x:data";
    let mut owner = Element::new("pubsub", NS_OWNER);
    let mut all_items = Element::new("pubsub", NS_PUBSUB);
    let mut names = Vec::new();
    for (k, v) in &table(nodes, "the PEP nodes")?.entries {
        let Key::Str(k) = k else {
            bail!("a PEP node name is not a string");
        };
        let name = std::str::from_utf8(k).map_err(|_| anyhow!("a PEP node name is not UTF-8"))?;
        names.push((name, v));
    }
    // The order of a Lua table is arbitrary: sorted, an import is reproducible.
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, v) in names {
        let what = format!("node '{name}'");
        // Before 0.11 a node was stored as `true` (or its persist_items boolean) only.
        let empty = Table::default();
        let node = match v {
            Value::Table(t) => t,
            Value::Bool(_) => &empty,
            other => bail!("{what} is {}", other.kind()),
        };
        let field = |var: &str, values: &[String]| {
            let mut f = Element::new("field", NS_DATA).with_attr("var", var);
            for v in values {
                f.push_child(Element::new("value", NS_DATA).with_text(v.as_str()));
            }
            f
        };
        let mut form = Element::new("x", NS_DATA)
            .with_attr("type", "submit")
            .with_child(field(
                "FORM_TYPE",
                &["http://jabber.org/protocol/pubsub#node_config".to_owned()],
            ));
        if let Some(config) = node.get("config") {
            let mut settings: Vec<(&[u8], &Value)> = Vec::new();
            for (k, v) in &table(config, &format!("the configuration of {what}"))?.entries {
                if let Key::Str(k) = k {
                    settings.push((k, v));
                }
            }
            settings.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in settings {
                let key = String::from_utf8_lossy(k);
                match NODE_FIELDS.iter().find(|(p, _)| *p == key) {
                    Some((_, var)) => {
                        form.push_child(field(var, &form_value(v, &format!("{what}: {key}"))?))
                    }
                    // `_defaults_only` and the like: Prosody's own bookkeeping.
                    None if key.starts_with('_') => {}
                    None => skipped.push(format!("the setting '{key}' of PEP {what}")),
                }
            }
        }
        owner.push_child(
            Element::new("configure", NS_OWNER)
                .with_attr("node", name)
                .with_child(form),
        );
        if let Some(affs) = node.get("affiliations") {
            let mut list = Element::new("affiliations", NS_OWNER).with_attr("node", name);
            for (k, v) in &table(affs, &format!("the affiliations of {what}"))?.entries {
                let Key::Str(jid) = k else {
                    bail!("{what}: an affiliation of something that is not a JID");
                };
                let jid =
                    std::str::from_utf8(jid).map_err(|_| anyhow!("{what}: a JID is not UTF-8"))?;
                list.push_child(
                    Element::new("affiliation", NS_OWNER)
                        .with_attr("jid", jid)
                        .with_attr("affiliation", text(v, "an affiliation")?),
                );
            }
            owner.push_child(list);
        }
        if let Some(subs) = node.get("subscribers") {
            let mut list = Element::new("subscriptions", NS_OWNER).with_attr("node", name);
            let mut jids: Vec<(&[u8], &Value)> = Vec::new();
            for (k, v) in &table(subs, &format!("the subscribers of {what}"))?.entries {
                let Key::Str(jid) = k else {
                    bail!("{what}: a subscriber that is not a JID");
                };
                jids.push((jid, v));
            }
            jids.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (jid, options)) in jids.into_iter().enumerate() {
                let jid =
                    std::str::from_utf8(jid).map_err(|_| anyhow!("{what}: a JID is not UTF-8"))?;
                // Prosody keeps no subscription ids: one per subscriber is made up.
                let mut sub = Element::new("subscription", NS_OWNER)
                    .with_attr("jid", jid)
                    .with_attr("subscription", "subscribed")
                    .with_attr("subid", format!("prosody-{}", i + 1));
                let deliver = options
                    .as_table()
                    .and_then(|o| o.get("pubsub#deliver"))
                    .map(|d| *d != Value::Bool(false))
                    .unwrap_or(true);
                if !deliver {
                    sub.push_child(
                        Element::new("options", NS_OWNER).with_child(
                            Element::new("x", NS_DATA)
                                .with_attr("type", "submit")
                                .with_child(field("pubsub#deliver", &["0".to_owned()])),
                        ),
                    );
                }
                list.push_child(sub);
            }
            owner.push_child(list);
        }
        if let Some((p, bytes)) = items_of(name, budget)? {
            let stored = lua::parse_items(&bytes).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            let mut list = Element::new("items", NS_PUBSUB).with_attr("node", name);
            for (i, v) in stored.iter().enumerate() {
                // The archive holds the payload itself, with the item id as its key and the
                // publisher as `with`; it adds the time of storage as a `stamp` attribute,
                // which is not part of the payload.
                let mut payload =
                    element(v, "", 0).with_context(|| format!("{what}: item {}", i + 1))?;
                payload.remove_attr("stamp");
                let t = table(v, "an item")?;
                let id = match t.get("key") {
                    Some(k) => text(k, "an item key")?,
                    None => bail!("{what}: item {} has no id", i + 1),
                };
                let mut item = Element::new("item", NS_PUBSUB).with_attr("id", id);
                if let Some(w) = t.get("with") {
                    let w = text(w, "a publisher")?;
                    if !w.is_empty() {
                        item.set_attr("publisher", w);
                    }
                }
                item.push_child(payload);
                list.push_child(item);
            }
            all_items.push_child(list);
        }
    }
    let mut out = Vec::new();
    if owner.children().next().is_some() {
        out.push(owner);
    }
    if all_items.children().next().is_some() {
        out.push(all_items);
    }
    Ok(out)
}

/// Elements nested deeper are refused (the XEP-0227 document allows 32 levels in all).
const MAX_ELEMENT_DEPTH: usize = 24;

/// A stanza as `util.stanza.preserialize` stores it: `name`, `attr` (with `xmlns`, and
/// namespaced attributes as `namespace\1name` or `namespace|name`) and the children (tables
/// and strings) as list items.
fn element(v: &Value, parent_ns: &str, depth: usize) -> Result<Element> {
    if depth > MAX_ELEMENT_DEPTH {
        bail!("elements nested deeper than {MAX_ELEMENT_DEPTH}");
    }
    let t = table(v, "an element")?;
    let name = text(
        t.get("name")
            .ok_or_else(|| anyhow!("an element without a name"))?,
        "an element name",
    )?;
    check_name(name)?;
    let empty = Table::default();
    let attrs = match t.get("attr") {
        Some(a) => table(a, "attributes")?,
        None => &empty,
    };
    let ns = match attrs.get("xmlns") {
        Some(n) => text(n, "a namespace")?,
        None => parent_ns,
    };
    let mut el = Element::new(name, ns);
    for (k, val) in &attrs.entries {
        let Key::Str(k) = k else {
            bail!("<{name}> has an attribute whose name is not a string");
        };
        let k = std::str::from_utf8(k).map_err(|_| anyhow!("an attribute name is not UTF-8"))?;
        if k == "xmlns" {
            continue;
        }
        let value = text(val, &format!("attribute {k} of <{name}>"))?;
        let key = match k.split_once(['\u{1}', '|']) {
            Some((uri, local)) => {
                check_name(local)?;
                if uri == NS_XML {
                    format!("xml:{local}")
                } else {
                    format!("{{{uri}}}{local}")
                }
            }
            // Prosody keeps `xml:lang` under that name.
            None => match k.strip_prefix("xml:") {
                Some(local) => {
                    check_name(local)?;
                    k.to_owned()
                }
                None => {
                    check_name(k)?;
                    k.to_owned()
                }
            },
        };
        el.set_attr(key, value);
    }
    for child in t.list() {
        match child {
            Value::Str(_) => el.push_text(text(child, "text")?),
            Value::Table(_) => el.push_child(element(child, ns, depth + 1)?),
            other => bail!("<{name}> has {} among its children", other.kind()),
        }
    }
    Ok(el)
}

/// An XML name without a prefix (what Prosody's stanzas carry).
fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().enumerate().all(|(i, c)| {
        c.is_alphabetic() || c == '_' || (i > 0 && (c.is_alphanumeric() || "-.".contains(c)))
    });
    if name.is_empty() || !ok {
        bail!("'{}' is not an XML name", name.escape_debug());
    }
    Ok(())
}

/// What the directory holds that is not imported: hosts without accounts and other stores.
fn skipped_stores(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (domain, host_dir) in entries(dir, None)? {
        if !host_dir.join("accounts").is_dir() {
            out.push(format!("the Prosody data of {domain} (it has no accounts)"));
            continue;
        }
        for (store, _) in entries(&host_dir, None)? {
            if !STORES.contains(&store.as_str()) && store != "pep" && !store.starts_with("pep_") {
                out.push(format!("the Prosody store '{store}' of {domain}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

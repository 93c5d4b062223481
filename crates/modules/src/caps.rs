//! XEP-0115 Entity Capabilities, processed by the server for its accounts: which full JIDs
//! that sent presence to an account (its contacts, and the account's own resources) can do
//! what. PEP needs this to send notifications only to the resources that asked for them
//! with a `<node>+notify` feature (XEP-0163 §4.2), and to send the last items to a resource
//! that just came online.
//!
//! * **Track.** For each online account (the "owner"), the caps of every full JID whose
//!   available presence it receives: contacts' broadcasts and directed presence (the
//!   `InboundPresence` event, seen before the presence module acts on it) and the broadcasts
//!   of its own resources (`PresenceBroadcast`). Unavailable presence, or available presence
//!   without caps, clears the entry: the server does not offer the caps optimisation (§8.4),
//!   so a client annotates every presence it sends. The map of an account is dropped when
//!   its last session ends, and holds at most `caps.max_contacts_per_account` entries.
//! * **Resolve.** A global cache maps a verification string (with its hash algorithm) to what
//!   it stands for. An unknown one is learnt with one disco#info query (§6.2) to the full JID
//!   that advertised it, from the owner's host; others seen with the same string meanwhile
//!   wait for that answer. The answer is checked as §5.4 says (ill-formed answers refused,
//!   the verification string recomputed and compared) and only a matching one is cached. A
//!   wrong answer, an error or silence is remembered for `caps.failure_ttl_secs` for that
//!   full JID (the string is not blamed: another entity advertising it may be asked, §5.4
//!   3.9), and a bare JID that failed [`MAX_FAILURES`] times is not asked anything more in
//!   that time, so a hostile client cannot make the server query forever.
//! * **Notify.** When an entry is resolved for an available presence (at once from the
//!   cache, or when the answer arrives) the [`CapsUpdated`] event runs on the owner's host.
//!
//! Legacy caps (no `hash` attribute, §5.4 step 1) and hash functions this build lacks are
//! treated as no caps: the server never associates unverified data with a JID. Supported:
//! the IANA names of the SHA-1 and SHA-2 functions XEP-0300 lists (`sha-1`, `sha-224`,
//! `sha-256`, `sha-384`, `sha-512`).
//!
//! All of the state is behind one lock, held for map operations only, never across an await.

use crate::disco::NS_INFO;
use base64::Engine as _;
use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::events::{InboundPresence, PresenceBroadcast, SessionClosed};
use rookery_core::{
    spawn_background, Flow, HostBuilder, Module, ModuleError, Order, Place, Section, SectionDecl,
    Server, Spec,
};
use rookery_stanza::{BareJid, Jid, PresenceType, Stanza};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NS: &str = "http://jabber.org/protocol/caps";
const NS_DATA: &str = "jabber:x:data";

/// Failed queries after which a bare JID is asked nothing more until its failures expire.
pub const MAX_FAILURES: u32 = 5;
/// Owners waiting for one query's answer; beyond, they resolve at their contact's next
/// presence.
const MAX_WAITERS: usize = 1024;
/// Entities asked in turn for one verification string when the ones before answered wrongly.
const MAX_ATTEMPTS: usize = 3;
/// Offline accounts whose contacts' unknown caps are being learnt at once (see
/// `Inner::transient`); beyond, such a contact gets the last items at its next presence.
const MAX_TRANSIENT: usize = 10_000;
/// Longest caps `node` (a URI naming the software) accepted.
const MAX_NODE_BYTES: usize = 1024;

pub struct Caps;

impl Module for Caps {
    const NAME: &'static str = "caps";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<CapsConfig>()];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0115",
        title: "Entity Capabilities (processed for PEP)",
        version: "1.6.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let state = host.shared::<CapsState>();
        state.configure(&host.section::<CapsConfig>());
        let s = state.clone();
        // Before the presence module, which stops the event for the subscription states it
        // handles; available and unavailable presence go on to be delivered either way.
        host.hook::<InboundPresence, _, _>(
            Order::normal().before("presence"),
            move |server, ev| {
                let state = s.clone();
                async move {
                    inbound(&state, &server, &ev).await;
                    Flow::Continue
                }
            },
        );
        let s = state.clone();
        // After the presence module: the account's contacts hear of the new presence first.
        host.hook::<PresenceBroadcast, _, _>(
            Order::normal().after("presence"),
            move |server, ev| {
                let state = s.clone();
                async move {
                    let owner = ev.from.to_bare();
                    let own = Jid::from(ev.from.clone());
                    match ev.stanza.presence_type() {
                        Some(PresenceType::Available) => {
                            seen(&state, &server, owner, own, advertised(&ev.stanza)).await
                        }
                        Some(PresenceType::Unavailable) => state.forget(&owner, &own),
                        _ => {}
                    }
                    Flow::Continue
                }
            },
        );
        host.hook::<SessionClosed, _, _>(Order::normal(), move |server, ev| {
            let state = state.clone();
            async move {
                let owner = ev.session.jid().to_bare();
                let own = Jid::from(ev.session.jid().clone());
                state.closed(&owner, &own, &|o| server.sessions().is_online(o));
                Flow::Continue
            }
        });
        Ok(())
    }
}

// ---- Configuration ----------------------------------------------------------------------------

/// The `[caps]` section of the configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CapsConfig {
    /// Verified capabilities kept (the least recently used go first).
    pub max_cache_entries: usize,
    /// Largest answer cached, in bytes of its verification string.
    pub max_info_bytes: usize,
    /// Queries waiting for an answer at once; more wait for one of them to end.
    pub max_queries_in_flight: usize,
    /// How long to wait for an entity's answer.
    pub query_timeout_secs: u64,
    /// How long a wrong answer, an error or no answer is remembered for the entity.
    pub failure_ttl_secs: u64,
    /// Full JIDs one account tracks at once.
    pub max_contacts_per_account: usize,
}

impl Default for CapsConfig {
    fn default() -> Self {
        Self {
            max_cache_entries: 4096,
            max_info_bytes: 16384,
            max_queries_in_flight: 64,
            query_timeout_secs: 10,
            failure_ttl_secs: 900,
            max_contacts_per_account: 10000,
        }
    }
}

impl Section for CapsConfig {
    const KEY: &'static str = "caps";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"[caps]
# Entity capabilities (XEP-0115, the "caps" module): what the clients that send presence to
# an account can do, learnt with one disco#info query per verification string, checked, and
# shared by every account (PEP sends notifications by it). Verified answers kept in memory:
max_cache_entries = 4096
# Largest answer kept, in bytes of its verification string; larger ones are refused.
max_info_bytes = 16384
# Queries waiting for an answer at once (more wait their turn), and how long each waits.
max_queries_in_flight = 64
query_timeout_secs = 10
# A client that answered wrongly, with an error or not at all is not asked again for this
# long (and an account whose clients failed 5 times is not asked anything).
failure_ttl_secs = 900
# Full JIDs (contacts' and own resources) whose caps one online account tracks at once.
max_contacts_per_account = 10000
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("max_cache_entries", self.max_cache_entries as u64),
            ("max_info_bytes", self.max_info_bytes as u64),
            ("max_queries_in_flight", self.max_queries_in_flight as u64),
            ("query_timeout_secs", self.query_timeout_secs),
            ("failure_ttl_secs", self.failure_ttl_secs),
            (
                "max_contacts_per_account",
                self.max_contacts_per_account as u64,
            ),
        ] {
            crate::require_positive(key, name, v)?;
        }
        Ok(())
    }
}

// ---- What a verification string stands for ----------------------------------------------------

/// A hash function a `<c/>` may name (`hash`), by its IANA name (§9.1, XEP-0300).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgo {
    /// The function named `name`, if this build has it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sha-1" => Self::Sha1,
            "sha-224" => Self::Sha224,
            "sha-256" => Self::Sha256,
            "sha-384" => Self::Sha384,
            "sha-512" => Self::Sha512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha-1",
            Self::Sha224 => "sha-224",
            Self::Sha256 => "sha-256",
            Self::Sha384 => "sha-384",
            Self::Sha512 => "sha-512",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Self::Sha224 => sha2::Sha224::digest(data).to_vec(),
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The `ver` of a verification string S: its hash in Base64 with padding (§5.1 step 9).
    pub fn ver(self, s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.digest(s.as_bytes()))
    }

    /// Whether `ver` can be an output of this function (canonical Base64 of a digest of
    /// its length): anything else is refused before any query is sent for it.
    pub fn is_ver(self, ver: &str) -> bool {
        ver.len() <= 88
            && base64::engine::general_purpose::STANDARD
                .decode(ver)
                .is_ok_and(|d| d.len() == self.digest_len())
    }
}

/// A service discovery identity (XEP-0030), with the `xml:lang` the verification string
/// includes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub category: String,
    /// The identity's `type`.
    pub kind: String,
    pub lang: Option<String>,
    pub name: Option<String>,
}

impl Identity {
    /// `category/type/lang/name`, as the verification string has it (§5.1 step 3).
    fn formatted(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.category,
            self.kind,
            self.lang.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default()
        )
    }
}

/// A XEP-0128 extension form of a disco#info answer: its FORM_TYPE and its other fields with
/// their values, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoForm {
    pub form_type: String,
    pub fields: BTreeMap<String, Vec<String>>,
}

/// What a verified verification string stands for: the entity's identities, features and
/// extension forms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapsInfo {
    pub identities: Vec<Identity>,
    pub features: BTreeSet<String>,
    pub forms: Vec<InfoForm>,
}

/// Why a disco#info answer does not verify a verification string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("the answer holds no disco#info query")]
    NoQuery,
    #[error("an identity lacks its category or type")]
    IncompleteIdentity,
    #[error("the identity {0} is listed twice")]
    DuplicateIdentity(String),
    #[error("a feature lacks its var")]
    FeatureWithoutVar,
    #[error("the feature {0} is listed twice")]
    DuplicateFeature(String),
    #[error("two forms have the FORM_TYPE {0}")]
    DuplicateFormType(String),
    #[error("a FORM_TYPE has several values")]
    AmbiguousFormType,
    #[error("a form field lacks its var")]
    FieldWithoutVar,
    #[error("the form field {0} is listed twice")]
    DuplicateField(String),
    #[error("'<' in {0:?} would make the verification string ambiguous")]
    Delimiter(String),
    #[error("the verification string is longer than {0} bytes")]
    TooLarge(usize),
    #[error("the answer does not hash to the advertised verification string")]
    Mismatch,
}

/// '<' separates the parts of the verification string, so data holding it could be read as
/// other identities or features with the same hash: such an answer is refused (the poisoning
/// of §9.3).
fn part(s: &str) -> Result<String, CapsError> {
    if s.contains('<') {
        return Err(CapsError::Delimiter(s.to_owned()));
    }
    Ok(s.to_owned())
}

/// An attribute that may be absent; empty is the same as absent in the verification string.
fn optional(s: Option<&str>) -> Result<Option<String>, CapsError> {
    s.filter(|s| !s.is_empty()).map(part).transpose()
}

impl CapsInfo {
    /// Reads a disco#info `<query/>`, refusing what §5.4 step 3 calls ill-formed: two
    /// identical identities (3.3), two identical features (3.4), two forms with one
    /// FORM_TYPE or a FORM_TYPE with different values (3.5). A form without a FORM_TYPE
    /// field, or whose FORM_TYPE is not hidden, is left out (3.6). Also refused, since they
    /// would make the order of the verification string undefined or ambiguous: a field
    /// without `var` or listed twice in a form, and '<' in any part.
    pub fn from_disco_info(query: &Element) -> Result<CapsInfo, CapsError> {
        let mut identities = Vec::new();
        let mut features = BTreeSet::new();
        let mut forms: Vec<InfoForm> = Vec::new();
        for child in query.children() {
            if child.is("identity", NS_INFO) {
                let (Some(category), Some(kind)) = (
                    child.attr("category").filter(|c| !c.is_empty()),
                    child.attr("type").filter(|t| !t.is_empty()),
                ) else {
                    return Err(CapsError::IncompleteIdentity);
                };
                identities.push(Identity {
                    category: part(category)?,
                    kind: part(kind)?,
                    lang: optional(child.attr("xml:lang"))?,
                    name: optional(child.attr("name"))?,
                });
            } else if child.is("feature", NS_INFO) {
                let var = child.attr("var").ok_or(CapsError::FeatureWithoutVar)?;
                if !features.insert(part(var)?) {
                    return Err(CapsError::DuplicateFeature(var.to_owned()));
                }
            } else if child.is("x", NS_DATA) {
                if let Some(form) = info_form(child)? {
                    if forms.iter().any(|f| f.form_type == form.form_type) {
                        return Err(CapsError::DuplicateFormType(form.form_type));
                    }
                    forms.push(form);
                }
            }
        }
        identities.sort();
        if let Some(twice) = identities.windows(2).find(|w| w[0] == w[1]) {
            return Err(CapsError::DuplicateIdentity(twice[0].formatted()));
        }
        forms.sort_by(|a, b| a.form_type.cmp(&b.form_type));
        Ok(CapsInfo {
            identities,
            features,
            forms,
        })
    }

    /// The verification string S of §5.1 (steps 1 to 8). Every sort is by bytes, the
    /// "i;octet" collation the XEP requires, which is how Rust orders strings.
    pub fn verification_string(&self) -> String {
        let mut identities: Vec<&Identity> = self.identities.iter().collect();
        identities.sort();
        let mut forms: Vec<&InfoForm> = self.forms.iter().collect();
        forms.sort_by(|a, b| a.form_type.cmp(&b.form_type));
        let mut s = String::new();
        for i in identities {
            s.push_str(&i.formatted());
            s.push('<');
        }
        for f in &self.features {
            s.push_str(f);
            s.push('<');
        }
        for form in forms {
            s.push_str(&form.form_type);
            s.push('<');
            for (var, values) in &form.fields {
                s.push_str(var);
                s.push('<');
                let mut values: Vec<&String> = values.iter().collect();
                values.sort();
                for v in values {
                    s.push_str(v);
                    s.push('<');
                }
            }
        }
        s
    }

    /// The verification string hashed with `algo`: what an entity with these capabilities
    /// advertises as `ver`.
    pub fn ver(&self, algo: HashAlgo) -> String {
        algo.ver(&self.verification_string())
    }

    /// Checks a disco#info answer against the advertised `ver` (§5.4 step 3), refusing one
    /// whose verification string is longer than `max_bytes`.
    pub fn verify(
        query: &Element,
        algo: HashAlgo,
        ver: &str,
        max_bytes: usize,
    ) -> Result<CapsInfo, CapsError> {
        let info = CapsInfo::from_disco_info(query)?;
        let s = info.verification_string();
        if s.len() > max_bytes {
            return Err(CapsError::TooLarge(max_bytes));
        }
        if algo.ver(&s) != ver {
            return Err(CapsError::Mismatch);
        }
        Ok(info)
    }

    /// Whether the entity has `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// Whether the entity asked for notifications of the PEP node `node` (XEP-0163 §4.2:
    /// the feature `{node}+notify`).
    pub fn notifies(&self, node: &str) -> bool {
        self.has(&format!("{node}+notify"))
    }
}

/// An extension form's part of the verification string, or `None` for one §5.4 step 3.6
/// leaves out.
fn info_form(x: &Element) -> Result<Option<InfoForm>, CapsError> {
    let fields: Vec<&Element> = x.children().filter(|f| f.is("field", NS_DATA)).collect();
    let values = |f: &Element| -> Vec<String> {
        f.children()
            .filter(|v| v.is("value", NS_DATA))
            .map(|v| v.text())
            .collect()
    };
    let Some(form_type) = fields.iter().find(|f| f.attr("var") == Some("FORM_TYPE")) else {
        return Ok(None);
    };
    if form_type.attr("type") != Some("hidden") {
        return Ok(None);
    }
    let mut types = values(form_type);
    types.dedup();
    let form_type = match types.as_slice() {
        [] => return Ok(None),
        [one] => part(one)?,
        _ => {
            types.sort();
            types.dedup();
            if types.len() > 1 {
                return Err(CapsError::AmbiguousFormType);
            }
            part(&types[0])?
        }
    };
    let mut out = BTreeMap::new();
    let mut seen_form_type = false;
    for f in fields {
        let var = f.attr("var").ok_or(CapsError::FieldWithoutVar)?;
        if var == "FORM_TYPE" {
            if seen_form_type {
                return Err(CapsError::AmbiguousFormType);
            }
            seen_form_type = true;
            continue;
        }
        let mut vs = values(f)
            .iter()
            .map(|v| part(v))
            .collect::<Result<Vec<_>, _>>()?;
        vs.sort();
        if out.insert(part(var)?, vs).is_some() {
            return Err(CapsError::DuplicateField(var.to_owned()));
        }
    }
    Ok(Some(InfoForm {
        form_type,
        fields: out,
    }))
}

// ---- The state ------------------------------------------------------------------------------

/// A verification string and the function it was made with: the cache's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CapsKey {
    algo: HashAlgo,
    ver: Box<str>,
}

/// Caps a presence carried.
#[derive(Debug, Clone)]
struct Advertised {
    key: CapsKey,
    node: Box<str>,
    /// The presence was addressed to one of the owner's full JIDs (see
    /// [`CapsUpdated::direct`]).
    direct: bool,
}

/// What one owner knows of one full JID.
struct Entry {
    key: CapsKey,
    node: Box<str>,
    info: Option<Arc<CapsInfo>>,
    /// A [`CapsUpdated`] with `changed` was emitted for this presence and key.
    announced: bool,
    /// How the presence that made the entry was addressed ([`CapsUpdated::direct`]).
    direct: bool,
}

enum Slot {
    Known {
        info: Arc<CapsInfo>,
        /// When it was last used, for evicting the least recently used.
        used: u64,
    },
    /// A query is running or queued; these (owner, full JID) wait for its answer.
    Pending {
        waiters: Vec<(BareJid, Jid)>,
        started: bool,
    },
}

/// The failed queries of one bare JID in the current window.
struct Failures {
    until: Instant,
    count: u32,
    /// The full JIDs that failed, with what they were asked about.
    asked: Vec<(Jid, CapsKey)>,
}

#[derive(Default)]
struct Inner {
    config: CapsConfig,
    observers: HashMap<BareJid, HashMap<Jid, Entry>>,
    slots: HashMap<CapsKey, Slot>,
    known: usize,
    /// Pending keys whose query waits for a free place.
    queued: VecDeque<CapsKey>,
    in_flight: usize,
    failures: HashMap<BareJid, Failures>,
    tick: u64,
    /// Accounts offline when a contact's presence came with caps not yet known: their map
    /// lives until the query is answered (the contact then gets the owner's last items),
    /// and is dropped after it if they are still offline.
    transient: std::collections::HashSet<BareJid>,
}

/// Emitted on the owner's host when the capabilities of a full JID that sent the owner
/// available presence are known: at once when they were cached, else when the disco#info
/// answer verified. Its handlers run in the task that delivers the presence or got the
/// answer: a handler with long work spawns it.
#[derive(Debug, Clone)]
pub struct CapsUpdated {
    /// The local account that received the presence.
    pub owner: BareJid,
    /// The full JID that sent it (a contact's, or one of the owner's own resources).
    pub contact: Jid,
    pub info: Arc<CapsInfo>,
    /// The first time for this presence of `contact` with these caps: it just came online,
    /// or its verification string changed. `false` for a presence update with the same caps.
    pub changed: bool,
    /// The presence was addressed to one of the owner's full JIDs — an answer to the
    /// owner's probe when it logged in, or directed presence — rather than broadcast to its
    /// bare JID (a contact coming online or changing) or sent by one of its own resources.
    pub direct: bool,
}

/// The capabilities every online account sees, shared by every host: obtained with
/// `HostBuilder::shared::<CapsState>()`.
#[derive(Default)]
pub struct CapsState {
    inner: Mutex<Inner>,
}

/// What to do after recording a presence.
enum Next {
    Nothing,
    Notify(CapsUpdated),
    /// Start a worker for this key.
    Query(CapsKey),
}

impl CapsState {
    /// The full JIDs whose presence `owner` has received with caps known to include `feature`.
    pub fn interested(&self, owner: &BareJid, feature: &str) -> Vec<Jid> {
        let inner = self.inner.lock();
        inner
            .observers
            .get(owner)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.info.as_ref().is_some_and(|i| i.has(feature)))
                    .map(|(j, _)| j.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The resolved caps of one contact full JID as seen by `owner`.
    pub fn info(&self, owner: &BareJid, contact: &Jid) -> Option<Arc<CapsInfo>> {
        let inner = self.inner.lock();
        inner.observers.get(owner)?.get(contact)?.info.clone()
    }

    /// The accounts whose contacts' caps are tracked now (online accounts that received
    /// presence with caps).
    pub fn tracked_accounts(&self) -> usize {
        self.inner.lock().observers.len()
    }

    fn configure(&self, config: &CapsConfig) {
        self.inner.lock().config = config.clone();
    }

    fn config(&self) -> CapsConfig {
        self.inner.lock().config.clone()
    }

    /// Records an available presence with caps from `contact` to `owner`.
    fn seen(
        &self,
        is_online: &dyn Fn(&BareJid) -> bool,
        owner: BareJid,
        contact: Jid,
        adv: Advertised,
        now: Instant,
    ) -> Next {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        // Accounts online are tracked: checked under the lock, so that an account whose last
        // session just closed (and whose map was dropped) does not get a new one. For one
        // offline, a contact coming online still gets its last items (XEP-0163 §4.3.2): at
        // once when its caps are known, else once they are (a transient map, bounded).
        if !inner.observers.contains_key(&owner) && !is_online(&owner) {
            if let Some(Slot::Known { info, used }) = inner.slots.get_mut(&adv.key) {
                inner.tick += 1;
                *used = inner.tick;
                return Next::Notify(CapsUpdated {
                    owner,
                    contact,
                    info: info.clone(),
                    changed: true,
                    direct: adv.direct,
                });
            }
            if inner.transient.len() >= MAX_TRANSIENT {
                return Next::Nothing;
            }
            inner.transient.insert(owner.clone());
        }
        let limit = inner.config.max_contacts_per_account;
        let map = inner.observers.entry(owner.clone()).or_default();
        if !map.contains_key(&contact) && map.len() >= limit {
            tracing::debug!(owner = %owner, contact = %contact, "caps: too many entities tracked");
            return Next::Nothing;
        }
        let key = adv.key.clone();
        let entry = match map.entry(contact.clone()) {
            MapEntry::Occupied(o) => {
                let e = o.into_mut();
                if e.key != adv.key {
                    *e = Entry {
                        key: adv.key,
                        node: adv.node,
                        info: None,
                        announced: false,
                        direct: adv.direct,
                    };
                }
                e
            }
            MapEntry::Vacant(v) => v.insert(Entry {
                key: adv.key,
                node: adv.node,
                info: None,
                announced: false,
                direct: adv.direct,
            }),
        };
        inner.tick += 1;
        let tick = inner.tick;
        if entry.info.is_none() {
            match inner.slots.get_mut(&key) {
                Some(Slot::Known { info, used }) => {
                    *used = tick;
                    entry.info = Some(info.clone());
                }
                Some(Slot::Pending { waiters, .. }) => {
                    let me = (owner, contact);
                    if waiters.len() < MAX_WAITERS && !waiters.contains(&me) {
                        waiters.push(me);
                    }
                    return Next::Nothing;
                }
                None => {
                    if blocked(&inner.failures, &contact, &key, now) {
                        return Next::Nothing;
                    }
                    if inner.slots.len() - inner.known >= inner.config.max_cache_entries {
                        return Next::Nothing;
                    }
                    let start = inner.in_flight < inner.config.max_queries_in_flight;
                    inner.slots.insert(
                        key.clone(),
                        Slot::Pending {
                            waiters: vec![(owner, contact)],
                            started: start,
                        },
                    );
                    if start {
                        inner.in_flight += 1;
                        return Next::Query(key);
                    }
                    inner.queued.push_back(key);
                    return Next::Nothing;
                }
            }
        } else if let Some(Slot::Known { used, .. }) = inner.slots.get_mut(&key) {
            *used = tick;
        }
        let Some(info) = entry.info.clone() else {
            return Next::Nothing;
        };
        let changed = !entry.announced;
        entry.announced = true;
        Next::Notify(CapsUpdated {
            owner,
            contact,
            info,
            changed,
            direct: entry.direct,
        })
    }

    /// `contact` is no longer available to `owner` (or sent presence without caps).
    fn forget(&self, owner: &BareJid, contact: &Jid) {
        let mut inner = self.inner.lock();
        if let Some(map) = inner.observers.get_mut(owner) {
            map.remove(contact);
            if map.is_empty() {
                inner.observers.remove(owner);
            }
        }
    }

    /// Every resource of `contact` is gone for `owner`.
    fn forget_all(&self, owner: &BareJid, contact: &BareJid) {
        let mut inner = self.inner.lock();
        if let Some(map) = inner.observers.get_mut(owner) {
            map.retain(|j, _| j.to_bare() != *contact);
            if map.is_empty() {
                inner.observers.remove(owner);
            }
        }
    }

    /// A session of `owner` ended: its own entry goes, and the whole map when it was the
    /// account's last session.
    fn closed(&self, owner: &BareJid, own: &Jid, is_online: &dyn Fn(&BareJid) -> bool) {
        let mut inner = self.inner.lock();
        if !is_online(owner) {
            inner.observers.remove(owner);
            return;
        }
        if let Some(map) = inner.observers.get_mut(owner) {
            map.remove(own);
            if map.is_empty() {
                inner.observers.remove(owner);
            }
        }
    }

    /// Who to ask about `key` next: the first waiter still advertising it, unresolved, and
    /// not failed. Waiters that moved on are dropped on the way.
    fn candidate(&self, key: &CapsKey, now: Instant) -> Option<(BareJid, Jid, Box<str>)> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(Slot::Pending { waiters, .. }) = inner.slots.get_mut(key) else {
            return None;
        };
        let observers = &inner.observers;
        let live = |(o, c): &(BareJid, Jid)| {
            observers
                .get(o)
                .and_then(|m| m.get(c))
                .is_some_and(|e| e.key == *key && e.info.is_none())
        };
        waiters.retain(live);
        waiters
            .iter()
            .find(|(_, c)| !blocked(&inner.failures, c, key, now))
            .and_then(|(o, c)| {
                let node = observers.get(o)?.get(c)?.node.clone();
                Some((o.clone(), c.clone(), node))
            })
    }

    /// The answer verified: caches it and resolves the waiters.
    fn resolved(&self, key: &CapsKey, info: Arc<CapsInfo>) -> Vec<CapsUpdated> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let waiters = match inner.slots.remove(key) {
            Some(Slot::Pending { waiters, .. }) => waiters,
            Some(known @ Slot::Known { .. }) => {
                inner.slots.insert(key.clone(), known);
                Vec::new()
            }
            None => Vec::new(),
        };
        let cached = matches!(inner.slots.get(key), Some(Slot::Known { .. }));
        if !cached && inner.known >= inner.config.max_cache_entries {
            let oldest = inner
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Known { used, .. } => Some((*used, k)),
                    Slot::Pending { .. } => None,
                })
                .min_by_key(|(used, _)| *used)
                .map(|(_, k)| k.clone());
            if let Some(k) = oldest {
                inner.slots.remove(&k);
                inner.known -= 1;
            }
        }
        inner.tick += 1;
        if !cached {
            inner.slots.insert(
                key.clone(),
                Slot::Known {
                    info: info.clone(),
                    used: inner.tick,
                },
            );
            inner.known += 1;
        }
        let mut updates = Vec::new();
        for (owner, contact) in waiters {
            let Some(e) = inner
                .observers
                .get_mut(&owner)
                .and_then(|m| m.get_mut(&contact))
            else {
                continue;
            };
            if e.key != *key || e.info.is_some() {
                continue;
            }
            e.info = Some(info.clone());
            let changed = !e.announced;
            e.announced = true;
            updates.push(CapsUpdated {
                owner,
                contact,
                info: info.clone(),
                changed,
                direct: e.direct,
            });
        }
        updates
    }

    /// Drops the maps of accounts tracked only while their contacts' caps were learnt, now
    /// that they were (or could not be), unless the account came online meanwhile.
    fn sweep_transient(&self, is_online: &dyn Fn(&BareJid) -> bool) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let owners: Vec<BareJid> = inner.transient.drain().collect();
        for owner in owners {
            let pending = inner.observers.get(&owner).is_some_and(|m| {
                m.values().any(|e| {
                    e.info.is_none()
                        && matches!(inner.slots.get(&e.key), Some(Slot::Pending { .. }))
                })
            });
            if pending {
                // Another string is still being learnt for it.
                inner.transient.insert(owner);
            } else if !is_online(&owner) {
                inner.observers.remove(&owner);
            }
        }
    }

    /// `contact` did not verify `key`: remembered against it and its bare JID.
    fn failed(&self, key: &CapsKey, contact: &Jid, now: Instant) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let ttl = Duration::from_secs(inner.config.failure_ttl_secs);
        let bare = contact.to_bare();
        if !inner.failures.contains_key(&bare)
            && inner.failures.len() >= inner.config.max_cache_entries
        {
            inner.failures.retain(|_, f| f.until > now);
            if inner.failures.len() >= inner.config.max_cache_entries {
                let first = inner
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.until)
                    .map(|(b, _)| b.clone());
                if let Some(b) = first {
                    inner.failures.remove(&b);
                }
            }
        }
        let f = inner.failures.entry(bare).or_insert_with(|| Failures {
            until: now + ttl,
            count: 0,
            asked: Vec::new(),
        });
        if f.until <= now {
            *f = Failures {
                until: now + ttl,
                count: 0,
                asked: Vec::new(),
            };
        }
        f.count += 1;
        if f.asked.len() < MAX_FAILURES as usize {
            f.asked.push((contact.clone(), key.clone()));
        }
    }

    /// Nobody (left) verified `key`: its waiters stay unresolved.
    fn abandon(&self, key: &CapsKey) {
        let mut inner = self.inner.lock();
        if matches!(inner.slots.get(key), Some(Slot::Pending { .. })) {
            inner.slots.remove(key);
        }
    }

    /// The next queued key for a worker that finished one, or `None` (and the worker's place
    /// is freed) when none waits.
    fn next_queued(&self) -> Option<CapsKey> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        while let Some(key) = inner.queued.pop_front() {
            if let Some(Slot::Pending { started, .. }) = inner.slots.get_mut(&key) {
                if !*started {
                    *started = true;
                    return Some(key);
                }
            }
        }
        inner.in_flight = inner.in_flight.saturating_sub(1);
        None
    }
}

/// Whether `contact` must not be asked about `key` now: it failed on it, or its bare JID
/// failed too often.
fn blocked(
    failures: &HashMap<BareJid, Failures>,
    contact: &Jid,
    key: &CapsKey,
    now: Instant,
) -> bool {
    failures.get(&contact.to_bare()).is_some_and(|f| {
        f.until > now
            && (f.count >= MAX_FAILURES || f.asked.iter().any(|(c, k)| c == contact && k == key))
    })
}

// ---- Presence ---------------------------------------------------------------------------------

/// The caps a presence carries, if any this server can verify: legacy caps without `hash`
/// (§5.4 step 1) and unknown hash functions count as none, as does a `ver` that no output
/// of the function can be.
fn advertised(stanza: &Stanza) -> Option<Advertised> {
    let c = stanza.get_child("c", NS)?;
    let algo = HashAlgo::from_name(c.attr("hash")?)?;
    let ver = c.attr("ver")?;
    let node = c
        .attr("node")
        .filter(|n| !n.is_empty() && n.len() <= MAX_NODE_BYTES)?;
    if !algo.is_ver(ver) {
        return None;
    }
    Some(Advertised {
        key: CapsKey {
            algo,
            ver: ver.into(),
        },
        node: node.into(),
        direct: false,
    })
}

/// Presence to a local account.
async fn inbound(state: &Arc<CapsState>, server: &Arc<Server>, ev: &InboundPresence) {
    let Some(from) = ev.stanza.from() else {
        return;
    };
    let owner = ev.to.to_bare();
    match ev.stanza.presence_type() {
        Some(PresenceType::Available) => {
            let adv = advertised(&ev.stanza).map(|a| Advertised {
                direct: ev.to.resource().is_some(),
                ..a
            });
            seen(state, server, owner, from.clone(), adv).await
        }
        Some(PresenceType::Unavailable) if from.resource().is_some() => state.forget(&owner, from),
        // Unavailable from a bare JID, or the contact cancelling the owner's subscription
        // (after which the owner gets none of its presence, RFC 6121 §3.2): every resource.
        Some(PresenceType::Unavailable | PresenceType::Unsubscribed) => {
            state.forget_all(&owner, &from.to_bare())
        }
        _ => {}
    }
}

/// An available presence from `contact` to `owner`, with or without caps.
async fn seen(
    state: &Arc<CapsState>,
    server: &Arc<Server>,
    owner: BareJid,
    contact: Jid,
    adv: Option<Advertised>,
) {
    // Caps are an entity's: only a full JID can be asked what it advertised.
    if contact.resource().is_none() {
        return;
    }
    let Some(adv) = adv else {
        return state.forget(&owner, &contact);
    };
    let next = state.seen(
        &|o| server.sessions().is_online(o),
        owner,
        contact,
        adv,
        Instant::now(),
    );
    match next {
        Next::Nothing => {}
        Next::Notify(update) => announce(server, update).await,
        Next::Query(key) => {
            let (server2, state) = (server.clone(), state.clone());
            spawn_background(server, "caps query", async move {
                worker(server2, state, key).await
            });
        }
    }
}

async fn announce(server: &Arc<Server>, update: CapsUpdated) {
    if let Some(host) = server.host(update.owner.domain().as_str()) {
        host.hooks().run(server, update).await;
    }
}

// ---- Queries ----------------------------------------------------------------------------------

/// Resolves `key`, then the queued keys, for as long as some wait: at most
/// `max_queries_in_flight` of these run.
async fn worker(server: Arc<Server>, state: Arc<CapsState>, mut key: CapsKey) {
    loop {
        resolve(&server, &state, &key).await;
        state.sweep_transient(&|o| server.sessions().is_online(o));
        match state.next_queued() {
            Some(next) => key = next,
            None => return,
        }
    }
}

/// Asks the entities advertising `key`, one after the other until one answer verifies (at
/// most [`MAX_ATTEMPTS`]).
async fn resolve(server: &Arc<Server>, state: &Arc<CapsState>, key: &CapsKey) {
    let config = state.config();
    let timeout = Duration::from_secs(config.query_timeout_secs);
    for _ in 0..MAX_ATTEMPTS {
        let Some((owner, contact, node)) = state.candidate(key, Instant::now()) else {
            break;
        };
        let request = Element::new("iq", "jabber:client")
            .with_attr("type", "get")
            .with_attr("from", owner.domain().as_str())
            .with_attr("to", contact.as_str())
            .with_child(
                Element::new("query", NS_INFO).with_attr("node", format!("{node}#{}", key.ver)),
            );
        let outcome = match server.send_iq_request(request, timeout).await {
            Ok(reply) => reply
                .get_child("query", NS_INFO)
                .ok_or(CapsError::NoQuery)
                .and_then(|q| CapsInfo::verify(q, key.algo, &key.ver, config.max_info_bytes))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(info) => {
                for update in state.resolved(key, Arc::new(info)) {
                    announce(server, update).await;
                }
                return;
            }
            Err(error) => {
                tracing::debug!(entity = %contact, hash = key.algo.name(), ver = %key.ver,
                    %error, "caps not verified");
                state.failed(key, &contact, Instant::now());
            }
        }
    }
    state.abandon(key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::parse_element;

    fn query(body: &str) -> Element {
        parse_element(&format!(
            "<query xmlns='http://jabber.org/protocol/disco#info'>{body}</query>"
        ))
        .expect("xml")
    }

    const SIMPLE: &str = "<identity category='client' name='Exodus 0.9.1' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/>";

    /// §5.3, the disco#info answer as the XEP shows it.
    const COMPLEX: &str = "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
        <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/>\
        <x xmlns='jabber:x:data' type='result'>\
          <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
          <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>\
          <field var='os'><value>Mac</value></field>\
          <field var='os_version'><value>10.5.1</value></field>\
          <field var='software'><value>Psi</value></field>\
          <field var='software_version'><value>0.11</value></field>\
        </x>";

    #[test]
    fn the_simple_example_of_section_5_2() {
        let info = CapsInfo::from_disco_info(&query(SIMPLE)).expect("well-formed");
        assert_eq!(
            info.verification_string(),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<"
        );
        assert_eq!(info.ver(HashAlgo::Sha1), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        let verified = CapsInfo::verify(
            &query(SIMPLE),
            HashAlgo::Sha1,
            "QgayPKawpkPSDYmwT/WM94uAlu0=",
            16384,
        );
        assert_eq!(verified, Ok(info.clone()));
        assert!(info.has("http://jabber.org/protocol/muc"));
        assert!(!info.notifies("http://jabber.org/protocol/muc"));
    }

    #[test]
    fn the_complex_example_of_section_5_3() {
        let info = CapsInfo::from_disco_info(&query(COMPLEX)).expect("well-formed");
        assert_eq!(
            info.verification_string(),
            "client/pc/el/\u{3a8} 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<urn:xmpp:dataforms:softwareinfo<\
             ip_version<ipv4<ipv6<os<Mac<os_version<10.5.1<software<Psi<software_version<0.11<"
        );
        assert_eq!(info.ver(HashAlgo::Sha1), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
        assert_eq!(info.identities[0].lang.as_deref(), Some("el"));
        assert_eq!(info.forms[0].form_type, "urn:xmpp:dataforms:softwareinfo");
    }

    #[test]
    fn the_verification_string_does_not_depend_on_the_answers_order() {
        let shuffled = "<feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
              <field var='software_version'><value>0.11</value></field>\
              <field var='ip_version' type='text-multi'><value>ipv6</value><value>ipv4</value></field>\
              <field var='os'><value>Mac</value></field>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
              <field var='os_version'><value>10.5.1</value></field>\
              <field var='software'><value>Psi</value></field>\
            </x>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>";
        let info = CapsInfo::from_disco_info(&query(shuffled)).expect("well-formed");
        assert_eq!(info.ver(HashAlgo::Sha1), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    #[test]
    fn other_hash_functions_and_wrong_answers() {
        let info = CapsInfo::from_disco_info(&query(SIMPLE)).expect("well-formed");
        for algo in [
            HashAlgo::Sha1,
            HashAlgo::Sha224,
            HashAlgo::Sha256,
            HashAlgo::Sha384,
            HashAlgo::Sha512,
        ] {
            assert_eq!(HashAlgo::from_name(algo.name()), Some(algo));
            let ver = info.ver(algo);
            assert!(algo.is_ver(&ver), "{ver}");
            assert_eq!(
                CapsInfo::verify(&query(SIMPLE), algo, &ver, 16384),
                Ok(info.clone())
            );
        }
        assert_eq!(HashAlgo::from_name("md5"), None);
        assert_eq!(HashAlgo::from_name("SHA-1"), None);
        // A sha-1 ver is no sha-256 output, and the other way round.
        assert!(!HashAlgo::Sha256.is_ver("QgayPKawpkPSDYmwT/WM94uAlu0="));
        assert!(!HashAlgo::Sha1.is_ver(&info.ver(HashAlgo::Sha256)));
        assert!(!HashAlgo::Sha1.is_ver("not base64!"));
        assert!(!HashAlgo::Sha1.is_ver("1.0"), "a legacy version number");

        let missing = SIMPLE.replace("<feature var='http://jabber.org/protocol/muc'/>", "");
        assert_eq!(
            CapsInfo::verify(
                &query(&missing),
                HashAlgo::Sha1,
                "QgayPKawpkPSDYmwT/WM94uAlu0=",
                16384
            ),
            Err(CapsError::Mismatch)
        );
        assert_eq!(
            CapsInfo::verify(
                &query(SIMPLE),
                HashAlgo::Sha1,
                "QgayPKawpkPSDYmwT/WM94uAlu0=",
                100
            ),
            Err(CapsError::TooLarge(100))
        );
    }

    #[test]
    fn ill_formed_answers_of_section_5_4_are_refused() {
        let form = |fields: &str| format!("<x xmlns='jabber:x:data' type='result'>{fields}</x>");
        let ft =
            |v: &str| format!("<field var='FORM_TYPE' type='hidden'><value>{v}</value></field>");
        let cases: Vec<(String, CapsError)> = vec![
            (
                format!("{SIMPLE}<identity category='client' name='Exodus 0.9.1' type='pc'/>"),
                CapsError::DuplicateIdentity("client/pc//Exodus 0.9.1".into()),
            ),
            (
                format!("{SIMPLE}<feature var='http://jabber.org/protocol/muc'/>"),
                CapsError::DuplicateFeature("http://jabber.org/protocol/muc".into()),
            ),
            (
                format!("{SIMPLE}{}{}", form(&ft("urn:a")), form(&ft("urn:a"))),
                CapsError::DuplicateFormType("urn:a".into()),
            ),
            (
                format!(
                    "{SIMPLE}{}",
                    form("<field var='FORM_TYPE' type='hidden'><value>urn:a</value><value>urn:b</value></field>")
                ),
                CapsError::AmbiguousFormType,
            ),
            (
                format!("{SIMPLE}{}", form(&format!("{}{}", ft("urn:a"), ft("urn:b")))),
                CapsError::AmbiguousFormType,
            ),
            (
                format!(
                    "{SIMPLE}{}",
                    form(&format!("{}<field var='x'><value>1</value></field><field var='x'/>", ft("urn:a")))
                ),
                CapsError::DuplicateField("x".into()),
            ),
            (
                format!("{SIMPLE}{}", form(&format!("{}<field type='fixed'/>", ft("urn:a")))),
                CapsError::FieldWithoutVar,
            ),
            (
                "<identity category='client'/>".into(),
                CapsError::IncompleteIdentity,
            ),
            ("<feature/>".into(), CapsError::FeatureWithoutVar),
            // The poisoning of §9.3: one feature that reads as two.
            (
                "<identity category='client' type='pc'/><feature var='urn:a&lt;urn:b'/>".into(),
                CapsError::Delimiter("urn:a<urn:b".into()),
            ),
        ];
        for (body, error) in cases {
            assert_eq!(
                CapsInfo::from_disco_info(&query(&body)),
                Err(error.clone()),
                "{body}"
            );
        }
        // The same FORM_TYPE value twice in one field is one value.
        let twice = format!(
            "{SIMPLE}{}",
            form("<field var='FORM_TYPE' type='hidden'><value>urn:a</value><value>urn:a</value></field>")
        );
        assert!(CapsInfo::from_disco_info(&query(&twice)).is_ok());
    }

    #[test]
    fn forms_without_a_hidden_form_type_are_left_out() {
        let plain = CapsInfo::from_disco_info(&query(SIMPLE)).expect("well-formed");
        for x in [
            "<x xmlns='jabber:x:data' type='result'><field var='os'><value>Mac</value></field></x>",
            "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE'><value>urn:a</value></field></x>",
            "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='text-single'><value>urn:a</value></field></x>",
        ] {
            let info = CapsInfo::from_disco_info(&query(&format!("{SIMPLE}{x}"))).expect(x);
            assert_eq!(info, plain, "{x}");
            assert_eq!(info.ver(HashAlgo::Sha1), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        }
    }

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("jid")
    }
    fn bare(s: &str) -> BareJid {
        BareJid::new(s).expect("jid")
    }
    fn adv(ver: &str) -> Advertised {
        Advertised {
            key: CapsKey {
                algo: HashAlgo::Sha1,
                ver: ver.into(),
            },
            node: "https://example.org".into(),
            direct: false,
        }
    }
    const V1: &str = "QgayPKawpkPSDYmwT/WM94uAlu0=";
    const V2: &str = "q07IKJEyjvHSyhy//CH0CxmKi8w=";

    #[test]
    fn one_query_per_string_and_failures_are_the_entitys() {
        let state = CapsState::default();
        let online = |_: &BareJid| true;
        let now = Instant::now();
        let owner = bare("alice@x");
        let key = adv(V1).key;
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), now),
            Next::Query(_)
        ));
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("carol@x/c"), adv(V1), now),
            Next::Nothing
        ));
        // bob answers wrongly: carol, who advertises the same, is asked next.
        let (_, first, _) = state.candidate(&key, now).expect("bob");
        assert_eq!(first, jid("bob@x/b"));
        state.failed(&key, &first, now);
        let (_, second, _) = state.candidate(&key, now).expect("carol");
        assert_eq!(second, jid("carol@x/c"));
        state.failed(&key, &second, now);
        assert!(state.candidate(&key, now).is_none());
        state.abandon(&key);
        assert_eq!(state.next_queued(), None);
        // bob is not asked the same again until the failure expires; dave is.
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), now),
            Next::Nothing
        ));
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("dave@x/d"), adv(V1), now),
            Next::Query(_)
        ));
        let later = now + Duration::from_secs(CapsConfig::default().failure_ttl_secs + 1);
        state.abandon(&key);
        assert_eq!(state.next_queued(), None);
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), later),
            Next::Query(_)
        ));
        assert!(state
            .interested(&owner, "http://jabber.org/protocol/muc")
            .is_empty());
    }

    #[test]
    fn a_bare_jid_that_fails_too_often_is_not_asked() {
        let state = CapsState::default();
        let online = |_: &BareJid| true;
        let now = Instant::now();
        let owner = bare("alice@x");
        for i in 0..MAX_FAILURES {
            let contact = jid(&format!("mallory@x/{i}"));
            state.failed(&adv(V2).key, &contact, now);
        }
        assert!(matches!(
            state.seen(&online, owner, jid("mallory@x/new"), adv(V1), now),
            Next::Nothing
        ));
    }

    #[test]
    fn queries_beyond_the_limit_wait_their_turn() {
        let state = CapsState::default();
        state.configure(&CapsConfig {
            max_queries_in_flight: 1,
            ..CapsConfig::default()
        });
        let online = |_: &BareJid| true;
        let now = Instant::now();
        let owner = bare("alice@x");
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), now),
            Next::Query(_)
        ));
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("carol@x/c"), adv(V2), now),
            Next::Nothing
        ));
        let info = Arc::new(CapsInfo::from_disco_info(&query(SIMPLE)).expect("ok"));
        let updates = state.resolved(&adv(V1).key, info);
        assert_eq!(updates.len(), 1);
        assert!(updates[0].changed);
        assert_eq!(state.next_queued(), Some(adv(V2).key));
        assert_eq!(state.next_queued(), None);
        assert_eq!(
            state.interested(&owner, "http://jabber.org/protocol/muc"),
            [jid("bob@x/b")]
        );
        // The same presence again: known at once, not new.
        match state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), now) {
            Next::Notify(u) => assert!(!u.changed),
            _ => panic!("known"),
        }
    }

    #[test]
    fn maps_follow_online_accounts_and_are_bounded() {
        let state = CapsState::default();
        state.configure(&CapsConfig {
            max_contacts_per_account: 2,
            ..CapsConfig::default()
        });
        let info = Arc::new(CapsInfo::from_disco_info(&query(SIMPLE)).expect("ok"));
        let now = Instant::now();
        let owner = bare("alice@x");
        let offline = |_: &BareJid| false;
        // An offline account: a map only while an unknown string is learnt, then none; a
        // known string is announced at once without a map (XEP-0163 §4.3.2).
        assert!(matches!(
            state.seen(&offline, owner.clone(), jid("bob@x/b"), adv(V1), now),
            Next::Query(_)
        ));
        assert_eq!(state.tracked_accounts(), 1);
        let updates = state.resolved(&adv(V1).key, info.clone());
        assert_eq!(updates.len(), 1);
        assert!(updates[0].changed && !updates[0].direct);
        state.sweep_transient(&offline);
        assert_eq!(
            state.tracked_accounts(),
            0,
            "an offline account keeps no map"
        );
        assert!(matches!(
            state.seen(&offline, owner.clone(), jid("bob@x/b"), adv(V1), now),
            Next::Notify(CapsUpdated { changed: true, .. })
        ));
        assert_eq!(state.tracked_accounts(), 0);
        let online = |_: &BareJid| true;
        state.seen(&online, owner.clone(), jid("bob@x/b"), adv(V1), now);
        state.resolved(&adv(V1).key, info);
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("carol@x/c"), adv(V1), now),
            Next::Notify(_)
        ));
        assert!(matches!(
            state.seen(&online, owner.clone(), jid("dave@x/d"), adv(V1), now),
            Next::Nothing
        ));
        assert_eq!(
            state
                .interested(&owner, "http://jabber.org/protocol/muc")
                .len(),
            2,
            "the third is not tracked"
        );
        state.forget_all(&owner, &bare("bob@x"));
        assert_eq!(
            state.interested(&owner, "http://jabber.org/protocol/muc"),
            [jid("carol@x/c")]
        );
        state.closed(&owner, &jid("alice@x/r"), &online);
        assert_eq!(state.tracked_accounts(), 1, "another session is left");
        state.closed(&owner, &jid("alice@x/r"), &offline);
        assert_eq!(state.tracked_accounts(), 0);
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used() {
        let state = CapsState::default();
        state.configure(&CapsConfig {
            max_cache_entries: 1,
            ..CapsConfig::default()
        });
        let info = Arc::new(CapsInfo::default());
        state.resolved(&adv(V1).key, info.clone());
        state.resolved(&adv(V2).key, info);
        let inner = state.inner.lock();
        assert_eq!(inner.known, 1);
        assert!(matches!(
            inner.slots.get(&adv(V2).key),
            Some(Slot::Known { .. })
        ));
    }
}

//! One room of a XEP-0045 service, as a state machine: a stanza for the room (from a user's
//! full JID) goes in, the stanzas the room answers and broadcasts come out. Nothing here does
//! I/O, so tests drive a room without a server, and the service runs each room in its own
//! task (one room's stanzas in order, no lock held while sending).
//!
//! A broadcast is one element for every recipient that sees the same thing ([`Out::Many`]):
//! a groupchat message to 1,000 occupants is one element, serialised once by the delivery
//! path. Presence has up to three variants: the occupant's own (status 110), the one with the
//! real JID (for those who may see it), the one without.

use super::config::{RoomConfig, Whois};
use super::{MucLimits, NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, NS_MUC_USER};
use crate::budget::{Budget, Rate};
use crate::form::{FormBuilder, Submitted};
use rookery_stanza::{
    ns, BareJid, FullJid, IqType, Jid, MessageType, PresenceType, Stanza, StanzaError,
    StanzaErrorCondition, StanzaKind,
};
use rookery_xml::Element;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NS_DELAY: &str = "urn:xmpp:delay";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_REGISTER: &str = "jabber:iq:register";
const NS_PING: &str = "urn:xmpp:ping";
const NS_CONFERENCE: &str = "jabber:x:conference";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const NS_MAM: &str = crate::mam::NS;
const NS_SID: &str = crate::mam::NS_SID;
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
pub const NS_VCARD: &str = "vcard-temp";

/// XEP-0045 §5.2: a user's long-lived standing with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "admin" => Affiliation::Admin,
            "member" => Affiliation::Member,
            "none" => Affiliation::None,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }
}

/// XEP-0045 §5.1: an occupant's standing for the visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "moderator" => Role::Moderator,
            "participant" => Role::Participant,
            "visitor" => Role::Visitor,
            "none" => Role::None,
            _ => return None,
        })
    }
}

/// What the room sends: `from` is set on each element, `to` by the recipient.
#[derive(Debug, Clone)]
pub enum Out {
    One(Jid, Element),
    /// One element for several recipients (shared, serialised once).
    Many(Element, Vec<FullJid>),
    /// A stanza the room keeps (an occupant's current presence), readdressed to one
    /// recipient: its element is shared with every other copy, never rebuilt.
    Shared(Stanza),
}

impl Out {
    /// Every (recipient, element) pair, for tests and for senders that do not share.
    pub fn pairs(&self) -> Vec<(Jid, &Element)> {
        match self {
            Out::One(to, el) => vec![(to.clone(), el)],
            Out::Many(el, to) => to.iter().map(|t| (Jid::from(t.clone()), el)).collect(),
            Out::Shared(s) => s
                .to()
                .map(|t| (t.clone(), s.element()))
                .into_iter()
                .collect(),
        }
    }
}

/// What happened to the room, for the service: keep it, store it, or drop it.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Configuration, affiliations, registered nicks or subject changed: store a
    /// persistent room again.
    pub changed: bool,
    /// The room is gone (destroyed, or a temporary room whose last occupant left).
    pub destroyed: bool,
    /// Work on the room's archive, in order, after this step's stanzas are sent.
    pub archive: Vec<ArchiveOp>,
}

/// Work on a room's archive (XEP-0313 on the room's JID) that needs storage: the room
/// decides, the service does it, one room's operations in order.
#[derive(Debug, Clone)]
pub enum ArchiveOp {
    /// Keep a message the room sent to its occupants. `message` is as broadcast, without
    /// its stanza id (the archive's id) and with the sender's real JID in a muc#user
    /// `<item/>`, which a query removes for those who may not see it.
    Append {
        id: String,
        at_us: i64,
        nick: String,
        message: Element,
    },
    /// Answer `request` (an archive `<query/>` set or `<metadata/>` get) from `requester`,
    /// whom the room lets read its archive; `real_jids`: whether results keep the senders'
    /// real JIDs.
    Query {
        request: Element,
        requester: FullJid,
        real_jids: bool,
    },
    /// A moderator retracts the message with stanza id `id` (XEP-0425): replace it in the
    /// archive with its tombstone (the stored message's header and occupant id, then
    /// `retracted`), then send `done` and archive `notice`. When the archive has no such
    /// message: send `done` if the room still had it in its history, else `missing`.
    Retract {
        id: String,
        retracted: Element,
        in_history: bool,
        done: Vec<Out>,
        missing: Vec<Out>,
        notice: Box<ArchiveOp>,
    },
    /// The room is gone: so is its archive.
    Delete,
}

#[derive(Debug, Clone)]
struct Occupant {
    nick: String,
    real: BareJid,
    /// The user's sessions in the room (XEP-0045 allows one nick for several resources of
    /// one user, as ejabberd and Prosody do).
    sessions: Vec<FullJid>,
    role: Role,
    /// The presence children (show, status, priority, extensions) of the last available
    /// presence, without the MUC `<x/>`.
    payload: Vec<Element>,
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    message: Element,
    at: SystemTime,
    chars: usize,
}

/// A room's persistent state: what a persistent room keeps across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub config: RoomConfig,
    /// Bare JID → (affiliation name, reason).
    pub affiliations: BTreeMap<String, (String, Option<String>)>,
    /// Bare JID → registered nick (§7.10).
    pub nicks: BTreeMap<String, String>,
    pub subject: Option<(String, String)>,
    /// The key of the room's occupant ids (XEP-0421): kept so that a user's id survives a
    /// restart.
    #[serde(default)]
    pub secret: String,
    /// The room's vCard (XEP-0486 avatars), as set by an owner.
    #[serde(default)]
    pub vcard: Option<String>,
}

/// An IQ forwarded to an occupant (business rules, IQ 3: in a semi-anonymous room a request to an
/// occupant JID is forwarded to the real JID), waiting for its answer.
#[derive(Debug, Clone)]
struct ForwardedIq {
    requester: FullJid,
    id: String,
    target: BareJid,
    target_nick: String,
}

/// Forwarded IQs a room remembers; the oldest is forgotten first (its answer is then dropped).
const MAX_FORWARDED_IQS: usize = 1000;

pub struct Room {
    jid: BareJid,
    pub config: RoomConfig,
    affiliations: BTreeMap<BareJid, (Affiliation, Option<String>)>,
    nicks: BTreeMap<BareJid, String>,
    occupants: HashMap<String, Occupant>,
    by_session: HashMap<FullJid, String>,
    /// Join order, for listing occupants to a newcomer in a stable order.
    order: Vec<String>,
    subject: Option<(String, String)>,
    history: VecDeque<HistoryEntry>,
    /// The size of the history kept, as serialised.
    history_bytes: usize,
    /// Created and not yet configured (§10.1.1): only its owner may enter.
    locked: bool,
    limits: MucLimits,
    /// The key of occupant ids (XEP-0421 §4: stable per user and room, not linkable across
    /// rooms).
    secret: String,
    forwarded: HashMap<String, ForwardedIq>,
    forwarded_order: VecDeque<String>,
    /// Each occupant's current available presence as others see it, without and with the
    /// real JID, built on first use and dropped when the occupant changes: a newcomer gets
    /// these shared stanzas, so a join costs no element per occupant already there.
    presence_cache: HashMap<String, [Option<Stanza>; 2]>,
    /// The room's vCard (XEP-0486) and the SHA-1 of its photo (XEP-0153), if any.
    vcard: Option<(Element, Option<String>)>,
    /// Each user's presence budget (entries, changes, nick changes): every presence an
    /// occupant sends reaches every other occupant, so a join/leave loop in a room of 1,000
    /// would otherwise turn one client's stanza rate into a thousand times that.
    presence_budget: HashMap<BareJid, Budget>,
}

type Reply = Result<Vec<Out>, StanzaError>;

fn err(c: StanzaErrorCondition) -> StanzaError {
    StanzaError::new(c)
}

fn stamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn parse_stamp(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// An error answer to `stanza` from the room's address it was sent to.
fn error_out(stanza: &Stanza, e: StanzaError) -> Vec<Out> {
    match (stanza.error_reply(&e), stanza.from()) {
        (Some(mut reply), Some(from)) => {
            if stanza.kind() == StanzaKind::Presence {
                // §7.2: an entry refused carries the MUC `<x/>` back (without the password),
                // which is how clients tell a room's answer from other presence errors.
                reply.push_child(Element::new("x", NS_MUC));
            }
            vec![Out::One(from.clone(), reply)]
        }
        _ => Vec::new(),
    }
}

fn result_out(stanza: &Stanza, payload: Option<Element>) -> Vec<Out> {
    match stanza.from() {
        Some(from) => vec![Out::One(from.clone(), stanza.iq_result(payload))],
        None => Vec::new(),
    }
}

fn status(code: u16) -> Element {
    Element::new("status", NS_MUC_USER).with_attr("code", code.to_string())
}

fn micros(at: SystemTime) -> i64 {
    i64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(i64::MAX)
}

/// XEP-0153 §4: the hex SHA-1 of the photo's binary data, if the vCard has a photo.
pub fn avatar_hash(vcard: &Element) -> Option<String> {
    use base64::Engine;
    use sha1::Digest;
    let b64: String = vcard
        .get_child("PHOTO", NS_VCARD)?
        .get_child("BINVAL", NS_VCARD)?
        .text()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    let digest = sha1::Sha1::digest(&data);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

impl Room {
    /// A new room, created by `owner` (locked until configured, §10.1.1, unless `instant`).
    pub fn new(jid: BareJid, config: RoomConfig, limits: MucLimits) -> Room {
        Room {
            jid,
            config,
            affiliations: BTreeMap::new(),
            nicks: BTreeMap::new(),
            occupants: HashMap::new(),
            by_session: HashMap::new(),
            order: Vec::new(),
            subject: None,
            history: VecDeque::new(),
            history_bytes: 0,
            locked: false,
            limits,
            secret: rookery_stanza::random_id(32),
            forwarded: HashMap::new(),
            forwarded_order: VecDeque::new(),
            presence_cache: HashMap::new(),
            vcard: None,
            presence_budget: HashMap::new(),
        }
    }

    /// Refills the history of a room loaded from storage with the newest messages of its
    /// archive (id, time in microseconds, the message as archived), oldest first: what the
    /// room said before a restart is still handed to newcomers. Retracted messages are
    /// left out; real JIDs are not kept.
    pub fn restore_history(&mut self, archived: Vec<(String, i64, Element)>) {
        for (id, at_us, mut m) in archived {
            if m.has_child("retracted", NS_RETRACT) || !m.has_child("body", ns::CLIENT) {
                continue;
            }
            m.retain_children(|c| !c.is("x", NS_MUC_USER));
            m.push_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("by", self.jid.to_string())
                    .with_attr("id", id),
            );
            let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(at_us).unwrap_or(0));
            self.keep_in_history(m, at);
        }
    }

    /// Adds a message to the history, dropping the oldest beyond the limits.
    fn keep_in_history(&mut self, message: Element, at: SystemTime) {
        if self.limits.max_history == 0 {
            return;
        }
        // §7.2.13 counts `maxchars` over the whole stanza as sent; the same size bounds
        // what the room keeps in memory.
        let chars = message.to_xml(ns::CLIENT).len();
        self.history.push_back(HistoryEntry { message, at, chars });
        self.history_bytes += chars;
        while self.history.len() > self.limits.max_history
            || (self.history_bytes > self.limits.max_history_bytes && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.chars;
            }
        }
    }

    /// A persistent room as it was stored.
    pub fn restore(jid: BareJid, stored: Stored, limits: MucLimits) -> Room {
        let mut room = Room::new(jid, stored.config, limits);
        for (j, (a, reason)) in stored.affiliations {
            if let (Ok(j), Some(a)) = (BareJid::new(&j), Affiliation::from_name(&a)) {
                room.affiliations.insert(j, (a, reason));
            }
        }
        for (j, nick) in stored.nicks {
            if let Ok(j) = BareJid::new(&j) {
                room.nicks.insert(j, nick);
            }
        }
        room.subject = stored.subject;
        room.vcard = stored
            .vcard
            .and_then(|v| rookery_xml::parse_element(&v).ok())
            .map(|v| {
                let hash = avatar_hash(&v);
                (v, hash)
            });
        if !stored.secret.is_empty() {
            room.secret = stored.secret;
        }
        room
    }

    pub fn stored(&self) -> Stored {
        Stored {
            config: self.config.clone(),
            affiliations: self
                .affiliations
                .iter()
                .map(|(j, (a, r))| (j.to_string(), (a.as_str().to_owned(), r.clone())))
                .collect(),
            nicks: self
                .nicks
                .iter()
                .map(|(j, n)| (j.to_string(), n.clone()))
                .collect(),
            subject: self.subject.clone(),
            secret: self.secret.clone(),
            vcard: self.vcard.as_ref().map(|(v, _)| v.to_xml("")),
        }
    }

    /// XEP-0421: the occupant id of a user in this room, the same whatever their nick or
    /// session: a keyed hash of the real bare JID, so it cannot be reversed or matched
    /// across rooms.
    pub fn occupant_id(&self, real: &BareJid) -> String {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.secret.as_bytes());
        h.update([0]);
        h.update(real.as_str().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    }

    /// Replaces any occupant id a client put in its stanza with the room's (§4: the room
    /// MUST strip what it did not set).
    fn stamp_occupant_id(&self, el: &mut Element, real: &BareJid) {
        while el.remove_child("occupant-id", NS_OCCUPANT_ID).is_some() {}
        el.push_child(
            Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", self.occupant_id(real)),
        );
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }
    pub fn is_locked(&self) -> bool {
        self.locked
    }
    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }
    pub fn affiliation(&self, jid: &BareJid) -> Affiliation {
        self.affiliations
            .get(jid)
            .map(|(a, _)| *a)
            .unwrap_or(Affiliation::None)
    }
    /// The user's nick, when one of their sessions is in the room.
    pub fn nick_of(&self, session: &FullJid) -> Option<&str> {
        self.by_session.get(session).map(String::as_str)
    }

    fn occupant_jid(&self, nick: &str) -> Jid {
        match self.jid.with_resource_str(nick) {
            Ok(full) => Jid::from(full),
            Err(_) => Jid::from(self.jid.clone()),
        }
    }

    /// Forgets the cached presence of `nick` (its presence, role or affiliation changed).
    fn invalidate(&mut self, nick: &str) {
        self.presence_cache.remove(nick);
    }

    /// `o`'s current available presence as a viewer sees it (with or without the real JID),
    /// readdressed to `to`; built once per change of the occupant.
    fn cached_presence(&mut self, nick: &str, with_jid: bool, to: &FullJid) -> Option<Out> {
        let slot = usize::from(with_jid);
        if let Some(s) = self.presence_cache.get(nick).and_then(|c| c[slot].as_ref()) {
            return Some(Out::Shared(s.readdressed(Jid::from(to.clone()))));
        }
        let o = self.occupants.get(nick)?;
        let stanza = Stanza::parse(self.presence_of(o, false, with_jid, &[], &[])).ok()?;
        let out = Out::Shared(stanza.readdressed(Jid::from(to.clone())));
        self.presence_cache.entry(nick.to_owned()).or_default()[slot] = Some(stanza);
        Some(out)
    }

    fn set_affiliation(&mut self, jid: BareJid, a: Affiliation, reason: Option<String>) {
        let affected: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.real == jid)
            .map(|o| o.nick.clone())
            .collect();
        for nick in affected {
            self.invalidate(&nick);
        }
        if a == Affiliation::None {
            self.affiliations.remove(&jid);
        } else {
            self.affiliations.insert(jid, (a, reason));
        }
    }

    /// Makes `jid` an owner (the service's administrators own every room).
    pub fn grant_owner(&mut self, jid: BareJid) {
        self.set_affiliation(jid, Affiliation::Owner, None);
    }

    /// Makes `owner` the room's owner and locks the room until it is configured.
    pub fn created_by(&mut self, owner: BareJid, locked: bool) {
        self.set_affiliation(owner, Affiliation::Owner, None);
        self.locked = locked;
    }

    /// The role an affiliation enters with (§5.1.2).
    fn default_role(&self, a: Affiliation) -> Role {
        match a {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    /// Takes one presence from `who`'s budget; false when it is spent. Admins and owners
    /// are not limited.
    fn spend_presence(&mut self, who: &BareJid, now: SystemTime) -> bool {
        if self.affiliation(who) >= Affiliation::Admin {
            return true;
        }
        let rate = Rate {
            burst: self.limits.presence_burst,
            interval_ms: self.limits.presence_interval_ms,
        };
        let now_ms = u64::try_from(micros(now) / 1000).unwrap_or(0);
        // Budgets outlive their occupants (a leave must not reset one) but not for ever:
        // once full again they carry nothing and go.
        if self.presence_budget.len() > 2 * self.occupants.len() + 64 {
            self.presence_budget.retain(|_, b| !b.is_full(rate, now_ms));
        }
        self.presence_budget
            .entry(who.clone())
            .or_insert_with(|| Budget::full(rate, now_ms))
            .take(rate, now_ms)
    }

    /// Every session of every occupant: the recipients of a broadcast.
    fn all_sessions(&self) -> Vec<FullJid> {
        self.occupants
            .values()
            .flat_map(|o| o.sessions.iter().cloned())
            .collect()
    }

    /// Whether `viewer` may see real JIDs (§7.2.3/§7.2.4).
    fn sees_real_jids(&self, viewer: &Occupant) -> bool {
        self.config.whois == Whois::Anyone || viewer.role == Role::Moderator
    }

    // ---- Entry point -------------------------------------------------------------------

    /// A stanza addressed to the room (`to` its bare JID or an occupant's JID in it) from a
    /// user (`from` a full JID). Returns what to send and what happened to the room.
    pub fn handle(&mut self, stanza: &Stanza, now: SystemTime) -> (Vec<Out>, Effects) {
        let mut fx = Effects::default();
        // The answer to a request forwarded to a user's bare JID (a vCard) comes from that
        // bare JID; everything else the room takes comes from a user's session.
        if stanza.kind() == StanzaKind::Iq && stanza.iq_type().is_some_and(|t| !t.is_request()) {
            if let Some(from) = stanza.from().filter(|f| f.resource().is_none()).cloned() {
                return (self.forwarded_answer(stanza, &from), fx);
            }
        }
        let (Some(Ok(from)), Some(to)) = (
            stanza.from().cloned().map(Jid::try_into_full),
            stanza.to().cloned(),
        ) else {
            let out = if stanza.is_error() {
                Vec::new()
            } else {
                error_out(stanza, err(StanzaErrorCondition::BadRequest))
            };
            return (out, fx);
        };
        let nick = to.resource().map(|r| r.to_string());
        let out = match stanza.kind() {
            StanzaKind::Presence => self.presence(stanza, &from, nick, now, &mut fx),
            StanzaKind::Message => self.message(stanza, &from, nick, now, &mut fx),
            StanzaKind::Iq => self.iq(stanza, &from, nick, &mut fx),
        };
        let out = match out {
            Ok(out) => out,
            // An error is never answered with an error.
            Err(_) if stanza.is_error() => Vec::new(),
            Err(e) => error_out(stanza, e),
        };
        if self.occupants.is_empty() && !self.config.persistent {
            fx.destroyed = true;
        }
        (out, fx)
    }

    // ---- Presence: enter, change, leave (§7.1, §7.2, §7.6, §7.14) ----------------------

    fn presence(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        nick: Option<String>,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Reply {
        let ptype = stanza.presence_type();
        if stanza.is_error() {
            // An occupant's client answered with an error: it is gone (§18.1 ghosts), and
            // everyone is told it was a technical removal (333, §"Removal Because of an
            // Error").
            if self.by_session.contains_key(from) {
                return Ok(self.leave(from, None, &[status(333)]));
            }
            return Ok(Vec::new());
        }
        match ptype {
            Some(PresenceType::Unavailable) => {
                if !self.by_session.contains_key(from) {
                    return Ok(Vec::new());
                }
                let status = stanza
                    .get_child("status", ns::CLIENT)
                    .map(|s| s.text().to_owned());
                Ok(self.leave(from, status, &[]))
            }
            Some(PresenceType::Available) => {
                let Some(nick) = nick.filter(|n| !n.is_empty()) else {
                    // §7.2.1: a nick is required.
                    return Err(err(StanzaErrorCondition::JidMalformed));
                };
                self.check_nick(&nick)?;
                let current = self.by_session.get(from).cloned();
                if current.is_none() && !stanza.has_child("x", NS_MUC) {
                    // §7.2.1 (since 1.32): presence without the MUC <x/> from someone not
                    // in the room is a client out of step (it believes it is inside); it is
                    // told it is not, rather than silently entered.
                    return Ok(self.not_in_room(from, &nick));
                }
                let within_budget = self.spend_presence(&from.to_bare(), now);
                let flooding = || {
                    err(StanzaErrorCondition::PolicyViolation)
                        .with_text("too many presence changes in this room; wait a moment")
                };
                match current {
                    Some(current) if current == nick && stanza.has_child("x", NS_MUC) => {
                        if !within_budget {
                            return Err(flooding());
                        }
                        Ok(self.resync(from, stanza, now))
                    }
                    // Over budget, a change is kept (newcomers and the next broadcast show
                    // it) but not broadcast: an error here would read as leaving the room.
                    Some(current) if current == nick => {
                        Ok(self.change_presence(from, stanza, within_budget))
                    }
                    Some(_) | None if !within_budget => Err(flooding()),
                    Some(current) => self.change_nick(from, &current, nick, stanza),
                    None => self.enter(stanza, from, nick, now, fx),
                }
            }
            // Subscriptions and probes mean nothing to a room.
            _ => Ok(Vec::new()),
        }
    }

    fn check_nick(&self, nick: &str) -> Result<(), StanzaError> {
        if nick.len() > self.limits.max_nick_bytes
            || nick.chars().any(char::is_control)
            || nick.trim().is_empty()
        {
            return Err(err(StanzaErrorCondition::NotAcceptable).with_text(format!(
                "a nick is 1 to {} bytes of printable text",
                self.limits.max_nick_bytes
            )));
        }
        Ok(())
    }

    fn presence_payload(stanza: &Stanza) -> Vec<Element> {
        stanza
            .element()
            .children()
            .filter(|c| c.ns() != NS_MUC && c.ns() != NS_MUC_USER && c.ns() != NS_OCCUPANT_ID)
            .cloned()
            .collect()
    }

    /// The presence of `occupant` as `viewer` sees it (`viewer` None: the variant without
    /// the real JID), with `extra` children in the `<x/>` (status codes, reasons).
    fn presence_of(
        &self,
        o: &Occupant,
        unavailable: bool,
        with_jid: bool,
        extra: &[Element],
        item_extra: &[Element],
    ) -> Element {
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", self.occupant_jid(&o.nick).to_string());
        if unavailable {
            p.set_attr("type", "unavailable");
        } else {
            for c in &o.payload {
                p.push_child(c.clone());
            }
        }
        let affiliation = self.affiliation(&o.real);
        let role = if unavailable && extra.is_empty() {
            Role::None
        } else {
            o.role
        };
        let mut item = Element::new("item", NS_MUC_USER)
            .with_attr("affiliation", affiliation.as_str())
            .with_attr(
                "role",
                if unavailable {
                    Role::None.as_str()
                } else {
                    role.as_str()
                },
            );
        if with_jid {
            if let Some(session) = o.sessions.first() {
                item.set_attr("jid", session.to_string());
            }
        }
        for c in item_extra {
            item.push_child(c.clone());
        }
        let mut x = Element::new("x", NS_MUC_USER).with_child(item);
        for c in extra {
            x.push_child(c.clone());
        }
        p.push_child(x);
        self.stamp_occupant_id(&mut p, &o.real);
        p
    }

    /// `o`'s presence to every occupant: one element per variant. `self_extra` goes to the
    /// occupant's own sessions (110 is added), `extra` to everyone.
    fn broadcast_presence(
        &self,
        o: &Occupant,
        unavailable: bool,
        extra: &[Element],
        self_extra: &[Element],
        item_extra: &[Element],
    ) -> Vec<Out> {
        let mut with_jid = Vec::new();
        let mut without = Vec::new();
        for other in self.occupants.values() {
            if other.nick == o.nick {
                continue;
            }
            if self.sees_real_jids(other) {
                with_jid.extend(other.sessions.iter().cloned());
            } else {
                without.extend(other.sessions.iter().cloned());
            }
        }
        let mut out = Vec::new();
        if !with_jid.is_empty() {
            out.push(Out::Many(
                self.presence_of(o, unavailable, true, extra, item_extra),
                with_jid,
            ));
        }
        if !without.is_empty() {
            out.push(Out::Many(
                self.presence_of(o, unavailable, false, extra, item_extra),
                without,
            ));
        }
        let mut own: Vec<Element> = extra.to_vec();
        own.extend(self_extra.iter().cloned());
        if self.config.whois == Whois::Anyone
            && !own.iter().any(|s| s.attr("code") == Some("100"))
            && !unavailable
        {
            own.push(status(100));
        }
        own.push(status(110));
        out.push(Out::Many(
            self.presence_of(o, unavailable, true, &own, item_extra),
            o.sessions.clone(),
        ));
        out
    }

    fn enter(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        nick: String,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Reply {
        let real = from.to_bare();
        let affiliation = self.affiliation(&real);
        let muc = stanza.get_child("x", NS_MUC);
        if self.locked && affiliation != Affiliation::Owner {
            // §10.1.1: a locked room does not exist for others yet.
            return Err(err(StanzaErrorCondition::ItemNotFound));
        }
        if affiliation == Affiliation::Outcast {
            return Err(err(StanzaErrorCondition::Forbidden));
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(err(StanzaErrorCondition::RegistrationRequired));
        }
        if let Some(password) = &self.config.password {
            let given = muc
                .and_then(|x| x.get_child("password", NS_MUC))
                .map(Element::text);
            if affiliation < Affiliation::Admin && given.as_deref() != Some(password.as_str()) {
                return Err(err(StanzaErrorCondition::NotAuthorized));
            }
        }
        // §7.2.9: a nick in use by another user, or registered by another user, is taken.
        let same_user = match self.occupants.get(&nick) {
            Some(o) if o.real != real => return Err(err(StanzaErrorCondition::Conflict)),
            Some(_) => true,
            None => false,
        };
        if self.nicks.iter().any(|(j, n)| n == &nick && j != &real) {
            return Err(err(StanzaErrorCondition::Conflict));
        }
        // A second session of a user already in the room under this nick joins that occupant.
        if !same_user
            && self.occupants.len() >= self.config.max_users
            && affiliation < Affiliation::Admin
        {
            return Err(err(StanzaErrorCondition::ServiceUnavailable).with_text("the room is full"));
        }
        let mut out = Vec::new();
        // §7.2.3: first the others' presence, then the newcomer's own.
        let sees =
            self.config.whois == Whois::Anyone || self.default_role(affiliation) == Role::Moderator;
        let others: Vec<String> = self.order.iter().filter(|n| **n != nick).cloned().collect();
        for n in others {
            out.extend(self.cached_presence(&n, sees, from));
        }
        let created = self.locked && self.occupants.is_empty() && affiliation == Affiliation::Owner;
        let payload = Self::presence_payload(stanza);
        if same_user {
            if let Some(o) = self.occupants.get_mut(&nick) {
                o.sessions.push(from.clone());
                o.payload = payload;
            }
            self.invalidate(&nick);
        } else {
            let role = self.default_role(affiliation);
            self.occupants.insert(
                nick.clone(),
                Occupant {
                    nick: nick.clone(),
                    real,
                    sessions: vec![from.clone()],
                    role,
                    payload,
                },
            );
            self.order.push(nick.clone());
        }
        self.by_session.insert(from.clone(), nick.clone());
        let Some(o) = self.occupants.get(&nick).cloned() else {
            return Ok(out);
        };
        let mut self_extra = Vec::new();
        if created {
            self_extra.push(status(201));
            fx.changed = true;
        }
        if self.config.archive {
            // §7.2.12: the newcomer is told that the room's messages are kept.
            self_extra.push(status(170));
        }
        if same_user {
            // Only the new session hears about itself; the others already know the occupant.
            let mut own = self_extra.clone();
            if self.config.whois == Whois::Anyone {
                own.push(status(100));
            }
            own.push(status(110));
            out.push(Out::One(
                Jid::from(from.clone()),
                self.presence_of(&o, false, true, &own, &[]),
            ));
        } else {
            out.extend(self.broadcast_presence(&o, false, &[], &self_extra, &[]));
        }
        // §7.2.15: history, then the subject (an empty one when there is none).
        out.extend(self.history_for(from, muc, now));
        out.push(Out::One(Jid::from(from.clone()), self.subject_message()));
        Ok(out)
    }

    fn history_for(&self, to: &FullJid, muc: Option<&Element>, now: SystemTime) -> Vec<Out> {
        let h = muc.and_then(|x| x.get_child("history", NS_MUC));
        let num = |name: &str| {
            h.and_then(|h| h.attr(name))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let max_stanzas = num("maxstanzas").unwrap_or(self.limits.history_on_join);
        let max_chars = num("maxchars");
        let since = h.and_then(|h| h.attr("since")).and_then(parse_stamp);
        let seconds = num("seconds").map(|s| now - Duration::from_secs(s as u64));
        let mut picked: Vec<&HistoryEntry> = Vec::new();
        let mut chars = 0usize;
        for e in self.history.iter().rev() {
            if picked.len() >= max_stanzas {
                break;
            }
            if since.is_some_and(|s| e.at < s) || seconds.is_some_and(|s| e.at < s) {
                break;
            }
            if let Some(max) = max_chars {
                if chars + e.chars > max {
                    break;
                }
                chars += e.chars;
            }
            picked.push(e);
        }
        picked
            .into_iter()
            .rev()
            .map(|e| {
                let mut m = e.message.clone();
                m.push_child(
                    Element::new("delay", NS_DELAY)
                        .with_attr("from", self.jid.to_string())
                        .with_attr("stamp", stamp(e.at)),
                );
                Out::One(Jid::from(to.clone()), m)
            })
            .collect()
    }

    fn subject_message(&self) -> Element {
        let (text, by) = self.subject.clone().unwrap_or_default();
        let from = if by.is_empty() {
            self.jid.to_string()
        } else {
            self.occupant_jid(&by).to_string()
        };
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", from)
            .with_attr("id", rookery_stanza::random_id(12))
            .with_child(Element::new("subject", ns::CLIENT).with_text(text))
    }

    /// Business rules, presence 3 (#bizrules-presence): a join from a session already in the room is a
    /// full synchronisation: everything a join sends goes to that session again, and the
    /// others hear of the presence only if it changed.
    fn resync(&mut self, from: &FullJid, stanza: &Stanza, now: SystemTime) -> Vec<Out> {
        let Some(nick) = self.by_session.get(from).cloned() else {
            return Vec::new();
        };
        let payload = Self::presence_payload(stanza);
        let changed = self
            .occupants
            .get(&nick)
            .is_some_and(|o| o.payload != payload);
        if let Some(o) = self.occupants.get_mut(&nick) {
            o.payload = payload;
        }
        if changed {
            self.invalidate(&nick);
        }
        let Some(o) = self.occupants.get(&nick).cloned() else {
            return Vec::new();
        };
        let to = Jid::from(from.clone());
        let sees = self.sees_real_jids(&o);
        let mut out = Vec::new();
        let others: Vec<String> = self.order.iter().filter(|n| **n != nick).cloned().collect();
        for n in others {
            out.extend(self.cached_presence(&n, sees, from));
        }
        if changed {
            let mut others = self.broadcast_presence(&o, false, &[], &[], &[]);
            // The occupant's own copy is sent below, to this session only.
            others.pop();
            out.extend(others);
        }
        let mut own = Vec::new();
        if self.config.whois == Whois::Anyone {
            own.push(status(100));
        }
        own.push(status(110));
        out.push(Out::One(
            to.clone(),
            self.presence_of(&o, false, true, &own, &[]),
        ));
        out.extend(self.history_for(from, stanza.get_child("x", NS_MUC), now));
        out.push(Out::One(to, self.subject_message()));
        out
    }

    fn change_presence(&mut self, from: &FullJid, stanza: &Stanza, broadcast: bool) -> Vec<Out> {
        let Some(nick) = self.by_session.get(from).cloned() else {
            return Vec::new();
        };
        let Some(o) = self.occupants.get_mut(&nick) else {
            return Vec::new();
        };
        o.payload = Self::presence_payload(stanza);
        let o = o.clone();
        self.invalidate(&nick);
        if !broadcast {
            return Vec::new();
        }
        self.broadcast_presence(&o, false, &[], &[], &[])
    }

    /// §7.6: unavailable with 303 and the new nick, then available under the new nick.
    fn change_nick(
        &mut self,
        from: &FullJid,
        current: &str,
        nick: String,
        stanza: &Stanza,
    ) -> Reply {
        let Some(o) = self.occupants.get(current).cloned() else {
            return Ok(Vec::new());
        };
        if self.occupants.contains_key(&nick) {
            return Err(err(StanzaErrorCondition::Conflict));
        }
        if self.nicks.iter().any(|(j, n)| n == &nick && j != &o.real) {
            return Err(err(StanzaErrorCondition::Conflict));
        }
        if o.sessions.len() > 1 {
            // One session of a multi-session occupant cannot rename the others.
            return Err(err(StanzaErrorCondition::NotAcceptable)
                .with_text("the other sessions of this occupant use the nick"));
        }
        let mut out = self.broadcast_presence(&o, true, &[status(303)], &[], &[]);
        // The 303 presence names the new nick in its item.
        for o_ in &mut out {
            let el = match o_ {
                Out::One(_, el) | Out::Many(el, _) => el,
                Out::Shared(s) => s.element_mut(),
            };
            if let Some(item) = el
                .get_child_mut("x", NS_MUC_USER)
                .and_then(|x| x.get_child_mut("item", NS_MUC_USER))
            {
                item.set_attr("nick", nick.clone());
                item.set_attr("role", o.role.as_str());
            }
        }
        self.occupants.remove(current);
        self.invalidate(current);
        let mut renamed = o;
        renamed.nick = nick.clone();
        renamed.payload = Self::presence_payload(stanza);
        self.occupants.insert(nick.clone(), renamed.clone());
        for n in &mut self.order {
            if n == current {
                *n = nick.clone();
            }
        }
        self.by_session.insert(from.clone(), nick);
        out.extend(self.broadcast_presence(&renamed, false, &[], &[], &[]));
        Ok(out)
    }

    /// One session leaves; the occupant leaves with its last session.
    /// The kick a session that is not in the room gets for a presence update (110, 307,
    /// 333).
    fn not_in_room(&self, to: &FullJid, nick: &str) -> Vec<Out> {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", self.occupant_jid(nick).to_string())
            .with_child(
                Element::new("x", NS_MUC_USER)
                    .with_child(
                        Element::new("item", NS_MUC_USER)
                            .with_attr("affiliation", "none")
                            .with_attr("role", "none")
                            .with_child(
                                Element::new("reason", NS_MUC_USER)
                                    .with_text("You are not in the room."),
                            ),
                    )
                    .with_child(status(110))
                    .with_child(status(307))
                    .with_child(status(333)),
            );
        vec![Out::One(Jid::from(to.clone()), p)]
    }

    fn leave(
        &mut self,
        from: &FullJid,
        status_text: Option<String>,
        codes: &[Element],
    ) -> Vec<Out> {
        let Some(nick) = self.by_session.remove(from) else {
            return Vec::new();
        };
        let Some(o) = self.occupants.get_mut(&nick) else {
            return Vec::new();
        };
        o.sessions.retain(|s| s != from);
        if !o.sessions.is_empty() {
            let mut gone = o.clone();
            gone.sessions = vec![from.clone()];
            let mut own = codes.to_vec();
            own.push(status(110));
            let p = self.presence_of(&gone, true, true, &own, &[]);
            return vec![Out::One(Jid::from(from.clone()), p)];
        }
        let mut o = o.clone();
        o.sessions = vec![from.clone()];
        if let Some(text) = status_text {
            o.payload = vec![Element::new("status", ns::CLIENT).with_text(text)];
        } else {
            o.payload.clear();
        }
        let mut out = self.broadcast_presence(&o, true, codes, &[], &[]);
        if let Some(text) = o.payload.first() {
            for x in &mut out {
                let el = match x {
                    Out::One(_, el) | Out::Many(el, _) => el,
                    Out::Shared(s) => s.element_mut(),
                };
                el.push_child(text.clone());
            }
        }
        self.remove_occupant(&nick);
        out
    }

    fn remove_occupant(&mut self, nick: &str) {
        self.invalidate(nick);
        if let Some(o) = self.occupants.remove(nick) {
            for s in &o.sessions {
                self.by_session.remove(s);
            }
        }
        self.order.retain(|n| n != nick);
    }

    /// Removes an occupant by the room's decision (kick, ban, membership loss) with `code`,
    /// telling everyone (§8.2, §9.1, §9.4).
    fn expel(
        &mut self,
        nick: &str,
        code: u16,
        reason: Option<&str>,
        actor: Option<&str>,
    ) -> Vec<Out> {
        let Some(o) = self.occupants.get(nick).cloned() else {
            return Vec::new();
        };
        let mut item_extra = Vec::new();
        if let Some(actor) = actor {
            item_extra.push(Element::new("actor", NS_MUC_USER).with_attr("nick", actor));
        }
        if let Some(reason) = reason {
            item_extra.push(Element::new("reason", NS_MUC_USER).with_text(reason));
        }
        let mut gone = o.clone();
        gone.role = Role::None;
        gone.payload.clear();
        let out = self.broadcast_presence(&gone, true, &[status(code)], &[], &item_extra);
        self.remove_occupant(nick);
        out
    }

    // ---- Messages (§7.4, §7.5, §7.8, §8.1) ----------------------------------------------

    fn message(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        nick: Option<String>,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Reply {
        if stanza.is_error() {
            // An error bounced by an occupant's server for a groupchat message: a ghost.
            if self.by_session.contains_key(from) && nick.is_none() {
                return Ok(self.leave(from, None, &[status(333)]));
            }
            return Ok(Vec::new());
        }
        let mtype = stanza.message_type().unwrap_or(MessageType::Normal);
        let sender = self.by_session.get(from).cloned();
        if let Some(target) = nick {
            // §7.5: a private message to an occupant.
            if mtype == MessageType::Groupchat {
                return Err(err(StanzaErrorCondition::BadRequest));
            }
            let Some(sender) = sender else {
                return Err(err(StanzaErrorCondition::NotAcceptable)
                    .with_text("only occupants may send private messages"));
            };
            if !self.config.allow_pm.permits(
                self.occupants
                    .get(&sender)
                    .map(|o| o.role)
                    .unwrap_or(Role::None),
            ) {
                return Err(err(StanzaErrorCondition::Forbidden));
            }
            let Some(to) = self.occupants.get(&target) else {
                return Err(err(StanzaErrorCondition::ItemNotFound));
            };
            let mut m = stanza.element().clone();
            m.set_attr("from", self.occupant_jid(&sender).to_string());
            m.remove_attr("to");
            if !m.has_child("x", NS_MUC_USER) {
                m.push_child(Element::new("x", NS_MUC_USER));
            }
            if let Some(sender) = self.occupants.get(&sender) {
                self.stamp_occupant_id(&mut m, &sender.real);
            }
            return Ok(vec![Out::Many(m, to.sessions.clone())]);
        }
        match mtype {
            MessageType::Groupchat => self.groupchat(stanza, sender, now, fx),
            _ => self.message_to_room(stanza, from, sender, fx),
        }
    }

    fn groupchat(
        &mut self,
        stanza: &Stanza,
        sender: Option<String>,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Reply {
        let Some(sender) = sender else {
            return Err(err(StanzaErrorCondition::NotAcceptable)
                .with_text("only occupants may send messages to the room"));
        };
        let Some(o) = self.occupants.get(&sender) else {
            return Err(err(StanzaErrorCondition::NotAcceptable));
        };
        if o.role < Role::Participant {
            // §7.4: a visitor in a moderated room has no voice.
            return Err(err(StanzaErrorCondition::Forbidden));
        }
        let el = stanza.element();
        let subject = el.get_child("subject", ns::CLIENT);
        let has_body = el.has_child("body", ns::CLIENT);
        if let Some(subject) = subject.filter(|_| !has_body) {
            // §8.1: a subject change.
            let allowed = o.role == Role::Moderator
                || (self.config.change_subject && o.role >= Role::Participant);
            if !allowed {
                return Err(err(StanzaErrorCondition::Forbidden));
            }
            let text = subject.text().to_owned();
            if text.len() > self.limits.max_subject_bytes {
                return Err(err(StanzaErrorCondition::NotAcceptable).with_text("subject too long"));
            }
            self.subject = if text.is_empty() {
                None
            } else {
                Some((text, sender.clone()))
            };
            fx.changed = true;
        }
        let mut m = el.clone();
        m.set_attr("from", self.occupant_jid(&sender).to_string());
        m.remove_attr("to");
        let real = o.real.clone();
        self.stamp_occupant_id(&mut m, &real);
        // XEP-0359 §3: only the room says what its ids are; a client's claim goes.
        let room = self.jid.to_string();
        m.retain_children(|c| {
            !(c.is("stanza-id", NS_SID) && c.attr("by").is_some_and(|by| by == room))
        });
        let at_us = micros(now);
        let id = crate::mam::new_stanza_id(at_us);
        if self.config.archive && crate::mam::worth_keeping(&m) {
            let mut kept = m.clone();
            kept.push_child(
                Element::new("x", NS_MUC_USER).with_child(
                    Element::new("item", NS_MUC_USER).with_attr("jid", real.to_string()),
                ),
            );
            fx.archive.push(ArchiveOp::Append {
                id: id.clone(),
                at_us,
                nick: sender.clone(),
                message: kept,
            });
        }
        m.push_child(
            Element::new("stanza-id", NS_SID)
                .with_attr("by", room)
                .with_attr("id", id),
        );
        let recipients: Vec<FullJid> = self.all_sessions();
        if has_body && self.limits.max_history > 0 {
            let mut kept = m.clone();
            kept.remove_attr("id");
            if let Some(id) = el.attr("id") {
                kept.set_attr("id", id);
            }
            self.keep_in_history(kept, now);
        }
        Ok(vec![Out::Many(m, recipients)])
    }

    /// A normal message to the room: invitations, declines, voice requests (§7.8, §7.13).
    fn message_to_room(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        sender: Option<String>,
        fx: &mut Effects,
    ) -> Reply {
        let el = stanza.element();
        if let Some(x) = el.get_child("x", NS_MUC_USER) {
            let mut out = Vec::new();
            for invite in x.children().filter(|c| c.name() == "invite") {
                out.extend(self.invite(from, sender.as_deref(), invite, fx)?);
            }
            for decline in x.children().filter(|c| c.name() == "decline") {
                let Some(to) = decline.attr("to").and_then(|t| Jid::new(t).ok()) else {
                    return Err(err(StanzaErrorCondition::JidMalformed));
                };
                let mut d = Element::new("decline", NS_MUC_USER)
                    .with_attr("from", from.to_bare().to_string());
                if let Some(r) = decline.get_child("reason", NS_MUC_USER) {
                    d.push_child(r.clone());
                }
                let m = Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.to_string())
                    .with_child(Element::new("x", NS_MUC_USER).with_child(d));
                out.push(Out::One(to, m));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        if let Some(form) = Submitted::find(el) {
            if form.form_type().as_deref() == Some("http://jabber.org/protocol/muc#request") {
                return self.voice_request(from, sender, &form);
            }
        }
        Err(err(StanzaErrorCondition::BadRequest)
            .with_text("send messages to the room as groupchat"))
    }

    /// §7.8.2: a mediated invitation.
    fn invite(
        &mut self,
        from: &FullJid,
        sender: Option<&str>,
        invite: &Element,
        fx: &mut Effects,
    ) -> Reply {
        let Some(to) = invite.attr("to").and_then(|t| {
            BareJid::new(t)
                .ok()
                .or_else(|| Jid::new(t).ok().map(|j| j.to_bare()))
        }) else {
            return Err(err(StanzaErrorCondition::JidMalformed));
        };
        if sender.is_none() {
            return Err(
                err(StanzaErrorCondition::NotAcceptable).with_text("only occupants may invite")
            );
        }
        let inviter_affiliation = self.affiliation(&from.to_bare());
        if self.config.members_only {
            // §7.8.2: in a members-only room only those who may add members invite (admins and
            // owners, or everyone when the room allows member invitations), and the invitee
            // becomes a member.
            if inviter_affiliation < Affiliation::Admin && !self.config.allow_invites {
                return Err(err(StanzaErrorCondition::Forbidden));
            }
            if self.affiliation(&to) < Affiliation::Member {
                if self.affiliation(&to) == Affiliation::Outcast {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                self.set_affiliation(to.clone(), Affiliation::Member, None);
                fx.changed = true;
            }
        }
        let mut inv =
            Element::new("invite", NS_MUC_USER).with_attr("from", from.to_bare().to_string());
        if let Some(r) = invite.get_child("reason", NS_MUC_USER) {
            inv.push_child(r.clone());
        }
        let mut x = Element::new("x", NS_MUC_USER).with_child(inv);
        if let Some(p) = &self.config.password {
            x.push_child(Element::new("password", NS_MUC_USER).with_text(p.clone()));
        }
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.to_string())
            .with_child(x);
        // XEP-0249 beside it, for clients that only know direct invitations.
        let mut direct = Element::new("x", NS_CONFERENCE).with_attr("jid", self.jid.to_string());
        if let Some(p) = &self.config.password {
            direct.set_attr("password", p.clone());
        }
        m.push_child(direct);
        Ok(vec![Out::One(Jid::from(to), m)])
    }

    /// §7.13: a visitor asks for voice; the request goes to the moderators. §8.6: a moderator
    /// approving the request grants voice.
    fn voice_request(
        &mut self,
        from: &FullJid,
        sender: Option<String>,
        form: &Submitted<'_>,
    ) -> Reply {
        let Some(sender) = sender else {
            return Err(err(StanzaErrorCondition::NotAcceptable));
        };
        let role = self
            .occupants
            .get(&sender)
            .map(|o| o.role)
            .unwrap_or(Role::None);
        if role == Role::Moderator {
            // An approval: the form names the occupant.
            if form.boolean("muc#request_allow").ok().flatten() == Some(true) {
                if let Some(nick) = form.value("muc#roomnick") {
                    return self.set_role(&sender, &nick, Role::Participant, None);
                }
            }
            return Ok(Vec::new());
        }
        if role != Role::Visitor {
            return Ok(Vec::new());
        }
        let request = FormBuilder::new("form", "http://jabber.org/protocol/muc#request")
            .title("Voice request")
            .field(
                "muc#role",
                Some("list-single"),
                Some("Requested role"),
                &["participant"],
            )
            .field(
                "muc#jid",
                Some("jid-single"),
                Some("User ID"),
                &[&from.to_bare().to_string()],
            )
            .field(
                "muc#roomnick",
                Some("text-single"),
                Some("Room Nickname"),
                &[&sender],
            )
            .boolean("muc#request_allow", "Grant voice to this person?", false)
            .build();
        let m = Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.to_string())
            .with_child(request);
        let moderators: Vec<FullJid> = self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
            .flat_map(|o| o.sessions.iter().cloned())
            .collect();
        if moderators.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Out::Many(m, moderators)])
    }

    // ---- IQs: disco, admin, owner, register, self-ping ------------------------------------

    fn iq(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        nick: Option<String>,
        fx: &mut Effects,
    ) -> Reply {
        let Some(itype) = stanza.iq_type() else {
            return Ok(Vec::new());
        };
        if !itype.is_request() {
            return Ok(self.forwarded_answer(stanza, &Jid::from(from.clone())));
        }
        let Some(payload) = stanza.element().children().next() else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        if let Some(nick) = nick {
            let me = self.by_session.get(from).cloned();
            // XEP-0410 §5: a ping to one's own occupant JID is answered by the room.
            if payload.name() == "ping" && payload.ns() == NS_PING && me.as_ref() == Some(&nick) {
                return Ok(result_out(stanza, None));
            }
            let Some(me) = me else {
                // Not in the room: XEP-0410 tells a client it was dropped this way.
                return Err(err(StanzaErrorCondition::NotAcceptable));
            };
            return self.forward_iq(stanza, from, &me, &nick);
        }
        let get = itype == IqType::Get;
        match (payload.ns(), payload.name(), get) {
            (NS_DISCO_INFO, "query", true) => match payload.attr("node") {
                None => Ok(result_out(stanza, Some(self.disco_info(payload)))),
                Some("x-roomuser-item") => Ok(result_out(
                    stanza,
                    Some(self.reserved_nick(&from.to_bare())),
                )),
                Some(_) => Err(err(StanzaErrorCondition::ItemNotFound)),
            },
            (NS_DISCO_ITEMS, "query", true) => Ok(result_out(
                stanza,
                Some(Element::new("query", NS_DISCO_ITEMS)),
            )),
            (NS_MUC_OWNER, "query", _) => self.owner(stanza, from, payload, get, fx),
            (NS_MUC_ADMIN, "query", _) => self.admin(stanza, from, payload, get, fx),
            (NS_REGISTER, "query", _) => self.register(stanza, from, payload, get, fx),
            (NS_MAM, "query" | "metadata", _) => self.archive_request(stanza, from, payload, fx),
            (NS_MODERATE, "moderate", false) => self.moderate(stanza, from, payload, fx),
            (NS_VCARD, "vCard", true) => Ok(result_out(stanza, Some(self.vcard_element()))),
            (NS_VCARD, "vCard", false) => self.set_vcard(stanza, from, payload, fx),
            _ => Err(err(StanzaErrorCondition::ServiceUnavailable)),
        }
    }

    // ---- The room's archive (XEP-0313 §"MUC archives") and moderation (XEP-0425) -------

    /// Who may read the archive: anyone who could enter (not an outcast; a member of a
    /// members-only room; an occupant of a password-protected room), as Prosody and
    /// ejabberd allow.
    fn may_read_archive(&self, from: &FullJid) -> Result<(), StanzaError> {
        let real = from.to_bare();
        let a = self.affiliation(&real);
        let inside = self.by_session.contains_key(from);
        if a == Affiliation::Outcast {
            return Err(err(StanzaErrorCondition::Forbidden));
        }
        if self.config.members_only && a < Affiliation::Member {
            return Err(err(StanzaErrorCondition::RegistrationRequired)
                .with_text("the archive of a members-only room is for its members"));
        }
        if self.config.password.is_some() && !inside && a < Affiliation::Admin {
            return Err(err(StanzaErrorCondition::NotAuthorized)
                .with_text("enter the room to read its archive"));
        }
        Ok(())
    }

    fn archive_request(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        payload: &Element,
        fx: &mut Effects,
    ) -> Reply {
        if !self.config.archive {
            return Err(err(StanzaErrorCondition::FeatureNotImplemented)
                .with_text("this room is not archived"));
        }
        self.may_read_archive(from)?;
        let get = stanza.iq_type() == Some(IqType::Get);
        match (payload.name(), get) {
            // §4.1.5: the form of the query fields.
            ("query", true) => Ok(result_out(stanza, Some(crate::mam::query::form()))),
            ("query", false) | ("metadata", true) => {
                let real_jids = self.config.whois == Whois::Anyone
                    || self.affiliation(&from.to_bare()) >= Affiliation::Admin
                    || self
                        .by_session
                        .get(from)
                        .and_then(|n| self.occupants.get(n))
                        .is_some_and(|o| o.role == Role::Moderator);
                fx.archive.push(ArchiveOp::Query {
                    request: stanza.element().clone(),
                    requester: from.clone(),
                    real_jids,
                });
                Ok(Vec::new())
            }
            _ => Err(err(StanzaErrorCondition::BadRequest)),
        }
    }

    /// XEP-0425 §3: a moderator retracts an occupant's message for everyone.
    fn moderate(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        payload: &Element,
        fx: &mut Effects,
    ) -> Reply {
        let Some(me) = self.by_session.get(from).cloned() else {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("only moderators in the room may moderate messages"));
        };
        let Some(moderator) = self
            .occupants
            .get(&me)
            .filter(|o| o.role == Role::Moderator)
        else {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("only moderators may moderate messages"));
        };
        let Some(id) = payload
            .attr("id")
            .filter(|i| !i.is_empty())
            .map(str::to_owned)
        else {
            return Err(StanzaError::bad_request(
                "<moderate/> needs the message's stanza id",
            ));
        };
        if !payload.has_child("retract", NS_RETRACT) {
            return Err(err(StanzaErrorCondition::FeatureNotImplemented)
                .with_text("only <retract/> is supported"));
        }
        let reason = payload
            .get_child("reason", NS_MODERATE)
            .map(|r| r.text().to_owned())
            .filter(|r| !r.is_empty());
        if reason
            .as_ref()
            .is_some_and(|r| r.len() > self.limits.max_subject_bytes)
        {
            return Err(err(StanzaErrorCondition::NotAcceptable).with_text("reason too long"));
        }
        let moderator_real = moderator.real.clone();
        let moderated = || {
            let mut m = Element::new("moderated", NS_MODERATE)
                .with_attr("by", self.occupant_jid(&me).to_string());
            m.push_child(
                Element::new("occupant-id", NS_OCCUPANT_ID)
                    .with_attr("id", self.occupant_id(&moderator_real)),
            );
            m
        };
        let with_reason = |mut el: Element| {
            if let Some(r) = &reason {
                el.push_child(Element::new("reason", NS_RETRACT).with_text(r.clone()));
            }
            el
        };
        let now = SystemTime::now();
        let retracted = with_reason(
            Element::new("retracted", NS_RETRACT)
                .with_attr("stamp", stamp(now))
                .with_child(moderated()),
        );
        let notice_id = crate::mam::new_stanza_id(micros(now));
        let notice = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.to_string())
            .with_attr("id", rookery_stanza::random_id(12))
            .with_child(with_reason(
                Element::new("retract", NS_RETRACT)
                    .with_attr("id", id.clone())
                    .with_child(moderated()),
            ));
        // The history no longer hands the message out (§"Business Rules").
        let before = self.history.len();
        self.history.retain(|h| {
            !h.message
                .children()
                .any(|c| c.is("stanza-id", NS_SID) && c.attr("id") == Some(id.as_str()))
        });
        let in_history = self.history.len() != before;
        self.history_bytes = self.history.iter().map(|h| h.chars).sum();
        let mut broadcast = notice.clone();
        broadcast.push_child(
            Element::new("stanza-id", NS_SID)
                .with_attr("by", self.jid.to_string())
                .with_attr("id", notice_id.clone()),
        );
        let all: Vec<FullJid> = self.all_sessions();
        let mut done = result_out(stanza, None);
        done.push(Out::Many(broadcast, all));
        let missing = error_out(
            stanza,
            err(StanzaErrorCondition::ItemNotFound).with_text("no message with that id"),
        );
        if !self.config.archive {
            return Ok(if in_history { done } else { missing });
        }
        fx.archive.push(ArchiveOp::Retract {
            id,
            retracted,
            in_history,
            done,
            missing,
            notice: Box::new(ArchiveOp::Append {
                id: notice_id,
                at_us: micros(now),
                nick: String::new(),
                message: notice,
            }),
        });
        Ok(Vec::new())
    }

    // ---- The room's vCard: avatars (XEP-0486) ------------------------------------------

    fn vcard_element(&self) -> Element {
        self.vcard
            .as_ref()
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| Element::new("vCard", NS_VCARD))
    }

    /// XEP-0486 §3.2: an owner sets the room's vCard (an empty one removes it); occupants
    /// are told the configuration changed (104) so they fetch the new avatar.
    fn set_vcard(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        payload: &Element,
        fx: &mut Effects,
    ) -> Reply {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(err(StanzaErrorCondition::Forbidden)
                .with_text("only owners may set the room's vCard"));
        }
        let xml = payload.to_xml(NS_VCARD);
        if xml.len() > self.limits.max_vcard_bytes {
            return Err(err(StanzaErrorCondition::NotAcceptable).with_text(format!(
                "the vCard is larger than {} bytes",
                self.limits.max_vcard_bytes
            )));
        }
        let mut v = payload.clone();
        v.remove_attr("xmlns");
        self.vcard = if v.children().next().is_none() {
            None
        } else {
            let hash = avatar_hash(&v);
            Some((v, hash))
        };
        fx.changed = true;
        let mut out = result_out(stanza, None);
        out.extend(self.status_message(&[status(104)]));
        Ok(out)
    }

    /// A groupchat message from the room itself with these status codes, to every occupant.
    fn status_message(&self, codes: &[Element]) -> Vec<Out> {
        let all: Vec<FullJid> = self.all_sessions();
        if all.is_empty() {
            return Vec::new();
        }
        let mut x = Element::new("x", NS_MUC_USER);
        for c in codes {
            x.push_child(c.clone());
        }
        let m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.to_string())
            .with_attr("id", rookery_stanza::random_id(12))
            .with_child(x);
        vec![Out::Many(m, all)]
    }

    /// Business rules, IQ 3 (#bizrules-iq): a request to another occupant goes to that user, from the sender's occupant
    /// JID, so neither learns the other's real JID; vCard requests go to the user's bare JID,
    /// where the vCard is (XEP-0054), the rest to one of the occupant's sessions.
    fn forward_iq(&mut self, stanza: &Stanza, from: &FullJid, me: &str, nick: &str) -> Reply {
        let Some(target) = self.occupants.get(nick) else {
            return Err(err(StanzaErrorCondition::ItemNotFound));
        };
        let vcard = stanza.has_child("vCard", "vcard-temp");
        let to = if vcard {
            Jid::from(target.real.clone())
        } else {
            match target.sessions.first() {
                Some(s) => Jid::from(s.clone()),
                None => return Err(err(StanzaErrorCondition::ItemNotFound)),
            }
        };
        let id = rookery_stanza::random_id(16);
        let mut el = stanza.element().clone();
        el.set_attr("id", id.clone());
        el.set_attr("from", self.occupant_jid(me).to_string());
        el.remove_attr("to");
        let pending = ForwardedIq {
            requester: from.clone(),
            id: stanza.id().unwrap_or_default().to_owned(),
            target: target.real.clone(),
            target_nick: nick.to_owned(),
        };
        if self.forwarded_order.len() >= MAX_FORWARDED_IQS {
            if let Some(old) = self.forwarded_order.pop_front() {
                self.forwarded.remove(&old);
            }
        }
        self.forwarded.insert(id.clone(), pending);
        self.forwarded_order.push_back(id);
        Ok(vec![Out::One(to, el)])
    }

    /// The answer to a forwarded request, back to whoever asked, from the occupant JID they
    /// asked.
    fn forwarded_answer(&mut self, stanza: &Stanza, from: &Jid) -> Vec<Out> {
        let Some(id) = stanza.id() else {
            return Vec::new();
        };
        let Some(pending) = self.forwarded.get(id) else {
            return Vec::new();
        };
        // Only the user asked (or their server, for a vCard) may answer.
        if from.to_bare() != pending.target {
            return Vec::new();
        }
        let Some(pending) = self.forwarded.remove(id) else {
            return Vec::new();
        };
        self.forwarded_order.retain(|i| i != id);
        let mut el = stanza.element().clone();
        el.set_attr("id", pending.id);
        el.set_attr("from", self.occupant_jid(&pending.target_nick).to_string());
        el.remove_attr("to");
        vec![Out::One(Jid::from(pending.requester), el)]
    }

    /// §7.12: the user's reserved nick as the name of an identity, or an empty answer.
    fn reserved_nick(&self, user: &BareJid) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_attr("node", "x-roomuser-item");
        if let Some(nick) = self.nicks.get(user) {
            q.push_child(
                Element::new("identity", NS_DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text")
                    .with_attr("name", nick.clone()),
            );
        }
        q
    }

    fn disco_info(&self, query: &Element) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO);
        if let Some(node) = query.attr("node") {
            q.set_attr("node", node);
        }
        q.push_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", self.config.display_name(&self.jid)),
        );
        let c = &self.config;
        let mut features = vec![
            NS_MUC,
            NS_DISCO_INFO,
            NS_REGISTER,
            "http://jabber.org/protocol/muc#stable_id",
            "urn:xmpp:ping",
            NS_OCCUPANT_ID,
            NS_SID,
            NS_MODERATE,
            NS_VCARD,
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.whois == Whois::Anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
        ];
        if c.archive {
            features.extend([NS_MAM, crate::mam::NS_EXTENDED]);
        }
        features.sort_unstable();
        features.dedup();
        for f in features {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        let (subject, _) = self.subject.clone().unwrap_or_default();
        let occupants = self.occupants.len().to_string();
        let form = FormBuilder::new("result", "http://jabber.org/protocol/muc#roominfo")
            .field(
                "muc#roominfo_description",
                None,
                Some("Description"),
                &[&c.description],
            )
            .field("muc#roomconfig_roomname", None, Some("Name"), &[&c.name])
            .field(
                "muc#roominfo_occupants",
                None,
                Some("Number of occupants"),
                &[&occupants],
            )
            .field("muc#roominfo_subject", None, Some("Subject"), &[&subject])
            .field(
                "muc#roomconfig_changesubject",
                None,
                Some("Occupants may change the subject"),
                &[if c.change_subject { "1" } else { "0" }],
            )
            .field("muc#roominfo_lang", None, Some("Language"), &[&c.lang]);
        // XEP-0486 §3.3: the avatar's hash, present only when there is one.
        let form = match self.vcard.as_ref().and_then(|(_, h)| h.as_deref()) {
            Some(hash) => form.field(
                "muc#roominfo_avatarhash",
                Some("text-multi"),
                Some("Avatar hash"),
                &[hash],
            ),
            None => form,
        }
        .build();
        q.push_child(form);
        q
    }

    fn owner(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        query: &Element,
        get: bool,
        fx: &mut Effects,
    ) -> Reply {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(err(StanzaErrorCondition::Forbidden));
        }
        if get {
            let q = Element::new("query", NS_MUC_OWNER).with_child(self.config.form(&self.limits));
            return Ok(result_out(stanza, Some(q)));
        }
        if let Some(destroy) = query.get_child("destroy", NS_MUC_OWNER) {
            let mut out = self.destroy(destroy);
            out.extend(result_out(stanza, None));
            fx.destroyed = true;
            return Ok(out);
        }
        let Some(form) = Submitted::find(query) else {
            return Err(err(StanzaErrorCondition::BadRequest));
        };
        match form.kind() {
            "cancel" => {
                // §10.1.3: cancelling the initial configuration destroys a locked room.
                if self.locked {
                    let out = self.destroy(&Element::new("destroy", NS_MUC_OWNER));
                    let mut out = out;
                    out.extend(result_out(stanza, None));
                    fx.destroyed = true;
                    return Ok(out);
                }
                Ok(result_out(stanza, None))
            }
            "submit" => {
                let before = self.config.clone();
                let mut config = self.config.clone();
                config
                    .apply(&form, &self.limits)
                    .map_err(|e| err(StanzaErrorCondition::NotAcceptable).with_text(e))?;
                if let Some(owners) = form.values("muc#roomconfig_roomowners") {
                    for o in owners.iter().filter(|o| !o.is_empty()) {
                        let j =
                            BareJid::new(o).map_err(|_| err(StanzaErrorCondition::JidMalformed))?;
                        self.set_affiliation(j, Affiliation::Owner, None);
                    }
                }
                if let Some(admins) = form.values("muc#roomconfig_roomadmins") {
                    for a in admins.iter().filter(|a| !a.is_empty()) {
                        let j =
                            BareJid::new(a).map_err(|_| err(StanzaErrorCondition::JidMalformed))?;
                        if self.affiliation(&j) != Affiliation::Owner {
                            self.set_affiliation(j, Affiliation::Admin, None);
                        }
                    }
                }
                self.config = config;
                self.locked = false;
                fx.changed = true;
                let mut out = result_out(stanza, None);
                out.extend(self.announce_config_change(&before));
                // §9.3 (members-only now): non-members leave with 322.
                if self.config.members_only && !before.members_only {
                    let gone: Vec<String> = self
                        .occupants
                        .values()
                        .filter(|o| self.affiliation(&o.real) < Affiliation::Member)
                        .map(|o| o.nick.clone())
                        .collect();
                    for nick in gone {
                        out.extend(self.expel(&nick, 322, None, None));
                    }
                }
                Ok(out)
            }
            _ => Err(err(StanzaErrorCondition::BadRequest)),
        }
    }

    /// §10.2.1: a configuration change is announced with 104, plus 172/173 when the room
    /// became non-anonymous / semi-anonymous.
    fn announce_config_change(&self, before: &RoomConfig) -> Vec<Out> {
        if *before == self.config {
            return Vec::new();
        }
        let mut codes = vec![status(104)];
        if before.whois != self.config.whois {
            codes.push(status(if self.config.whois == Whois::Anyone {
                172
            } else {
                173
            }));
        }
        // §10.2.1: archiving (logging) switched on or off.
        if before.archive != self.config.archive {
            codes.push(status(if self.config.archive { 170 } else { 171 }));
        }
        self.status_message(&codes)
    }

    /// §10.9: everyone leaves with the `<destroy/>` (alternate venue, reason).
    fn destroy(&mut self, destroy: &Element) -> Vec<Out> {
        let mut d = Element::new("destroy", NS_MUC_USER);
        if let Some(j) = destroy.attr("jid") {
            d.set_attr("jid", j);
        }
        if let Some(r) = destroy.get_child("reason", NS_MUC_OWNER) {
            d.push_child(Element::new("reason", NS_MUC_USER).with_text(r.text()));
        }
        if let Some(p) = destroy.get_child("password", NS_MUC_OWNER) {
            d.push_child(Element::new("password", NS_MUC_USER).with_text(p.text()));
        }
        let mut out = Vec::new();
        for o in self.occupants.values() {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", self.occupant_jid(&o.nick).to_string())
                .with_child(
                    Element::new("x", NS_MUC_USER)
                        .with_child(
                            Element::new("item", NS_MUC_USER)
                                .with_attr("affiliation", "none")
                                .with_attr("role", "none"),
                        )
                        .with_child(d.clone()),
                );
            out.push(Out::Many(p, o.sessions.clone()));
        }
        self.occupants.clear();
        self.presence_cache.clear();
        self.by_session.clear();
        self.order.clear();
        out
    }

    /// §9 and §8: affiliation lists and changes (admins and owners), role lists and changes
    /// (moderators).
    fn admin(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        query: &Element,
        get: bool,
        fx: &mut Effects,
    ) -> Reply {
        let me = from.to_bare();
        let my_affiliation = self.affiliation(&me);
        let my_nick = self.by_session.get(from).cloned();
        let my_role = my_nick
            .as_ref()
            .and_then(|n| self.occupants.get(n))
            .map(|o| o.role)
            .unwrap_or(Role::None);
        let items: Vec<&Element> = query.children().filter(|c| c.name() == "item").collect();
        if items.is_empty() {
            return Err(err(StanzaErrorCondition::BadRequest));
        }
        if get {
            let item = items[0];
            let mut q = Element::new("query", NS_MUC_ADMIN);
            if let Some(a) = item.attr("affiliation") {
                let a = Affiliation::from_name(a)
                    .ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
                // §9.5, §10.5: admins and owners list affiliations.
                if my_affiliation < Affiliation::Admin {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                for (j, (aa, reason)) in &self.affiliations {
                    if *aa == a {
                        let mut i = Element::new("item", NS_MUC_ADMIN)
                            .with_attr("affiliation", a.as_str())
                            .with_attr("jid", j.to_string());
                        if let Some(n) = self.nicks.get(j) {
                            i.set_attr("nick", n.clone());
                        }
                        if let Some(r) = reason {
                            i.push_child(Element::new("reason", NS_MUC_ADMIN).with_text(r.clone()));
                        }
                        q.push_child(i);
                    }
                }
            } else if let Some(r) = item.attr("role") {
                let r = Role::from_name(r).ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
                if my_role != Role::Moderator {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                for n in &self.order {
                    if let Some(o) = self.occupants.get(n).filter(|o| o.role == r) {
                        let mut i = Element::new("item", NS_MUC_ADMIN)
                            .with_attr("role", r.as_str())
                            .with_attr("nick", o.nick.clone())
                            .with_attr("affiliation", self.affiliation(&o.real).as_str());
                        if let Some(s) = o.sessions.first() {
                            i.set_attr("jid", s.to_string());
                        }
                        q.push_child(i);
                    }
                }
            } else {
                return Err(err(StanzaErrorCondition::BadRequest));
            }
            return Ok(result_out(stanza, Some(q)));
        }
        // A set: every item is checked before any applies (§9: all or nothing).
        enum Change {
            Role(String, Role, Option<String>),
            Affiliation(BareJid, Affiliation, Option<String>),
        }
        let mut changes = Vec::new();
        for item in &items {
            // Business rules, IQ 4 (#bizrules-iq): one item changes an affiliation or a role.
            if item.attr("affiliation").is_some() && item.attr("role").is_some() {
                return Err(err(StanzaErrorCondition::BadRequest)
                    .with_text("an item changes either an affiliation or a role"));
            }
            let reason = item
                .get_child("reason", NS_MUC_ADMIN)
                .map(|r| r.text().to_owned());
            if let Some(a) = item.attr("affiliation") {
                let a = Affiliation::from_name(a)
                    .ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
                let target = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => Jid::new(j)
                        .map(|j| j.to_bare())
                        .map_err(|_| err(StanzaErrorCondition::JidMalformed))?,
                    (None, Some(n)) => self
                        .occupants
                        .get(n)
                        .map(|o| o.real.clone())
                        .ok_or_else(|| err(StanzaErrorCondition::ItemNotFound))?,
                    _ => return Err(err(StanzaErrorCondition::BadRequest)),
                };
                let current = self.affiliation(&target);
                // §9/§10: owners change anything; admins change members, outcasts and none,
                // for users below admin.
                let allowed = match my_affiliation {
                    Affiliation::Owner => true,
                    Affiliation::Admin => current < Affiliation::Admin && a < Affiliation::Admin,
                    _ => false,
                };
                if !allowed {
                    return Err(err(StanzaErrorCondition::NotAllowed));
                }
                // §10.7: the last owner cannot leave the room without an owner.
                if current == Affiliation::Owner && a != Affiliation::Owner {
                    let owners = self
                        .affiliations
                        .values()
                        .filter(|(x, _)| *x == Affiliation::Owner)
                        .count();
                    if owners <= 1 {
                        return Err(err(StanzaErrorCondition::Conflict)
                            .with_text("a room keeps at least one owner"));
                    }
                }
                changes.push(Change::Affiliation(target, a, reason));
            } else if let Some(r) = item.attr("role") {
                let r = Role::from_name(r).ok_or_else(|| err(StanzaErrorCondition::BadRequest))?;
                let Some(nick) = item.attr("nick") else {
                    return Err(err(StanzaErrorCondition::BadRequest));
                };
                let Some(target) = self.occupants.get(nick) else {
                    return Err(err(StanzaErrorCondition::ItemNotFound));
                };
                if my_role != Role::Moderator {
                    return Err(err(StanzaErrorCondition::Forbidden));
                }
                let target_aff = self.affiliation(&target.real);
                // §8.2/§8.4: nobody kicks or silences an admin or owner; only admins and
                // owners make or unmake moderators.
                if (r < Role::Participant && target_aff >= Affiliation::Admin)
                    || ((r == Role::Moderator || target.role == Role::Moderator)
                        && my_affiliation < Affiliation::Admin)
                {
                    return Err(err(StanzaErrorCondition::NotAllowed));
                }
                changes.push(Change::Role(nick.to_owned(), r, reason));
            } else {
                return Err(err(StanzaErrorCondition::BadRequest));
            }
        }
        let actor = my_nick.clone().unwrap_or_default();
        let mut out = Vec::new();
        for c in changes {
            match c {
                Change::Role(nick, r, reason) => {
                    out.extend(self.set_role(&actor, &nick, r, reason.as_deref())?);
                }
                Change::Affiliation(jid, a, reason) => {
                    out.extend(self.change_affiliation(&actor, jid, a, reason));
                    fx.changed = true;
                }
            }
        }
        out.extend(result_out(stanza, None));
        Ok(out)
    }

    fn set_role(&mut self, actor: &str, nick: &str, role: Role, reason: Option<&str>) -> Reply {
        if role == Role::None {
            // §8.2: a kick.
            return Ok(self.expel(nick, 307, reason, Some(actor).filter(|a| !a.is_empty())));
        }
        let Some(o) = self.occupants.get_mut(nick) else {
            return Err(err(StanzaErrorCondition::ItemNotFound));
        };
        o.role = role;
        let o = o.clone();
        self.invalidate(nick);
        let mut item_extra = Vec::new();
        if let Some(r) = reason {
            item_extra.push(Element::new("reason", NS_MUC_USER).with_text(r));
        }
        Ok(self.broadcast_presence(&o, false, &[], &[], &item_extra))
    }

    fn change_affiliation(
        &mut self,
        actor: &str,
        jid: BareJid,
        a: Affiliation,
        reason: Option<String>,
    ) -> Vec<Out> {
        self.set_affiliation(jid.clone(), a, reason.clone());
        let nicks: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.real == jid)
            .map(|o| o.nick.clone())
            .collect();
        let actor = Some(actor).filter(|a| !a.is_empty());
        let mut out = Vec::new();
        if nicks.is_empty() {
            // §"Business Rules": out of courtesy, a user not in the room hears of the change
            // from the room, at the bare JID, with 101.
            let mut item = Element::new("item", NS_MUC_USER)
                .with_attr("affiliation", a.as_str())
                .with_attr("jid", jid.to_string());
            if let Some(r) = &reason {
                item.push_child(Element::new("reason", NS_MUC_USER).with_text(r.clone()));
            }
            let m = Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("id", rookery_stanza::random_id(12))
                .with_child(
                    Element::new("x", NS_MUC_USER)
                        .with_child(item)
                        .with_child(status(101)),
                );
            out.push(Out::One(Jid::from(jid), m));
        }
        for nick in nicks {
            if a == Affiliation::Outcast {
                // §9.1: a ban removes the user.
                out.extend(self.expel(&nick, 301, reason.as_deref(), actor));
            } else if self.config.members_only && a < Affiliation::Member {
                // §9.4: losing membership of a members-only room removes the user.
                out.extend(self.expel(&nick, 321, reason.as_deref(), actor));
            } else {
                let role = self.default_role(a);
                if let Some(o) = self.occupants.get_mut(&nick) {
                    // A moderator stays one unless the affiliation decided it.
                    o.role = role.max(if o.role == Role::Moderator && a >= Affiliation::Admin {
                        Role::Moderator
                    } else {
                        role
                    });
                    let o = o.clone();
                    self.invalidate(&nick);
                    let mut item_extra = Vec::new();
                    if let Some(r) = &reason {
                        item_extra.push(Element::new("reason", NS_MUC_USER).with_text(r.clone()));
                    }
                    out.extend(self.broadcast_presence(&o, false, &[], &[], &item_extra));
                }
            }
        }
        out
    }

    /// §7.10: registering a nick with the room.
    fn register(
        &mut self,
        stanza: &Stanza,
        from: &FullJid,
        query: &Element,
        get: bool,
        fx: &mut Effects,
    ) -> Reply {
        let me = from.to_bare();
        let a = self.affiliation(&me);
        if a == Affiliation::Outcast {
            return Err(err(StanzaErrorCondition::Forbidden));
        }
        if get {
            let mut q = Element::new("query", NS_REGISTER);
            if let Some(nick) = self.nicks.get(&me) {
                q.push_child(Element::new("registered", NS_REGISTER));
                q.push_child(Element::new("username", NS_REGISTER).with_text(nick.clone()));
                return Ok(result_out(stanza, Some(q)));
            }
            q.push_child(
                Element::new("instructions", NS_REGISTER)
                    .with_text("Register a nickname with this room; it is then reserved for you."),
            );
            q.push_child(
                FormBuilder::new("form", "http://jabber.org/protocol/muc#register")
                    .title("Nickname registration")
                    .field(
                        "muc#register_roomnick",
                        Some("text-single"),
                        Some("Nickname"),
                        &[],
                    )
                    .build(),
            );
            return Ok(result_out(stanza, Some(q)));
        }
        if query.has_child("remove", NS_REGISTER) {
            self.nicks.remove(&me);
            if a == Affiliation::Member {
                self.set_affiliation(me, Affiliation::None, None);
            }
            fx.changed = true;
            return Ok(result_out(stanza, None));
        }
        if self.config.members_only && a < Affiliation::Member {
            return Err(err(StanzaErrorCondition::RegistrationRequired));
        }
        let nick = Submitted::find(query)
            .and_then(|f| f.value("muc#register_roomnick"))
            .or_else(|| {
                query
                    .get_child("username", NS_REGISTER)
                    .map(|u| u.text().to_owned())
            })
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                err(StanzaErrorCondition::NotAcceptable).with_text("a nick is required")
            })?;
        self.check_nick(&nick)?;
        if self.nicks.iter().any(|(j, n)| n == &nick && j != &me)
            || self.occupants.get(&nick).is_some_and(|o| o.real != me)
        {
            return Err(err(StanzaErrorCondition::Conflict));
        }
        self.nicks.insert(me.clone(), nick);
        if a < Affiliation::Member {
            self.set_affiliation(me, Affiliation::Member, None);
        }
        fx.changed = true;
        Ok(result_out(stanza, None))
    }
}

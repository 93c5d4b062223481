//! Multi-User Chat (XEP-0045): a chat service on its own domain (`conference.<host>` by
//! default), served through the core's service-domain route.
//!
//! * [`room`]: one room as a state machine (stanza in, stanzas out), with no I/O.
//! * [`config`]: a room's configuration and its `muc#roomconfig` form.
//! * this file: the module (its `[host.muc]` section), the service (disco of the domain,
//!   room creation and its limits, persistent rooms in the `RoomStore`), and the task each
//!   live room runs in. A room's stanzas are handled in order by its own task; what the room
//!   sends is routed after the room has handled the stanza, with no lock held, and a
//!   broadcast is one element shared by its recipients.

pub mod archive;
pub mod config;
pub mod room;

use crate::budget;
use crate::muc::room::{Affiliation, Effects, Out, Room, Stored};
use async_trait::async_trait;
use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::{
    HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Service, ServiceHandle, Spec,
};
use rookery_stanza::{
    BareJid, FullJid, IqType, Jid, PresenceType, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind,
};
use rookery_storage::Storage;
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_MUC_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Stanzas queued for one room before senders wait: a room's task handles them in order.
const ROOM_QUEUE: usize = 1024;
/// The largest stored room document (configuration, affiliations, nicks, subject).
const MAX_ROOM_DOCUMENT: usize = 1024 * 1024;

pub struct Muc;

/// `[host.muc]`: the chat service of a host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MucSettings {
    /// The service's domain; `conference.<host>` when empty.
    pub domain: String,
    /// The service's name in disco.
    pub name: String,
    /// Who may create rooms: `local` (accounts of this host) or `admins` (nobody but the
    /// addresses in `admins`).
    pub create_rooms: String,
    /// Accounts that own every room of the service (service administrators).
    pub admins: Vec<String>,
    /// Occupants per room: the highest `muc#roomconfig_maxusers` an owner may choose, and
    /// the default of new rooms.
    pub max_occupants: usize,
    /// Rooms the service holds (live and stored).
    pub max_rooms: usize,
    /// Rooms one user may create per hour.
    pub rooms_per_user_per_hour: usize,
    /// Messages each room keeps in memory for history on join.
    pub max_history: usize,
    /// Bytes of history each room keeps (as serialised); the oldest messages go first, the
    /// newest one is always kept.
    pub max_history_bytes: usize,
    /// Messages of history sent on join when the client does not ask for a number.
    pub history_on_join: usize,
    pub max_nick_bytes: usize,
    pub max_subject_bytes: usize,
    pub max_name_bytes: usize,
    /// Largest room vCard (XEP-0486 avatars), in bytes as serialised.
    pub max_vcard_bytes: usize,
    /// Presence a user may send to one room in a burst (entries, changes, nick changes);
    /// then one more every `presence_interval_ms`.
    pub presence_burst: u32,
    pub presence_interval_ms: u64,
    /// Rooms entered from one IP address (all its users together) in a burst, then one
    /// more every `join_interval_per_ip_ms`.
    pub joins_per_ip_burst: u32,
    pub join_interval_per_ip_ms: u64,
    /// New rooms keep an archive (XEP-0313) unless their owner turns it off.
    pub archive_by_default: bool,
}

impl Default for MucSettings {
    fn default() -> Self {
        MucSettings {
            domain: String::new(),
            name: "Chatrooms".into(),
            create_rooms: "local".into(),
            admins: Vec::new(),
            max_occupants: 1000,
            max_rooms: 10_000,
            rooms_per_user_per_hour: 10,
            max_history: 50,
            max_history_bytes: 262_144,
            history_on_join: 20,
            max_nick_bytes: 64,
            max_subject_bytes: 1024,
            max_name_bytes: 256,
            max_vcard_bytes: 131_072,
            presence_burst: 10,
            presence_interval_ms: 1000,
            joins_per_ip_burst: 200,
            join_interval_per_ip_ms: 100,
            archive_by_default: true,
        }
    }
}

impl Section for MucSettings {
    const KEY: &'static str = "muc";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# Multi-User Chat (XEP-0045, the "muc" module): group chat rooms on their own domain.
[host.muc]
# The service's domain; empty means conference.<host>.
domain = ""
name = "Chatrooms"
# Who may create rooms: "local" (accounts of this host) or "admins" (the addresses below).
create_rooms = "local"
# Accounts that own every room of the service.
admins = []
# Occupants per room (the most an owner may configure, and the default).
max_occupants = 1000
# Rooms the service holds, and rooms one user may create per hour.
max_rooms = 10000
rooms_per_user_per_hour = 10
# Messages each room keeps in memory for newcomers, and how many a newcomer gets unless
# the client asks.
max_history = 50
history_on_join = 20
# Bytes of history a room keeps in memory (the oldest messages go first).
max_history_bytes = 262144
# Longest nick, subject (and description), and room name, in bytes.
max_nick_bytes = 64
max_subject_bytes = 1024
max_name_bytes = 256
# Largest room vCard (the room's avatar, XEP-0486), in bytes.
max_vcard_bytes = 131072
# Presence one user may send to one room in a burst (entering, status and nick changes),
# then one every presence_interval_ms: each is broadcast to every occupant. Over it, an
# entry or nick change is refused with policy-violation and a status change is not
# broadcast (newcomers still see it). Admins and owners are not limited.
presence_burst = 10
presence_interval_ms = 1000
# Room entries from one IP address, all its users together, in a burst, then one every
# join_interval_per_ip_ms (10 a second): over it, entering gets policy-violation. Raise it
# for addresses that many users share (large NATs).
joins_per_ip_burst = 200
join_interval_per_ip_ms = 100
# New rooms keep an archive of their messages (XEP-0313) unless their owner turns it off;
# it is queried with the [archive] page sizes.
archive_by_default = true
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !matches!(self.create_rooms.as_str(), "local" | "admins") {
            return Err(ConfigError::invalid(
                format!("{key}.create_rooms"),
                "must be \"local\" or \"admins\"",
            ));
        }
        for (name, v) in [
            ("max_occupants", self.max_occupants),
            ("max_rooms", self.max_rooms),
            ("max_history_bytes", self.max_history_bytes),
            ("max_nick_bytes", self.max_nick_bytes),
            ("max_subject_bytes", self.max_subject_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_vcard_bytes", self.max_vcard_bytes),
            ("presence_burst", self.presence_burst as usize),
            ("presence_interval_ms", self.presence_interval_ms as usize),
            ("joins_per_ip_burst", self.joins_per_ip_burst as usize),
            (
                "join_interval_per_ip_ms",
                self.join_interval_per_ip_ms as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.history_on_join > self.max_history {
            return Err(ConfigError::invalid(
                format!("{key}.history_on_join"),
                "must not exceed max_history",
            ));
        }
        for a in &self.admins {
            if BareJid::new(a).is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.admins"),
                    format!("'{a}' is not a bare JID"),
                ));
            }
        }
        crate::require_domain(key, &self.domain)
    }
}

/// The limits a room applies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MucLimits {
    pub max_occupants: usize,
    pub max_history: usize,
    pub max_history_bytes: usize,
    pub history_on_join: usize,
    pub max_nick_bytes: usize,
    pub max_subject_bytes: usize,
    pub max_name_bytes: usize,
    pub max_vcard_bytes: usize,
    pub presence_burst: u32,
    pub presence_interval_ms: u64,
}

impl Default for MucLimits {
    fn default() -> Self {
        MucSettings::default().limits()
    }
}

impl MucSettings {
    pub fn limits(&self) -> MucLimits {
        MucLimits {
            max_occupants: self.max_occupants,
            max_history: self.max_history,
            max_history_bytes: self.max_history_bytes,
            history_on_join: self.history_on_join,
            max_nick_bytes: self.max_nick_bytes,
            max_subject_bytes: self.max_subject_bytes,
            max_name_bytes: self.max_name_bytes,
            max_vcard_bytes: self.max_vcard_bytes,
            presence_burst: self.presence_burst,
            presence_interval_ms: self.presence_interval_ms,
        }
    }
}

impl Module for Muc {
    const NAME: &'static str = "muc";
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0045",
            title: "Multi-User Chat",
            version: "1.34.6",
        },
        // Direct invitations pass between clients like any message; a mediated invitation
        // carries one too, for clients that only read those.
        Spec {
            id: "XEP-0249",
            title: "Direct MUC Invitations",
            version: "1.2",
        },
        // §5: the room answers a ping to the sender's own occupant JID, and refuses it with
        // not-acceptable when the sender is not in the room.
        Spec {
            id: "XEP-0410",
            title: "MUC Self-Ping (Schrödinger's Chat)",
            version: "1.1.0",
        },
        // §4: every presence and message from an occupant carries the room's id of the user.
        Spec {
            id: "XEP-0421",
            title: "Anonymous unique occupant identifiers for MUCs",
            version: "0.1.0",
        },
        // The room's archive: its messages carry stanza ids by the room (XEP-0359), and
        // those who may enter query it with the account archive's form and paging.
        Spec {
            id: "XEP-0313",
            title: "Message Archive Management (MUC archives)",
            version: "1.1.3",
        },
        // Moderators retract occupants' messages; the archive keeps a tombstone (§5).
        Spec {
            id: "XEP-0425",
            title: "Moderated Message Retraction",
            version: "0.3.0",
        },
        // Owners set the room's vCard; its photo's hash is in the room's disco#info form.
        Spec {
            id: "XEP-0486",
            title: "MUC Avatars",
            version: "0.1.0",
        },
    ];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<MucSettings>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let settings = host.section::<MucSettings>();
        let domain = if settings.domain.is_empty() {
            format!("conference.{}", host.domain())
        } else {
            settings.domain.clone()
        };
        let service_jid = BareJid::new(&domain).map_err(|_| ModuleError::Init {
            module: Self::NAME,
            message: format!("'{domain}' is not a domain"),
        })?;
        let service = MucService {
            inner: Arc::new(Inner {
                domain: service_jid,
                host: host.domain().to_owned(),
                settings: (*settings).clone(),
                storage: host.storage().clone(),
                rooms: Mutex::new(HashMap::new()),
                created: Mutex::new(HashMap::new()),
                joins_by_ip: Mutex::new(HashMap::new()),
                started: Instant::now(),
                me: Mutex::new(Weak::new()),
                archive: std::sync::OnceLock::new(),
                archive_cfg: host.section::<crate::mam::config::ArchiveConfig>(),
            }),
        };
        *service.inner.me.lock() = Arc::downgrade(&service.inner);
        host.service_domain(&domain, Some(&settings.name), service)
    }
}

/// What the service knows of a live room without asking its task.
#[derive(Debug, Clone, Default)]
struct Summary {
    name: String,
    public: bool,
    occupants: usize,
}

struct RoomHandle {
    tx: mpsc::Sender<Stanza>,
    summary: Arc<Mutex<Summary>>,
}

struct Inner {
    domain: BareJid,
    host: String,
    settings: MucSettings,
    storage: Storage,
    rooms: Mutex<HashMap<BareJid, RoomHandle>>,
    /// Rooms created per user in the last hour.
    created: Mutex<HashMap<BareJid, VecDeque<Instant>>>,
    /// Room entries per client address ([`MucSettings::joins_per_ip_burst`]), on a clock
    /// that starts with the service.
    joins_by_ip: Mutex<HashMap<std::net::IpAddr, budget::Budget>>,
    started: Instant,
    me: Mutex<Weak<Inner>>,
    /// The rooms' archive worker, started with the first operation.
    archive: std::sync::OnceLock<mpsc::Sender<archive::Job>>,
    /// Page sizes of archive queries (the `[archive]` section).
    archive_cfg: Arc<crate::mam::config::ArchiveConfig>,
}

pub struct MucService {
    inner: Arc<Inner>,
}

#[async_trait]
impl Service for MucService {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza) {
        self.inner.receive(service, stanza).await;
    }
}

fn stanza_error(c: StanzaErrorCondition) -> StanzaError {
    StanzaError::new(c)
}

impl Inner {
    async fn receive(self: &Arc<Self>, service: &ServiceHandle, stanza: Stanza) {
        let Some(to) = stanza.to().cloned() else {
            return;
        };
        if to.node().is_none() {
            if to.resource().is_none() {
                self.service_stanza(service, stanza).await;
            } else if !stanza.is_error() {
                send_error(
                    service,
                    &stanza,
                    stanza_error(StanzaErrorCondition::ItemNotFound),
                )
                .await;
            }
            return;
        }
        if let Err(e) = self.may_enter_from_address(service, &stanza) {
            send_error(service, &stanza, e).await;
            return;
        }
        let room_jid = to.to_bare();
        let mut stanza = stanza;
        loop {
            let tx = self.rooms.lock().get(&room_jid).map(|h| h.tx.clone());
            let tx = match tx {
                Some(tx) => tx,
                None => match self.open_room(service, &room_jid, &stanza).await {
                    Ok(Some(tx)) => tx,
                    Ok(None) => return,
                    Err(e) => {
                        if !stanza.is_error() {
                            send_error(service, &stanza, e).await;
                        }
                        return;
                    }
                },
            };
            match tx.send(stanza).await {
                Ok(()) => return,
                // The room's task ended while its handle was registered (between the
                // look-up and the send, or cancelled by shutdown, which leaves the handle):
                // unregister that handle, so the next look-up opens a new room instead of
                // finding the same closed queue again and again without yielding. While
                // the server stops, rooms are not reopened: the stanza is dropped.
                Err(mpsc::error::SendError(back)) => {
                    {
                        let mut rooms = self.rooms.lock();
                        if rooms.get(&room_jid).is_some_and(|h| h.tx.same_channel(&tx)) {
                            rooms.remove(&room_jid);
                        }
                    }
                    if service
                        .server()
                        .is_some_and(|s| s.shutdown_token().is_cancelled())
                    {
                        return;
                    }
                    stanza = back;
                }
            }
        }
    }

    /// A room that is not live: loaded from storage when persistent, created when a user
    /// enters it and may create rooms, otherwise it does not exist.
    async fn open_room(
        self: &Arc<Self>,
        service: &ServiceHandle,
        room_jid: &BareJid,
        stanza: &Stanza,
    ) -> Result<Option<mpsc::Sender<Stanza>>, StanzaError> {
        let node = room_jid.node().map(|n| n.to_string()).unwrap_or_default();
        let stored = self
            .storage
            .rooms
            .get_room(self.domain.as_str(), &node)
            .await
            .map_err(|e| {
                tracing::warn!(room = %room_jid, error = %e, "cannot read a stored room");
                stanza_error(StanzaErrorCondition::InternalServerError)
            })?;
        let limits = self.settings.limits();
        let room = match stored {
            Some(doc) => match serde_json::from_str::<Stored>(&doc) {
                Ok(stored) => {
                    let mut room = Room::restore(room_jid.clone(), stored, limits);
                    if room.config.archive && limits.max_history > 0 {
                        // What the room said before it was unloaded is still its history.
                        match archive::recent(
                            self.storage.room_archive.as_ref(),
                            room_jid,
                            limits.max_history,
                        )
                        .await
                        {
                            Ok(recent) => room.restore_history(recent),
                            Err(e) => {
                                tracing::warn!(room = %room_jid, error = %e, "no history from the room's archive")
                            }
                        }
                    }
                    room
                }
                Err(e) => {
                    tracing::warn!(room = %room_jid, error = %e, "a stored room cannot be read");
                    return Err(stanza_error(StanzaErrorCondition::InternalServerError));
                }
            },
            None => {
                let joining = stanza.kind() == StanzaKind::Presence
                    && stanza.presence_type() == Some(PresenceType::Available)
                    && stanza.to().is_some_and(|t| t.resource().is_some());
                if !joining {
                    if stanza.kind() == StanzaKind::Presence {
                        return Ok(None);
                    }
                    return Err(stanza_error(StanzaErrorCondition::ItemNotFound));
                }
                let Some(Ok(creator)) = stanza.from().cloned().map(Jid::try_into_full) else {
                    return Err(stanza_error(StanzaErrorCondition::NotAllowed));
                };
                self.may_create(&creator)?;
                let config = config::RoomConfig {
                    max_users: self.settings.max_occupants,
                    archive: self.settings.archive_by_default,
                    ..Default::default()
                };
                let mut room = Room::new(room_jid.clone(), config, limits);
                room.created_by(creator.to_bare(), true);
                room
            }
        };
        let mut room = room;
        for admin in &self.settings.admins {
            if let Ok(a) = BareJid::new(admin) {
                if room.affiliation(&a) != Affiliation::Owner {
                    room.grant_owner(a);
                }
            }
        }
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let summary = Arc::new(Mutex::new(summary_of(&room)));
        {
            let mut rooms = self.rooms.lock();
            if let Some(existing) = rooms.get(room_jid) {
                // Another sender opened it meanwhile.
                return Ok(Some(existing.tx.clone()));
            }
            rooms.insert(
                room_jid.clone(),
                RoomHandle {
                    tx: tx.clone(),
                    summary: summary.clone(),
                },
            );
        }
        let inner = self.clone();
        let service = service.clone();
        let shutdown = service.server().map(|s| s.shutdown_token().clone());
        let task = async move { inner.run_room(service, room, rx, summary).await };
        match shutdown {
            Some(token) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = task => {}
                    }
                });
            }
            None => {
                tokio::spawn(task);
            }
        }
        Ok(Some(tx))
    }

    /// An attempt to enter a room (available presence with the MUC `<x/>`) from a local
    /// client takes one entry from its address's budget: one address cannot make rooms
    /// announce thousands of arrivals, whatever the number of its accounts. Presence that is
    /// not an entry, and entities without a local session, are not counted here.
    fn may_enter_from_address(
        &self,
        service: &ServiceHandle,
        stanza: &Stanza,
    ) -> Result<(), StanzaError> {
        let entering = stanza.kind() == StanzaKind::Presence
            && stanza.presence_type() == Some(PresenceType::Available)
            && stanza.has_child("x", NS_MUC);
        if !entering {
            return Ok(());
        }
        let Some(Ok(from)) = stanza.from().cloned().map(Jid::try_into_full) else {
            return Ok(());
        };
        let Some(ip) = service
            .server()
            .and_then(|s| s.sessions().get(&from))
            .and_then(|s| s.peer())
            .map(|p| p.ip().to_canonical())
        else {
            return Ok(());
        };
        let rate = budget::Rate {
            burst: self.settings.joins_per_ip_burst,
            interval_ms: self.settings.join_interval_per_ip_ms,
        };
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut joins = self.joins_by_ip.lock();
        if joins.len() > 10_000 {
            joins.retain(|_, b| !b.is_full(rate, now_ms));
        }
        let allowed = joins
            .entry(ip)
            .or_insert_with(|| budget::Budget::full(rate, now_ms))
            .take(rate, now_ms);
        if allowed {
            Ok(())
        } else {
            tracing::info!(addr = %ip, "room entries refused: too many from this address");
            Err(stanza_error(StanzaErrorCondition::PolicyViolation)
                .with_text("too many room entries from your address; wait a moment"))
        }
    }

    fn may_create(&self, creator: &FullJid) -> Result<(), StanzaError> {
        let bare = creator.to_bare();
        let admin = self.settings.admins.iter().any(|a| a == bare.as_str());
        let allowed = admin
            || (self.settings.create_rooms == "local" && creator.domain().as_str() == self.host);
        if !allowed {
            return Err(stanza_error(StanzaErrorCondition::NotAllowed)
                .with_text("rooms are created by this server's users"));
        }
        if self.rooms.lock().len() >= self.settings.max_rooms {
            return Err(stanza_error(StanzaErrorCondition::ResourceConstraint)
                .with_text("the service holds as many rooms as it may"));
        }
        if admin {
            return Ok(());
        }
        let now = Instant::now();
        let mut created = self.created.lock();
        let times = created.entry(bare).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(3600))
        {
            times.pop_front();
        }
        if times.len() >= self.settings.rooms_per_user_per_hour {
            return Err(stanza_error(StanzaErrorCondition::PolicyViolation)
                .with_text("too many rooms created in the last hour"));
        }
        times.push_back(now);
        Ok(())
    }

    /// One live room's task: its stanzas in order; ends when the room is destroyed or a
    /// temporary room empties.
    async fn run_room(
        self: Arc<Self>,
        service: ServiceHandle,
        mut room: Room,
        mut rx: mpsc::Receiver<Stanza>,
        summary: Arc<Mutex<Summary>>,
    ) {
        let node = room.jid().node().map(|n| n.to_string()).unwrap_or_default();
        while let Some(stanza) = rx.recv().await {
            let was_persistent = room.config.persistent;
            let (out, mut fx) = room.handle(&stanza, SystemTime::now());
            *summary.lock() = summary_of(&room);
            self.store(&room, &node, was_persistent, &fx).await;
            send_all(&service, out).await;
            if fx.destroyed {
                fx.archive.push(room::ArchiveOp::Delete);
            }
            if !fx.archive.is_empty() {
                let worker = self.archive.get_or_init(|| {
                    archive::start(
                        service.clone(),
                        self.storage.room_archive.clone(),
                        self.archive_cfg.clone(),
                    )
                });
                for op in std::mem::take(&mut fx.archive) {
                    let job = archive::Job {
                        room: room.jid().clone(),
                        op,
                    };
                    if worker.send(job).await.is_err() {
                        tracing::warn!(room = %room.jid(), "the room archive worker has stopped");
                    }
                }
            }
            if fx.destroyed {
                // Unregister first, so new stanzas open a new room; what is already queued
                // is handed back to the service in order.
                {
                    let mut rooms = self.rooms.lock();
                    if rooms
                        .get(room.jid())
                        .is_some_and(|h| Arc::ptr_eq(&h.summary, &summary))
                    {
                        rooms.remove(room.jid());
                    }
                }
                rx.close();
                let mut left = Vec::new();
                while let Some(s) = rx.recv().await {
                    left.push(s);
                }
                self.redispatch(service, left).await;
                return;
            }
        }
    }

    /// Hands stanzas back to the service (those queued for a room that has just ended).
    /// Boxed: the service opens rooms whose tasks may come back here, and the box ends that
    /// cycle of future types.
    fn redispatch(
        self: &Arc<Self>,
        service: ServiceHandle,
        stanzas: Vec<Stanza>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for s in stanzas {
                self.receive(&service, s).await;
            }
        })
    }

    /// Writes a persistent room after a change, deletes it when destroyed or no longer
    /// persistent.
    async fn store(&self, room: &Room, node: &str, was_persistent: bool, fx: &Effects) {
        let persistent = room.config.persistent && !fx.destroyed;
        let doc = if persistent && (fx.changed || !was_persistent) {
            match serde_json::to_string(&room.stored()) {
                Ok(doc) => Some(doc),
                Err(e) => {
                    tracing::warn!(room = %room.jid(), error = %e, "cannot serialise a room");
                    return;
                }
            }
        } else if was_persistent && !persistent {
            None
        } else {
            return;
        };
        if let Err(e) = self
            .storage
            .rooms
            .set_room(
                self.domain.as_str(),
                node,
                doc.as_deref(),
                MAX_ROOM_DOCUMENT,
            )
            .await
        {
            tracing::warn!(room = %room.jid(), error = %e, "cannot store a room");
        }
    }

    // ---- The service's own domain: disco, unique room names ----------------------------

    async fn service_stanza(&self, service: &ServiceHandle, stanza: Stanza) {
        if stanza.kind() != StanzaKind::Iq || !stanza.iq_type().is_some_and(IqType::is_request) {
            if stanza.kind() == StanzaKind::Message && !stanza.is_error() {
                send_error(
                    service,
                    &stanza,
                    stanza_error(StanzaErrorCondition::ServiceUnavailable),
                )
                .await;
            }
            return;
        }
        let get = stanza.iq_type() == Some(IqType::Get);
        let Some(payload) = stanza.element().children().next().cloned() else {
            send_error(
                service,
                &stanza,
                stanza_error(StanzaErrorCondition::BadRequest),
            )
            .await;
            return;
        };
        let answer = match (payload.ns(), payload.name(), get) {
            (NS_DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                Ok(self.disco_info())
            }
            (NS_DISCO_ITEMS, "query", true) if payload.attr("node").is_none() => {
                self.disco_items(payload.get_child("set", NS_RSM)).await
            }
            (NS_MUC_UNIQUE, "unique", true) => Ok(Element::new("unique", NS_MUC_UNIQUE)
                .with_text(rookery_stanza::random_id(16).to_lowercase())),
            (NS_DISCO_INFO | NS_DISCO_ITEMS, _, _) => {
                Err(stanza_error(StanzaErrorCondition::ItemNotFound))
            }
            _ => Err(stanza_error(StanzaErrorCondition::ServiceUnavailable)),
        };
        match answer {
            Ok(payload) => {
                send_one(
                    service,
                    stanza.from().cloned(),
                    stanza.iq_result(Some(payload)),
                )
                .await
            }
            Err(e) => send_error(service, &stanza, e).await,
        }
    }

    fn disco_info(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", self.settings.name.clone()),
        );
        for f in [
            NS_DISCO_INFO,
            NS_DISCO_ITEMS,
            NS_MUC,
            NS_MUC_UNIQUE,
            // Nicks are registered with each room (its disco lists jabber:iq:register), not
            // with the service, so the service does not advertise it.
            NS_RSM,
        ] {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        q
    }

    /// Public rooms: the live ones and the stored ones (§6.3).
    /// Public rooms, live and stored (§6.3), a page at a time when the client asks with
    /// XEP-0059 (and at most `MAX_ITEMS_PAGE` when it does not).
    async fn disco_items(&self, rsm: Option<&Element>) -> Result<Element, StanzaError> {
        let mut rooms: std::collections::BTreeMap<String, String> = self
            .rooms
            .lock()
            .iter()
            .filter_map(|(jid, h)| {
                let s = h.summary.lock();
                s.public.then(|| {
                    let name = if s.name.is_empty() {
                        jid.node().map(|n| n.to_string()).unwrap_or_default()
                    } else {
                        s.name.clone()
                    };
                    (jid.to_string(), format!("{name} ({})", s.occupants))
                })
            })
            .collect();
        let stored = self
            .storage
            .rooms
            .list_rooms(self.domain.as_str())
            .await
            .map_err(|_| stanza_error(StanzaErrorCondition::InternalServerError))?;
        for (node, doc) in stored {
            let Ok(st) = serde_json::from_str::<Stored>(&doc) else {
                continue;
            };
            let jid = format!("{node}@{}", self.domain);
            if st.config.public && !rooms.contains_key(&jid) {
                let name = if st.config.name.is_empty() {
                    node.clone()
                } else {
                    st.config.name.clone()
                };
                rooms.insert(jid, format!("{name} (0)"));
            }
        }
        let (page, set) = rsm_page(rooms.into_iter().collect(), rsm)?;
        let mut q = Element::new("query", NS_DISCO_ITEMS);
        for (jid, name) in page {
            q.push_child(
                Element::new("item", NS_DISCO_ITEMS)
                    .with_attr("jid", jid)
                    .with_attr("name", name),
            );
        }
        if let Some(set) = set {
            q.push_child(set);
        }
        Ok(q)
    }
}

const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// A listed room: its JID and the name shown.
pub type Listed = (String, String);
/// A page of rooms, and the XEP-0059 `<set/>` describing it.
pub type Page = (Vec<Listed>, Option<Element>);
/// Rooms listed in one answer when the client does not page (XEP-0059 §2.6 lets the
/// service limit the set and say so).
const MAX_ITEMS_PAGE: usize = 1000;

/// XEP-0059 over `items` (sorted by key): `max`, `after`, `before` (empty: the last page)
/// and `index`. Returns the page and the `<set/>` to answer with (none when the whole list
/// fits and the client did not ask).
pub fn rsm_page(items: Vec<Listed>, rsm: Option<&Element>) -> Result<Page, StanzaError> {
    let count = items.len();
    let text = |name: &str| {
        rsm.and_then(|r| r.get_child(name, NS_RSM))
            .map(Element::text)
    };
    let max = match text("max") {
        Some(m) => m
            .trim()
            .parse::<usize>()
            .map_err(|_| StanzaError::bad_request("<max/> is not a number"))?
            .min(MAX_ITEMS_PAGE),
        None => MAX_ITEMS_PAGE,
    };
    if rsm.is_none() && count <= max {
        return Ok((items, None));
    }
    let position = |key: &str| items.iter().position(|(k, _)| k.as_str() == key);
    let (start, end) = if let Some(after) = text("after") {
        // §2.5: an unknown id is item-not-found.
        let at = position(after.trim())
            .ok_or_else(|| stanza_error(StanzaErrorCondition::ItemNotFound))?;
        (at + 1, (at + 1 + max).min(count))
    } else if let Some(before) = text("before") {
        let end = if before.trim().is_empty() {
            count
        } else {
            position(before.trim())
                .ok_or_else(|| stanza_error(StanzaErrorCondition::ItemNotFound))?
        };
        (end.saturating_sub(max), end)
    } else if let Some(index) = text("index") {
        let i = index
            .trim()
            .parse::<usize>()
            .map_err(|_| StanzaError::bad_request("<index/> is not a number"))?
            .min(count);
        (i, (i + max).min(count))
    } else {
        (0, max.min(count))
    };
    let page: Vec<Listed> = items[start..end].to_vec();
    let mut set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        set.push_child(
            Element::new("first", NS_RSM)
                .with_attr("index", start.to_string())
                .with_text(first.0.clone()),
        );
        set.push_child(Element::new("last", NS_RSM).with_text(last.0.clone()));
    }
    set.push_child(Element::new("count", NS_RSM).with_text(count.to_string()));
    Ok((page, Some(set)))
}

fn summary_of(room: &Room) -> Summary {
    Summary {
        name: room.config.name.clone(),
        public: room.config.public && !room.is_locked(),
        occupants: room.occupant_count(),
    }
}

pub(crate) async fn send_one(service: &ServiceHandle, to: Option<Jid>, mut el: Element) {
    let Some(to) = to else {
        return;
    };
    el.set_attr("to", to.as_str());
    if let Err(e) = service.send(el).await {
        tracing::debug!(error = %e, "a room's stanza was not sent");
    }
}

async fn send_error(service: &ServiceHandle, stanza: &Stanza, e: StanzaError) {
    if let Some(mut reply) = stanza.error_reply(&e) {
        if stanza.kind() == StanzaKind::Presence {
            // As the room does (XEP-0045 §7.2): a refused entry carries the MUC `<x/>`.
            reply.push_child(Element::new("x", NS_MUC));
        }
        send_one(service, stanza.from().cloned(), reply).await;
    }
}

/// Sends what a room produced: a broadcast is parsed once and readdressed to each
/// recipient, so its element is shared and serialised once.
pub(crate) async fn send_all(service: &ServiceHandle, out: Vec<Out>) {
    for o in out {
        match o {
            Out::One(to, el) => send_one(service, Some(to), el).await,
            Out::Shared(stanza) => {
                if let Err(e) = service.send_stanza(stanza).await {
                    tracing::debug!(error = %e, "a room's stanza was not sent");
                }
            }
            Out::Many(mut el, recipients) => {
                let Some(first) = recipients.first() else {
                    continue;
                };
                el.set_attr("to", first.as_str());
                let Ok(stanza) = Stanza::parse(el) else {
                    continue;
                };
                // The recipients are moved into their copies, not cloned.
                for r in recipients.into_iter().skip(1) {
                    let _ = service.send_stanza(stanza.readdressed(Jid::from(r))).await;
                }
                let _ = service.send_stanza(stanza).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("r{i:02}@c"), format!("R{i}")))
            .collect()
    }

    fn rsm(inner: &str) -> Element {
        rookery_xml::parse_element(&format!("<set xmlns='{NS_RSM}'>{inner}</set>")).expect("xml")
    }

    fn keys(page: &[(String, String)]) -> Vec<&str> {
        page.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn room_lists_page_forward_backward_and_by_index() {
        let (page, set) = rsm_page(items(5), Some(&rsm("<max>2</max>"))).expect("page");
        assert_eq!(keys(&page), ["r00@c", "r01@c"]);
        let set = set.expect("set");
        assert_eq!(
            set.get_child("count", NS_RSM).map(Element::text).as_deref(),
            Some("5")
        );
        assert_eq!(
            set.get_child("last", NS_RSM).map(Element::text).as_deref(),
            Some("r01@c")
        );
        let (page, _) =
            rsm_page(items(5), Some(&rsm("<max>2</max><after>r01@c</after>"))).expect("page");
        assert_eq!(keys(&page), ["r02@c", "r03@c"]);
        let (page, set) = rsm_page(items(5), Some(&rsm("<max>2</max><before/>"))).expect("page");
        assert_eq!(keys(&page), ["r03@c", "r04@c"]);
        assert_eq!(
            set.and_then(|s| s
                .get_child("first", NS_RSM)
                .and_then(|f| f.attr("index").map(str::to_owned)))
                .as_deref(),
            Some("3")
        );
        let (page, _) =
            rsm_page(items(5), Some(&rsm("<max>10</max><index>4</index>"))).expect("page");
        assert_eq!(keys(&page), ["r04@c"]);
        // No paging asked and the list fits: everything, no <set/>.
        let (page, set) = rsm_page(items(5), None).expect("page");
        assert_eq!(page.len(), 5);
        assert!(set.is_none());
        // Count only (max 0).
        let (page, set) = rsm_page(items(5), Some(&rsm("<max>0</max>"))).expect("page");
        assert!(page.is_empty());
        assert_eq!(
            set.and_then(|s| s.get_child("count", NS_RSM).map(Element::text))
                .as_deref(),
            Some("5")
        );
        // Unknown id, bad number.
        assert!(rsm_page(items(5), Some(&rsm("<after>nope</after>"))).is_err());
        assert!(rsm_page(items(5), Some(&rsm("<max>x</max>"))).is_err());
        // A long list without paging is cut at MAX_ITEMS_PAGE, with a <set/> saying so.
        let (page, set) = rsm_page(items(MAX_ITEMS_PAGE + 5), None).expect("page");
        assert_eq!(page.len(), MAX_ITEMS_PAGE);
        assert!(set.is_some());
    }
}

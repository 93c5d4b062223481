//! A room's configuration (XEP-0045 §10.2) and its `muc#roomconfig` form (§15.5.3).

use super::room::Role;
use super::MucLimits;
use crate::form::{FormBuilder, Submitted};
use rookery_stanza::BareJid;
use serde::{Deserialize, Serialize};

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    /// Semi-anonymous: moderators only (the default of ejabberd and Prosody).
    #[default]
    Moderators,
    /// Non-anonymous: every occupant.
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    #[default]
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    pub fn permits(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => role >= Role::Visitor,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub lang: String,
    /// Kept when the last occupant leaves, and across restarts.
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    /// Only participants (not visitors) may speak; newcomers without affiliation are visitors.
    pub moderated: bool,
    pub password: Option<String>,
    pub whois: Whois,
    pub max_users: usize,
    /// Participants may change the subject (moderators always may).
    pub change_subject: bool,
    /// Members may invite others into a members-only room.
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    /// Messages are kept in the room's archive (XEP-0313), which those who may enter can
    /// query.
    pub archive: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            lang: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois: Whois::Moderators,
            max_users: 1000,
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            archive: true,
        }
    }
}

impl RoomConfig {
    /// The name shown in disco: the configured name, else the room's local part.
    pub fn display_name(&self, jid: &BareJid) -> String {
        if self.name.is_empty() {
            jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            self.name.clone()
        }
    }

    /// The configuration form with the current values (§10.2).
    pub fn form(&self, limits: &MucLimits) -> rookery_xml::Element {
        let max = self.max_users.to_string();
        let cap = limits.max_occupants.to_string();
        FormBuilder::new("form", "http://jabber.org/protocol/muc#roomconfig")
            .title("Room configuration")
            .field(
                "muc#roomconfig_roomname",
                Some("text-single"),
                Some("Name"),
                &[&self.name],
            )
            .field(
                "muc#roomconfig_roomdesc",
                Some("text-single"),
                Some("Description"),
                &[&self.description],
            )
            .field(
                "muc#roomconfig_lang",
                Some("text-single"),
                Some("Language"),
                &[&self.lang],
            )
            .boolean(
                "muc#roomconfig_persistentroom",
                "Keep the room when it is empty",
                self.persistent,
            )
            .boolean(
                "muc#roomconfig_publicroom",
                "List the room publicly",
                self.public,
            )
            .boolean(
                "muc#roomconfig_membersonly",
                "Only members may enter",
                self.members_only,
            )
            .boolean(
                "muc#roomconfig_moderatedroom",
                "Only participants may speak",
                self.moderated,
            )
            .boolean(
                "muc#roomconfig_passwordprotectedroom",
                "A password is required to enter",
                self.password.is_some(),
            )
            .field(
                "muc#roomconfig_roomsecret",
                Some("text-private"),
                Some("Password"),
                &[self.password.as_deref().unwrap_or("")],
            )
            .list(
                "muc#roomconfig_whois",
                "Who may see real addresses",
                match self.whois {
                    Whois::Moderators => "moderators",
                    Whois::Anyone => "anyone",
                },
                &[("moderators", "Moderators only"), ("anyone", "Anyone")],
            )
            .list(
                "muc#roomconfig_maxusers",
                &format!("Most occupants (up to {cap})"),
                &max,
                &[
                    ("10", "10"),
                    ("20", "20"),
                    ("50", "50"),
                    ("100", "100"),
                    ("1000", "1000"),
                ],
            )
            .boolean(
                "muc#roomconfig_changesubject",
                "Participants may change the subject",
                self.change_subject,
            )
            .boolean(
                "muc#roomconfig_allowinvites",
                "Members may invite others",
                self.allow_invites,
            )
            .list(
                "muc#roomconfig_allowpm",
                "Who may send private messages",
                self.allow_pm.as_str(),
                &[
                    ("anyone", "Anyone"),
                    ("participants", "Participants"),
                    ("moderators", "Moderators"),
                    ("none", "Nobody"),
                ],
            )
            .boolean(
                "muc#roomconfig_enablearchiving",
                "Keep messages in the room's archive",
                self.archive,
            )
            .field(
                "muc#roomconfig_roomowners",
                Some("jid-multi"),
                Some("Owners"),
                &[],
            )
            .field(
                "muc#roomconfig_roomadmins",
                Some("jid-multi"),
                Some("Administrators"),
                &[],
            )
            .build()
    }

    /// Applies a submitted form: fields not in the form keep their value (an empty submit
    /// accepts the defaults, §10.1.2 instant rooms). A bad value is refused by name.
    pub fn apply(&mut self, form: &Submitted<'_>, limits: &MucLimits) -> Result<(), String> {
        let text = |var: &str, max: usize| -> Result<Option<String>, String> {
            match form.value(var) {
                Some(v) if v.len() > max => Err(format!("{var}: longer than {max} bytes")),
                Some(v) if v.chars().any(|c| c.is_control() && c != '\n') => {
                    Err(format!("{var}: control characters"))
                }
                other => Ok(other),
            }
        };
        if let Some(v) = text("muc#roomconfig_roomname", limits.max_name_bytes)? {
            self.name = v;
        }
        if let Some(v) = text("muc#roomconfig_roomdesc", limits.max_subject_bytes)? {
            self.description = v;
        }
        if let Some(v) = text("muc#roomconfig_lang", 35)? {
            self.lang = v;
        }
        let flag = |var: &str, slot: &mut bool| -> Result<(), String> {
            if let Some(v) = form.boolean(var)? {
                *slot = v;
            }
            Ok(())
        };
        flag("muc#roomconfig_persistentroom", &mut self.persistent)?;
        flag("muc#roomconfig_publicroom", &mut self.public)?;
        flag("muc#roomconfig_membersonly", &mut self.members_only)?;
        flag("muc#roomconfig_moderatedroom", &mut self.moderated)?;
        flag("muc#roomconfig_changesubject", &mut self.change_subject)?;
        flag("muc#roomconfig_allowinvites", &mut self.allow_invites)?;
        flag("muc#roomconfig_enablearchiving", &mut self.archive)?;
        let protected = form.boolean("muc#roomconfig_passwordprotectedroom")?;
        let secret = text("muc#roomconfig_roomsecret", 256)?;
        match (protected, secret) {
            (Some(false), _) => self.password = None,
            (_, Some(s)) if !s.is_empty() => self.password = Some(s),
            (Some(true), _) if self.password.is_none() => {
                return Err(
                    "muc#roomconfig_roomsecret: a password-protected room needs a password".into(),
                )
            }
            (None, Some(_)) => self.password = None,
            _ => {}
        }
        if let Some(v) = form.value("muc#roomconfig_whois") {
            self.whois = match v.as_str() {
                "moderators" => Whois::Moderators,
                "anyone" => Whois::Anyone,
                other => return Err(format!("muc#roomconfig_whois: '{other}'")),
            };
        }
        if let Some(v) = form.value("muc#roomconfig_maxusers") {
            let n = if v.is_empty() || v == "none" {
                limits.max_occupants
            } else {
                v.parse::<usize>()
                    .map_err(|_| format!("muc#roomconfig_maxusers: '{v}' is not a number"))?
            };
            if n == 0 || n > limits.max_occupants {
                return Err(format!(
                    "muc#roomconfig_maxusers: between 1 and {}",
                    limits.max_occupants
                ));
            }
            self.max_users = n;
        }
        if let Some(v) = form.value("muc#roomconfig_allowpm") {
            self.allow_pm = match v.as_str() {
                "anyone" | "1" | "true" => AllowPm::Anyone,
                "participants" => AllowPm::Participants,
                "moderators" => AllowPm::Moderators,
                "none" | "0" | "false" => AllowPm::None,
                other => return Err(format!("muc#roomconfig_allowpm: '{other}'")),
            };
        }
        Ok(())
    }
}

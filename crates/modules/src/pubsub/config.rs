//! A node's configuration (XEP-0060 §16.4.4, `pubsub#node_config`): its stored form, the
//! configuration form owners read and submit (§8.2), and publish-options preconditions
//! (§7.1.5, the semantics XEP-0223 relies on).

use crate::form::{FormBuilder, Submitted};
use serde::{Deserialize, Serialize};

pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const NS_META_DATA: &str = "http://jabber.org/protocol/pubsub#meta-data";

/// Who may subscribe and retrieve items (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
    Authorize,
}

impl AccessModel {
    pub const ALL: [AccessModel; 5] = [
        AccessModel::Authorize,
        AccessModel::Open,
        AccessModel::Presence,
        AccessModel::Roster,
        AccessModel::Whitelist,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
            AccessModel::Authorize => "authorize",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Who may publish (§16.4.4 `pubsub#publish_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishModel {
    Publishers,
    Subscribers,
    Open,
}

impl PublishModel {
    pub const ALL: [PublishModel; 3] = [
        PublishModel::Publishers,
        PublishModel::Subscribers,
        PublishModel::Open,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PublishModel::Publishers => "publishers",
            PublishModel::Subscribers => "subscribers",
            PublishModel::Open => "open",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// When the last published item goes to a new subscriber (§16.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub const ALL: [SendLast; 3] = [SendLast::Never, SendLast::OnSub, SendLast::OnSubAndPresence];
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// `pubsub#max_items`: a number, or `max` (the most the service allows, XEP-0060 §16.4.4
/// since 1.15.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxItems {
    Count(usize),
    Max,
}

impl MaxItems {
    /// The number of items kept, given the service's ceiling.
    pub fn resolve(self, ceiling: usize) -> usize {
        match self {
            MaxItems::Count(n) => n.min(ceiling),
            MaxItems::Max => ceiling,
        }
    }
    fn render(self) -> String {
        match self {
            MaxItems::Count(n) => n.to_string(),
            MaxItems::Max => "max".to_owned(),
        }
    }
    fn parse(s: &str, ceiling: usize) -> Result<Self, String> {
        if s == "max" {
            return Ok(MaxItems::Max);
        }
        match s.trim().parse::<usize>() {
            Ok(n) if n >= 1 && n <= ceiling => Ok(MaxItems::Count(n)),
            Ok(n) if n >= 1 => Err(format!(
                "pubsub#max_items: {n} is more than this service keeps ({ceiling}); use 'max'"
            )),
            _ => Err(format!(
                "pubsub#max_items: '{s}' is not a positive number or 'max'"
            )),
        }
    }
}

/// A node's configuration, as stored (JSON) and as the forms show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub title: String,
    pub description: String,
    /// `pubsub#type`: the payload namespace (informational).
    pub payload_type: String,
    pub access_model: AccessModel,
    pub roster_groups_allowed: Vec<String>,
    pub publish_model: PublishModel,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub deliver_notifications: bool,
    pub deliver_payloads: bool,
    pub notify_config: bool,
    pub notify_delete: bool,
    pub notify_retract: bool,
    pub send_last_published_item: SendLast,
    pub presence_based_delivery: bool,
    /// `headline` unless the owner chose `normal` (§16.4.4 `pubsub#notification_type`).
    pub headline: bool,
    pub subscribe: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::pep()
    }
}

impl NodeConfig {
    /// What a PEP node gets unless its owner says otherwise (XEP-0163 §4.3: presence access,
    /// the last item on presence; one item, as clients of avatars, nicks and devices expect).
    pub fn pep() -> Self {
        NodeConfig {
            title: String::new(),
            description: String::new(),
            payload_type: String::new(),
            access_model: AccessModel::Presence,
            roster_groups_allowed: Vec::new(),
            publish_model: PublishModel::Publishers,
            max_items: MaxItems::Count(1),
            persist_items: true,
            deliver_notifications: true,
            deliver_payloads: true,
            notify_config: false,
            notify_delete: true,
            notify_retract: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            presence_based_delivery: false,
            headline: true,
            subscribe: true,
        }
    }

    /// A node of a PubSub service: open access, the last item on subscription.
    pub fn service(max_items: usize) -> Self {
        NodeConfig {
            access_model: AccessModel::Open,
            max_items: MaxItems::Count(max_items),
            send_last_published_item: SendLast::OnSub,
            ..NodeConfig::pep()
        }
    }

    /// The stored document.
    pub fn to_doc(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored document; `None` when it is not one this version wrote.
    pub fn from_doc(doc: &str) -> Option<Self> {
        serde_json::from_str(doc).ok()
    }

    /// The configuration form (§8.2.1) or its result form (meta-data, notifications).
    pub fn form(&self, kind: &str, form_type: &str, limits: &Limits) -> rookery_xml::Element {
        let bool_field = |b: FormBuilder, var: &str, label: &str, v: bool| b.boolean(var, label, v);
        let mut b = FormBuilder::new(kind, form_type);
        b = b.field(
            "pubsub#title",
            Some("text-single"),
            Some("A friendly name for the node"),
            &[&self.title],
        );
        b = b.field(
            "pubsub#description",
            Some("text-single"),
            Some("A description of the node"),
            &[&self.description],
        );
        b = b.field(
            "pubsub#type",
            Some("text-single"),
            Some("The type of node data, usually specified by the namespace of the payload"),
            &[&self.payload_type],
        );
        b = b.list(
            "pubsub#access_model",
            "Who may subscribe and retrieve items",
            self.access_model.as_str(),
            &AccessModel::ALL.map(|m| (m.as_str(), m.as_str())),
        );
        let groups: Vec<&str> = self
            .roster_groups_allowed
            .iter()
            .map(String::as_str)
            .collect();
        b = b.field(
            "pubsub#roster_groups_allowed",
            Some("list-multi"),
            Some("Roster groups allowed to subscribe"),
            &groups,
        );
        b = b.list(
            "pubsub#publish_model",
            "Who may publish items",
            self.publish_model.as_str(),
            &PublishModel::ALL.map(|m| (m.as_str(), m.as_str())),
        );
        let max = self.max_items.render();
        b = b.field(
            "pubsub#max_items",
            Some("text-single"),
            Some("Max # of items to persist ('max' for the most this service keeps)"),
            &[&max],
        );
        b = bool_field(
            b,
            "pubsub#persist_items",
            "Persist items to storage",
            self.persist_items,
        );
        b = bool_field(
            b,
            "pubsub#deliver_notifications",
            "Deliver event notifications",
            self.deliver_notifications,
        );
        b = bool_field(
            b,
            "pubsub#deliver_payloads",
            "Deliver payloads with event notifications",
            self.deliver_payloads,
        );
        b = bool_field(
            b,
            "pubsub#notify_config",
            "Notify subscribers when the node configuration changes",
            self.notify_config,
        );
        b = bool_field(
            b,
            "pubsub#notify_delete",
            "Notify subscribers when the node is deleted",
            self.notify_delete,
        );
        b = bool_field(
            b,
            "pubsub#notify_retract",
            "Notify subscribers when items are removed from the node",
            self.notify_retract,
        );
        b = b.list(
            "pubsub#send_last_published_item",
            "When to send the last published item",
            self.send_last_published_item.as_str(),
            &SendLast::ALL.map(|m| (m.as_str(), m.as_str())),
        );
        b = bool_field(
            b,
            "pubsub#presence_based_delivery",
            "Deliver notifications only to available users",
            self.presence_based_delivery,
        );
        b = b.list(
            "pubsub#notification_type",
            "Specify the delivery style for notifications",
            if self.headline { "headline" } else { "normal" },
            &[("normal", "normal"), ("headline", "headline")],
        );
        b = bool_field(b, "pubsub#subscribe", "Allow subscriptions", self.subscribe);
        let payload = limits.max_item_bytes.to_string();
        b = b.field(
            "pubsub#max_payload_size",
            Some("text-single"),
            Some("Max payload size in bytes"),
            &[&payload],
        );
        b = b.list(
            "pubsub#node_type",
            "Whether the node is a leaf (default) or a collection",
            "leaf",
            &[("leaf", "leaf")],
        );
        b.build()
    }

    /// Applies a submitted configuration form (§8.2.4): every field the form names, checked
    /// first, so a refused form changes nothing. `Err` says what was wrong (answered
    /// `not-acceptable`, §8.2.5.2, or `bad-request` for a malformed form).
    pub fn apply_form(&mut self, form: &Submitted<'_>, limits: &Limits) -> Result<(), ConfigError> {
        let mut next = self.clone();
        for var in form.vars() {
            let values = form.values(var).unwrap_or_default();
            let first = values.first().map(String::as_str).unwrap_or("");
            next.set(var, first, &values, limits)?;
        }
        *self = next;
        Ok(())
    }

    fn set(
        &mut self,
        var: &str,
        value: &str,
        values: &[String],
        limits: &Limits,
    ) -> Result<(), ConfigError> {
        let bad = |what: &str| ConfigError::NotAcceptable(format!("{var}: {what}"));
        let boolean = || match value {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            other => Err(bad(&format!("'{other}' is not a boolean"))),
        };
        let limited = |s: &str| {
            if s.len() > MAX_TEXT_FIELD {
                Err(bad("too long"))
            } else {
                Ok(s.to_owned())
            }
        };
        match var {
            "FORM_TYPE" => {}
            "pubsub#title" => self.title = limited(value)?,
            "pubsub#description" => self.description = limited(value)?,
            "pubsub#type" => self.payload_type = limited(value)?,
            "pubsub#access_model" => {
                self.access_model =
                    AccessModel::from_name(value).ok_or_else(|| bad("unknown access model"))?
            }
            "pubsub#roster_groups_allowed" => {
                if values.len() > MAX_GROUPS {
                    return Err(bad("too many groups"));
                }
                self.roster_groups_allowed = values
                    .iter()
                    .map(|g| limited(g))
                    .collect::<Result<_, _>>()?
            }
            "pubsub#publish_model" => {
                self.publish_model =
                    PublishModel::from_name(value).ok_or_else(|| bad("unknown publish model"))?
            }
            "pubsub#max_items" => {
                self.max_items =
                    MaxItems::parse(value, limits.max_items).map_err(ConfigError::NotAcceptable)?
            }
            "pubsub#persist_items" => self.persist_items = boolean()?,
            "pubsub#deliver_notifications" => self.deliver_notifications = boolean()?,
            "pubsub#deliver_payloads" => self.deliver_payloads = boolean()?,
            "pubsub#notify_config" => self.notify_config = boolean()?,
            "pubsub#notify_delete" => self.notify_delete = boolean()?,
            "pubsub#notify_retract" => self.notify_retract = boolean()?,
            "pubsub#presence_based_delivery" => self.presence_based_delivery = boolean()?,
            "pubsub#subscribe" => self.subscribe = boolean()?,
            "pubsub#send_last_published_item" => {
                self.send_last_published_item =
                    SendLast::from_name(value).ok_or_else(|| bad("unknown value"))?
            }
            "pubsub#notification_type" => {
                self.headline = match value {
                    "headline" => true,
                    "normal" => false,
                    _ => return Err(bad("must be 'normal' or 'headline'")),
                }
            }
            // Read-only here: accepted when it says what the service does.
            "pubsub#max_payload_size" => {
                if value.parse::<usize>().ok() != Some(limits.max_item_bytes) && !value.is_empty() {
                    return Err(bad("fixed by the service"));
                }
            }
            "pubsub#node_type" => {
                if value != "leaf" && !value.is_empty() {
                    return Err(ConfigError::Unsupported("collections"));
                }
            }
            _ => return Err(ConfigError::UnknownField(var.to_owned())),
        }
        Ok(())
    }

    /// The value of `var` as the configuration form would show it, for comparing a
    /// publish-option with; `None` for a field this service does not know.
    fn value_of(&self, var: &str, limits: &Limits) -> Option<Vec<String>> {
        let b = |v: bool| vec![if v { "1" } else { "0" }.to_owned()];
        Some(match var {
            "pubsub#title" => vec![self.title.clone()],
            "pubsub#description" => vec![self.description.clone()],
            "pubsub#type" => vec![self.payload_type.clone()],
            "pubsub#access_model" => vec![self.access_model.as_str().to_owned()],
            "pubsub#roster_groups_allowed" => self.roster_groups_allowed.clone(),
            "pubsub#publish_model" => vec![self.publish_model.as_str().to_owned()],
            "pubsub#max_items" => vec![self.max_items.render()],
            "pubsub#persist_items" => b(self.persist_items),
            "pubsub#deliver_notifications" => b(self.deliver_notifications),
            "pubsub#deliver_payloads" => b(self.deliver_payloads),
            "pubsub#notify_config" => b(self.notify_config),
            "pubsub#notify_delete" => b(self.notify_delete),
            "pubsub#notify_retract" => b(self.notify_retract),
            "pubsub#presence_based_delivery" => b(self.presence_based_delivery),
            "pubsub#subscribe" => b(self.subscribe),
            "pubsub#send_last_published_item" => {
                vec![self.send_last_published_item.as_str().to_owned()]
            }
            "pubsub#notification_type" => {
                vec![if self.headline { "headline" } else { "normal" }.to_owned()]
            }
            "pubsub#max_payload_size" => vec![limits.max_item_bytes.to_string()],
            "pubsub#node_type" => vec!["leaf".to_owned()],
            _ => return None,
        })
    }

    /// Whether the node meets every publish-option precondition (§7.1.5). Each field is
    /// compared as the configuration form would show it: booleans by meaning (`true` and `1`
    /// are the same), `max_items` by the number of items kept (`max` equals the service's
    /// ceiling), lists as sets.
    pub fn meets(&self, options: &Submitted<'_>, limits: &Limits) -> Result<(), ConfigError> {
        for var in options.vars() {
            if var == "FORM_TYPE" {
                continue;
            }
            let Some(current) = self.value_of(var, limits) else {
                return Err(ConfigError::UnknownField(var.to_owned()));
            };
            let wanted = options.values(var).unwrap_or_default();
            // What the node would be with this option applied: equal means met.
            let mut probe = self.clone();
            probe
                .set(
                    var,
                    wanted.first().map(String::as_str).unwrap_or(""),
                    &wanted,
                    limits,
                )
                .map_err(|_| ConfigError::PreconditionNotMet(var.to_owned()))?;
            let same = match var {
                "pubsub#max_items" => {
                    probe.max_items.resolve(limits.max_items)
                        == self.max_items.resolve(limits.max_items)
                }
                "pubsub#roster_groups_allowed" => {
                    let mut a = probe.roster_groups_allowed.clone();
                    let mut c = current.clone();
                    a.sort();
                    c.sort();
                    a == c
                }
                _ => probe.value_of(var, limits) == Some(current),
            };
            if !same {
                return Err(ConfigError::PreconditionNotMet(var.to_owned()));
            }
        }
        Ok(())
    }

    /// A new node's configuration from publish-options (§7.1.5 rule 3: the default in all
    /// respects but the preconditions).
    pub fn with_options(
        mut self,
        options: &Submitted<'_>,
        limits: &Limits,
    ) -> Result<Self, ConfigError> {
        self.apply_form(options, limits)?;
        Ok(self)
    }
}

/// Longest text field (title, description, group name) a node keeps.
const MAX_TEXT_FIELD: usize = 1024;
/// Roster groups one node may allow.
const MAX_GROUPS: usize = 64;

/// What the service allows, as the forms need it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The ceiling of `pubsub#max_items` (what `max` means).
    pub max_items: usize,
    /// Bytes of one item's payload.
    pub max_item_bytes: usize,
}

/// Why a form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    NotAcceptable(String),
    #[error("unknown field {0}")]
    UnknownField(String),
    #[error("the node does not meet the precondition {0}")]
    PreconditionNotMet(String),
    #[error("{0} are not supported")]
    Unsupported(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::Element;

    fn limits() -> Limits {
        Limits {
            max_items: 256,
            max_item_bytes: 1000,
        }
    }

    fn options(fields: &[(&str, &[&str])]) -> Element {
        let mut b = FormBuilder::new("submit", NS_PUBLISH_OPTIONS);
        for (var, values) in fields {
            b = b.field(var, None, None, values);
        }
        Element::new("publish-options", "http://jabber.org/protocol/pubsub").with_child(b.build())
    }

    fn check(config: &NodeConfig, fields: &[(&str, &[&str])]) -> Result<(), ConfigError> {
        let el = options(fields);
        let form = Submitted::find(&el).expect("form");
        config.meets(&form, &limits())
    }

    #[test]
    fn preconditions_compare_by_meaning() {
        let c = NodeConfig::pep();
        assert_eq!(check(&c, &[("pubsub#access_model", &["presence"])]), Ok(()));
        assert_eq!(
            check(&c, &[("pubsub#access_model", &["open"])]),
            Err(ConfigError::PreconditionNotMet(
                "pubsub#access_model".into()
            ))
        );
        // Booleans by meaning.
        assert_eq!(check(&c, &[("pubsub#persist_items", &["true"])]), Ok(()));
        assert_eq!(check(&c, &[("pubsub#persist_items", &["1"])]), Ok(()));
        assert!(check(&c, &[("pubsub#persist_items", &["false"])]).is_err());
        // `max` equals the ceiling, a number equals itself.
        assert_eq!(check(&c, &[("pubsub#max_items", &["1"])]), Ok(()));
        assert!(check(&c, &[("pubsub#max_items", &["max"])]).is_err());
        let mut big = NodeConfig::pep();
        big.max_items = MaxItems::Count(256);
        assert_eq!(check(&big, &[("pubsub#max_items", &["max"])]), Ok(()));
        // A value the node could never have is not met either.
        assert!(matches!(
            check(&c, &[("pubsub#access_model", &["bogus"])]),
            Err(ConfigError::PreconditionNotMet(_))
        ));
        // Unknown fields are refused (§7.1.5: "MUST reject ... unknown fields").
        assert_eq!(
            check(&c, &[("pubsub#frobnicate", &["1"])]),
            Err(ConfigError::UnknownField("pubsub#frobnicate".into()))
        );
    }

    #[test]
    fn a_new_node_takes_its_options() {
        let el = options(&[
            ("pubsub#access_model", &["open"]),
            ("pubsub#max_items", &["max"]),
        ]);
        let form = Submitted::find(&el).expect("form");
        let c = NodeConfig::pep()
            .with_options(&form, &limits())
            .expect("valid");
        assert_eq!(c.access_model, AccessModel::Open);
        assert_eq!(c.max_items, MaxItems::Max);
        assert_eq!(c.max_items.resolve(256), 256);
    }

    #[test]
    fn a_refused_form_changes_nothing() {
        let mut b = FormBuilder::new("submit", NS_NODE_CONFIG);
        b = b.field("pubsub#access_model", None, None, &["open"]);
        b = b.field("pubsub#max_items", None, None, &["0"]);
        let el = Element::new("configure", "x").with_child(b.build());
        let form = Submitted::find(&el).expect("form");
        let mut c = NodeConfig::pep();
        assert!(matches!(
            c.apply_form(&form, &limits()),
            Err(ConfigError::NotAcceptable(_))
        ));
        assert_eq!(c, NodeConfig::pep());
    }

    #[test]
    fn the_form_round_trips() {
        let mut c = NodeConfig::service(10);
        c.title = "Princely musings".into();
        c.access_model = AccessModel::Roster;
        c.roster_groups_allowed = vec!["friends".into(), "family".into()];
        c.headline = false;
        let mut form = c.form("form", NS_NODE_CONFIG, &limits());
        form.set_attr("type", "submit");
        let el = Element::new("configure", "x").with_child(form);
        let submitted = Submitted::find(&el).expect("form");
        let mut back = NodeConfig::pep();
        back.apply_form(&submitted, &limits()).expect("own form");
        assert_eq!(back, c);
        assert_eq!(NodeConfig::from_doc(&c.to_doc()), Some(c));
    }
}

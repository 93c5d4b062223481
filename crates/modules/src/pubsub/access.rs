//! Who may do what on a node: affiliations (XEP-0060 §4.1) and access models (§4.5), as pure
//! decisions over what the caller looked up (the requester's affiliation, the owner's roster
//! item for the requester, whether it is subscribed).

use super::config::{AccessModel, NodeConfig, PublishModel};
use super::errors;
use rookery_stanza::{StanzaError, StanzaErrorCondition};
use rookery_storage::{RosterItem, Subscription};

/// An entity's affiliation with a node (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    PublishOnly,
    Publisher,
    Owner,
}

impl Affiliation {
    pub const ALL: [Affiliation; 6] = [
        Affiliation::Owner,
        Affiliation::Publisher,
        Affiliation::PublishOnly,
        Affiliation::Member,
        Affiliation::None,
        Affiliation::Outcast,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Publisher => "publisher",
            Affiliation::PublishOnly => "publish-only",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
    /// Owners, publishers and members see items whatever the access model (§4.1 table 4).
    fn sees_items(self) -> bool {
        matches!(
            self,
            Affiliation::Owner | Affiliation::Publisher | Affiliation::Member
        )
    }
}

/// What the service knows of the requester for one decision.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub affiliation: Affiliation,
    /// The node owner's roster item for the requester's bare JID, if any.
    pub roster: Option<&'a RosterItem>,
    /// The requester holds an approved subscription to the node.
    pub subscribed: bool,
}

/// Why access was refused; each maps to the error §6.1.3 and §6.5.9 prescribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Outcast,
    PresenceSubscriptionRequired,
    NotInRosterGroup,
    ClosedNode,
    NotSubscribed,
    /// Publish-only affiliates publish, they never read (§4.1).
    PublishOnly,
}

impl Denied {
    pub fn error(self) -> StanzaError {
        match self {
            Denied::Outcast | Denied::PublishOnly => {
                StanzaError::new(StanzaErrorCondition::Forbidden)
            }
            Denied::PresenceSubscriptionRequired => errors::with(
                StanzaErrorCondition::NotAuthorized,
                "presence-subscription-required",
            ),
            Denied::NotInRosterGroup => {
                errors::with(StanzaErrorCondition::NotAuthorized, "not-in-roster-group")
            }
            Denied::ClosedNode => errors::with(StanzaErrorCondition::NotAllowed, "closed-node"),
            Denied::NotSubscribed => {
                errors::with(StanzaErrorCondition::NotAuthorized, "not-subscribed")
            }
        }
    }
}

fn has_presence_subscription(item: Option<&RosterItem>) -> bool {
    item.is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
}

/// Whether the access model lets the requester in, before subscriptions: the test for
/// retrieving items, for notifications and for subscribing to non-`authorize` nodes.
fn passes_model(config: &NodeConfig, r: &Requester<'_>) -> Result<(), Denied> {
    match r.affiliation {
        Affiliation::Outcast => return Err(Denied::Outcast),
        Affiliation::PublishOnly => return Err(Denied::PublishOnly),
        a if a.sees_items() => return Ok(()),
        _ => {}
    }
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => {
            if has_presence_subscription(r.roster) {
                Ok(())
            } else {
                Err(Denied::PresenceSubscriptionRequired)
            }
        }
        AccessModel::Roster => {
            let in_group = r.roster.is_some_and(|i| {
                i.groups
                    .iter()
                    .any(|g| config.roster_groups_allowed.contains(g))
            });
            if in_group {
                Ok(())
            } else {
                Err(Denied::NotInRosterGroup)
            }
        }
        AccessModel::Whitelist => Err(Denied::ClosedNode),
        AccessModel::Authorize => Err(Denied::NotSubscribed),
    }
}

/// May the requester retrieve items (§6.5) or receive notifications?
pub fn may_read(config: &NodeConfig, r: &Requester<'_>) -> Result<(), Denied> {
    match passes_model(config, r) {
        Err(Denied::NotSubscribed) if r.subscribed => Ok(()),
        other => other,
    }
}

/// What a subscription request becomes (§6.1): subscribed at once, or pending the owner's
/// approval on an `authorize` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    Subscribed,
    Pending,
}

pub fn may_subscribe(config: &NodeConfig, r: &Requester<'_>) -> Result<Subscribe, Denied> {
    match passes_model(config, r) {
        Ok(()) => Ok(Subscribe::Subscribed),
        Err(Denied::NotSubscribed) => Ok(Subscribe::Pending),
        Err(d) => Err(d),
    }
}

/// May the requester publish (§7.1.3.1, `pubsub#publish_model`)?
pub fn may_publish(config: &NodeConfig, r: &Requester<'_>) -> bool {
    match r.affiliation {
        Affiliation::Outcast => false,
        Affiliation::Owner | Affiliation::Publisher | Affiliation::PublishOnly => true,
        _ => match config.publish_model {
            PublishModel::Publishers => false,
            PublishModel::Subscribers => r.subscribed,
            PublishModel::Open => true,
        },
    }
}

/// May the requester retract an item published by `publisher` (§7.2.3.1: owners, and
/// publishers their own or — as Prosody and ejabberd allow — any)?
pub fn may_retract(r: &Requester<'_>) -> bool {
    matches!(
        r.affiliation,
        Affiliation::Owner | Affiliation::Publisher | Affiliation::PublishOnly
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sub: Subscription, groups: &[&str]) -> RosterItem {
        let mut i = RosterItem::new("bob@example.org");
        i.subscription = sub;
        i.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        i
    }

    fn who(aff: Affiliation, roster: Option<&RosterItem>, subscribed: bool) -> Requester<'_> {
        Requester {
            affiliation: aff,
            roster,
            subscribed,
        }
    }

    fn config(model: AccessModel) -> NodeConfig {
        NodeConfig {
            access_model: model,
            roster_groups_allowed: vec!["friends".into()],
            ..NodeConfig::pep()
        }
    }

    #[test]
    fn presence_access_follows_the_owners_roster() {
        let c = config(AccessModel::Presence);
        for (sub, ok) in [
            (Subscription::Both, true),
            (Subscription::From, true),
            (Subscription::To, false),
            (Subscription::None, false),
        ] {
            let i = item(sub, &[]);
            assert_eq!(
                may_read(&c, &who(Affiliation::None, Some(&i), false)).is_ok(),
                ok,
                "{sub}"
            );
        }
        assert_eq!(
            may_read(&c, &who(Affiliation::None, None, false)),
            Err(Denied::PresenceSubscriptionRequired)
        );
        // The owner always reads; an outcast never, even with a subscription.
        assert!(may_read(&c, &who(Affiliation::Owner, None, false)).is_ok());
        let both = item(Subscription::Both, &[]);
        assert_eq!(
            may_read(&c, &who(Affiliation::Outcast, Some(&both), true)),
            Err(Denied::Outcast)
        );
    }

    #[test]
    fn roster_access_needs_an_allowed_group() {
        let c = config(AccessModel::Roster);
        let friend = item(Subscription::None, &["friends"]);
        let colleague = item(Subscription::Both, &["work"]);
        assert!(may_read(&c, &who(Affiliation::None, Some(&friend), false)).is_ok());
        assert_eq!(
            may_read(&c, &who(Affiliation::None, Some(&colleague), false)),
            Err(Denied::NotInRosterGroup)
        );
    }

    #[test]
    fn whitelist_and_authorize() {
        let w = config(AccessModel::Whitelist);
        assert_eq!(
            may_read(&w, &who(Affiliation::None, None, true)),
            Err(Denied::ClosedNode)
        );
        assert!(may_read(&w, &who(Affiliation::Member, None, false)).is_ok());
        assert_eq!(
            may_subscribe(&w, &who(Affiliation::None, None, false)),
            Err(Denied::ClosedNode)
        );
        let a = config(AccessModel::Authorize);
        assert_eq!(
            may_subscribe(&a, &who(Affiliation::None, None, false)),
            Ok(Subscribe::Pending)
        );
        assert_eq!(
            may_read(&a, &who(Affiliation::None, None, false)),
            Err(Denied::NotSubscribed)
        );
        assert!(may_read(&a, &who(Affiliation::None, None, true)).is_ok());
        let o = config(AccessModel::Open);
        assert_eq!(
            may_subscribe(&o, &who(Affiliation::None, None, false)),
            Ok(Subscribe::Subscribed)
        );
        assert_eq!(
            may_read(&o, &who(Affiliation::PublishOnly, None, false)),
            Err(Denied::PublishOnly)
        );
    }

    #[test]
    fn publish_models() {
        let mut c = config(AccessModel::Open);
        assert!(!may_publish(&c, &who(Affiliation::None, None, true)));
        assert!(may_publish(&c, &who(Affiliation::PublishOnly, None, false)));
        c.publish_model = PublishModel::Subscribers;
        assert!(may_publish(&c, &who(Affiliation::None, None, true)));
        assert!(!may_publish(&c, &who(Affiliation::None, None, false)));
        c.publish_model = PublishModel::Open;
        assert!(may_publish(&c, &who(Affiliation::None, None, false)));
        assert!(!may_publish(&c, &who(Affiliation::Outcast, None, false)));
    }
}

//! The presence subscription state machine of RFC 6121 Appendix A, without I/O.
//!
//! A state is the subscription of one contact as recorded for one account: the roster item's
//! `subscription` and `ask` (pending out), plus whether a request from the contact is waiting
//! for the account's answer (pending in, stored apart from the roster as RFC 6121 §3.1.3
//! allows). Each function answers one row of the Appendix A tables: the new state, or `None`
//! for "no state change".

use rookery_storage::Subscription;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub subscription: Subscription,
    pub pending_out: bool,
    pub pending_in: bool,
}

/// The four subscription-related presence types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl Kind {
    pub fn of(ptype: &str) -> Option<Kind> {
        match ptype {
            "subscribe" => Some(Kind::Subscribe),
            "subscribed" => Some(Kind::Subscribed),
            "unsubscribe" => Some(Kind::Unsubscribe),
            "unsubscribed" => Some(Kind::Unsubscribed),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::Subscribed => "subscribed",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Unsubscribed => "unsubscribed",
        }
    }
}

impl State {
    pub const NONE: State = State::new(Subscription::None, false, false);

    pub const fn new(subscription: Subscription, pending_out: bool, pending_in: bool) -> State {
        State {
            subscription,
            pending_out,
            pending_in,
        }
    }

    /// The account receives the contact's presence (`to` or `both`).
    pub fn has_to(self) -> bool {
        matches!(self.subscription, Subscription::To | Subscription::Both)
    }
    /// The contact receives the account's presence (`from` or `both`).
    pub fn has_from(self) -> bool {
        matches!(self.subscription, Subscription::From | Subscription::Both)
    }

    fn with(self, to: bool, from: bool, pending_out: bool, pending_in: bool) -> State {
        let subscription = match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        };
        State::new(subscription, pending_out, pending_in)
    }

    /// Appendix A.2: the account (a local user) sends this to the contact.
    /// `Some(new)` when the state changes.
    pub fn outbound(self, kind: Kind) -> Option<State> {
        let (to, from, po, pi) = (
            self.has_to(),
            self.has_from(),
            self.pending_out,
            self.pending_in,
        );
        let next = match kind {
            // A.2.1: ask for the contact's presence, unless already subscribed or asking.
            Kind::Subscribe if !to && !po => self.with(to, from, true, pi),
            // A.2.2: cancel our subscription to the contact, or our pending request.
            Kind::Unsubscribe if to || po => self.with(false, from, false, pi),
            // A.2.3: approve the contact's pending request.
            Kind::Subscribed if pi => self.with(to, true, po, false),
            // A.2.4: refuse the pending request, or cancel the contact's subscription.
            Kind::Unsubscribed if from || pi => self.with(to, false, po, false),
            _ => return None,
        };
        Some(next)
    }

    /// Appendix A.3: the account receives this from the contact.
    /// `Some(new)` when the state changes (the stanza is then delivered to the account).
    pub fn inbound(self, kind: Kind) -> Option<State> {
        let (to, from, po, pi) = (
            self.has_to(),
            self.has_from(),
            self.pending_out,
            self.pending_in,
        );
        let next = match kind {
            // A.3.1: a request to see the account's presence, unless already granted or pending.
            Kind::Subscribe if !from && !pi => self.with(to, from, po, true),
            // A.3.2: the contact no longer wants the account's presence.
            Kind::Unsubscribe if from || pi => self.with(to, false, po, false),
            // A.3.3: the contact approved the account's request.
            Kind::Subscribed if po => self.with(true, from, false, pi),
            // A.3.4: the contact refused or revoked the account's subscription.
            Kind::Unsubscribed if to || po => self.with(false, from, false, pi),
            _ => return None,
        };
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription::{Both, From, None as N, To};

    /// The nine states of Appendix A, in the order of its tables.
    const STATES: [(&str, State); 9] = [
        ("None", State::new(N, false, false)),
        ("None + Pending Out", State::new(N, true, false)),
        ("None + Pending In", State::new(N, false, true)),
        ("None + Pending Out+In", State::new(N, true, true)),
        ("To", State::new(To, false, false)),
        ("To + Pending In", State::new(To, false, true)),
        ("From", State::new(From, false, false)),
        ("From + Pending Out", State::new(From, true, false)),
        ("Both", State::new(Both, false, false)),
    ];

    fn state(name: &str) -> State {
        STATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("unknown state {name}"))
    }

    /// One Appendix A table: for each state in order, the new state's name or "-" for no change.
    fn check(table: &str, f: impl Fn(State) -> Option<State>, expected: [&str; 9]) {
        for ((name, s), want) in STATES.iter().zip(expected) {
            let got = f(*s);
            let want = (want != "-").then(|| state(want));
            assert_eq!(got, want, "{table}: from {name}");
        }
    }

    #[test]
    fn a_2_1_outbound_subscribe() {
        check(
            "A.2.1",
            |s| s.outbound(Kind::Subscribe),
            [
                "None + Pending Out",
                "-",
                "None + Pending Out+In",
                "-",
                "-",
                "-",
                "From + Pending Out",
                "-",
                "-",
            ],
        );
    }

    #[test]
    fn a_2_2_outbound_unsubscribe() {
        check(
            "A.2.2",
            |s| s.outbound(Kind::Unsubscribe),
            [
                "-",
                "None",
                "-",
                "None + Pending In",
                "None",
                "None + Pending In",
                "-",
                "From",
                "From",
            ],
        );
    }

    #[test]
    fn a_2_3_outbound_subscribed() {
        check(
            "A.2.3",
            |s| s.outbound(Kind::Subscribed),
            [
                "-",
                "-",
                "From",
                "From + Pending Out",
                "-",
                "Both",
                "-",
                "-",
                "-",
            ],
        );
    }

    #[test]
    fn a_2_4_outbound_unsubscribed() {
        check(
            "A.2.4",
            |s| s.outbound(Kind::Unsubscribed),
            [
                "-",
                "-",
                "None",
                "None + Pending Out",
                "-",
                "To",
                "None",
                "None + Pending Out",
                "To",
            ],
        );
    }

    #[test]
    fn a_3_1_inbound_subscribe() {
        check(
            "A.3.1",
            |s| s.inbound(Kind::Subscribe),
            [
                "None + Pending In",
                "None + Pending Out+In",
                "-",
                "-",
                "To + Pending In",
                "-",
                "-",
                "-",
                "-",
            ],
        );
    }

    #[test]
    fn a_3_2_inbound_unsubscribe() {
        check(
            "A.3.2",
            |s| s.inbound(Kind::Unsubscribe),
            [
                "-",
                "-",
                "None",
                "None + Pending Out",
                "-",
                "To",
                "None",
                "None + Pending Out",
                "To",
            ],
        );
    }

    #[test]
    fn a_3_3_inbound_subscribed() {
        check(
            "A.3.3",
            |s| s.inbound(Kind::Subscribed),
            [
                "-",
                "To",
                "-",
                "To + Pending In",
                "-",
                "-",
                "-",
                "Both",
                "-",
            ],
        );
    }

    #[test]
    fn a_3_4_inbound_unsubscribed() {
        check(
            "A.3.4",
            |s| s.inbound(Kind::Unsubscribed),
            [
                "-",
                "None",
                "-",
                "None + Pending In",
                "None",
                "None + Pending In",
                "-",
                "From",
                "From",
            ],
        );
    }
}

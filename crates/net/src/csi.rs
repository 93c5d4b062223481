//! Client state indication (XEP-0352): while a client says it is inactive (a phone with its
//! screen off), stanzas that do not need its attention now are held back instead of waking
//! its radio, and written in one burst when something important arrives or the client
//! becomes active again.
//!
//! What is held: presence (only the latest per sender is kept — an older one would be
//! superseded anyway), messages without content a person reads (chat states, receipts,
//! markers; only the latest chat state per sender is kept). What flushes: a message with a
//! body or an encrypted payload, an IQ (someone waits for an answer), a subscription request,
//! an error. The order of what is written stays the order of arrival, minus what was
//! superseded.

// Stanzas arrive boxed from the session queue and leave boxed towards the parked-session
// queue; keeping the box avoids re-allocating each one.
#![allow(clippy::vec_box)]

use rookery_core::Outgoing;
use rookery_xml::Element;
use std::collections::HashMap;

pub const NS: &str = "urn:xmpp:csi:0";
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Encrypted payloads whose message has no (readable) body but is a real message.
const ENCRYPTED: &[&str] = &[
    "eu.siacs.conversations.axolotl", // OMEMO (legacy namespace used by deployed clients)
    "urn:xmpp:omemo:2",
    "urn:xmpp:openpgp:0",
    "jabber:x:encrypted",
];

/// Held entries beyond which everything is flushed anyway: holding is an optimisation and
/// must not become a second unbounded queue.
pub const MAX_HELD: usize = 1024;

/// What a stanza means to an inactive client.
#[derive(Debug, PartialEq, Eq)]
enum Urgency {
    /// Write now, with everything held before it.
    Flush,
    /// Hold; a later stanza with the same key replaces it.
    HoldLatest(Key),
    /// Hold, keeping every one.
    Hold,
}

#[derive(Debug, PartialEq, Eq, Hash, Clone)]
enum Key {
    Presence(String),
    ChatState(String),
}

fn urgency(stanza: &Element) -> Urgency {
    let from = || stanza.attr("from").unwrap_or_default().to_owned();
    match stanza.name() {
        "presence" => match stanza.attr("type") {
            None | Some("unavailable") => Urgency::HoldLatest(Key::Presence(from())),
            Some("error") => Urgency::Hold,
            // Subscription requests and answers: a person decides on them.
            Some(_) => Urgency::Flush,
        },
        "message" => {
            if stanza.attr("type") == Some("error") {
                return Urgency::Flush;
            }
            let has_body = stanza.children().any(|c| {
                c.name() == "body"
                    || c.name() == "subject"
                    || ENCRYPTED.contains(&c.ns())
                    // Carbons and archive results wrap the real message.
                    || (c.name() == "sent" || c.name() == "received" || c.name() == "result")
                        && contains_body(c)
            });
            if has_body {
                return Urgency::Flush;
            }
            let only_chat_state = stanza
                .children()
                .all(|c| c.ns() == NS_CHATSTATES || c.name() == "thread");
            if only_chat_state && stanza.children().next().is_some() {
                Urgency::HoldLatest(Key::ChatState(from()))
            } else {
                Urgency::Hold
            }
        }
        _ => Urgency::Flush,
    }
}

fn contains_body(el: &Element) -> bool {
    el.children()
        .any(|c| c.name() == "body" || ENCRYPTED.contains(&c.ns()) || contains_body(c))
}

/// The per-connection CSI state.
#[derive(Default)]
pub struct ClientState {
    inactive: bool,
    held: Vec<Option<Box<Outgoing>>>,
    latest: HashMap<Key, usize>,
    count: usize,
}

impl ClientState {
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    /// `<inactive/>`: start holding.
    pub fn set_inactive(&mut self) {
        self.inactive = true;
    }

    /// `<active/>`: stop holding; returns what was held, to write now.
    pub fn set_active(&mut self) -> Vec<Box<Outgoing>> {
        self.inactive = false;
        self.take_all()
    }

    /// Offers one stanza on its way to the client: returns what to write now (nothing while
    /// it is held; the held backlog followed by it when it is important).
    pub fn offer(&mut self, out: Box<Outgoing>) -> Vec<Box<Outgoing>> {
        if !self.inactive {
            return vec![out];
        }
        match urgency(&out.stanza) {
            Urgency::Flush => {
                let mut all = self.take_all();
                all.push(out);
                all
            }
            Urgency::HoldLatest(key) => {
                if let Some(old) = self.latest.get(&key).copied() {
                    if let Some(slot) = self.held.get_mut(old) {
                        if slot.take().is_some() {
                            self.count -= 1;
                        }
                    }
                }
                self.latest.insert(key, self.held.len());
                self.push(out)
            }
            Urgency::Hold => self.push(out),
        }
    }

    fn push(&mut self, out: Box<Outgoing>) -> Vec<Box<Outgoing>> {
        self.held.push(Some(out));
        self.count += 1;
        if self.count >= MAX_HELD {
            return self.take_all();
        }
        Vec::new()
    }

    /// Everything held, in order (the connection is ending or the client became active).
    pub fn take_all(&mut self) -> Vec<Box<Outgoing>> {
        self.latest.clear();
        self.count = 0;
        let held = std::mem::take(&mut self.held);
        held.into_iter().flatten().collect()
    }

    pub fn held(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::Element;

    fn out(el: Element) -> Box<Outgoing> {
        Box::new(Outgoing {
            stanza: el.into(),
            written: None,
        })
    }
    fn presence(from: &str, show: &str) -> Box<Outgoing> {
        out(Element::new("presence", "jabber:client")
            .with_attr("from", from)
            .with_child(Element::new("show", "jabber:client").with_text(show)))
    }
    fn chat_state(from: &str, state: &str) -> Box<Outgoing> {
        out(Element::new("message", "jabber:client")
            .with_attr("from", from)
            .with_attr("type", "chat")
            .with_child(Element::new(state, NS_CHATSTATES)))
    }
    fn body(from: &str, text: &str) -> Box<Outgoing> {
        out(Element::new("message", "jabber:client")
            .with_attr("from", from)
            .with_attr("type", "chat")
            .with_child(Element::new("body", "jabber:client").with_text(text)))
    }
    fn describe(v: &[Box<Outgoing>]) -> Vec<String> {
        v.iter()
            .map(|o| {
                let s = &o.stanza;
                let what = s
                    .children()
                    .next()
                    .map(|c| {
                        if c.name() == "body" || c.name() == "show" {
                            c.text().to_string()
                        } else {
                            c.name().to_owned()
                        }
                    })
                    .unwrap_or_default();
                format!(
                    "{}:{}:{}",
                    s.name(),
                    s.attr("from").unwrap_or_default(),
                    what
                )
            })
            .collect()
    }

    #[test]
    fn active_clients_get_everything_at_once() {
        let mut c = ClientState::default();
        assert_eq!(c.offer(presence("a@x/r", "away")).len(), 1);
        assert_eq!(c.offer(chat_state("a@x/r", "composing")).len(), 1);
    }

    #[test]
    fn inactive_holds_presence_latest_only_and_flushes_on_a_body() {
        let mut c = ClientState::default();
        c.set_inactive();
        assert!(c.offer(presence("a@x/r", "away")).is_empty());
        assert!(c.offer(presence("b@x/r", "dnd")).is_empty());
        assert!(c.offer(chat_state("a@x/r", "composing")).is_empty());
        assert!(c.offer(presence("a@x/r", "xa")).is_empty());
        assert!(c.offer(chat_state("a@x/r", "paused")).is_empty());
        assert_eq!(c.held(), 3, "superseded presence and chat state dropped");
        let flushed = c.offer(body("a@x/r", "hello"));
        assert_eq!(
            describe(&flushed),
            [
                "presence:b@x/r:dnd",
                "presence:a@x/r:xa",
                "message:a@x/r:paused",
                "message:a@x/r:hello"
            ]
        );
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn becoming_active_flushes_and_iqs_flush() {
        let mut c = ClientState::default();
        c.set_inactive();
        assert!(c.offer(presence("a@x/r", "away")).is_empty());
        let iq = out(Element::new("iq", "jabber:client")
            .with_attr("type", "get")
            .with_attr("id", "1"));
        assert_eq!(c.offer(iq).len(), 2);
        assert!(c.offer(presence("a@x/r", "dnd")).is_empty());
        assert_eq!(describe(&c.set_active()), ["presence:a@x/r:dnd"]);
        assert!(!c.is_inactive());
    }

    #[test]
    fn subscription_requests_and_encrypted_messages_are_important() {
        let mut c = ClientState::default();
        c.set_inactive();
        let sub = out(Element::new("presence", "jabber:client")
            .with_attr("from", "a@x")
            .with_attr("type", "subscribe"));
        assert_eq!(c.offer(sub).len(), 1);
        let omemo = out(Element::new("message", "jabber:client")
            .with_attr("from", "a@x/r")
            .with_child(Element::new("encrypted", "eu.siacs.conversations.axolotl")));
        assert_eq!(c.offer(omemo).len(), 1);
        let carbon = out(Element::new("message", "jabber:client")
            .with_attr("from", "me@x")
            .with_child(
                Element::new("received", "urn:xmpp:carbons:2").with_child(
                    Element::new("forwarded", "urn:xmpp:forward:0").with_child(
                        Element::new("message", "jabber:client")
                            .with_child(Element::new("body", "jabber:client").with_text("hi")),
                    ),
                ),
            ));
        assert_eq!(c.offer(carbon).len(), 1);
    }

    #[test]
    fn holding_is_bounded() {
        let mut c = ClientState::default();
        c.set_inactive();
        let mut flushed = 0;
        for n in 0..(MAX_HELD * 2) {
            flushed += c.offer(presence(&format!("u{n}@x/r"), "away")).len();
        }
        assert_eq!(flushed + c.held(), MAX_HELD * 2);
        assert!(c.held() < MAX_HELD);
    }
}

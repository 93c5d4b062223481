//! XEP-0115 entity capabilities through the real router: contacts send presence with caps to
//! alice, the server asks them what their verification string stands for, and a module of
//! the test observes `CapsUpdated` and reads the shared `CapsState`, as PEP does.

mod common;

use common::*;
use parking_lot::Mutex;
use rookery_core::{Flow, HostBuilder, Module, ModuleError, Order, Server};
use rookery_modules::caps::{CapsState, CapsUpdated};
use rookery_stanza::{BareJid, Jid};
use rookery_xml::Element;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

const DISCO: &str = "http://jabber.org/protocol/disco#info";
const MUC: &str = "http://jabber.org/protocol/muc";
const NODE: &str = "https://client.example";
/// §5.2's verification string and the answer it stands for.
const V1: &str = "QgayPKawpkPSDYmwT/WM94uAlu0=";
const SIMPLE: &str = "<identity category='client' name='Exodus 0.9.1' type='pc'/>\
    <feature var='http://jabber.org/protocol/caps'/>\
    <feature var='http://jabber.org/protocol/disco#info'/>\
    <feature var='http://jabber.org/protocol/disco#items'/>\
    <feature var='http://jabber.org/protocol/muc'/>";

/// What the test's module saw: the shared caps state and every `CapsUpdated`.
#[derive(Default)]
struct Recorder {
    caps: Mutex<Option<Arc<CapsState>>>,
    updates: Mutex<Vec<CapsUpdated>>,
}

thread_local! {
    /// The recorder of the server the current test built (tests run on their own thread).
    static RECORDER: RefCell<Option<Arc<Recorder>>> = const { RefCell::new(None) };
}

/// Plays the PEP module: hooks `CapsUpdated` and takes the shared state.
struct Observer;

impl Module for Observer {
    const NAME: &'static str = "caps_observer";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let rec = host.shared::<Recorder>();
        *rec.caps.lock() = Some(host.shared::<CapsState>());
        RECORDER.with(|r| *r.borrow_mut() = Some(rec.clone()));
        host.hook::<CapsUpdated, _, _>(Order::normal(), move |_, ev| {
            rec.updates.lock().push((*ev).clone());
            async { Flow::Continue }
        });
        Ok(())
    }
}

async fn setup() -> (Arc<Server>, Arc<Recorder>, Arc<CapsState>) {
    let mut registry = rookery_modules::registry();
    registry.register::<Observer>();
    let s = server_with_registry("", "", &registry).await;
    let rec = RECORDER
        .with(|r| r.borrow().clone())
        .expect("the observer initialised");
    let caps = rec.caps.lock().clone().expect("caps state");
    (s, rec, caps)
}

fn caps(ver: &str) -> String {
    format!("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{NODE}' ver='{ver}'/>")
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).expect("jid")
}
fn jid(s: &str) -> Jid {
    Jid::new(s).expect("jid")
}

/// The disco#info queries the server sent to a client.
fn queries(got: &[Element]) -> Vec<Element> {
    got.iter()
        .filter(|e| e.name() == "iq" && e.attr("type") == Some("get"))
        .filter(|e| e.get_child("query", DISCO).is_some())
        .cloned()
        .collect()
}

/// Waits (bounded) for the one query the server sends `client`, and checks its address.
async fn one_query(client: &mut Client, ver: &str) -> Element {
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(queries(&client.drain()));
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle().await;
    got.extend(queries(&client.drain()));
    assert_eq!(got.len(), 1, "{got:?}");
    let q = got[0].clone();
    assert_eq!(q.attr("from"), Some(D));
    assert_eq!(q.attr("to"), Some(client.jid.as_str()));
    assert_eq!(
        q.get_child("query", DISCO).and_then(|q| q.attr("node")),
        Some(format!("{NODE}#{ver}").as_str())
    );
    q
}

async fn answer(client: &Client, query: &Element, body: &str) {
    let id = query.attr("id").expect("id");
    client
        .send(&format!(
            "<iq type='result' id='{id}' to='{D}'><query xmlns='{DISCO}' node='{NODE}#{V1}'>{body}</query></iq>"
        ))
        .await;
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits (bounded) until `n` updates were seen.
async fn updates(rec: &Recorder, n: usize) -> Vec<CapsUpdated> {
    for _ in 0..200 {
        if rec.updates.lock().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec.updates.lock().clone()
}

fn sorted(mut v: Vec<Jid>) -> Vec<Jid> {
    v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    v
}

#[tokio::test]
async fn one_query_per_verification_string_and_every_contact_resolved() {
    let (s, rec, state) = setup().await;
    let alice = bare("alice@example.org");
    let _a = Client::online(&s, "alice@example.org/phone").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;

    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    let q = one_query(&mut bob, V1).await;
    // carol advertises the same string while bob's answer is awaited: nobody asks her.
    carol
        .send(&format!(
            "<presence to='alice@example.org'>{}</presence>",
            caps(V1)
        ))
        .await;
    settle().await;
    assert!(queries(&carol.drain()).is_empty());
    assert!(rec.updates.lock().is_empty());
    assert!(state.interested(&alice, MUC).is_empty());

    answer(&bob, &q, SIMPLE).await;
    let got = updates(&rec, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for (u, contact) in got.iter().zip(["bob@example.org/b", "carol@example.org/c"]) {
        assert_eq!(
            (u.owner.as_str(), u.contact.as_str(), u.changed),
            ("alice@example.org", contact, true)
        );
        assert!(u.info.has(MUC));
    }
    assert_eq!(
        sorted(state.interested(&alice, MUC)),
        [jid("bob@example.org/b"), jid("carol@example.org/c")]
    );
    assert!(state.interested(&alice, "urn:xmpp:nothing").is_empty());
    assert!(state.interested(&bare("bob@example.org"), MUC).is_empty());
    let info = state
        .info(&alice, &jid("bob@example.org/b"))
        .expect("resolved");
    assert!(!info.notifies(MUC));
    assert_eq!(info.identities[0].name.as_deref(), Some("Exodus 0.9.1"));

    // Known now: dave is not asked, and the update comes with his presence.
    dave.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    assert_eq!(rec.updates.lock().len(), 3);
    settle().await;
    assert!(queries(&dave.drain()).is_empty());

    // The same caps again: an update, not a change.
    bob.send(&format!(
        "<presence to='alice@example.org'><show>away</show>{}</presence>",
        caps(V1)
    ))
    .await;
    let last = rec.updates.lock().last().cloned().expect("update");
    assert_eq!(
        (last.contact.as_str(), last.changed),
        ("bob@example.org/b", false)
    );
    settle().await;
    assert!(queries(&bob.drain()).is_empty());

    // Unavailable removes the contact; so does available presence without caps.
    bob.send("<presence to='alice@example.org' type='unavailable'/>")
        .await;
    carol.send("<presence to='alice@example.org'/>").await;
    assert_eq!(state.interested(&alice, MUC), [jid("dave@example.org/d")]);
    assert!(state.info(&alice, &jid("bob@example.org/b")).is_none());
    // bob comes back with the same caps: a new presence, so a change.
    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    let last = rec.updates.lock().last().cloned().expect("update");
    assert_eq!(
        (last.contact.as_str(), last.changed),
        ("bob@example.org/b", true)
    );
}

#[tokio::test]
async fn a_wrong_answer_is_not_cached() {
    let (s, rec, state) = setup().await;
    let alice = bare("alice@example.org");
    let _a = Client::online(&s, "alice@example.org/phone").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;

    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    let q = one_query(&mut bob, V1).await;
    // Claims muc#admin too, which the string does not stand for.
    let lying = format!("{SIMPLE}<feature var='http://jabber.org/protocol/muc#admin'/>");
    answer(&bob, &q, &lying).await;
    settle().await;
    assert!(rec.updates.lock().is_empty());
    assert!(state.interested(&alice, MUC).is_empty());
    assert!(state.info(&alice, &jid("bob@example.org/b")).is_none());
    // bob is not asked the same again.
    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    settle().await;
    assert!(queries(&bob.drain()).is_empty());

    // An error is a failure too.
    dave.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    let q = one_query(&mut dave, V1).await;
    let id = q.attr("id").expect("id");
    dave.send(&format!(
        "<iq type='error' id='{id}' to='{D}'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ))
    .await;
    settle().await;
    assert!(rec.updates.lock().is_empty());

    // The string was not cached, nor blamed: carol, who advertises it, is asked and verifies it.
    carol
        .send(&format!(
            "<presence to='alice@example.org'>{}</presence>",
            caps(V1)
        ))
        .await;
    let q = one_query(&mut carol, V1).await;
    answer(&carol, &q, SIMPLE).await;
    let got = updates(&rec, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].contact.as_str(), "carol@example.org/c");
    assert_eq!(state.interested(&alice, MUC), [jid("carol@example.org/c")]);
    // Cached now, it also resolves bob at his next presence, without asking him.
    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    assert_eq!(
        sorted(state.interested(&alice, MUC)),
        [jid("bob@example.org/b"), jid("carol@example.org/c")]
    );
    assert!(queries(&bob.drain()).is_empty());
}

#[tokio::test]
async fn caps_the_server_cannot_verify_are_none() {
    let (s, rec, state) = setup().await;
    let _a = Client::online(&s, "alice@example.org/phone").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    for c in [
        // Legacy caps (§5.4 step 1), an unknown function, a ver no SHA-1 output can be.
        format!("<c xmlns='http://jabber.org/protocol/caps' node='{NODE}' ver='1.0'/>"),
        format!("<c xmlns='http://jabber.org/protocol/caps' hash='md5' node='{NODE}' ver='{V1}'/>"),
        format!(
            "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{NODE}' ver='1.0'/>"
        ),
        format!("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' ver='{V1}'/>"),
    ] {
        bob.send(&format!("<presence to='alice@example.org'>{c}</presence>"))
            .await;
    }
    settle().await;
    assert!(queries(&bob.drain()).is_empty());
    assert!(rec.updates.lock().is_empty());
    assert_eq!(state.tracked_accounts(), 0);

    // Presence to an account with no session: the caps are learnt (so that the contact gets
    // the account's last items, XEP-0163 §4.3.2), but no map is kept once they are.
    bob.send(&format!(
        "<presence to='carol@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    let q = one_query(&mut bob, V1).await;
    answer(&bob, &q, SIMPLE).await;
    settle().await;
    assert_eq!(state.tracked_accounts(), 0);
    assert!(rec
        .updates
        .lock()
        .iter()
        .any(|u| u.owner == bare("carol@example.org") && u.changed && !u.direct));
}

#[tokio::test]
async fn own_resources_are_tracked_until_the_sessions_end() {
    let (s, rec, state) = setup().await;
    let alice = bare("alice@example.org");
    let phone = Client::online(&s, "alice@example.org/phone").await;
    let mut pc = Client::bind(&s, "alice@example.org/pc").await;
    let bob = Client::online(&s, "bob@example.org/b").await;

    // alice's own broadcast: her account observes her own full JID.
    pc.send(&format!("<presence>{}</presence>", caps(V1))).await;
    let q = one_query(&mut pc, V1).await;
    answer(&pc, &q, SIMPLE).await;
    let got = updates(&rec, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].owner.as_str(), got[0].contact.as_str()),
        ("alice@example.org", "alice@example.org/pc")
    );
    bob.send(&format!(
        "<presence to='alice@example.org'>{}</presence>",
        caps(V1)
    ))
    .await;
    assert_eq!(
        sorted(state.interested(&alice, MUC)),
        [jid("alice@example.org/pc"), jid("bob@example.org/b")]
    );

    pc.close().await;
    assert_eq!(state.interested(&alice, MUC), [jid("bob@example.org/b")]);
    assert_eq!(state.tracked_accounts(), 1);
    // alice's last session ends: her whole map goes.
    phone.close().await;
    assert_eq!(state.tracked_accounts(), 0);
    assert!(state.interested(&alice, MUC).is_empty());
}

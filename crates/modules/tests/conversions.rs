//! The server keeping forms of the same data in step, through the real router: bookmarks
//! (XEP-0402 bookmarks 2, XEP-0048 private XML and legacy PEP, XEP-0411) and avatars
//! (XEP-0084 PEP, XEP-0153 vCard and presence hash, XEP-0398). A module of the test counts
//! every PEP publication and retraction, to show conversions converge.

mod common;

use base64::Engine as _;
use common::*;
use parking_lot::Mutex;
use rookery_core::{Flow, HostBuilder, Module, ModuleError, Order, Server};
use rookery_modules::caps::{CapsInfo, CapsState, HashAlgo};
use rookery_modules::pubsub::{PublishedItem, RetractedItem};
use rookery_stanza::Jid;
use rookery_xml::{parse_element, Element};
use sha1::Digest as _;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "http://jabber.org/protocol/pubsub";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_PRIVATE: &str = "jabber:iq:private";
const B2: &str = "urn:xmpp:bookmarks:1";
const LEGACY: &str = "storage:bookmarks";
const META: &str = "urn:xmpp:avatar:metadata";
const DATA: &str = "urn:xmpp:avatar:data";
const UPDATE: &str = "vcard-temp:x:update";
const VCARD: &str = "vcard-temp";

// ---- the observer ----------------------------------------------------------------------

/// Every PEP publication and retraction the server made, by (node, "publish"/"retract").
#[derive(Default)]
struct Recorder {
    events: Mutex<HashMap<(String, &'static str), usize>>,
    caps: Mutex<Option<Arc<CapsState>>>,
}

impl Recorder {
    fn count(&self, node: &str, what: &'static str) -> usize {
        self.events
            .lock()
            .get(&(node.to_owned(), what))
            .copied()
            .unwrap_or(0)
    }
    fn reset(&self) {
        self.events.lock().clear();
    }
}

thread_local! {
    static RECORDER: RefCell<Option<Arc<Recorder>>> = const { RefCell::new(None) };
}

struct Observer;

impl Module for Observer {
    const NAME: &'static str = "conversion_observer";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let rec = host.shared::<Recorder>();
        *rec.caps.lock() = Some(host.shared::<CapsState>());
        RECORDER.with(|r| *r.borrow_mut() = Some(rec.clone()));
        let r = rec.clone();
        // First: it counts what happens, whatever the others do with it.
        host.hook::<PublishedItem, _, _>(Order::first(), move |_, ev| {
            *r.events
                .lock()
                .entry((ev.node.clone(), "publish"))
                .or_default() += 1;
            async { Flow::Continue }
        });
        host.hook::<RetractedItem, _, _>(Order::first(), move |_, ev| {
            *rec.events
                .lock()
                .entry((ev.node.clone(), "retract"))
                .or_default() += 1;
            async { Flow::Continue }
        });
        Ok(())
    }
}

async fn setup(top: &str) -> (Arc<Server>, Arc<Recorder>) {
    let mut registry = rookery_modules::registry();
    registry.register::<Observer>();
    let s = server_with_registry(top, "", &registry).await;
    let rec = RECORDER
        .with(|r| r.borrow().clone())
        .expect("the observer initialised");
    (s, rec)
}

// ---- helpers ---------------------------------------------------------------------------

fn options(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x></publish-options>");
    x
}

/// XEP-0402 §3.3's publish-options.
fn b2_options() -> String {
    options(&[
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ])
}

fn publish(id: &str, node: &str, item: Option<&str>, payload: &str, opts: &str) -> String {
    let item = item.map(|i| format!(" id='{i}'")).unwrap_or_default();
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{NS}'><publish node='{node}'><item{item}>{payload}</item></publish>{opts}</pubsub></iq>"
    )
}

fn retract(id: &str, node: &str, item: &str) -> String {
    format!("<iq type='set' id='{id}'><pubsub xmlns='{NS}'><retract node='{node}' notify='true'><item id='{item}'/></retract></pubsub></iq>")
}

/// The items of a node as `(id, payload)`, asked as `who`.
async fn items(who: &mut Client, owner: &str, node: &str) -> Vec<(String, Option<Element>)> {
    let r = who
        .ask(
            &format!("<iq type='get' id='items' to='{owner}'><pubsub xmlns='{NS}'><items node='{node}'/></pubsub></iq>"),
            "items",
        )
        .await;
    if r.attr("type") != Some("result") {
        return Vec::new();
    }
    r.get_child("pubsub", NS)
        .and_then(|p| p.get_child("items", NS))
        .map(|i| {
            i.children()
                .map(|c| {
                    (
                        c.attr("id").unwrap_or_default().to_owned(),
                        c.children().next().cloned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn private_get(who: &mut Client) -> Element {
    let r = who
        .ask(
            &format!("<iq type='get' id='pg'><query xmlns='{NS_PRIVATE}'><storage xmlns='{LEGACY}'/></query></iq>"),
            "pg",
        )
        .await;
    assert_result(&r);
    r.get_child("query", NS_PRIVATE)
        .and_then(|q| q.get_child("storage", LEGACY))
        .cloned()
        .expect("storage")
}

async fn private_set(who: &mut Client, storage: &str) {
    let r = who
        .ask(
            &format!("<iq type='set' id='ps'><query xmlns='{NS_PRIVATE}'>{storage}</query></iq>"),
            "ps",
        )
        .await;
    assert_result(&r);
}

/// The legacy conferences of a `<storage/>`: (jid, name, autojoin, nick).
fn legacy_rooms(storage: &Element) -> Vec<(String, Option<String>, bool, Option<String>)> {
    let mut v: Vec<_> = storage
        .children()
        .filter(|c| c.is("conference", LEGACY))
        .map(|c| {
            (
                c.attr("jid").unwrap_or_default().to_owned(),
                c.attr("name").map(str::to_owned),
                matches!(c.attr("autojoin"), Some("true" | "1")),
                c.get_child("nick", LEGACY).map(Element::text),
            )
        })
        .collect();
    v.sort();
    v
}

fn events<'a>(got: &'a [Element], node: &str) -> Vec<&'a Element> {
    got.iter()
        .filter(|m| {
            m.name() == "message"
                && m.get_child("event", NS_EVENT)
                    .and_then(|e| e.get_child("items", NS_EVENT))
                    .is_some_and(|i| i.attr("node") == Some(node))
        })
        .collect()
}

/// (published ids, retracted ids) in the notifications of a node.
fn notified(got: &[Element], node: &str) -> (Vec<String>, Vec<String>) {
    let (mut p, mut r) = (Vec::new(), Vec::new());
    for m in events(got, node) {
        let Some(items) = m
            .get_child("event", NS_EVENT)
            .and_then(|e| e.get_child("items", NS_EVENT))
        else {
            continue;
        };
        for c in items.children() {
            let id = c.attr("id").unwrap_or_default().to_owned();
            match c.name() {
                "item" => p.push(id),
                "retract" => r.push(id),
                _ => {}
            }
        }
    }
    p.sort();
    r.sort();
    (p, r)
}

/// `client` announces through entity capabilities that it wants notifications of `nodes`
/// (XEP-0163 §4.3.1), answering the server's disco#info query, as a client does.
async fn notify_interest(client: &mut Client, rec: &Recorder, nodes: &[&str]) {
    let mut body = String::from("<identity category='client' name='t' type='pc'/><feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>");
    for n in nodes {
        body.push_str(&format!("<feature var='{n}+notify'/>"));
    }
    let query = parse_element(&format!(
        "<query xmlns='http://jabber.org/protocol/disco#info'>{body}</query>"
    ))
    .expect("xml");
    let ver = CapsInfo::from_disco_info(&query)
        .expect("caps")
        .ver(HashAlgo::Sha1);
    let node = "https://client.example";
    client
        .send(&format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{node}' ver='{ver}'/></presence>"))
        .await;
    let mut asked = None;
    for _ in 0..200 {
        asked = client.drain().into_iter().find(|e| {
            e.name() == "iq"
                && e.attr("type") == Some("get")
                && e.get_child("query", "http://jabber.org/protocol/disco#info")
                    .is_some()
        });
        if asked.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = asked.expect("the server asks what the caps stand for");
    let id = asked.attr("id").expect("id");
    client
        .send(&format!(
            "<iq type='result' id='{id}' to='{D}'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'>{body}</query></iq>"
        ))
        .await;
    let caps = rec.caps.lock().clone().expect("caps state");
    let owner = client.jid.to_bare();
    let me = Jid::from(client.jid.clone());
    for _ in 0..200 {
        if caps
            .interested(&owner, &format!("{}+notify", nodes[0]))
            .contains(&me)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.drain();
}

const COUNCIL: &str = "council@conference.underhill.org";
const ORCHARD: &str = "orchard@conference.shakespeare.lit";
const BALCONY: &str = "balcony@conference.shakespeare.lit";

// ---- bookmarks ---------------------------------------------------------------------------

#[tokio::test]
async fn bookmarks2_reach_private_xml_and_the_legacy_node_urls_kept() {
    let (s, rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;

    // A legacy client kept a web page and an unknown element in private XML.
    private_set(
        &mut alice,
        "<storage xmlns='storage:bookmarks'><url name='Works' url='http://example.org/works'/></storage>",
    )
    .await;

    let conference = format!(
        "<conference xmlns='{B2}' name='Council of Oberon' autojoin='true'><nick>Puck</nick><extensions><pin xmlns='urn:example:pin'/></extensions></conference>"
    );
    rec.reset();
    let r = alice
        .ask(
            &publish("p1", B2, Some(COUNCIL), &conference, &b2_options()),
            "p1",
        )
        .await;
    assert_result(&r);
    // One publication by the client, one by the server on the legacy node, nothing more.
    assert_eq!(rec.count(B2, "publish"), 1);
    assert_eq!(rec.count(LEGACY, "publish"), 1);

    let storage = private_get(&mut alice).await;
    assert_eq!(
        legacy_rooms(&storage),
        [(
            COUNCIL.to_owned(),
            Some("Council of Oberon".to_owned()),
            true,
            Some("Puck".to_owned())
        )]
    );
    assert!(
        storage.get_child("url", LEGACY).is_some(),
        "the web page stays: {storage:?}"
    );
    let legacy = items(&mut alice, "alice@example.org", LEGACY).await;
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0].0, "current");
    let doc = legacy[0].1.clone().expect("payload");
    assert_eq!(legacy_rooms(&doc), legacy_rooms(&storage));

    // The legacy node is the account's alone (XEP-0411 §5).
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    assert!(items(&mut carol, "alice@example.org", LEGACY)
        .await
        .is_empty());

    // A second room, then the first retracted: both forms follow.
    let r = alice
        .ask(
            &publish(
                "p2",
                B2,
                Some(ORCHARD),
                &format!("<conference xmlns='{B2}' name='The Orchard'/>"),
                &b2_options(),
            ),
            "p2",
        )
        .await;
    assert_result(&r);
    let r = alice.ask(&retract("r1", B2, COUNCIL), "r1").await;
    assert_result(&r);
    let storage = private_get(&mut alice).await;
    assert_eq!(
        legacy_rooms(&storage),
        [(
            ORCHARD.to_owned(),
            Some("The Orchard".to_owned()),
            false,
            None
        )]
    );
    assert!(storage.get_child("url", LEGACY).is_some());
    let legacy = items(&mut alice, "alice@example.org", LEGACY).await;
    assert_eq!(
        legacy_rooms(legacy[0].1.as_ref().expect("payload")),
        legacy_rooms(&storage)
    );
}

#[tokio::test]
async fn private_xml_becomes_bookmarks2_items_notified_to_the_other_resource() {
    let (s, rec) = setup("").await;
    let mut legacy_client = Client::online(&s, "alice@example.org/old").await;
    let mut modern = Client::bind(&s, "alice@example.org/new").await;
    notify_interest(&mut modern, &rec, &[B2, LEGACY]).await;

    private_set(
        &mut legacy_client,
        &format!("<storage xmlns='storage:bookmarks'><conference jid='{COUNCIL}' name='Council' autojoin='true'><nick>Puck</nick></conference><conference jid='{ORCHARD}' name='Orchard'/></storage>"),
    )
    .await;
    let got = modern.drain_at_least(3).await;
    assert_eq!(
        notified(&got, B2),
        (vec![COUNCIL.to_owned(), ORCHARD.to_owned()], vec![])
    );
    // XEP-0411 §3: subscribers of the legacy node hear of a private XML change.
    assert_eq!(notified(&got, LEGACY).0, ["current"]);

    let mut b2 = items(&mut modern, "alice@example.org", B2).await;
    b2.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(b2.len(), 2);
    let council = b2[0].1.clone().expect("payload");
    assert_eq!(b2[0].0, COUNCIL);
    assert!(council.is("conference", B2));
    assert_eq!(council.attr("name"), Some("Council"));
    assert_eq!(council.attr("autojoin"), Some("true"));
    assert_eq!(
        council.get_child("nick", B2).map(Element::text).as_deref(),
        Some("Puck")
    );

    // The node has XEP-0402's configuration: nobody else reads it.
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let r = carol
        .ask(
            &format!("<iq type='get' id='x' to='alice@example.org'><pubsub xmlns='{NS}'><items node='{B2}'/></pubsub></iq>"),
            "x",
        )
        .await;
    assert!(r.attr("type") == Some("error"), "{r:?}");

    // The modern client adds extensions to the council's item.
    let r = modern
        .ask(
            &publish(
                "ext",
                B2,
                Some(COUNCIL),
                &format!("<conference xmlns='{B2}' name='Council' autojoin='true'><nick>Puck</nick><extensions><pin xmlns='urn:example:pin'/></extensions></conference>"),
                &b2_options(),
            ),
            "ext",
        )
        .await;
    assert_result(&r);
    modern.drain();

    // The legacy client renames the council, drops the orchard and adds the balcony: one
    // change, one retraction and one addition; nothing for what did not change.
    rec.reset();
    private_set(
        &mut legacy_client,
        &format!("<storage xmlns='storage:bookmarks'><conference jid='{COUNCIL}' name='Council of Oberon' autojoin='true'><nick>Puck</nick></conference><conference jid='{BALCONY}'/></storage>"),
    )
    .await;
    let got = modern.drain_at_least(4).await;
    assert_eq!(
        notified(&got, B2),
        (
            vec![BALCONY.to_owned(), COUNCIL.to_owned()],
            vec![ORCHARD.to_owned()]
        )
    );
    assert_eq!(rec.count(B2, "publish"), 2);
    assert_eq!(rec.count(B2, "retract"), 1);
    assert_eq!(rec.count(LEGACY, "publish"), 1);
    let b2 = items(&mut modern, "alice@example.org", B2).await;
    let council = b2
        .iter()
        .find(|(id, _)| id == COUNCIL)
        .and_then(|(_, p)| p.clone())
        .expect("council");
    assert_eq!(council.attr("name"), Some("Council of Oberon"));
    assert!(
        council
            .get_child("extensions", B2)
            .and_then(|e| e.get_child("pin", "urn:example:pin"))
            .is_some(),
        "the extensions of a room that stays are kept: {council:?}"
    );

    // The same document again changes nothing and notifies nobody.
    rec.reset();
    private_set(
        &mut legacy_client,
        &format!("<storage xmlns='storage:bookmarks'>\n  <conference autojoin='1' name='Council of Oberon' jid='{COUNCIL}'>\n    <nick>Puck</nick>\n  </conference>\n  <conference jid='{BALCONY}'/>\n</storage>"),
    )
    .await;
    assert_eq!(rec.count(B2, "publish") + rec.count(B2, "retract"), 0);
    assert_eq!(rec.count(LEGACY, "publish"), 0);

    // Removing everything (an empty storage deletes the private element) retracts all.
    private_set(&mut legacy_client, "<storage xmlns='storage:bookmarks'/>").await;
    assert!(items(&mut modern, "alice@example.org", B2).await.is_empty());
    assert_eq!(rec.count(B2, "retract"), 2);
}

#[tokio::test]
async fn a_legacy_pep_publication_reaches_private_xml_and_bookmarks2() {
    let (s, rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let storage = format!(
        "<storage xmlns='storage:bookmarks'><conference jid='{COUNCIL}' name='Council' autojoin='true'><nick>Puck</nick></conference><url name='W' url='http://example.org/'/></storage>"
    );
    let r = alice
        .ask(
            &publish(
                "p",
                LEGACY,
                Some("current"),
                &storage,
                &options(&[
                    ("pubsub#persist_items", "true"),
                    ("pubsub#access_model", "whitelist"),
                ]),
            ),
            "p",
        )
        .await;
    assert_result(&r);
    assert_eq!(rec.count(LEGACY, "publish"), 1, "no republication");
    assert_eq!(rec.count(B2, "publish"), 1);
    let stored = private_get(&mut alice).await;
    assert_eq!(
        legacy_rooms(&stored),
        [(
            COUNCIL.to_owned(),
            Some("Council".to_owned()),
            true,
            Some("Puck".to_owned())
        )]
    );
    assert!(stored.get_child("url", LEGACY).is_some());
    let b2 = items(&mut alice, "alice@example.org", B2).await;
    assert_eq!(b2.len(), 1);
    assert_eq!(b2[0].0, COUNCIL);

    // An empty legacy document removes the room everywhere.
    let r = alice
        .ask(
            &publish(
                "p2",
                LEGACY,
                Some("current"),
                "<storage xmlns='storage:bookmarks'/>",
                "",
            ),
            "p2",
        )
        .await;
    assert_result(&r);
    assert!(items(&mut alice, "alice@example.org", B2).await.is_empty());
    assert!(legacy_rooms(&private_get(&mut alice).await).is_empty());
}

#[tokio::test]
async fn a_legacy_node_others_may_read_is_not_written() {
    let (s, _rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    // Created without options: the PEP default, presence access.
    let r = alice
        .ask(
            &publish(
                "p",
                LEGACY,
                Some("current"),
                "<storage xmlns='storage:bookmarks'/>",
                "",
            ),
            "p",
        )
        .await;
    assert_result(&r);
    let r = alice
        .ask(
            &publish(
                "p1",
                B2,
                Some(COUNCIL),
                &format!("<conference xmlns='{B2}' name='Council'/>"),
                &b2_options(),
            ),
            "p1",
        )
        .await;
    assert_result(&r);
    // Private XML follows; the shared legacy node does not (XEP-0411 §5).
    assert_eq!(legacy_rooms(&private_get(&mut alice).await).len(), 1);
    let legacy = items(&mut alice, "alice@example.org", LEGACY).await;
    assert!(legacy_rooms(legacy[0].1.as_ref().expect("payload")).is_empty());
}

#[tokio::test]
async fn legacy_bookmarks_reach_pep_when_a_session_is_bound() {
    let (s, _rec) = setup("").await;
    // Stored before this server converted anything (another server, an older version).
    s.storage()
        .user_data
        .set_data(
            D,
            "alice",
            "private",
            "storage storage:bookmarks",
            Some(&format!("<storage xmlns='storage:bookmarks'><conference jid='{COUNCIL}' autojoin='true'/></storage>")),
            65536,
        )
        .await
        .expect("stored");
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let b2 = items(&mut alice, "alice@example.org", B2).await;
    assert_eq!(b2.len(), 1, "{b2:?}");
    assert_eq!(b2[0].0, COUNCIL);
    assert_eq!(
        items(&mut alice, "alice@example.org", LEGACY).await.len(),
        1
    );
}

#[tokio::test]
async fn the_account_announces_the_conversions() {
    let (s, _rec) = setup("").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let r = bob
        .ask(
            "<iq type='get' id='d' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    let features: Vec<&str> = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .map(|q| q.children().filter_map(|f| f.attr("var")).collect())
        .unwrap_or_default();
    for f in [
        "urn:xmpp:bookmarks:1#compat",
        "urn:xmpp:bookmarks:1#compat-pep",
        "urn:xmpp:bookmarks-conversion:0",
        "urn:xmpp:pep-vcard-conversion:0",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
}

// ---- avatars -----------------------------------------------------------------------------

/// An image: a PNG signature and header (`w` x `h`), then filler made from `seed`.
fn image(seed: u8, len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x20\0\0\0\x20".to_vec();
    v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publishes an avatar as XEP-0084 §3.1–§3.2 say: data, then metadata; `id` is the item id
/// the data and metadata name (the SHA-1 unless a test lies).
async fn publish_avatar(alice: &mut Client, bytes: &[u8], id: &str, access: &str) {
    let open = options(&[("pubsub#access_model", access)]);
    let r = alice
        .ask(
            &publish(
                "d",
                DATA,
                Some(id),
                &format!("<data xmlns='{DATA}'>{}</data>", b64(bytes)),
                &open,
            ),
            "d",
        )
        .await;
    assert_result(&r);
    let r = alice
        .ask(
            &publish(
                "m",
                META,
                Some(id),
                &format!(
                    "<metadata xmlns='{META}'><info id='{id}' bytes='{}' type='image/png' width='32' height='32'/><info id='elsewhere' bytes='1' type='image/png' url='https://example.org/a.png'/></metadata>",
                    bytes.len()
                ),
                &open,
            ),
            "m",
        )
        .await;
    assert_result(&r);
}

async fn vcard_get(who: &mut Client, of: Option<&str>) -> Element {
    let to = of.map(|o| format!(" to='{o}'")).unwrap_or_default();
    let r = who
        .ask(
            &format!("<iq type='get' id='vg'{to}><vCard xmlns='{VCARD}'/></iq>"),
            "vg",
        )
        .await;
    assert_result(&r);
    r.get_child("vCard", VCARD).cloned().expect("vCard")
}

async fn vcard_set(who: &mut Client, body: &str) {
    let r = who
        .ask(
            &format!("<iq type='set' id='vs'><vCard xmlns='{VCARD}'>{body}</vCard></iq>"),
            "vs",
        )
        .await;
    assert_result(&r);
}

fn photo(vcard: &Element) -> Option<(String, String)> {
    let p = vcard.get_child("PHOTO", VCARD)?;
    Some((
        p.get_child("TYPE", VCARD).map(Element::text)?,
        p.get_child("BINVAL", VCARD).map(Element::text)?,
    ))
}

/// The `<photo/>` of a presence's `vcard-temp:x:update`: None without one.
fn presence_photo(p: &Element) -> Option<String> {
    p.get_child("x", UPDATE)
        .and_then(|x| x.get_child("photo", UPDATE))
        .map(Element::text)
}

#[tokio::test]
async fn a_pep_avatar_becomes_the_vcard_photo() {
    let (s, _rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    vcard_set(&mut alice, "<FN>Alice</FN>").await;

    let img = image(1, 200);
    publish_avatar(&mut alice, &img, &sha1_hex(&img), "open").await;
    // Anyone reads vCards: bob sees the photo, and the rest of the vCard is kept.
    let v = vcard_get(&mut bob, Some("alice@example.org")).await;
    assert_eq!(
        photo(&v),
        Some(("image/png".to_owned(), b64(&img))),
        "{v:?}"
    );
    assert_eq!(
        v.get_child("FN", VCARD).map(Element::text).as_deref(),
        Some("Alice")
    );

    // Avatar disabled (XEP-0084 §3.5): the photo goes, the rest stays.
    let r = alice
        .ask(
            &publish(
                "off",
                META,
                None,
                &format!("<metadata xmlns='{META}'/>"),
                "",
            ),
            "off",
        )
        .await;
    assert_result(&r);
    let v = vcard_get(&mut alice, None).await;
    assert_eq!(photo(&v), None, "{v:?}");
    assert!(v.get_child("FN", VCARD).is_some());
}

#[tokio::test]
async fn an_avatar_with_a_wrong_hash_or_not_open_is_not_copied() {
    let (s, _rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let img = image(2, 100);
    // The id is not the image's SHA-1 (XEP-0398 §3.1 SHOULD verify).
    publish_avatar(&mut alice, &img, &sha1_hex(b"something else"), "open").await;
    assert_eq!(photo(&vcard_get(&mut alice, None).await), None);

    // Readable by contacts only: not copied into the public vCard (XEP-0398 §7).
    let (s, _rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    publish_avatar(&mut alice, &img, &sha1_hex(&img), "presence").await;
    assert_eq!(photo(&vcard_get(&mut alice, None).await), None);
}

#[tokio::test]
async fn a_vcard_photo_becomes_the_pep_avatar() {
    let (s, rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut pc = Client::bind(&s, "alice@example.org/pc").await;
    notify_interest(&mut pc, &rec, &[META]).await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;

    let img = image(3, 300);
    let hash = sha1_hex(&img);
    // Base64 with line breaks, as XEP-0153 §3.5 allows.
    let wrapped: String = b64(&img)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    rec.reset();
    vcard_set(
        &mut alice,
        &format!("<FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{wrapped}</BINVAL></PHOTO>"),
    )
    .await;
    assert_eq!(rec.count(DATA, "publish"), 1);
    assert_eq!(rec.count(META, "publish"), 1);
    // The other resource hears of the metadata (XEP-0398 §3.2 SHOULD notify).
    let got = pc.drain_at_least(1).await;
    assert_eq!(notified(&got, META).0, std::slice::from_ref(&hash));

    // New nodes are open, as the vCard was: carol reads both.
    let data = items(&mut carol, "alice@example.org", DATA).await;
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0, hash);
    assert_eq!(
        data[0].1.as_ref().map(Element::text),
        Some(b64(&img)),
        "canonical base64"
    );
    let meta = items(&mut carol, "alice@example.org", META).await;
    let info = meta[0]
        .1
        .as_ref()
        .and_then(|m| m.get_child("info", META))
        .cloned()
        .expect("info");
    assert_eq!(info.attr("id"), Some(hash.as_str()));
    assert_eq!(info.attr("bytes"), Some(img.len().to_string().as_str()));
    assert_eq!(info.attr("type"), Some("image/png"));
    assert_eq!(info.attr("width"), Some("32"));

    // The same photo again (the name changed): nothing to publish. The vCard module's own
    // answer came back: no loop from the conversion's publications either.
    rec.reset();
    vcard_set(
        &mut alice,
        &format!(
            "<FN>Alice C.</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            b64(&img)
        ),
    )
    .await;
    assert_eq!(rec.count(DATA, "publish") + rec.count(META, "publish"), 0);
    // The vCard is what alice set, not rewritten by a conversion.
    let v = vcard_get(&mut alice, None).await;
    assert_eq!(
        v.get_child("FN", VCARD).map(Element::text).as_deref(),
        Some("Alice C.")
    );

    // No photo any more: the PEP avatar is disabled with an empty <metadata/>.
    vcard_set(&mut alice, "<FN>Alice C.</FN>").await;
    assert_eq!(rec.count(META, "publish"), 1);
    let meta = items(&mut carol, "alice@example.org", META).await;
    assert!(meta[0]
        .1
        .as_ref()
        .is_some_and(|m| m.is("metadata", META) && m.children().next().is_none()));
}

#[tokio::test]
async fn a_photo_beyond_the_avatar_limit_is_not_converted() {
    let (s, rec) = setup("[pep]\nmax_avatar_bytes = 100\n").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let img = image(4, 200);
    vcard_set(
        &mut alice,
        &format!(
            "<PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            b64(&img)
        ),
    )
    .await;
    assert_eq!(rec.count(DATA, "publish"), 0);
    assert!(
        photo(&vcard_get(&mut alice, None).await).is_some(),
        "the vCard stands"
    );
}

#[tokio::test]
async fn presence_carries_the_avatar_hash() {
    let (s, _rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<presence to='alice@example.org' type='subscribe'/>")
        .await;
    alice
        .send("<presence to='bob@example.org' type='subscribed'/>")
        .await;
    alice.drain();
    bob.drain();

    // No photo: an empty <photo/> says so (XEP-0153 §3.1).
    alice.send("<presence/>").await;
    let got = bob.drain();
    let p = presences(&got, None);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(presence_photo(p[0]).as_deref(), Some(""));

    let img = image(5, 120);
    let hash = sha1_hex(&img);
    publish_avatar(&mut alice, &img, &hash, "open").await;
    bob.drain();
    // The hash goes into a broadcast without <x/>, and over an <x/> without <photo/>.
    for body in ["<show>away</show>", "<x xmlns='vcard-temp:x:update'/>"] {
        alice.send(&format!("<presence>{body}</presence>")).await;
        let got = bob.drain();
        let p = presences(&got, None);
        assert_eq!(p.len(), 1, "{got:?}");
        assert_eq!(
            presence_photo(p[0]).as_deref(),
            Some(hash.as_str()),
            "{body}"
        );
        assert_eq!(p[0].children().filter(|c| c.is("x", UPDATE)).count(), 1);
    }
    // A stale hash is replaced.
    alice
        .send(&format!(
            "<presence><x xmlns='{UPDATE}'><photo>{}</photo></x></presence>",
            sha1_hex(b"old")
        ))
        .await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]).as_deref(),
        Some(hash.as_str())
    );
    // An empty <photo/> is the client's to send (XEP-0398 §4): left alone.
    alice
        .send(&format!(
            "<presence><x xmlns='{UPDATE}'><photo/></x></presence>"
        ))
        .await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]).as_deref(),
        Some("")
    );

    // Directed presence too (as a MUC join is).
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    alice.send("<presence to='carol@example.org/c'/>").await;
    let got = carol.drain();
    let p = presences(&got, None);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(presence_photo(p[0]).as_deref(), Some(hash.as_str()));
    // Unavailable presence is not touched.
    alice
        .send("<presence to='carol@example.org/c' type='unavailable'/>")
        .await;
    let got = carol.drain();
    assert_eq!(
        presence_photo(presences(&got, Some("unavailable"))[0]),
        None
    );

    // A vCard set changes the hash at once.
    let img2 = image(6, 90);
    vcard_set(
        &mut alice,
        &format!(
            "<PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            b64(&img2)
        ),
    )
    .await;
    alice.send("<presence/>").await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]),
        Some(sha1_hex(&img2))
    );
}

#[tokio::test]
async fn the_hash_is_read_from_storage_once_per_account() {
    // A vCard stored before the server started: the first presence reads it.
    let (s, _rec) = setup("").await;
    let img = image(7, 50);
    s.storage()
        .user_data
        .set_data(
            D,
            "alice",
            "vcard",
            "",
            Some(&format!(
                "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{}</BINVAL></PHOTO></vCard>",
                b64(&img)
            )),
            1 << 20,
        )
        .await
        .expect("stored");
    let alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    alice.send("<presence to='bob@example.org/b'/>").await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]),
        Some(sha1_hex(&img))
    );
    // Changed behind the server's back: the kept hash is used, no read per presence.
    s.storage()
        .user_data
        .set_data(D, "alice", "vcard", "", None, 1 << 20)
        .await
        .expect("deleted");
    alice.send("<presence to='bob@example.org/b'/>").await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]),
        Some(sha1_hex(&img))
    );
    // Once the account's last session ended, it is read again.
    alice.close().await;
    let alice = Client::online(&s, "alice@example.org/a2").await;
    bob.drain();
    alice.send("<presence to='bob@example.org/b'/>").await;
    let got = bob.drain();
    assert_eq!(
        presence_photo(presences(&got, None)[0]).as_deref(),
        Some("")
    );
}

#[tokio::test]
async fn a_vcard_edit_that_leaves_the_photo_alone_leaves_the_pep_avatar_alone() {
    let (s, rec) = setup("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    // A PEP avatar for contacts only: it stays out of the vCard.
    let a = image(8, 80);
    publish_avatar(&mut alice, &a, &sha1_hex(&a), "presence").await;
    assert_eq!(photo(&vcard_get(&mut alice, None).await), None);

    // A legacy client edits the name, with no photo (it never had one): the PEP avatar stays.
    rec.reset();
    vcard_set(&mut alice, "<FN>Alice</FN>").await;
    assert_eq!(rec.count(META, "publish") + rec.count(DATA, "publish"), 0);

    // A photo set through the vCard goes to PEP (the nodes keep their access model).
    let b = image(9, 80);
    vcard_set(
        &mut alice,
        &format!(
            "<FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            b64(&b)
        ),
    )
    .await;
    assert_eq!(rec.count(META, "publish"), 1);
    let meta = items(&mut alice, "alice@example.org", META).await;
    assert_eq!(meta[0].0, sha1_hex(&b));

    // A newer PEP avatar for contacts only, then the legacy client edits the name and sends
    // back the photo it read: that old photo does not replace the newer avatar.
    let c = image(10, 80);
    publish_avatar(&mut alice, &c, &sha1_hex(&c), "presence").await;
    rec.reset();
    vcard_set(
        &mut alice,
        &format!(
            "<FN>Alice C.</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
            b64(&b)
        ),
    )
    .await;
    assert_eq!(rec.count(META, "publish") + rec.count(DATA, "publish"), 0);
    let meta = items(&mut alice, "alice@example.org", META).await;
    assert_eq!(meta[0].0, sha1_hex(&c));

    // Removing the vCard photo does not disable a PEP avatar that is another image.
    vcard_set(&mut alice, "<FN>Alice C.</FN>").await;
    assert_eq!(rec.count(META, "publish"), 0);
}

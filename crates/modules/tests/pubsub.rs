//! PubSub through the real router: PEP on accounts (XEP-0163 with publish-options) and the
//! PubSub service domain (XEP-0060), with in-memory storage and queue sessions.

mod common;

use common::*;
use rookery_stanza::StanzaErrorCondition;
use rookery_storage::PubSubService;
use rookery_xml::Element;

const NS: &str = "http://jabber.org/protocol/pubsub";
const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// `a` subscribes to `b`'s presence and `b` approves: `a` has `to`, `b` has `from`.
async fn subscribe(a: &mut Client, b: &mut Client) {
    a.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        b.jid.to_bare()
    ))
    .await;
    b.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        a.jid.to_bare()
    ))
    .await;
    a.drain();
    b.drain();
}

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

fn publish(id: &str, node: &str, item: &str, payload: &str, opts: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{NS}'><publish node='{node}'><item id='{item}'>{payload}</item></publish>{opts}</pubsub></iq>"
    )
}

fn items_req(id: &str, to: &str, node: &str, extra: &str) -> String {
    format!("<iq type='get' id='{id}' to='{to}'><pubsub xmlns='{NS}'><items node='{node}'{extra}/></pubsub></iq>")
}

fn item_ids(el: &Element) -> Vec<String> {
    el.get_child("pubsub", NS)
        .and_then(|p| p.get_child("items", NS))
        .map(|i| {
            i.children()
                .filter_map(|c| c.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn specific(el: &Element) -> Option<String> {
    el.get_child("error", "jabber:client").and_then(|e| {
        e.children()
            .find(|c| c.ns() == NS_ERRORS)
            .map(|c| c.name().to_owned())
    })
}

fn events<'a>(got: &'a [Element], node: &str) -> Vec<&'a Element> {
    got.iter()
        .filter(|m| {
            m.name() == "message"
                && m.get_child("event", NS_EVENT)
                    .and_then(|e| e.children().next())
                    .is_some_and(|c| c.attr("node") == Some(node))
        })
        .collect()
}

const GEO: &str =
    "<geoloc xmlns='http://jabber.org/protocol/geoloc'><locality>Elsinore</locality></geoloc>";

#[tokio::test]
async fn pep_publish_creates_the_node_and_presence_access_decides_who_reads() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    // bob is subscribed to alice's presence: alice's item for bob is `from`.
    subscribe(&mut bob, &mut alice).await;

    let r = alice
        .ask(
            &publish(
                "p1",
                "http://jabber.org/protocol/geoloc",
                "current",
                GEO,
                "",
            ),
            "p1",
        )
        .await;
    assert_result(&r);
    let published = r
        .get_child("pubsub", NS)
        .and_then(|p| p.get_child("publish", NS))
        .and_then(|p| p.get_child("item", NS))
        .and_then(|i| i.attr("id"));
    assert_eq!(published, Some("current"));
    let stored = s
        .storage()
        .pubsub
        .get_node(
            PubSubService::Account {
                domain: D,
                user: "alice",
            },
            "http://jabber.org/protocol/geoloc",
        )
        .await
        .expect("read")
        .expect("auto-created");
    assert!(stored.config.contains("\"presence\""), "{}", stored.config);

    // The owner and a presence subscriber read; an outsider is refused as §6.5.9.3 says.
    for (who, ok) in [(&mut alice, true), (&mut bob, true)] {
        let r = who
            .ask(
                &items_req(
                    "i",
                    "alice@example.org",
                    "http://jabber.org/protocol/geoloc",
                    "",
                ),
                "i",
            )
            .await;
        assert_eq!(r.attr("type") == Some("result"), ok, "{r:?}");
        assert_eq!(item_ids(&r), vec!["current"]);
    }
    let r = carol
        .ask(
            &items_req(
                "i",
                "alice@example.org",
                "http://jabber.org/protocol/geoloc",
                "",
            ),
            "i",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAuthorized));
    assert_eq!(
        specific(&r).as_deref(),
        Some("presence-subscription-required")
    );

    // Someone else's PEP is not theirs to publish to.
    let r = bob
        .ask(
            &format!("<iq type='set' id='x' to='alice@example.org'><pubsub xmlns='{NS}'><publish node='n'><item id='1'>{GEO}</item></publish></pubsub></iq>"),
            "x",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    // An unknown node of another account.
    let r = bob
        .ask(&items_req("i", "alice@example.org", "nope", ""), "i")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::ItemNotFound));
}

#[tokio::test]
async fn publish_options_set_a_new_node_and_are_checked_against_an_existing_one() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let devicelist = "eu.siacs.conversations.axolotl.devicelist";
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>";
    let open = options(&[("pubsub#access_model", "open")]);
    let r = alice
        .ask(&publish("p1", devicelist, "current", list, &open), "p1")
        .await;
    assert_result(&r);
    // Open: anyone reads the device list, as OMEMO needs.
    let r = carol
        .ask(&items_req("i", "alice@example.org", devicelist, ""), "i")
        .await;
    assert_result(&r);
    assert_eq!(item_ids(&r), vec!["current"]);

    // The same precondition again is met; a different one is not (§7.1.5: conflict with
    // precondition-not-met), and nothing is published.
    let r = alice
        .ask(&publish("p2", devicelist, "current", list, &open), "p2")
        .await;
    assert_result(&r);
    let presence = options(&[("pubsub#access_model", "presence")]);
    let r = alice
        .ask(&publish("p3", devicelist, "other", list, &presence), "p3")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Conflict));
    assert_eq!(specific(&r).as_deref(), Some("precondition-not-met"));
    // Booleans by meaning, and unknown fields refused.
    let r = alice
        .ask(
            &publish(
                "p4",
                devicelist,
                "current",
                list,
                &options(&[("pubsub#persist_items", "true")]),
            ),
            "p4",
        )
        .await;
    assert_result(&r);
    let r = alice
        .ask(
            &publish(
                "p5",
                devicelist,
                "current",
                list,
                &options(&[("pubsub#frobnicate", "1")]),
            ),
            "p5",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Conflict));
    let r = carol
        .ask(&items_req("i2", "alice@example.org", devicelist, ""), "i2")
        .await;
    assert_eq!(item_ids(&r), vec!["current"]);

    // A form of the wrong type is a bad request.
    let bad = "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:wrong</value></field></x></publish-options>";
    let r = alice
        .ask(&publish("p6", devicelist, "current", list, bad), "p6")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::BadRequest));
}

#[tokio::test]
async fn max_items_keeps_the_newest_and_retrieval_pages() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let opts = options(&[("pubsub#max_items", "3")]);
    for i in 1..=5 {
        let r = alice
            .ask(
                &publish(
                    "p",
                    "urn:xmpp:bookmarks:1",
                    &format!("room{i}@muc"),
                    "<conference xmlns='urn:xmpp:bookmarks:1'/>",
                    &opts,
                ),
                "p",
            )
            .await;
        assert_result(&r);
    }
    let r = alice
        .ask(
            &items_req("i", "alice@example.org", "urn:xmpp:bookmarks:1", ""),
            "i",
        )
        .await;
    assert_eq!(item_ids(&r), vec!["room5@muc", "room4@muc", "room3@muc"]);
    let r = alice
        .ask(
            &items_req(
                "i",
                "alice@example.org",
                "urn:xmpp:bookmarks:1",
                " max_items='1'",
            ),
            "i",
        )
        .await;
    assert_eq!(item_ids(&r), vec!["room5@muc"]);
    // By id, and an RSM page after the newest.
    let r = alice
        .ask(
            &format!("<iq type='get' id='b'><pubsub xmlns='{NS}'><items node='urn:xmpp:bookmarks:1'><item id='room3@muc'/><item id='gone'/></items></pubsub></iq>"),
            "b",
        )
        .await;
    assert_eq!(item_ids(&r), vec!["room3@muc"]);
    let r = alice
        .ask(
            &format!("<iq type='get' id='r'><pubsub xmlns='{NS}'><items node='urn:xmpp:bookmarks:1'/><set xmlns='http://jabber.org/protocol/rsm'><max>1</max><after>room5@muc</after></set></pubsub></iq>"),
            "r",
        )
        .await;
    assert_eq!(item_ids(&r), vec!["room4@muc"]);
    let set = r
        .get_child("pubsub", NS)
        .and_then(|p| p.get_child("set", "http://jabber.org/protocol/rsm"))
        .expect("rsm");
    assert_eq!(
        set.get_child("count", "http://jabber.org/protocol/rsm")
            .map(Element::text)
            .as_deref(),
        Some("3")
    );

    // Lowering max_items trims the node at once, keeping the newest.
    let r = alice
        .ask(
            &format!("<iq type='set' id='c'><pubsub xmlns='{NS_OWNER}'><configure node='urn:xmpp:bookmarks:1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#max_items'><value>1</value></field></x></configure></pubsub></iq>"),
            "c",
        )
        .await;
    assert_result(&r);
    let r = alice
        .ask(
            &items_req("i", "alice@example.org", "urn:xmpp:bookmarks:1", ""),
            "i",
        )
        .await;
    assert_eq!(item_ids(&r), vec!["room5@muc"]);

    // max: the service's ceiling, accepted as a precondition once set.
    let max = options(&[("pubsub#max_items", "max")]);
    let r = alice
        .ask(
            &publish(
                "m",
                "urn:xmpp:bookmarks:1",
                "x",
                "<conference xmlns='urn:xmpp:bookmarks:1'/>",
                &max,
            ),
            "m",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Conflict));
}

#[tokio::test]
async fn subscribers_get_notifications_retractions_and_deletion() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let node = "urn:xmpp:microblog:0";
    let open = options(&[("pubsub#access_model", "open")]);
    let r = alice
        .ask(
            &publish(
                "p1",
                node,
                "first",
                "<entry xmlns='http://www.w3.org/2005/Atom'/>",
                &open,
            ),
            "p1",
        )
        .await;
    assert_result(&r);
    let r = carol
        .ask(
            &format!("<iq type='set' id='s' to='alice@example.org'><pubsub xmlns='{NS}'><subscribe node='{node}' jid='carol@example.org/c'/></pubsub></iq>"),
            "s",
        )
        .await;
    assert_result(&r);
    let sub = r
        .get_child("pubsub", NS)
        .and_then(|p| p.get_child("subscription", NS))
        .expect("subscription");
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    // The last item follows the subscription (§6.1.7).
    let got = carol.drain_at_least(1).await;
    assert_eq!(events(&got, node).len(), 1, "{got:?}");

    alice
        .send(&publish(
            "p2",
            node,
            "second",
            "<entry xmlns='http://www.w3.org/2005/Atom'><title>hi</title></entry>",
            "",
        ))
        .await;
    let got = carol.drain_at_least(1).await;
    let ev = events(&got, node);
    assert_eq!(ev.len(), 1, "{got:?}");
    assert_eq!(ev[0].attr("from"), Some("alice@example.org"));
    assert_eq!(ev[0].attr("type"), Some("headline"));
    let item = ev[0]
        .get_child("event", NS_EVENT)
        .and_then(|e| e.get_child("items", NS_EVENT))
        .and_then(|i| i.get_child("item", NS_EVENT))
        .expect("item");
    assert_eq!(item.attr("id"), Some("second"));
    assert!(item
        .get_child("entry", "http://www.w3.org/2005/Atom")
        .is_some());

    // Retract with notify.
    let r = alice
        .ask(
            &format!("<iq type='set' id='rt'><pubsub xmlns='{NS}'><retract node='{node}' notify='true'><item id='second'/></retract></pubsub></iq>"),
            "rt",
        )
        .await;
    assert_result(&r);
    let got = carol.drain_at_least(1).await;
    assert!(
        events(&got, node).iter().any(|m| m
            .get_child("event", NS_EVENT)
            .and_then(|e| e.get_child("items", NS_EVENT))
            .and_then(|i| i.get_child("retract", NS_EVENT))
            .is_some()),
        "{got:?}"
    );
    // Retracting it again: item-not-found.
    let r = alice
        .ask(
            &format!("<iq type='set' id='rt2'><pubsub xmlns='{NS}'><retract node='{node}'><item id='second'/></retract></pubsub></iq>"),
            "rt2",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::ItemNotFound));

    // Carol's own subscriptions; then the node is deleted and she hears of it.
    let r = carol
        .ask(&format!("<iq type='get' id='ss' to='alice@example.org'><pubsub xmlns='{NS}'><subscriptions/></pubsub></iq>"), "ss")
        .await;
    assert_result(&r);
    let r = alice
        .ask(&format!("<iq type='set' id='d'><pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub></iq>"), "d")
        .await;
    assert_result(&r);
    let got = carol.drain_at_least(1).await;
    assert!(
        got.iter().any(|m| m
            .get_child("event", NS_EVENT)
            .and_then(|e| e.get_child("delete", NS_EVENT))
            .is_some()),
        "{got:?}"
    );
    let r = carol
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::ItemNotFound));
}

#[tokio::test]
async fn pep_disco_shows_identity_and_visible_nodes() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    alice
        .send(&publish(
            "p",
            "urn:xmpp:avatar:metadata",
            "h",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            &options(&[("pubsub#access_model", "open")]),
        ))
        .await;
    alice
        .send(&publish(
            "p",
            "http://jabber.org/protocol/geoloc",
            "h",
            GEO,
            "",
        ))
        .await;
    alice.drain();
    let r = alice
        .ask("<iq type='get' id='d' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d")
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    assert!(q.children().any(|c| c.name() == "identity"
        && c.attr("category") == Some("pubsub")
        && c.attr("type") == Some("pep")));
    assert!(q
        .children()
        .any(|c| c.attr("var") == Some("http://jabber.org/protocol/pubsub#publish-options")));
    // Carol sees only the open node; alice sees both.
    let nodes = |r: &Element| -> Vec<String> {
        r.get_child("query", "http://jabber.org/protocol/disco#items")
            .map(|q| {
                q.children()
                    .filter_map(|c| c.attr("node").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let r = carol
        .ask("<iq type='get' id='i' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "i")
        .await;
    assert_eq!(nodes(&r), vec!["urn:xmpp:avatar:metadata"]);
    let r = alice
        .ask("<iq type='get' id='i' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "i")
        .await;
    assert_eq!(nodes(&r).len(), 2);
    // A node's info: identity pubsub/leaf and the meta-data form.
    let r = carol
        .ask("<iq type='get' id='n' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:xmpp:avatar:metadata'/></iq>", "n")
        .await;
    assert_result(&r);
    let r = carol
        .ask("<iq type='get' id='n' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info' node='http://jabber.org/protocol/geoloc'/></iq>", "n")
        .await;
    assert_eq!(r.attr("type"), Some("error"));
}

#[tokio::test]
async fn whitelist_and_roster_access_and_configuration() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    let node = "urn:example:private";
    alice
        .send(&publish(
            "p",
            node,
            "1",
            "<x xmlns='urn:example'/>",
            &options(&[("pubsub#access_model", "whitelist")]),
        ))
        .await;
    alice.drain();
    let r = dave
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAllowed));
    assert_eq!(specific(&r).as_deref(), Some("closed-node"));
    // Alice makes dave a member: he reads.
    let r = alice
        .ask(&format!("<iq type='set' id='a'><pubsub xmlns='{NS_OWNER}'><affiliations node='{node}'><affiliation jid='dave@example.org' affiliation='member'/></affiliations></pubsub></iq>"), "a")
        .await;
    assert_result(&r);
    let r = dave
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_result(&r);
    // ...and cannot configure.
    let r = dave
        .ask(&format!("<iq type='get' id='c' to='alice@example.org'><pubsub xmlns='{NS_OWNER}'><configure node='{node}'/></pubsub></iq>"), "c")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));

    // Alice switches the node to roster access for the group "friends"; dave is not in it.
    let r = alice
        .ask(&format!("<iq type='get' id='c'><pubsub xmlns='{NS_OWNER}'><configure node='{node}'/></pubsub></iq>"), "c")
        .await;
    assert_result(&r);
    let r = alice
        .ask(
            &format!("<iq type='set' id='c2'><pubsub xmlns='{NS_OWNER}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>roster</value></field><field var='pubsub#roster_groups_allowed'><value>friends</value></field></x></configure></pubsub></iq>"),
            "c2",
        )
        .await;
    assert_result(&r);
    let r = alice
        .ask(&format!("<iq type='set' id='a2'><pubsub xmlns='{NS_OWNER}'><affiliations node='{node}'><affiliation jid='dave@example.org' affiliation='none'/></affiliations></pubsub></iq>"), "a2")
        .await;
    assert_result(&r);
    let r = dave
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_eq!(specific(&r).as_deref(), Some("not-in-roster-group"));
    alice
        .send("<iq type='set' id='ro'><query xmlns='jabber:iq:roster'><item jid='dave@example.org'><group>friends</group></item></query></iq>")
        .await;
    alice.drain();
    let r = dave
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_result(&r);

    // A bad value leaves the configuration as it was (not-acceptable).
    let r = alice
        .ask(
            &format!("<iq type='set' id='c3'><pubsub xmlns='{NS_OWNER}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>open</value></field><field var='pubsub#max_items'><value>-3</value></field></x></configure></pubsub></iq>"),
            "c3",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));
    let r = dave
        .ask(&items_req("i", "alice@example.org", node, ""), "i")
        .await;
    assert_result(&r);
}

#[tokio::test]
async fn the_pubsub_service_owner_use_cases() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let svc = "pubsub.example.org";
    // The host lists the service.
    let r = alice
        .ask("<iq type='get' id='h' to='example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "h")
        .await;
    assert!(format!("{r:?}").contains(svc));
    let r = alice
        .ask(&format!("<iq type='get' id='i' to='{svc}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"), "i")
        .await;
    assert!(format!("{r:?}").contains("pubsub#publish"), "{r:?}");
    assert!(!format!("{r:?}").contains("pubsub#collections"));

    // Create and configure (§8.1.3), then an instant node (§8.1.2).
    let r = alice
        .ask(&format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='news'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#title'><value>News</value></field></x></configure></pubsub></iq>"), "c")
        .await;
    assert_result(&r);
    let r = alice
        .ask(&format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='news'/></pubsub></iq>"), "c")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Conflict));
    let r = alice
        .ask(
            &format!(
                "<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create/></pubsub></iq>"
            ),
            "c",
        )
        .await;
    assert_result(&r);
    assert!(r
        .get_child("pubsub", NS)
        .and_then(|p| p.get_child("create", NS))
        .and_then(|c| c.attr("node"))
        .is_some());

    // Bob subscribes; bob may not publish (publishers model) until made a publisher.
    let r = bob
        .ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='news' jid='bob@example.org'/></pubsub></iq>"), "s")
        .await;
    assert_result(&r);
    let r = bob
        .ask(&format!("<iq type='set' id='p' to='{svc}'><pubsub xmlns='{NS}'><publish node='news'><item id='1'><entry xmlns='http://www.w3.org/2005/Atom'/></item></publish></pubsub></iq>"), "p")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    // Subscribing someone else is refused (§6.1.3.1).
    let r = bob
        .ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='news' jid='carol@example.org'/></pubsub></iq>"), "s")
        .await;
    assert_eq!(specific(&r).as_deref(), Some("invalid-jid"));

    let r = alice
        .ask(&format!("<iq type='set' id='p' to='{svc}'><pubsub xmlns='{NS}'><publish node='news'><item id='1'><entry xmlns='http://www.w3.org/2005/Atom'/></item></publish></pubsub></iq>"), "p")
        .await;
    assert_result(&r);
    let got = bob.drain_at_least(1).await;
    let ev = events(&got, "news");
    assert_eq!(ev.len(), 1, "{got:?}");
    assert_eq!(ev[0].attr("from"), Some(svc));

    // Owner: subscriptions and affiliations lists; bob cannot see them.
    let r = alice
        .ask(&format!("<iq type='get' id='ls' to='{svc}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='news'/></pubsub></iq>"), "ls")
        .await;
    assert!(format!("{r:?}").contains("bob@example.org"), "{r:?}");
    let r = bob
        .ask(&format!("<iq type='get' id='ls' to='{svc}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='news'/></pubsub></iq>"), "ls")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    let r = alice
        .ask(&format!("<iq type='get' id='la' to='{svc}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'/></pubsub></iq>"), "la")
        .await;
    assert!(format!("{r:?}").contains("alice@example.org"), "{r:?}");
    // The last owner cannot leave (§8.9.2.4).
    let r = alice
        .ask(&format!("<iq type='set' id='la' to='{svc}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'><affiliation jid='alice@example.org' affiliation='none'/></affiliations></pubsub></iq>"), "la")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));
    // Bob becomes an outcast: his subscription goes and he reads nothing.
    let r = alice
        .ask(&format!("<iq type='set' id='o' to='{svc}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'><affiliation jid='bob@example.org' affiliation='outcast'/></affiliations></pubsub></iq>"), "o")
        .await;
    assert_result(&r);
    let r = bob.ask(&items_req("i", svc, "news", ""), "i").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));

    // Purge and delete.
    let r = alice
        .ask(&format!("<iq type='set' id='pu' to='{svc}'><pubsub xmlns='{NS_OWNER}'><purge node='news'/></pubsub></iq>"), "pu")
        .await;
    assert_result(&r);
    let r = alice.ask(&items_req("i", svc, "news", ""), "i").await;
    assert!(item_ids(&r).is_empty());
    let r = bob
        .ask(&format!("<iq type='set' id='d' to='{svc}'><pubsub xmlns='{NS_OWNER}'><delete node='news'/></pubsub></iq>"), "d")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    let r = alice
        .ask(&format!("<iq type='set' id='d' to='{svc}'><pubsub xmlns='{NS_OWNER}'><delete node='news'/></pubsub></iq>"), "d")
        .await;
    assert_result(&r);
    let r = alice
        .ask(&format!("<iq type='set' id='d' to='{svc}'><pubsub xmlns='{NS_OWNER}'><delete node='news'/></pubsub></iq>"), "d")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::ItemNotFound));
}

#[tokio::test]
async fn authorize_nodes_wait_for_the_owner() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let svc = "pubsub.example.org";
    let r = alice
        .ask(&format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='club'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>authorize</value></field></x></configure></pubsub></iq>"), "c")
        .await;
    assert_result(&r);
    let r = bob
        .ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='club' jid='bob@example.org/b'/></pubsub></iq>"), "s")
        .await;
    let state = r
        .get_child("pubsub", NS)
        .and_then(|p| p.get_child("subscription", NS))
        .and_then(|s| s.attr("subscription"));
    assert_eq!(state, Some("pending"));
    // The owner is asked (§8.6) with a form.
    let got = alice.drain_at_least(1).await;
    assert!(
        format!("{got:?}").contains("subscribe_authorization"),
        "{got:?}"
    );
    let r = bob.ask(&items_req("i", svc, "club", ""), "i").await;
    assert_eq!(specific(&r).as_deref(), Some("not-subscribed"));
    // Approved through the owner's subscription management (§8.8.2).
    let r = alice
        .ask(&format!("<iq type='set' id='ap' to='{svc}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='club'><subscription jid='bob@example.org/b' subscription='subscribed'/></subscriptions></pubsub></iq>"), "ap")
        .await;
    assert_result(&r);
    let r = bob.ask(&items_req("i", svc, "club", ""), "i").await;
    assert_result(&r);
}

#[tokio::test]
async fn limits_refuse_with_the_xep_errors() {
    let s = server_with("[pep]\nmax_nodes = 2\nmax_item_bytes = 200\npublish_burst = 5\npublish_interval_ms = 60000\n", "").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let r = alice
        .ask(
            &publish(
                "big",
                "n1",
                "1",
                &format!("<x xmlns='urn:example'>{}</x>", "a".repeat(300)),
                "",
            ),
            "big",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));
    assert_eq!(specific(&r).as_deref(), Some("payload-too-big"));
    for n in ["n1", "n2"] {
        assert_result(
            &alice
                .ask(&publish("p", n, "1", "<x xmlns='urn:example'/>", ""), "p")
                .await,
        );
    }
    let r = alice
        .ask(
            &publish("p", "n3", "1", "<x xmlns='urn:example'/>", ""),
            "p",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAllowed));
    assert_eq!(specific(&r).as_deref(), Some("max-nodes-exceeded"));
    // Two payloads in one item; an item without payload.
    let r = alice
        .ask(
            &publish("p", "n1", "1", "<x xmlns='urn:a'/><y xmlns='urn:b'/>", ""),
            "p",
        )
        .await;
    assert_eq!(specific(&r).as_deref(), Some("invalid-payload"));
    // The burst is spent: publishing too fast is refused.
    let mut refused = false;
    for _ in 0..5 {
        let r = alice
            .ask(
                &publish("p", "n1", "1", "<x xmlns='urn:example'/>", ""),
                "p",
            )
            .await;
        refused |= condition(&r) == Some(StanzaErrorCondition::ResourceConstraint);
    }
    assert!(refused);
}

// ---- notifications by entity capabilities (XEP-0163 §4 with XEP-0115) ----------------------

const CAPS_NODE: &str = "https://client.example";

/// The disco#info answer of a client with these features, and its verification string.
fn caps_answer(features: &[&str]) -> (String, String) {
    let mut body = String::from("<identity category='client' type='pc' name='t'/>");
    for f in features {
        body.push_str(&format!("<feature var='{f}'/>"));
    }
    let query = rookery_xml::parse_element(&format!(
        "<query xmlns='http://jabber.org/protocol/disco#info'>{body}</query>"
    ))
    .expect("query");
    let ver = rookery_modules::caps::CapsInfo::from_disco_info(&query)
        .expect("info")
        .ver(rookery_modules::caps::HashAlgo::Sha1);
    (body, ver)
}

/// Sends available presence with caps and answers the server's disco#info query, if one
/// comes (a verification string already known is not asked again). Returns what else came.
async fn present_with_caps(client: &mut Client, features: &[&str]) -> Vec<Element> {
    let (body, ver) = caps_answer(features);
    client
        .send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
        ))
        .await;
    let mut other = Vec::new();
    for _ in 0..30 {
        for el in client.drain() {
            let is_query = el.name() == "iq"
                && el.attr("type") == Some("get")
                && el
                    .get_child("query", "http://jabber.org/protocol/disco#info")
                    .is_some();
            if is_query {
                let id = el.attr("id").unwrap_or_default().to_owned();
                let from = el.attr("from").unwrap_or_default().to_owned();
                client
                    .send(&format!(
                        "<iq type='result' id='{id}' to='{from}'><query xmlns='http://jabber.org/protocol/disco#info' node='{CAPS_NODE}#{ver}'>{body}</query></iq>"
                    ))
                    .await;
            } else {
                other.push(el);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    other
}

#[tokio::test]
async fn notifications_follow_notify_interest_and_the_last_item_comes_on_presence() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    for c in [&mut bob, &mut carol] {
        subscribe(c, &mut alice).await;
        subscribe(&mut alice, c).await;
    }
    let geo = "http://jabber.org/protocol/geoloc";
    let notify = format!("{geo}+notify");
    // bob asks for geoloc, carol for nothing; dave (no subscription) asks for it too.
    present_with_caps(&mut bob, &[&notify]).await;
    present_with_caps(&mut carol, &["urn:xmpp:ping"]).await;
    present_with_caps(&mut dave, &[&notify]).await;
    alice.drain();

    let r = alice
        .ask(&publish("p1", geo, "current", GEO, ""), "p1")
        .await;
    assert_result(&r);
    let got = bob.drain_at_least(1).await;
    assert_eq!(events(&got, geo).len(), 1, "{got:?}");
    assert!(events(&carol.drain(), geo).is_empty());
    // dave may not read a presence-access node: interest is not access.
    assert!(events(&dave.drain(), geo).is_empty());

    // A second resource of bob's with the same caps (already verified: no query) gets the
    // last item when it comes online (§4.3.2); the first does not get it again.
    let mut bob2 = Client::bind(&s, "bob@example.org/phone").await;
    let got = present_with_caps(&mut bob2, &[&notify]).await;
    let last = events(&got, geo);
    assert_eq!(last.len(), 1, "{got:?}");
    assert!(
        last[0].get_child("delay", "urn:xmpp:delay").is_some(),
        "the last item carries its time: {:?}",
        last[0]
    );
    assert!(events(&bob.drain(), geo).is_empty());

    // Alice's own resource with interest gets her publications too.
    let mut alice2 = Client::bind(&s, "alice@example.org/tablet").await;
    present_with_caps(&mut alice2, &[&notify]).await;
    alice.send(&publish("p2", geo, "current", GEO, "")).await;
    assert_eq!(events(&alice2.drain_at_least(1).await, geo).len(), 1);

    // Bob goes offline: nothing is sent to him any more.
    bob.send("<presence type='unavailable'/>").await;
    bob2.send("<presence type='unavailable'/>").await;
    bob.drain();
    bob2.drain();
    alice.send(&publish("p3", geo, "current", GEO, "")).await;
    assert!(events(&bob.drain(), geo).is_empty());
    assert!(events(&bob2.drain(), geo).is_empty());
}

#[tokio::test]
async fn a_refused_publication_auto_creates_no_node() {
    let s = server_with(
        "[pep]\nmax_item_bytes = 200\n",
        "[host.pubsub]\nmax_item_bytes = 200\n",
    )
    .await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let big = format!("<x xmlns='urn:example'>{}</x>", "a".repeat(300));
    let pep = PubSubService::Account {
        domain: D,
        user: "alice",
    };
    // Too big, two payloads, no payload: each refused, and no PEP node is left behind.
    for (node, payload, error) in [
        ("n1", big.as_str(), "payload-too-big"),
        (
            "n2",
            "<x xmlns='urn:a'/><y xmlns='urn:b'/>",
            "invalid-payload",
        ),
        ("n3", "", "payload-required"),
    ] {
        let r = alice.ask(&publish("p", node, "1", payload, ""), "p").await;
        assert_eq!(specific(&r).as_deref(), Some(error), "{r:?}");
        let stored = s.storage().pubsub.get_node(pep, node).await.expect("read");
        assert!(stored.is_none(), "a refused publication created {node}");
    }
    // The same on the service domain, where local accounts may auto-create nodes.
    let svc = "pubsub.example.org";
    let r = alice
        .ask(
            &format!("<iq type='set' id='p' to='{svc}'><pubsub xmlns='{NS}'><publish node='auto'><item id='1'>{big}</item></publish></pubsub></iq>"),
            "p",
        )
        .await;
    assert_eq!(specific(&r).as_deref(), Some("payload-too-big"), "{r:?}");
    let stored = s
        .storage()
        .pubsub
        .get_node(PubSubService::Domain(svc), "auto")
        .await
        .expect("read");
    assert!(
        stored.is_none(),
        "a refused publication created a service node"
    );
    // An acceptable one still creates its node.
    assert_result(
        &alice
            .ask(
                &publish("p", "n1", "1", "<x xmlns='urn:example'/>", ""),
                "p",
            )
            .await,
    );
    assert!(s
        .storage()
        .pubsub
        .get_node(pep, "n1")
        .await
        .expect("read")
        .is_some());
}

fn error_type(el: &Element) -> Option<String> {
    el.get_child("error", "jabber:client")
        .and_then(|e| e.attr("type"))
        .map(str::to_owned)
}

fn deliver_option(el: &Element) -> Option<String> {
    let x = el
        .get_child("pubsub", NS)?
        .get_child("options", NS)?
        .get_child("x", "jabber:x:data")?;
    x.children()
        .find(|f| f.attr("var") == Some("pubsub#deliver"))?
        .get_child("value", "jabber:x:data")
        .map(|v| v.text())
}

#[tokio::test]
async fn a_subscriptions_options_are_read_and_changed() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let svc = "pubsub.example.org";
    assert_result(
        &alice
            .ask(&format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='news'/></pubsub></iq>"), "c")
            .await,
    );
    assert_result(
        &bob.ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='news' jid='bob@example.org'/></pubsub></iq>"), "s")
            .await,
    );
    // §6.3.2: the options form of the subscription.
    let get = format!("<iq type='get' id='o' to='{svc}'><pubsub xmlns='{NS}'><options node='news' jid='bob@example.org'/></pubsub></iq>");
    let r = bob.ask(&get, "o").await;
    assert_result(&r);
    assert_eq!(deliver_option(&r).as_deref(), Some("1"), "{r:?}");
    // §6.3.5: delivery off; the publication reaches bob no more.
    let r = bob
        .ask(&format!("<iq type='set' id='o' to='{svc}'><pubsub xmlns='{NS}'><options node='news' jid='bob@example.org'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_options</value></field><field var='pubsub#deliver'><value>0</value></field></x></options></pubsub></iq>"), "o")
        .await;
    assert_result(&r);
    let r = bob.ask(&get, "o").await;
    assert_eq!(deliver_option(&r).as_deref(), Some("0"), "{r:?}");
    assert_result(
        &alice
            .ask(&format!("<iq type='set' id='p' to='{svc}'><pubsub xmlns='{NS}'><publish node='news'><item id='1'><entry xmlns='http://www.w3.org/2005/Atom'/></item></publish></pubsub></iq>"), "p")
            .await,
    );
    assert!(events(&bob.drain(), "news").is_empty());
    // §6.3.4.2: the options of no subscription.
    let r = carol
        .ask(&format!("<iq type='get' id='o' to='{svc}'><pubsub xmlns='{NS}'><options node='news' jid='carol@example.org'/></pubsub></iq>"), "o")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::UnexpectedRequest));
    assert_eq!(specific(&r).as_deref(), Some("not-subscribed"));
    assert_eq!(error_type(&r).as_deref(), Some("modify"));
}

#[tokio::test]
async fn subscription_errors_carry_the_conditions_of_section_6() {
    let s = server_with("", "[host.pubsub]\nmax_subscriptions = 1\n").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let svc = "pubsub.example.org";
    let create = |node: &str, model: &str| {
        format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='{node}'/><configure><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>{model}</value></field></x></configure></pubsub></iq>")
    };
    let subscribe = |node: &str| {
        format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='{node}' jid='bob@example.org'/></pubsub></iq>")
    };
    let state = |r: &Element| {
        r.get_child("pubsub", NS)
            .and_then(|p| p.get_child("subscription", NS))
            .and_then(|s| s.attr("subscription"))
            .map(str::to_owned)
    };
    assert_result(&alice.ask(&create("club", "authorize"), "c").await);
    assert_result(&alice.ask(&create("open", "open"), "c").await);
    alice.drain();

    // §6.2.3.2: unsubscribing without a subscription.
    let r = bob
        .ask(&format!("<iq type='set' id='u' to='{svc}'><pubsub xmlns='{NS}'><unsubscribe node='open' jid='bob@example.org'/></pubsub></iq>"), "u")
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::UnexpectedRequest));
    assert_eq!(specific(&r).as_deref(), Some("not-subscribed"));
    assert_eq!(error_type(&r).as_deref(), Some("cancel"));

    // §6.1.3.7: asking again while the owner has not answered; the owner is asked once.
    let r = bob.ask(&subscribe("club"), "s").await;
    assert_eq!(state(&r).as_deref(), Some("pending"));
    let r = bob.ask(&subscribe("club"), "s").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAuthorized));
    assert_eq!(specific(&r).as_deref(), Some("pending-subscription"));
    let asked = alice.drain_at_least(1).await;
    assert_eq!(
        asked
            .iter()
            .filter(|m| format!("{m:?}").contains("subscribe_authorization"))
            .count(),
        1,
        "{asked:?}"
    );
    // Once approved, subscribing again keeps the approval.
    assert_result(
        &alice
            .ask(&format!("<iq type='set' id='ap' to='{svc}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='club'><subscription jid='bob@example.org' subscription='subscribed'/></subscriptions></pubsub></iq>"), "ap")
            .await,
    );
    let r = bob.ask(&subscribe("club"), "s").await;
    assert_eq!(state(&r).as_deref(), Some("subscribed"), "{r:?}");
    assert_result(&bob.ask(&items_req("i", svc, "club", ""), "i").await);

    // §6.1.3.9: one subscription is bob's limit here.
    let r = bob.ask(&subscribe("open"), "s").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::PolicyViolation));
    assert_eq!(specific(&r).as_deref(), Some("too-many-subscriptions"));
    assert_eq!(error_type(&r).as_deref(), Some("wait"));
}

#[tokio::test]
async fn owner_entries_without_a_state_change_nothing() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let svc = "pubsub.example.org";
    assert_result(
        &alice
            .ask(&format!("<iq type='set' id='c' to='{svc}'><pubsub xmlns='{NS}'><create node='news'/></pubsub></iq>"), "c")
            .await,
    );
    assert_result(
        &bob.ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS}'><subscribe node='news' jid='bob@example.org'/></pubsub></iq>"), "s")
            .await,
    );
    // §8.9.2.1 and §8.8.2.1: an entry without the attribute leaves its value unchanged, and
    // the other entries of the request apply.
    let r = alice
        .ask(&format!("<iq type='set' id='a' to='{svc}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'><affiliation jid='bob@example.org'/><affiliation jid='carol@example.org' affiliation='publisher'/></affiliations></pubsub></iq>"), "a")
        .await;
    assert_result(&r);
    let r = alice
        .ask(&format!("<iq type='set' id='s' to='{svc}'><pubsub xmlns='{NS_OWNER}'><subscriptions node='news'><subscription jid='bob@example.org'/><subscription jid='carol@example.org' subscription='subscribed'/></subscriptions></pubsub></iq>"), "s")
        .await;
    assert_result(&r);
    let key = PubSubService::Domain(svc);
    let affs = s
        .storage()
        .pubsub
        .affiliations(key, "news")
        .await
        .expect("read");
    assert_eq!(
        affs,
        vec![
            ("alice@example.org".to_owned(), "owner".to_owned()),
            ("carol@example.org".to_owned(), "publisher".to_owned()),
        ]
    );
    let subs: Vec<(String, String)> = s
        .storage()
        .pubsub
        .subscriptions(key, "news")
        .await
        .expect("read")
        .into_iter()
        .map(|s| (s.jid, s.state))
        .collect();
    assert_eq!(
        subs,
        vec![
            ("bob@example.org".to_owned(), "subscribed".to_owned()),
            ("carol@example.org".to_owned(), "subscribed".to_owned()),
        ]
    );
}

//! Message archives (XEP-0313), stanza ids (XEP-0359) and archive paging (XEP-0059)
//! through the real router, with in-memory storage.

mod common;

use common::*;
use rookery_core::Server;
use rookery_stanza::StanzaErrorCondition;
use rookery_xml::Element;
use std::sync::Arc;

const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const RSM: &str = "http://jabber.org/protocol/rsm";

fn stanza_ids(msg: &Element) -> Vec<(String, String)> {
    msg.children()
        .filter(|c| c.is("stanza-id", SID))
        .map(|c| {
            (
                c.attr("by").unwrap_or_default().to_owned(),
                c.attr("id").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn messages(got: &[Element]) -> Vec<&Element> {
    got.iter()
        .filter(|e| e.name() == "message" && !e.has_child("result", MAM))
        .collect()
}

/// A query's results and its answer.
struct Answer {
    results: Vec<Element>,
    iq: Element,
}

impl Answer {
    fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| {
                m.get_child("result", MAM)
                    .and_then(|r| r.attr("id"))
                    .expect("result id")
                    .to_owned()
            })
            .collect()
    }
    fn bodies(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| {
                let fwd = m
                    .get_child("result", MAM)
                    .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
                    .expect("forwarded");
                assert!(fwd.has_child("delay", "urn:xmpp:delay"));
                fwd.get_child("message", "jabber:client")
                    .and_then(|m| m.get_child("body", "jabber:client"))
                    .map(Element::text)
                    .unwrap_or_default()
            })
            .collect()
    }
    fn fin(&self) -> &Element {
        self.iq.get_child("fin", MAM).expect("fin")
    }
    fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }
    fn set(&self, name: &str) -> Option<String> {
        self.fin()
            .get_child("set", RSM)
            .and_then(|s| s.get_child(name, RSM))
            .map(Element::text)
    }
    fn first_index(&self) -> Option<String> {
        self.fin()
            .get_child("set", RSM)
            .and_then(|s| s.get_child("first", RSM))
            .and_then(|f| f.attr("index"))
            .map(str::to_owned)
    }
}

/// `<query/>` with these form fields and RSM elements.
async fn query(c: &mut Client, fields: &str, rsm: &str) -> Answer {
    let xml = format!(
        "<iq type='set' id='q'><query xmlns='{MAM}' queryid='qid'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{fields}</x>\
         <set xmlns='{RSM}'>{rsm}</set></query></iq>"
    );
    c.send(&xml).await;
    let got = c.drain();
    let iq = reply(&got, "q").clone();
    let results: Vec<Element> = got
        .into_iter()
        .filter(|e| e.name() == "message" && e.has_child("result", MAM))
        .collect();
    for r in &results {
        assert_eq!(
            r.get_child("result", MAM).and_then(|r| r.attr("queryid")),
            Some("qid")
        );
        assert_eq!(r.attr("to"), Some(c.jid.as_str()));
    }
    Answer { results, iq }
}

async fn chat(from: &Client, to: &str, body: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

async fn pair() -> (Arc<Server>, Client, Client) {
    let s = server().await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    let b = Client::online(&s, "bob@example.org/desk").await;
    (s, a, b)
}

#[tokio::test]
async fn live_messages_carry_the_archive_id_and_both_sides_archive_them() {
    let (_s, mut a, mut b) = pair().await;
    chat(&a, "bob@example.org", "hello").await;
    let got = b.drain();
    let live = messages(&got);
    assert_eq!(live.len(), 1, "{got:?}");
    let sids = stanza_ids(live[0]);
    assert_eq!(sids.len(), 1);
    assert_eq!(sids[0].0, "bob@example.org");
    let bob = query(&mut b, "", "").await;
    assert_eq!(bob.ids(), [sids[0].1.clone()]);
    assert_eq!(bob.bodies(), ["hello"]);
    assert!(bob.complete());
    assert_eq!(bob.set("count").as_deref(), Some("1"));
    // The sender's copy: in alice's archive under her own id, not marked on the wire.
    let alice = query(&mut a, "", "").await;
    assert_eq!(alice.bodies(), ["hello"]);
    assert_ne!(alice.ids(), bob.ids());
    let fwd = alice.results[0]
        .get_child("result", MAM)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("message");
    assert_eq!(fwd.attr("to"), Some("bob@example.org"));
    assert_eq!(fwd.attr("from"), Some("alice@example.org/phone"));
    assert!(a.drain().is_empty());
}

#[tokio::test]
async fn offline_copies_carry_the_archive_id_too() {
    let s = server().await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    chat(&a, "carol@example.org", "later").await;
    let stored = s
        .storage()
        .offline
        .peek_offline("example.org", "carol", 10)
        .await
        .expect("peek");
    assert_eq!(stored.len(), 1);
    let msg = rookery_xml::parse_element(&stored[0].1).expect("xml");
    let sids = stanza_ids(&msg);
    assert_eq!(sids.len(), 1);
    let mut c = Client::bind(&s, "carol@example.org/x").await;
    let carol = query(&mut c, "", "").await;
    assert_eq!(carol.ids(), [sids[0].1.clone()]);
}

#[tokio::test]
async fn forged_stanza_ids_are_removed_and_foreign_ones_kept() {
    let (_s, mut a, mut b) = pair().await;
    a.send(
        "<message to='bob@example.org' type='chat'><body>x</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.org' id='forged'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='example.org' id='forged-host'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.remote.net' id='theirs'/></message>",
    )
    .await;
    let got = b.drain();
    let sids = stanza_ids(messages(&got)[0]);
    assert_eq!(sids.len(), 2, "{sids:?}");
    assert!(sids.contains(&("room@muc.remote.net".into(), "theirs".into())));
    let ours = sids
        .iter()
        .find(|(by, _)| by == "bob@example.org")
        .expect("ours");
    assert_ne!(ours.1, "forged");
    // Nor does the forged id reach the sender's archive.
    let alice = query(&mut a, "", "").await;
    let stored = &alice.results[0];
    let fwd = stored
        .get_child("result", MAM)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("message");
    assert_eq!(
        stanza_ids(fwd),
        [("room@muc.remote.net".into(), "theirs".into())]
    );
}

#[tokio::test]
async fn only_messages_with_content_are_archived() {
    let (_s, mut a, mut b) = pair().await;
    for xml in [
        "<message to='bob@example.org' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message to='bob@example.org' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@example.org' type='chat'><body>transient</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@example.org' type='headline'><body>news</body></message>",
        "<message to='bob@example.org' type='error'><body>oops</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
    ] {
        a.send(xml).await;
    }
    a.send("<message to='bob@example.org'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>").await;
    a.send("<message to='bob@example.org' type='chat'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:example'/></message>").await;
    let got = b.drain();
    let marked: Vec<_> = messages(&got)
        .into_iter()
        .filter(|m| !stanza_ids(m).is_empty())
        .collect();
    assert_eq!(marked.len(), 2, "{got:?}");
    assert_eq!(query(&mut b, "", "").await.results.len(), 2);
    assert_eq!(query(&mut a, "", "").await.results.len(), 2);
}

#[tokio::test]
async fn paging_forwards_and_backwards_visits_every_message_once() {
    let (_s, a, mut b) = pair().await;
    for n in 0..25 {
        chat(&a, "bob@example.org", &format!("m{n:02}")).await;
    }
    b.drain();
    let want: Vec<String> = (0..25).map(|n| format!("m{n:02}")).collect();

    let mut seen = Vec::new();
    let mut rsm = "<max>10</max>".to_owned();
    loop {
        let page = query(&mut b, "", &rsm).await;
        assert_eq!(page.set("count").as_deref(), Some("25"));
        assert_eq!(page.first_index(), Some(seen.len().to_string()));
        assert_eq!(page.set("first"), page.ids().first().cloned());
        assert_eq!(page.set("last"), page.ids().last().cloned());
        seen.extend(page.bodies());
        assert_eq!(page.complete(), seen.len() == 25);
        if page.complete() {
            break;
        }
        rsm = format!(
            "<max>10</max><after>{}</after>",
            page.set("last").expect("last")
        );
    }
    assert_eq!(seen, want);

    let mut seen: Vec<String> = Vec::new();
    let mut rsm = "<max>10</max><before/>".to_owned();
    loop {
        let page = query(&mut b, "", &rsm).await;
        let mut bodies = page.bodies();
        bodies.extend(seen);
        seen = bodies;
        assert_eq!(page.complete(), seen.len() == 25);
        if page.complete() {
            break;
        }
        rsm = format!(
            "<max>10</max><before>{}</before>",
            page.set("first").expect("first")
        );
    }
    assert_eq!(seen, want);

    // flip-page: the same page, newest first.
    b.send(&format!(
        "<iq type='set' id='f'><query xmlns='{MAM}'><set xmlns='{RSM}'><max>3</max><before/></set><flip-page/></query></iq>"
    ))
    .await;
    let got = b.drain();
    let bodies: Vec<String> = got
        .iter()
        .filter_map(|m| m.get_child("result", MAM))
        .filter_map(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .filter_map(|f| f.get_child("message", "jabber:client"))
        .map(|m| {
            m.get_child("body", "jabber:client")
                .map(Element::text)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(bodies, ["m24", "m23", "m22"]);
}

#[tokio::test]
async fn max_is_capped_at_the_configured_page_size() {
    let s = server_with("[archive]\nmax_page_size = 5\ndefault_page_size = 3\n", "").await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    let mut b = Client::online(&s, "bob@example.org/desk").await;
    for n in 0..8 {
        chat(&a, "bob@example.org", &format!("m{n}")).await;
    }
    b.drain();
    let page = query(&mut b, "", "<max>1000</max>").await;
    assert_eq!((page.results.len(), page.complete()), (5, false));
    let page = query(&mut b, "", "").await;
    assert_eq!(page.results.len(), 3);
}

#[tokio::test]
async fn filters_select_the_result_set() {
    let s = server().await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    let a2 = Client::online(&s, "alice@example.org/laptop").await;
    let c = Client::online(&s, "carol@example.org/x").await;
    let mut b = Client::online(&s, "bob@example.org/desk").await;
    chat(&a, "bob@example.org", "a1").await;
    chat(&c, "bob@example.org", "c1").await;
    chat(&a2, "bob@example.org", "a2").await;
    chat(&a, "bob@example.org", "a3").await;
    b.drain();
    let all = query(&mut b, "", "").await;
    let ids = all.ids();

    let with = |jid: &str| format!("<field var='with'><value>{jid}</value></field>");
    assert_eq!(
        query(&mut b, &with("alice@example.org"), "").await.bodies(),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        query(&mut b, &with("alice@example.org/laptop"), "")
            .await
            .bodies(),
        ["a2"]
    );
    assert_eq!(
        query(&mut b, &with("carol@example.org"), "").await.bodies(),
        ["c1"]
    );

    let f = format!(
        "<field var='after-id'><value>{}</value></field><field var='before-id'><value>{}</value></field>",
        ids[0], ids[3]
    );
    assert_eq!(query(&mut b, &f, "").await.bodies(), ["c1", "a2"]);
    let f = format!(
        "<field var='ids'><value>{}</value><value>{}</value></field>",
        ids[3], ids[1]
    );
    assert_eq!(query(&mut b, &f, "").await.bodies(), ["c1", "a3"]);

    // Time: everything is from now; a start in the future selects nothing, an end in the
    // past nothing, and a window around now everything.
    let t = |var: &str, v: &str| format!("<field var='{var}'><value>{v}</value></field>");
    assert_eq!(
        query(&mut b, &t("start", "2999-01-01T00:00:00Z"), "")
            .await
            .results
            .len(),
        0
    );
    assert_eq!(
        query(&mut b, &t("end", "2000-01-01T00:00:00Z"), "")
            .await
            .results
            .len(),
        0
    );
    let window = format!(
        "{}{}",
        t("start", "2000-01-01T00:00:00Z"),
        t("end", "2999-01-01T00:00:00Z")
    );
    assert_eq!(query(&mut b, &window, "").await.results.len(), 4);
}

#[tokio::test]
async fn bad_queries_get_the_specified_errors() {
    let (_s, a, mut b) = pair().await;
    chat(&a, "bob@example.org", "x").await;
    b.drain();
    let cases = [
        (
            "<field var='after-id'><value>nope</value></field>",
            "",
            StanzaErrorCondition::ItemNotFound,
        ),
        (
            "<field var='before-id'><value>nope</value></field>",
            "",
            StanzaErrorCondition::ItemNotFound,
        ),
        (
            "<field var='ids'><value>nope</value></field>",
            "",
            StanzaErrorCondition::ItemNotFound,
        ),
        (
            "",
            "<after>nope</after>",
            StanzaErrorCondition::ItemNotFound,
        ),
        (
            "",
            "<before>nope</before>",
            StanzaErrorCondition::ItemNotFound,
        ),
        (
            "<field var='start'><value>last tuesday</value></field>",
            "",
            StanzaErrorCondition::BadRequest,
        ),
        (
            "<field var='with'><value>a@b@c</value></field>",
            "",
            StanzaErrorCondition::BadRequest,
        ),
        ("", "<max>lots</max>", StanzaErrorCondition::BadRequest),
        (
            "<field var='unknown'><value>1</value></field>",
            "",
            StanzaErrorCondition::FeatureNotImplemented,
        ),
    ];
    for (fields, rsm, want) in cases {
        let ans = query(&mut b, fields, rsm).await;
        assert_eq!(ans.iq.attr("type"), Some("error"), "{fields}{rsm}");
        assert_eq!(condition(&ans.iq), Some(want), "{fields}{rsm}");
        assert!(ans.results.is_empty());
    }
    // Nothing was changed by them.
    assert_eq!(query(&mut b, "", "").await.bodies(), ["x"]);
}

#[tokio::test]
async fn an_archive_is_its_owners_only() {
    let (_s, mut a, _b) = pair().await;
    let r = a
        .ask(
            &format!("<iq type='set' id='x' to='bob@example.org'><query xmlns='{MAM}'/></iq>"),
            "x",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
}

#[tokio::test]
async fn preferences_decide_what_is_archived() {
    let (s, a, mut b) = pair().await;
    let c = Client::online(&s, "carol@example.org/x").await;
    let r = b
        .ask(
            &format!(
                "<iq type='set' id='p'><prefs xmlns='{MAM}' default='never'>\
                 <always><jid>Carol@example.org</jid></always><never/></prefs></iq>"
            ),
            "p",
        )
        .await;
    assert_result(&r);
    let r = b
        .ask(
            &format!("<iq type='get' id='g'><prefs xmlns='{MAM}'/></iq>"),
            "g",
        )
        .await;
    let prefs = r.get_child("prefs", MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("never"));
    let always: Vec<String> = prefs
        .get_child("always", MAM)
        .expect("always")
        .children()
        .map(Element::text)
        .collect();
    assert_eq!(always, ["carol@example.org"]);

    chat(&a, "bob@example.org", "from alice").await;
    chat(&c, "bob@example.org", "from carol").await;
    let got = b.drain();
    let live = messages(&got);
    assert!(stanza_ids(live[0]).is_empty(), "not archived, not marked");
    assert_eq!(stanza_ids(live[1]).len(), 1);
    assert_eq!(query(&mut b, "", "").await.bodies(), ["from carol"]);
    // alice's own archive follows her (default) preferences.
    let mut a = a;
    assert_eq!(query(&mut a, "", "").await.bodies(), ["from alice"]);

    // roster: only contacts in the roster.
    b.ask(
        &format!("<iq type='set' id='p2'><prefs xmlns='{MAM}' default='roster'/></iq>"),
        "p2",
    )
    .await;
    b.ask(
        "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='alice@example.org'/></query></iq>",
        "r",
    )
    .await;
    chat(&a, "bob@example.org", "alice again").await;
    chat(&c, "bob@example.org", "carol again").await;
    b.drain();
    assert_eq!(
        query(&mut b, "", "").await.bodies(),
        ["from carol", "alice again"]
    );

    for bad in [
        "<prefs xmlns='urn:xmpp:mam:2'/>",
        "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
        "<prefs xmlns='urn:xmpp:mam:2' default='always'><always><jid>x@y</jid></always><never><jid>x@y</jid></never></prefs>",
    ] {
        let r = b.ask(&format!("<iq type='set' id='bad'>{bad}</iq>"), "bad").await;
        assert_eq!(r.attr("type"), Some("error"), "{bad}");
    }
    let r = b
        .ask(
            &format!("<iq type='get' id='g2'><prefs xmlns='{MAM}'/></iq>"),
            "g2",
        )
        .await;
    assert_eq!(
        r.get_child("prefs", MAM).and_then(|p| p.attr("default")),
        Some("roster")
    );
}

#[tokio::test]
async fn configured_default_preference_applies_until_the_account_sets_one() {
    let s = server_with("[archive]\ndefault_preference = 'never'\n", "").await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    let mut b = Client::online(&s, "bob@example.org/desk").await;
    chat(&a, "bob@example.org", "x").await;
    b.drain();
    assert!(query(&mut b, "", "").await.results.is_empty());
}

#[tokio::test]
async fn blocked_messages_are_not_archived() {
    let (_s, a, mut b) = pair().await;
    b.ask(
        "<iq type='set' id='bl'><block xmlns='urn:xmpp:blocking'><item jid='alice@example.org'/></block></iq>",
        "bl",
    )
    .await;
    chat(&a, "bob@example.org", "blocked").await;
    assert!(messages(&b.drain()).is_empty());
    assert!(query(&mut b, "", "").await.results.is_empty());
}

#[tokio::test]
async fn form_metadata_and_disco() {
    let (_s, mut a, mut b) = pair().await;
    let r = b
        .ask(
            &format!("<iq type='get' id='f'><query xmlns='{MAM}'/></iq>"),
            "f",
        )
        .await;
    let vars: Vec<&str> = r
        .get_child("query", MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .expect("form")
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert_eq!(
        vars,
        [
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids"
        ]
    );

    let r = b
        .ask(
            &format!("<iq type='get' id='m'><metadata xmlns='{MAM}'/></iq>"),
            "m",
        )
        .await;
    assert_eq!(
        r.get_child("metadata", MAM)
            .expect("metadata")
            .children()
            .count(),
        0
    );
    chat(&a, "bob@example.org", "one").await;
    chat(&a, "bob@example.org", "two").await;
    b.drain();
    let ids = query(&mut b, "", "").await.ids();
    let r = b
        .ask(
            &format!("<iq type='get' id='m2'><metadata xmlns='{MAM}'/></iq>"),
            "m2",
        )
        .await;
    let md = r.get_child("metadata", MAM).expect("metadata");
    assert_eq!(
        md.get_child("start", MAM).and_then(|e| e.attr("id")),
        Some(ids[0].as_str())
    );
    assert_eq!(
        md.get_child("end", MAM).and_then(|e| e.attr("id")),
        Some(ids[1].as_str())
    );
    assert!(md
        .get_child("end", MAM)
        .and_then(|e| e.attr("timestamp"))
        .is_some());

    let r = a
        .ask(
            "<iq type='get' id='d' to='bob@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    let features: Vec<&str> = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("info")
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert!(features.contains(&f), "{features:?}");
    }
}

#[tokio::test]
async fn account_features_follow_the_enabled_modules() {
    let s = server_with("", "modules = ['disco']").await;
    let mut a = Client::bind(&s, "alice@example.org/x").await;
    let r = a
        .ask(
            "<iq type='get' id='d' to='bob@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    assert!(!r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("info")
        .children()
        .any(|f| f.attr("var") == Some(MAM)));
}

#[tokio::test]
async fn retention_purges_old_messages_in_the_background() {
    let s = server_with(
        "[archive]\nretention_days = 1\npurge_interval_secs = 1\npurge_batch = 2\n",
        "",
    )
    .await;
    let old_us = (time::OffsetDateTime::now_utc().unix_timestamp() - 3 * 86_400) * 1_000_000;
    for n in 0..5 {
        s.storage()
            .archive
            .append_archive(
                "example.org",
                "bob",
                &rookery_storage::ArchiveEntry {
                    id: format!("old{n}"),
                    timestamp_us: old_us,
                    with_bare: "alice@example.org".into(),
                    with_resource: String::new(),
                    stanza: "<message xmlns='jabber:client'><body>old</body></message>".into(),
                },
            )
            .await
            .expect("append");
    }
    let a = Client::online(&s, "alice@example.org/phone").await;
    let mut b = Client::online(&s, "bob@example.org/desk").await;
    chat(&a, "bob@example.org", "new").await;
    b.drain();
    let mut bodies = Vec::new();
    for _ in 0..300 {
        bodies = query(&mut b, "", "").await.bodies();
        if bodies == ["new"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(bodies, ["new"]);
}

#[tokio::test]
async fn deleting_the_account_deletes_its_archive() {
    let (s, a, mut b) = pair().await;
    chat(&a, "bob@example.org", "x").await;
    b.drain();
    assert_eq!(query(&mut b, "", "").await.results.len(), 1);
    s.storage()
        .accounts
        .delete_account("example.org", "bob")
        .await
        .expect("delete");
    s.storage()
        .accounts
        .create_account("example.org", "bob", &[])
        .await
        .expect("create");
    assert!(query(&mut b, "", "").await.results.is_empty());
}

#[tokio::test]
async fn preferences_apply_to_every_resource_and_to_later_ones() {
    let s = server().await;
    let a = Client::online(&s, "alice@example.org/phone").await;
    let mut b1 = Client::online(&s, "bob@example.org/one").await;
    let mut b2 = Client::online(&s, "bob@example.org/two").await;
    let r = b1
        .ask(
            &format!("<iq type='set' id='p'><prefs xmlns='{MAM}' default='never'/></iq>"),
            "p",
        )
        .await;
    assert_result(&r);
    chat(&a, "bob@example.org/two", "to two").await;
    let got = b2.drain();
    assert!(stanza_ids(messages(&got)[0]).is_empty(), "{got:?}");
    b1.close().await;
    b2.close().await;
    // A resource bound later reads them from storage.
    let mut b3 = Client::online(&s, "bob@example.org/three").await;
    chat(&a, "bob@example.org", "to three").await;
    let got = b3.drain();
    assert!(stanza_ids(messages(&got)[0]).is_empty(), "{got:?}");
    // And with no resource at all (offline delivery), too.
    b3.close().await;
    chat(&a, "bob@example.org", "offline").await;
    let mut b4 = Client::bind(&s, "bob@example.org/four").await;
    assert!(query(&mut b4, "", "").await.results.is_empty());
    b4.ask(
        &format!("<iq type='set' id='p2'><prefs xmlns='{MAM}' default='always'/></iq>"),
        "p2",
    )
    .await;
    chat(&a, "bob@example.org/four", "now kept").await;
    b4.drain();
    assert_eq!(query(&mut b4, "", "").await.bodies(), ["now kept"]);
}

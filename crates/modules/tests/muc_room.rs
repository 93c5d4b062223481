//! A XEP-0045 room driven as a state machine, without a server: each use case's stanzas in,
//! the exact presence, messages and errors out.

use rookery_modules::muc::config::RoomConfig;
use rookery_modules::muc::room::{Affiliation, Out, Room};
use rookery_modules::muc::MucLimits;
use rookery_stanza::{BareJid, Stanza};
use rookery_xml::Element;
use std::time::{Duration, SystemTime};

const ROOM: &str = "lobby@conference.example.org";

fn stanza(xml: &str) -> Stanza {
    let el = rookery_xml::parse_element(xml).expect("xml");
    Stanza::parse(el).expect("stanza")
}

struct Sent(Vec<(String, Element)>);

impl Sent {
    fn to(&self, jid: &str) -> Vec<&Element> {
        self.0
            .iter()
            .filter(|(t, _)| t == jid)
            .map(|(_, e)| e)
            .collect()
    }
    fn codes(el: &Element) -> Vec<String> {
        el.get_child("x", "http://jabber.org/protocol/muc#user")
            .map(|x| {
                x.children()
                    .filter(|c| c.name() == "status")
                    .filter_map(|c| c.attr("code").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn item(el: &Element) -> Option<&Element> {
        el.get_child("x", "http://jabber.org/protocol/muc#user")
            .and_then(|x| x.get_child("item", "http://jabber.org/protocol/muc#user"))
    }
    fn error(&self, jid: &str) -> Option<String> {
        self.to(jid).into_iter().find_map(|e| {
            (e.attr("type") == Some("error")).then(|| {
                e.get_child("error", "jabber:client")
                    .and_then(|er| er.children().next())
                    .map(|c| c.name().to_owned())
                    .unwrap_or_default()
            })
        })
    }
}

fn run(room: &mut Room, xml: &str) -> Sent {
    run_at(room, xml, SystemTime::now())
}

fn run_at(room: &mut Room, xml: &str, now: SystemTime) -> Sent {
    let (out, _) = room.handle(&stanza(xml), now);
    let mut pairs = Vec::new();
    for o in &out {
        for (to, el) in o.pairs() {
            pairs.push((to.to_string(), el.clone()));
        }
    }
    Sent(pairs)
}

fn join(room: &mut Room, who: &str, nick: &str) -> Sent {
    run(
        room,
        &format!(
            "<presence xmlns='jabber:client' from='{who}' to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ),
    )
}

/// A room created by crone and configured as an instant room.
fn open_room() -> Room {
    let mut room = Room::new(
        BareJid::new(ROOM).expect("jid"),
        RoomConfig::default(),
        MucLimits::default(),
    );
    room.created_by(BareJid::new("crone@example.org").expect("jid"), true);
    join(&mut room, "crone@example.org/desk", "thirdwitch");
    let sent = run(
        &mut room,
        &format!("<iq xmlns='jabber:client' type='set' id='c1' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
    );
    assert!(sent
        .to("crone@example.org/desk")
        .iter()
        .any(|e| e.attr("type") == Some("result")));
    room
}

#[test]
fn creating_a_room_locks_it_until_the_owner_configures_it() {
    let mut room = Room::new(
        BareJid::new(ROOM).expect("jid"),
        RoomConfig::default(),
        MucLimits::default(),
    );
    room.created_by(BareJid::new("crone@example.org").expect("jid"), true);
    let sent = join(&mut room, "crone@example.org/desk", "thirdwitch");
    let own = sent.to("crone@example.org/desk");
    let presence = own
        .iter()
        .find(|e| e.name() == "presence")
        .expect("own presence");
    let codes = Sent::codes(presence);
    assert!(
        codes.contains(&"201".to_owned()) && codes.contains(&"110".to_owned()),
        "{codes:?}"
    );
    assert_eq!(
        Sent::item(presence).and_then(|i| i.attr("affiliation")),
        Some("owner")
    );
    assert_eq!(
        Sent::item(presence).and_then(|i| i.attr("role")),
        Some("moderator")
    );
    // §10.1.1: nobody else gets in while it is locked.
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("item-not-found")
    );
    // The instant room (§10.1.2) opens it.
    run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='c1' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"));
    assert!(!room.is_locked());
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    assert_eq!(sent.error("hag66@shakespeare.lit/pda"), None);
}

#[test]
fn a_newcomer_gets_the_others_then_itself_then_the_subject_and_everyone_hears_of_it() {
    let mut room = open_room();
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let to_hag = sent.to("hag66@shakespeare.lit/pda");
    // First the existing occupant, then its own presence with 110, then the subject.
    assert_eq!(to_hag[0].attr("from"), Some(&*format!("{ROOM}/thirdwitch")));
    assert_eq!(to_hag[1].attr("from"), Some(&*format!("{ROOM}/hag")));
    assert!(Sent::codes(to_hag[1]).contains(&"110".to_owned()));
    let last = to_hag.last().expect("subject");
    assert!(last.name() == "message" && last.get_child("subject", "jabber:client").is_some());
    // The owner (a moderator) sees hag's real JID in a semi-anonymous room.
    let to_crone = sent.to("crone@example.org/desk");
    assert_eq!(to_crone.len(), 1);
    assert_eq!(
        Sent::item(to_crone[0]).and_then(|i| i.attr("jid")),
        Some("hag66@shakespeare.lit/pda")
    );
    // hag (a participant) does not see the owner's.
    assert_eq!(Sent::item(to_hag[0]).and_then(|i| i.attr("jid")), None);
}

#[test]
fn a_taken_nick_is_a_conflict_and_an_empty_one_malformed() {
    let mut room = open_room();
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "thirdwitch");
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("conflict")
    );
    let sent = run(
        &mut room,
        &format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}'/>"),
    );
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("jid-malformed")
    );
}

#[test]
fn a_groupchat_message_is_one_element_for_everyone_including_the_sender() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    let (out, _) = room.handle(
        &stanza(&format!("<message xmlns='jabber:client' type='groupchat' id='m1' from='hag66@shakespeare.lit/pda' to='{ROOM}'><body>Harpier cries</body></message>")),
        SystemTime::now(),
    );
    assert_eq!(out.len(), 1, "one broadcast");
    let Out::Many(el, to) = &out[0] else {
        panic!("a shared broadcast");
    };
    assert_eq!(to.len(), 3);
    assert_eq!(el.attr("from"), Some(&*format!("{ROOM}/hag")));
    assert_eq!(el.attr("id"), Some("m1"), "the reflected copy keeps the id");
    // A non-occupant may not send.
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='stranger@x.org/r' to='{ROOM}'><body>hi</body></message>"));
    assert_eq!(
        sent.error("stranger@x.org/r").as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn history_on_join_honours_maxstanzas_and_seconds() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let t0 = SystemTime::now() - Duration::from_secs(600);
    for i in 0..5 {
        run_at(
            &mut room,
            &format!("<message xmlns='jabber:client' type='groupchat' from='hag66@shakespeare.lit/pda' to='{ROOM}'><body>m{i}</body></message>"),
            t0 + Duration::from_secs(i * 100),
        );
    }
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='wiccarocks@shakespeare.lit/laptop' to='{ROOM}/second'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='2'/></x></presence>"));
    let bodies: Vec<String> = sent
        .to("wiccarocks@shakespeare.lit/laptop")
        .iter()
        .filter_map(|e| {
            e.get_child("body", "jabber:client")
                .map(|b| b.text().to_owned())
        })
        .collect();
    assert_eq!(bodies, ["m3", "m4"]);
    let delayed = sent
        .to("wiccarocks@shakespeare.lit/laptop")
        .into_iter()
        .find(|e| e.get_child("body", "jabber:client").is_some())
        .expect("history");
    assert!(delayed
        .get_child("delay", "urn:xmpp:delay")
        .is_some_and(|d| d.attr("from") == Some(ROOM)));
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='other@shakespeare.lit/x' to='{ROOM}/other'><x xmlns='http://jabber.org/protocol/muc'><history seconds='350'/></x></presence>"));
    let n = sent
        .to("other@shakespeare.lit/x")
        .iter()
        .filter(|e| e.get_child("body", "jabber:client").is_some())
        .count();
    assert_eq!(
        n, 2,
        "messages of the last 350 seconds: m3 (300 s old) and m4"
    );
}

#[test]
fn a_private_message_carries_the_muc_user_marker() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='chat' from='hag66@shakespeare.lit/pda' to='{ROOM}/thirdwitch'><body>psst</body></message>"));
    let pm = sent.to("crone@example.org/desk");
    assert_eq!(pm.len(), 1);
    assert_eq!(pm[0].attr("from"), Some(&*format!("{ROOM}/hag")));
    assert!(pm[0]
        .get_child("x", "http://jabber.org/protocol/muc#user")
        .is_some());
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='chat' from='hag66@shakespeare.lit/pda' to='{ROOM}/nobody'><body>psst</body></message>"));
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("item-not-found")
    );
}

#[test]
fn a_nick_change_is_unavailable_with_303_then_available() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    let to_crone = sent.to("crone@example.org/desk");
    assert_eq!(to_crone.len(), 2);
    assert_eq!(to_crone[0].attr("type"), Some("unavailable"));
    assert!(Sent::codes(to_crone[0]).contains(&"303".to_owned()));
    assert_eq!(
        Sent::item(to_crone[0]).and_then(|i| i.attr("nick")),
        Some("oldhag")
    );
    assert_eq!(to_crone[1].attr("from"), Some(&*format!("{ROOM}/oldhag")));
    assert_eq!(
        room.nick_of(&"hag66@shakespeare.lit/pda".parse().expect("jid")),
        Some("oldhag")
    );
}

#[test]
fn kick_and_ban_remove_with_their_codes_and_a_ban_holds_on_rejoin() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='k' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='hag' role='none'><reason>Avaunt</reason></item></query></iq>"));
    let to_hag = sent.to("hag66@shakespeare.lit/pda");
    assert_eq!(to_hag[0].attr("type"), Some("unavailable"));
    let codes = Sent::codes(to_hag[0]);
    assert!(
        codes.contains(&"307".to_owned()) && codes.contains(&"110".to_owned()),
        "{codes:?}"
    );
    assert!(Sent::item(to_hag[0])
        .and_then(|i| i.get_child("reason", "http://jabber.org/protocol/muc#user"))
        .is_some());
    assert_eq!(room.occupant_count(), 1);
    // A ban.
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='b' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='hag66@shakespeare.lit' affiliation='outcast'/></query></iq>"));
    assert!(Sent::codes(sent.to("hag66@shakespeare.lit/pda")[0]).contains(&"301".to_owned()));
    assert_eq!(
        room.affiliation(&BareJid::new("hag66@shakespeare.lit").expect("jid")),
        Affiliation::Outcast
    );
    let sent = join(&mut room, "hag66@shakespeare.lit/other", "hag2");
    assert_eq!(
        sent.error("hag66@shakespeare.lit/other").as_deref(),
        Some("forbidden")
    );
    // A participant may not kick.
    join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='k2' from='wiccarocks@shakespeare.lit/laptop' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='thirdwitch' role='none'/></query></iq>"));
    assert_eq!(
        sent.error("wiccarocks@shakespeare.lit/laptop").as_deref(),
        Some("forbidden")
    );
}

fn configure(room: &mut Room, fields: &str) -> Sent {
    run(room, &format!("<iq xmlns='jabber:client' type='set' id='cfg' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}</x></query></iq>"))
}

#[test]
fn members_only_password_and_moderation_are_enforced() {
    let mut room = open_room();
    configure(
        &mut room,
        "<field var='muc#roomconfig_membersonly'><value>1</value></field>",
    );
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("registration-required")
    );
    configure(&mut room, "<field var='muc#roomconfig_membersonly'><value>0</value></field><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field><field var='muc#roomconfig_roomsecret'><value>cauldronburn</value></field>");
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("not-authorized")
    );
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}/hag'><x xmlns='http://jabber.org/protocol/muc'><password>cauldronburn</password></x></presence>"));
    assert_eq!(sent.error("hag66@shakespeare.lit/pda"), None);
    configure(
        &mut room,
        "<field var='muc#roomconfig_moderatedroom'><value>1</value></field>",
    );
    // An occupant without affiliation who enters a moderated room is a visitor.
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='wiccarocks@shakespeare.lit/laptop' to='{ROOM}/second'><x xmlns='http://jabber.org/protocol/muc'><password>cauldronburn</password></x></presence>"));
    let own = sent
        .to("wiccarocks@shakespeare.lit/laptop")
        .into_iter()
        .find(|e| Sent::codes(e).contains(&"110".to_owned()))
        .expect("own presence");
    assert_eq!(
        Sent::item(own).and_then(|i| i.attr("role")),
        Some("visitor")
    );
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='wiccarocks@shakespeare.lit/laptop' to='{ROOM}'><body>hi</body></message>"));
    assert_eq!(
        sent.error("wiccarocks@shakespeare.lit/laptop").as_deref(),
        Some("forbidden")
    );
}

#[test]
fn a_configuration_change_is_announced_with_104() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = configure(
        &mut room,
        "<field var='muc#roomconfig_whois'><value>anyone</value></field>",
    );
    let m = sent.to("hag66@shakespeare.lit/pda");
    assert_eq!(m.len(), 1);
    let codes = Sent::codes(m[0]);
    assert!(
        codes.contains(&"104".to_owned()) && codes.contains(&"172".to_owned()),
        "{codes:?}"
    );
}

#[test]
fn destroying_a_room_tells_everyone_the_alternate_venue() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let (out, fx) = room.handle(
        &stanza(&format!("<iq xmlns='jabber:client' type='set' id='d' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='coven@chat.shakespeare.lit'><reason>Macbeth doth come.</reason></destroy></query></iq>")),
        SystemTime::now(),
    );
    assert!(fx.destroyed);
    let to_hag: Vec<_> = out
        .iter()
        .flat_map(|o| o.pairs())
        .filter(|(t, _)| t.as_str() == "hag66@shakespeare.lit/pda")
        .collect();
    let destroy = to_hag[0]
        .1
        .get_child("x", "http://jabber.org/protocol/muc#user")
        .and_then(|x| x.get_child("destroy", "http://jabber.org/protocol/muc#user"))
        .expect("destroy");
    assert_eq!(destroy.attr("jid"), Some("coven@chat.shakespeare.lit"));
    assert_eq!(room.occupant_count(), 0);
}

#[test]
fn a_temporary_room_ends_with_its_last_occupant() {
    let mut room = open_room();
    let (_, fx) = room.handle(
        &stanza(&format!("<presence xmlns='jabber:client' type='unavailable' from='crone@example.org/desk' to='{ROOM}/thirdwitch'/>")),
        SystemTime::now(),
    );
    assert!(fx.destroyed);
}

#[test]
fn only_moderators_change_the_subject_unless_the_room_allows_it() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='hag66@shakespeare.lit/pda' to='{ROOM}'><subject>Fire Burn</subject></message>"));
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("forbidden")
    );
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='crone@example.org/desk' to='{ROOM}'><subject>Fire Burn</subject></message>"));
    assert_eq!(sent.to("hag66@shakespeare.lit/pda").len(), 1);
    // A newcomer gets it as the last stanza of the join.
    let sent = join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    let last = *sent
        .to("wiccarocks@shakespeare.lit/laptop")
        .last()
        .expect("subject");
    assert_eq!(
        last.get_child("subject", "jabber:client")
            .map(|s| s.text().to_owned())
            .as_deref(),
        Some("Fire Burn")
    );
    assert_eq!(last.attr("from"), Some(&*format!("{ROOM}/thirdwitch")));
}

#[test]
fn a_registered_nick_is_reserved_for_its_owner() {
    let mut room = open_room();
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='r' from='hag66@shakespeare.lit/pda' to='{ROOM}'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field><field var='muc#register_roomnick'><value>thirdhag</value></field></x></query></iq>"));
    assert!(sent
        .to("hag66@shakespeare.lit/pda")
        .iter()
        .any(|e| e.attr("type") == Some("result")));
    assert_eq!(
        room.affiliation(&BareJid::new("hag66@shakespeare.lit").expect("jid")),
        Affiliation::Member
    );
    let sent = join(&mut room, "wiccarocks@shakespeare.lit/laptop", "thirdhag");
    assert_eq!(
        sent.error("wiccarocks@shakespeare.lit/laptop").as_deref(),
        Some("conflict")
    );
}

#[test]
fn self_ping_answers_an_occupant_and_refuses_a_ghost() {
    let mut room = open_room();
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='p' from='crone@example.org/desk' to='{ROOM}/thirdwitch'><ping xmlns='urn:xmpp:ping'/></iq>"));
    assert!(sent
        .to("crone@example.org/desk")
        .iter()
        .any(|e| e.attr("type") == Some("result")));
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='p' from='crone@example.org/phone' to='{ROOM}/thirdwitch'><ping xmlns='urn:xmpp:ping'/></iq>"));
    assert_eq!(
        sent.error("crone@example.org/phone").as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn a_full_room_refuses_newcomers_but_not_its_admins() {
    let mut room = open_room();
    configure(
        &mut room,
        "<field var='muc#roomconfig_maxusers'><value>2</value></field>",
    );
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    assert_eq!(
        sent.error("wiccarocks@shakespeare.lit/laptop").as_deref(),
        Some("service-unavailable")
    );
    run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='a' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='wiccarocks@shakespeare.lit' affiliation='admin'/></query></iq>"));
    let sent = join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    assert_eq!(sent.error("wiccarocks@shakespeare.lit/laptop"), None);
    // More than the service allows is refused by name.
    let sent = configure(
        &mut room,
        "<field var='muc#roomconfig_maxusers'><value>5000</value></field>",
    );
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn history_is_bounded() {
    let limits = MucLimits {
        max_history: 3,
        history_on_join: 3,
        ..MucLimits::default()
    };
    let mut room = Room::new(
        BareJid::new(ROOM).expect("jid"),
        RoomConfig::default(),
        limits,
    );
    room.created_by(BareJid::new("crone@example.org").expect("jid"), false);
    join(&mut room, "crone@example.org/desk", "thirdwitch");
    for i in 0..10 {
        run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='crone@example.org/desk' to='{ROOM}'><body>m{i}</body></message>"));
    }
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}/hag'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='100'/></x></presence>"));
    let bodies: Vec<String> = sent
        .to("hag66@shakespeare.lit/pda")
        .iter()
        .filter_map(|e| {
            e.get_child("body", "jabber:client")
                .map(|b| b.text().to_owned())
        })
        .collect();
    assert_eq!(bodies, ["m7", "m8", "m9"]);
}

#[test]
fn nicks_are_bounded_and_printable() {
    let mut room = open_room();
    let long = "n".repeat(65);
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", &long);
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("not-acceptable")
    );
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", &"n".repeat(64));
    assert_eq!(sent.error("hag66@shakespeare.lit/pda"), None);
    let subject = "s".repeat(1025);
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='crone@example.org/desk' to='{ROOM}'><subject>{subject}</subject></message>"));
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("not-acceptable")
    );
    let name = "r".repeat(257);
    let sent = configure(
        &mut room,
        &format!("<field var='muc#roomconfig_roomname'><value>{name}</value></field>"),
    );
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("not-acceptable")
    );
}

fn occupant_id(el: &Element) -> Option<String> {
    let ids: Vec<&Element> = el
        .children()
        .filter(|c| c.name() == "occupant-id" && c.ns() == "urn:xmpp:occupant-id:0")
        .collect();
    assert!(ids.len() <= 1, "one occupant id at most");
    ids.first().and_then(|i| i.attr("id")).map(str::to_owned)
}

#[test]
fn occupant_ids_are_stable_per_user_and_cannot_be_forged() {
    let mut room = open_room();
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let first = occupant_id(sent.to("crone@example.org/desk")[0]).expect("presence has an id");
    // A nick change keeps it; another session of the same user shares it.
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "renamed");
    let renamed = sent.to("crone@example.org/desk");
    assert_eq!(occupant_id(renamed[1]).as_deref(), Some(first.as_str()));
    // A forged id in a message is replaced by the room's.
    let sent = run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='hag66@shakespeare.lit/pda' to='{ROOM}'><body>hi</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>"));
    assert_eq!(
        occupant_id(sent.to("crone@example.org/desk")[0]).as_deref(),
        Some(first.as_str())
    );
    // Another user has another id.
    let sent = join(&mut room, "wiccarocks@shakespeare.lit/laptop", "second");
    let other = occupant_id(sent.to("crone@example.org/desk")[0]).expect("id");
    assert_ne!(other, first);
    // The same user in another room is not linkable.
    let mut elsewhere = open_room();
    let sent = join(&mut elsewhere, "hag66@shakespeare.lit/pda", "hag");
    assert_ne!(
        occupant_id(sent.to("crone@example.org/desk")[0]).as_deref(),
        Some(first.as_str())
    );
    // It survives a restart with the stored room.
    let restored = Room::restore(
        BareJid::new(ROOM).expect("jid"),
        room.stored(),
        MucLimits::default(),
    );
    assert_eq!(
        restored.occupant_id(&BareJid::new("hag66@shakespeare.lit").expect("jid")),
        first
    );
}

#[test]
fn a_request_to_an_occupant_is_forwarded_without_revealing_real_jids() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='v1' from='crone@example.org/desk' to='{ROOM}/hag'><query xmlns='jabber:iq:version'/></iq>"));
    let fwd = sent.to("hag66@shakespeare.lit/pda");
    assert_eq!(fwd.len(), 1);
    assert_eq!(fwd[0].attr("from"), Some(&*format!("{ROOM}/thirdwitch")));
    let new_id = fwd[0].attr("id").expect("id").to_owned();
    assert_ne!(new_id, "v1");
    // The answer goes back to the asker, from the occupant JID, with the asker's id.
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='result' id='{new_id}' from='hag66@shakespeare.lit/pda' to='{ROOM}/thirdwitch'><query xmlns='jabber:iq:version'><name>x</name></query></iq>"));
    let back = sent.to("crone@example.org/desk");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].attr("id"), Some("v1"));
    assert_eq!(back[0].attr("from"), Some(&*format!("{ROOM}/hag")));
    // Once only, and only from the user asked.
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='result' id='{new_id}' from='hag66@shakespeare.lit/pda' to='{ROOM}/thirdwitch'/>"));
    assert!(sent.0.is_empty());
    // A vCard request goes to the user's bare JID, and its answer from there comes back.
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='vc' from='crone@example.org/desk' to='{ROOM}/hag'><vCard xmlns='vcard-temp'/></iq>"));
    let fwd = sent.to("hag66@shakespeare.lit");
    assert_eq!(fwd.len(), 1);
    let id = fwd[0].attr("id").expect("id").to_owned();
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='result' id='{id}' from='hag66@shakespeare.lit' to='{ROOM}/thirdwitch'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(sent.to("crone@example.org/desk")[0].attr("id"), Some("vc"));
    // Someone outside the room gets not-acceptable (XEP-0410's signal).
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='o' from='outsider@x.org/r' to='{ROOM}/hag'><query xmlns='jabber:iq:version'/></iq>"));
    assert_eq!(
        sent.error("outsider@x.org/r").as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn joining_again_from_the_same_session_resends_the_room() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let to_hag = sent.to("hag66@shakespeare.lit/pda");
    assert_eq!(to_hag[0].attr("from"), Some(&*format!("{ROOM}/thirdwitch")));
    assert!(Sent::codes(to_hag[1]).contains(&"110".to_owned()));
    assert!(to_hag
        .last()
        .is_some_and(|m| m.get_child("subject", "jabber:client").is_some()));
    assert!(
        sent.to("crone@example.org/desk").is_empty(),
        "nothing changed for the others"
    );
    assert_eq!(room.occupant_count(), 2);
}

#[test]
fn an_item_changes_an_affiliation_or_a_role_not_both() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "hag");
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='x' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='hag' jid='hag66@shakespeare.lit' role='visitor' affiliation='member'/></query></iq>"));
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("bad-request")
    );
}

#[test]
fn newcomers_share_the_presence_of_those_already_there() {
    use rookery_stanza::SharedStanza;
    let mut room = open_room();
    let owner_presence = |out: &[Out]| -> SharedStanza {
        out.iter()
            .find_map(|o| match o {
                Out::Shared(s)
                    if s.element().attr("from") == Some(&*format!("{ROOM}/thirdwitch")) =>
                {
                    Some(SharedStanza::from(s))
                }
                _ => None,
            })
            .expect("the owner's presence, shared")
    };
    let (a, _) = room.handle(&stanza(&format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}/hag'><x xmlns='http://jabber.org/protocol/muc'/></presence>")), SystemTime::now());
    let (b, _) = room.handle(&stanza(&format!("<presence xmlns='jabber:client' from='wiccarocks@shakespeare.lit/laptop' to='{ROOM}/second'><x xmlns='http://jabber.org/protocol/muc'/></presence>")), SystemTime::now());
    let (first, second) = (owner_presence(&a), owner_presence(&b));
    assert!(
        first.shares_element_with(&second),
        "one element for every newcomer"
    );
    assert_eq!(second.to(), Some("wiccarocks@shakespeare.lit/laptop"));
    // A change of the owner's presence is a new element for the next newcomer.
    run(&mut room, &format!("<presence xmlns='jabber:client' from='crone@example.org/desk' to='{ROOM}/thirdwitch'><show>away</show></presence>"));
    let (c, _) = room.handle(&stanza(&format!("<presence xmlns='jabber:client' from='other@shakespeare.lit/x' to='{ROOM}/other'><x xmlns='http://jabber.org/protocol/muc'/></presence>")), SystemTime::now());
    let third = owner_presence(&c);
    assert!(!third.shares_element_with(&first));
    assert!(third.element().get_child("show", "jabber:client").is_some());
}

#[test]
fn history_is_bounded_in_bytes() {
    let limits = MucLimits {
        max_history: 50,
        history_on_join: 50,
        max_history_bytes: 4096,
        ..MucLimits::default()
    };
    let mut room = Room::new(
        BareJid::new(ROOM).expect("jid"),
        RoomConfig::default(),
        limits,
    );
    room.created_by(BareJid::new("crone@example.org").expect("jid"), false);
    join(&mut room, "crone@example.org/desk", "thirdwitch");
    let big = "x".repeat(1000);
    for i in 0..10 {
        run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='crone@example.org/desk' to='{ROOM}'><body>m{i} {big}</body></message>"));
    }
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}/hag'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='50'/></x></presence>"));
    let bodies: Vec<String> = sent
        .to("hag66@shakespeare.lit/pda")
        .iter()
        .filter_map(|e| {
            e.get_child("body", "jabber:client")
                .map(|b| b.text()[..2].to_owned())
        })
        .collect();
    assert_eq!(
        bodies,
        ["m7", "m8", "m9"],
        "about 1.1 KB each: three fit in 4 KiB"
    );
    // One message larger than the whole budget is still kept, alone.
    let huge = "y".repeat(8000);
    run(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='crone@example.org/desk' to='{ROOM}'><body>{huge}</body></message>"));
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='other@shakespeare.lit/x' to='{ROOM}/other'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='50'/></x></presence>"));
    let n = sent
        .to("other@shakespeare.lit/x")
        .iter()
        .filter(|e| e.get_child("body", "jabber:client").is_some())
        .count();
    assert_eq!(n, 1);
}

// ---- The room's archive, moderation and avatar -------------------------------------------

use rookery_modules::muc::room::{ArchiveOp, Effects};

fn run_fx(room: &mut Room, xml: &str) -> (Sent, Effects) {
    let (out, fx) = room.handle(&stanza(xml), SystemTime::now());
    let mut pairs = Vec::new();
    for o in &out {
        for (to, el) in o.pairs() {
            pairs.push((to.to_string(), el.clone()));
        }
    }
    (Sent(pairs), fx)
}

const SID: &str = "urn:xmpp:sid:0";

fn say(room: &mut Room, who: &str, body: &str, extra: &str) -> (Sent, Effects) {
    run_fx(
        room,
        &format!("<message xmlns='jabber:client' type='groupchat' id='m1' from='{who}' to='{ROOM}'><body>{body}</body>{extra}</message>"),
    )
}

#[test]
fn messages_get_the_rooms_stanza_id_and_go_to_the_archive_with_the_real_jid() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    let forged = format!("<stanza-id xmlns='{SID}' by='{ROOM}' id='forged'/><stanza-id xmlns='{SID}' by='elsewhere.example' id='kept'/>");
    let (sent, fx) = say(&mut room, "hag66@shakespeare.lit/pda", "hi", &forged);
    let m = sent.to("crone@example.org/desk")[0].clone();
    let ids: Vec<(&str, &str)> = m
        .children()
        .filter(|c| c.is("stanza-id", SID))
        .map(|c| (c.attr("by").unwrap_or(""), c.attr("id").unwrap_or("")))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ("elsewhere.example", "kept"));
    assert_eq!(ids[1].0, ROOM);
    let [ArchiveOp::Append {
        id, nick, message, ..
    }] = fx.archive.as_slice()
    else {
        panic!("one append: {:?}", fx.archive);
    };
    assert_eq!((id.as_str(), nick.as_str()), (ids[1].1, "oldhag"));
    assert!(!message
        .children()
        .any(|c| c.is("stanza-id", SID) && c.attr("by") == Some(ROOM)));
    assert_eq!(
        Sent::item(message).and_then(|i| i.attr("jid")),
        Some("hag66@shakespeare.lit")
    );
    // No body, or a no-store hint: broadcast with an id, not archived.
    let (_, fx) = run_fx(&mut room, &format!("<message xmlns='jabber:client' type='groupchat' from='hag66@shakespeare.lit/pda' to='{ROOM}'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"));
    assert!(fx.archive.is_empty());
    let (_, fx) = say(
        &mut room,
        "hag66@shakespeare.lit/pda",
        "off the record",
        "<no-store xmlns='urn:xmpp:hints'/>",
    );
    assert!(fx.archive.is_empty());
    // Archiving off: ids still, archive no more; occupants are told with 171.
    let sent = configure(
        &mut room,
        "<field var='muc#roomconfig_enablearchiving'><value>0</value></field>",
    );
    let notice = sent.to("hag66@shakespeare.lit/pda");
    assert!(notice
        .iter()
        .any(|e| Sent::codes(e).contains(&"171".to_owned())));
    let (sent, fx) = say(&mut room, "hag66@shakespeare.lit/pda", "hi", "");
    assert!(fx.archive.is_empty());
    assert!(sent.to("crone@example.org/desk")[0].has_child("stanza-id", SID));
}

fn mam_query(room: &mut Room, who: &str) -> (Sent, Effects) {
    run_fx(
        room,
        &format!("<iq xmlns='jabber:client' type='set' id='q' from='{who}' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='f27'/></iq>"),
    )
}

#[test]
fn the_archive_is_read_by_those_who_may_enter() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    // An occupant of a semi-anonymous room: results without real JIDs.
    let (sent, fx) = mam_query(&mut room, "hag66@shakespeare.lit/pda");
    assert!(
        sent.0.is_empty(),
        "the service answers after the query runs"
    );
    assert!(matches!(
        fx.archive.as_slice(),
        [ArchiveOp::Query { real_jids: false, requester, .. }] if requester.as_str() == "hag66@shakespeare.lit/pda"
    ));
    // The owner (a moderator) sees them; so does anyone in a non-anonymous room.
    let (_, fx) = mam_query(&mut room, "crone@example.org/desk");
    assert!(matches!(
        fx.archive.as_slice(),
        [ArchiveOp::Query {
            real_jids: true,
            ..
        }]
    ));
    // Someone outside an open room may read it; an outcast may not.
    let (_, fx) = mam_query(&mut room, "wanderer@example.net/x");
    assert_eq!(fx.archive.len(), 1);
    run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='ban' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast' jid='wanderer@example.net'/></query></iq>"));
    let (sent, fx) = mam_query(&mut room, "wanderer@example.net/x");
    assert_eq!(
        sent.error("wanderer@example.net/x").as_deref(),
        Some("forbidden")
    );
    assert!(fx.archive.is_empty());
    // Members-only: members only.
    configure(
        &mut room,
        "<field var='muc#roomconfig_membersonly'><value>1</value></field>",
    );
    let (sent, _) = mam_query(&mut room, "stranger@example.net/x");
    assert_eq!(
        sent.error("stranger@example.net/x").as_deref(),
        Some("registration-required")
    );
    // The query form is answered by the room itself.
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='get' id='f' from='crone@example.org/desk' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"));
    let form = sent.to("crone@example.org/desk")[0];
    assert!(form
        .get_child("query", "urn:xmpp:mam:2")
        .is_some_and(|q| q.has_child("x", "jabber:x:data")));
    // Not archived: no archive to read.
    configure(
        &mut room,
        "<field var='muc#roomconfig_enablearchiving'><value>0</value></field>",
    );
    let (sent, fx) = mam_query(&mut room, "crone@example.org/desk");
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("feature-not-implemented")
    );
    assert!(fx.archive.is_empty());
}

fn moderate(room: &mut Room, who: &str, id: &str) -> (Sent, Effects) {
    run_fx(
        room,
        &format!("<iq xmlns='jabber:client' type='set' id='mod1' from='{who}' to='{ROOM}'><moderate id='{id}' xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/><reason>spam</reason></moderate></iq>"),
    )
}

#[test]
fn a_moderator_retracts_a_message_for_everyone_and_the_archive_keeps_a_tombstone() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    let (sent, _) = say(&mut room, "hag66@shakespeare.lit/pda", "potions!", "");
    let id = sent.to("crone@example.org/desk")[0]
        .get_child("stanza-id", SID)
        .and_then(|s| s.attr("id"))
        .expect("id")
        .to_owned();
    // A participant may not.
    let (sent, fx) = moderate(&mut room, "hag66@shakespeare.lit/pda", &id);
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("forbidden")
    );
    assert!(fx.archive.is_empty());
    // The owner (moderator) may: the service retracts it in the archive, then answers.
    let (sent, fx) = moderate(&mut room, "crone@example.org/desk", &id);
    assert!(sent.0.is_empty());
    let [ArchiveOp::Retract {
        id: target,
        retracted,
        in_history,
        done,
        notice,
        ..
    }] = fx.archive.as_slice()
    else {
        panic!("{:?}", fx.archive);
    };
    assert_eq!(target, &id);
    assert!(*in_history);
    let moderated = retracted
        .get_child("moderated", "urn:xmpp:message-moderate:1")
        .expect("moderated");
    assert_eq!(moderated.attr("by"), Some(&*format!("{ROOM}/thirdwitch")));
    assert!(moderated.has_child("occupant-id", "urn:xmpp:occupant-id:0"));
    let pairs: Vec<(String, Element)> = done
        .iter()
        .flat_map(|o| o.pairs())
        .map(|(t, e)| (t.to_string(), e.clone()))
        .collect();
    let done = Sent(pairs);
    assert!(done
        .to("crone@example.org/desk")
        .iter()
        .any(|e| e.name() == "iq" && e.attr("type") == Some("result")));
    let to_hag = done.to("hag66@shakespeare.lit/pda");
    let retract = to_hag[0]
        .get_child("retract", "urn:xmpp:message-retract:1")
        .expect("retract");
    assert_eq!(retract.attr("id"), Some(id.as_str()));
    assert_eq!(
        retract
            .get_child("reason", "urn:xmpp:message-retract:1")
            .map(|r| r.text()),
        Some("spam".into())
    );
    assert!(matches!(**notice, ArchiveOp::Append { .. }));
    // The history no longer hands it out.
    let sent = join(&mut room, "wanderer@example.net/x", "wanderer");
    assert!(!sent
        .to("wanderer@example.net/x")
        .iter()
        .any(|e| e.has_child("body", "jabber:client")));
    // Without an archive, an unknown id is item-not-found at once.
    configure(
        &mut room,
        "<field var='muc#roomconfig_enablearchiving'><value>0</value></field>",
    );
    let (sent, _) = moderate(&mut room, "crone@example.org/desk", "no-such-id");
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("item-not-found")
    );
}

#[test]
fn owners_set_the_rooms_avatar_and_disco_shows_its_hash() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    // "hello" in base64; its SHA-1 is aaf4c61d...
    let vcard = "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\nbG8=</BINVAL></PHOTO></vCard>";
    let set = |who: &str, v: &str| {
        format!("<iq xmlns='jabber:client' type='set' id='v1' from='{who}' to='{ROOM}'>{v}</iq>")
    };
    let sent = run(&mut room, &set("hag66@shakespeare.lit/pda", vcard));
    assert_eq!(
        sent.error("hag66@shakespeare.lit/pda").as_deref(),
        Some("forbidden")
    );
    let (sent, fx) = run_fx(&mut room, &set("crone@example.org/desk", vcard));
    assert!(fx.changed);
    assert!(sent
        .to("crone@example.org/desk")
        .iter()
        .any(|e| e.name() == "iq" && e.attr("type") == Some("result")));
    assert!(sent
        .to("hag66@shakespeare.lit/pda")
        .iter()
        .any(|e| Sent::codes(e) == ["104"]));
    let info = |room: &mut Room| {
        let sent = run(room, &format!("<iq xmlns='jabber:client' type='get' id='d' from='wanderer@example.net/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"));
        let q = sent.to("wanderer@example.net/x")[0]
            .get_child("query", "http://jabber.org/protocol/disco#info")
            .expect("query")
            .clone();
        let hash = q
            .get_child("x", "jabber:x:data")
            .and_then(|x| {
                x.children()
                    .find(|f| f.attr("var") == Some("muc#roominfo_avatarhash"))
            })
            .and_then(|f| f.get_child("value", "jabber:x:data"))
            .map(|v| v.text());
        let vcard_feature = q.children().any(|f| f.attr("var") == Some("vcard-temp"));
        (hash, vcard_feature)
    };
    assert_eq!(
        info(&mut room),
        (
            Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into()),
            true
        )
    );
    // Anyone reads it, in the room or not; it survives a restart.
    let get = format!("<iq xmlns='jabber:client' type='get' id='g' from='wanderer@example.net/x' to='{ROOM}'><vCard xmlns='vcard-temp'/></iq>");
    let sent = run(&mut room, &get);
    let got = sent.to("wanderer@example.net/x")[0]
        .get_child("vCard", "vcard-temp")
        .expect("vcard")
        .clone();
    assert!(got.get_child("PHOTO", "vcard-temp").is_some());
    let mut restored = Room::restore(
        BareJid::new(ROOM).expect("jid"),
        room.stored(),
        MucLimits::default(),
    );
    assert_eq!(info(&mut restored).0, info(&mut room).0);
    // Too large: refused, the avatar stays.
    let limits = MucLimits {
        max_vcard_bytes: 64,
        ..MucLimits::default()
    };
    let mut small = Room::restore(BareJid::new(ROOM).expect("jid"), room.stored(), limits);
    let sent = run(&mut small, &set("crone@example.org/desk", vcard));
    assert_eq!(
        sent.error("crone@example.org/desk").as_deref(),
        Some("not-acceptable")
    );
    // An empty vCard removes it.
    run(
        &mut room,
        &set("crone@example.org/desk", "<vCard xmlns='vcard-temp'/>"),
    );
    assert_eq!(info(&mut room).0, None);
}

#[test]
fn an_archived_room_says_so_on_entry() {
    let mut room = open_room();
    let sent = join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    let own = sent
        .to("hag66@shakespeare.lit/pda")
        .into_iter()
        .find(|e| e.name() == "presence" && Sent::codes(e).contains(&"110".to_owned()))
        .expect("own presence");
    assert!(Sent::codes(own).contains(&"170".to_owned()));
}

#[test]
fn a_join_leave_loop_is_stopped_by_the_presence_budget() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    let t0 = SystemTime::now();
    let enter = format!("<presence xmlns='jabber:client' from='loop@example.net/x' to='{ROOM}/looper'><x xmlns='http://jabber.org/protocol/muc'/></presence>");
    let leave = format!("<presence xmlns='jabber:client' type='unavailable' from='loop@example.net/x' to='{ROOM}/looper'/>");
    // The burst (10) goes through; each entry reaches the others.
    for i in 0..10 {
        let sent = run_at(&mut room, &enter, t0);
        assert!(
            !sent.to("hag66@shakespeare.lit/pda").is_empty(),
            "entry {i} is broadcast"
        );
        run_at(&mut room, &leave, t0);
    }
    // Then entries are refused, and nobody hears of them.
    let sent = run_at(&mut room, &enter, t0);
    assert_eq!(
        sent.error("loop@example.net/x").as_deref(),
        Some("policy-violation")
    );
    assert!(sent.to("hag66@shakespeare.lit/pda").is_empty());
    // One presence a second comes back.
    let later = t0 + Duration::from_millis(1500);
    let sent = run_at(&mut room, &enter, later);
    assert!(sent.error("loop@example.net/x").is_none());
    assert!(!sent.to("hag66@shakespeare.lit/pda").is_empty());
    // Over budget, a status change is kept but not broadcast; a newcomer sees it.
    let away = format!("<presence xmlns='jabber:client' from='loop@example.net/x' to='{ROOM}/looper'><show>away</show></presence>");
    let sent = run_at(&mut room, &away, later);
    assert!(sent.0.is_empty(), "{:?}", sent.0);
    let sent = run_at(
        &mut room,
        &format!("<presence xmlns='jabber:client' from='late@example.net/x' to='{ROOM}/late'><x xmlns='http://jabber.org/protocol/muc'/></presence>"),
        later,
    );
    let seen = sent
        .to("late@example.net/x")
        .into_iter()
        .find(|e| e.attr("from") == Some(&*format!("{ROOM}/looper")))
        .expect("the looper's presence");
    assert_eq!(
        seen.get_child("show", "jabber:client").map(|s| s.text()),
        Some("away".into())
    );
    // Owners are not limited.
    for _ in 0..20 {
        let sent = run_at(
            &mut room,
            &format!("<presence xmlns='jabber:client' from='crone@example.org/desk' to='{ROOM}/thirdwitch'><status>{}</status></presence>", "x"),
            t0,
        );
        assert!(!sent.to("hag66@shakespeare.lit/pda").is_empty());
    }
}

#[test]
fn removals_for_errors_say_333_and_a_stray_presence_is_told_it_is_not_in_the_room() {
    let mut room = open_room();
    join(&mut room, "hag66@shakespeare.lit/pda", "oldhag");
    // The occupant's client bounced an error: removed, everyone told it was technical.
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' type='error' from='hag66@shakespeare.lit/pda' to='{ROOM}/oldhag'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"));
    let to_owner = sent.to("crone@example.org/desk");
    assert_eq!(to_owner.len(), 1);
    assert_eq!(to_owner[0].attr("type"), Some("unavailable"));
    assert_eq!(Sent::codes(to_owner[0]), ["333"]);
    // A presence update (no MUC <x/>) from someone not in the room: a kick, 110/307/333,
    // to that session alone, and the room unchanged.
    let sent = run(&mut room, &format!("<presence xmlns='jabber:client' from='hag66@shakespeare.lit/pda' to='{ROOM}/oldhag'><show>away</show></presence>"));
    assert_eq!(sent.0.len(), 1);
    let kick = sent.to("hag66@shakespeare.lit/pda")[0];
    assert_eq!(kick.attr("type"), Some("unavailable"));
    let mut codes = Sent::codes(kick);
    codes.sort();
    assert_eq!(codes, ["110", "307", "333"]);
    assert_eq!(room.occupant_count(), 1);
}

#[test]
fn a_user_outside_the_room_hears_of_an_affiliation_change_with_101() {
    let mut room = open_room();
    let sent = run(&mut room, &format!("<iq xmlns='jabber:client' type='set' id='m' from='crone@example.org/desk' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member' jid='hag66@shakespeare.lit'><reason>welcome</reason></item></query></iq>"));
    let note = sent.to("hag66@shakespeare.lit");
    assert_eq!(note.len(), 1, "{:?}", sent.0);
    assert_eq!(note[0].name(), "message");
    assert_eq!(note[0].attr("from"), Some(ROOM));
    assert_eq!(Sent::codes(note[0]), ["101"]);
    assert_eq!(
        Sent::item(note[0]).and_then(|i| i.attr("affiliation")),
        Some("member")
    );
}

#[test]
fn a_reloaded_room_takes_its_history_from_its_archive() {
    let mut room = open_room();
    let mut archived = Vec::new();
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let (_, fx) = say(&mut room, "crone@example.org/desk", body, "");
        if let [ArchiveOp::Append {
            id, at_us, message, ..
        }] = fx.archive.as_slice()
        {
            archived.push((id.clone(), *at_us + i as i64, message.clone()));
        }
    }
    // "two" was retracted: its tombstone is not history.
    archived[1].2 = rookery_xml::parse_element(&format!("<message xmlns='jabber:client' type='groupchat' from='{ROOM}/thirdwitch'><retracted xmlns='urn:xmpp:message-retract:1'/></message>")).expect("xml");
    let mut reloaded = Room::restore(
        BareJid::new(ROOM).expect("jid"),
        room.stored(),
        MucLimits::default(),
    );
    reloaded.restore_history(archived.clone());
    let sent = join(&mut reloaded, "hag66@shakespeare.lit/pda", "oldhag");
    let history: Vec<&Element> = sent
        .to("hag66@shakespeare.lit/pda")
        .into_iter()
        .filter(|e| e.has_child("body", "jabber:client"))
        .collect();
    let bodies: Vec<String> = history
        .iter()
        .filter_map(|e| e.get_child("body", "jabber:client").map(|b| b.text()))
        .collect();
    assert_eq!(bodies, ["one", "three"]);
    // With the archive's ids, delays, and no real JID.
    assert_eq!(
        history[0]
            .get_child("stanza-id", SID)
            .and_then(|s| s.attr("id")),
        Some(archived[0].0.as_str())
    );
    assert!(history[0].has_child("delay", "urn:xmpp:delay"));
    assert!(!history[0].to_xml("").contains("crone@example.org"));
}

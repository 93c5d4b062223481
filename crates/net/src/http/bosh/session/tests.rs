use super::*;
use rookery_xml::{Element, Framing, StreamOpen};

const CREATION_RID: u64 = 100;

fn params() -> Params {
    Params {
        wait: 30,
        hold: 1,
        inactivity: 60,
        polling: 2,
        maxpause: 120,
        ack: false,
        max_buffer: 1000,
        ver: "1.11".to_owned(),
    }
}

fn creation() -> Request {
    let mut r = Request::empty(CREATION_RID, None);
    r.to = Some("example.com".into());
    r.xmpp_version = Some("1.0".into());
    r.wait = Some(30);
    r.hold = Some(1);
    r
}

fn poll(rid: u64) -> Request {
    Request::empty(rid, Some("sid"))
}

fn message(rid: u64) -> Request {
    let mut r = poll(rid);
    r.payloads
        .push(Element::new("message", "jabber:client").with_attr("id", rid.to_string()));
    r.bytes = 60;
    r
}

/// The stream's header and features, as the client stream writes them.
fn header() -> Vec<u8> {
    let mut out = Vec::new();
    Framing::Bosh.write_open(
        &mut out,
        &StreamOpen {
            content_ns: "jabber:client",
            id: "stream-1",
            from: "example.com",
            to: None,
            version: "1.0",
            lang: "en",
        },
    );
    Framing::Bosh.write_features(
        &mut out,
        "jabber:client",
        &[Element::new(
            "mechanisms",
            "urn:ietf:params:xml:ns:xmpp-sasl",
        )],
    );
    out
}

fn stanza(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Framing::Bosh.write_element(
        &mut out,
        &Element::new("message", "jabber:client").with_attr("id", id),
        "jabber:client",
    );
    out
}

fn answers(s: &mut Session) -> Vec<(Ticket, Element)> {
    s.take_responses()
        .map(|(t, b)| {
            let text = std::str::from_utf8(&b).expect("utf8").to_owned();
            let el = rookery_xml::parse_element(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(el.is("body", NS_HTTPBIND), "{text}");
            (t, el)
        })
        .collect()
}

fn one(s: &mut Session) -> (Ticket, Element) {
    let mut a = answers(s);
    assert_eq!(a.len(), 1, "{a:?}");
    a.remove(0)
}

fn condition(el: &Element) -> Option<&str> {
    (el.attr("type") == Some("terminate")).then(|| el.attr("condition").unwrap_or(""))
}

/// A session past its creation response, with `params`.
fn started(params: Params) -> (Session, Instant) {
    started_at(params, Instant::now())
}

fn started_at(params: Params, now: Instant) -> (Session, Instant) {
    let mut s = Session::new(params, "sid".into(), 0, creation(), now);
    let mut events = Vec::new();
    s.take_events(&mut events);
    assert!(matches!(&events[..], [StreamEvent::Open(h)] if h.name == "body"));
    s.on_output(&header(), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!(t, 0);
    assert_eq!(body.attr("sid"), Some("sid"));
    (s, now)
}

#[test]
fn the_creation_response_carries_the_terms_and_the_features() {
    let now = Instant::now();
    let mut p = params();
    p.ack = true;
    let mut s = Session::new(p, "s1".into(), 7, creation(), now);
    let mut events = Vec::new();
    s.take_events(&mut events);
    let [StreamEvent::Open(h)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(h.attr("to"), Some("example.com"));
    assert_eq!(h.attr("version"), Some("1.0"));
    // Nothing is answered before the stream's header: the response needs it.
    s.on_timer(now + Duration::from_secs(100));
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.end(), None);
    s.on_output(&header(), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!(t, 7);
    for (name, value) in [
        ("sid", "s1"),
        ("wait", "30"),
        ("requests", "2"),
        ("hold", "1"),
        ("inactivity", "60"),
        ("polling", "2"),
        ("maxpause", "120"),
        ("ver", "1.11"),
        ("from", "example.com"),
        ("ack", "100"),
        ("authid", "stream-1"),
        ("{urn:xmpp:xbosh}version", "1.0"),
        ("{urn:xmpp:xbosh}restartlogic", "true"),
    ] {
        assert_eq!(body.attr(name), Some(value), "{name}");
    }
    let features = body.children().next().expect("features");
    assert!(features.is("features", rookery_xml::NS_STREAMS));
}

#[test]
fn output_goes_to_the_held_request_at_once_and_is_kept_otherwise() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.held(), 1);
    s.on_output(&stanza("a"), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!(t, 1);
    let m = body.children().next().expect("stanza");
    // Each stanza declares jabber:client (XEP-0206 §4).
    assert!(m.is("message", "jabber:client"));
    // No request held: kept until the next one, which is answered with it at once.
    s.on_output(&stanza("b"), now).expect("output");
    s.on_output(&stanza("c"), now).expect("output");
    assert!(answers(&mut s).is_empty());
    s.on_request(2, poll(102), now);
    let (t, body) = one(&mut s);
    assert_eq!(t, 2);
    let ids: Vec<_> = body.children().filter_map(|c| c.attr("id")).collect();
    assert_eq!(ids, ["b", "c"]);
}

#[test]
fn hold_one_answers_the_older_request_when_another_comes() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    assert!(answers(&mut s).is_empty());
    s.on_request(2, message(102), now);
    let (t, body) = one(&mut s);
    assert_eq!((t, body.children().count()), (1, 0));
    let mut events = Vec::new();
    s.take_events(&mut events);
    assert!(matches!(&events[..], [StreamEvent::Stanza(m)] if m.name() == "message"));
    assert_eq!(s.held(), 1);
}

#[test]
fn hold_two_keeps_two_and_answers_in_rid_order() {
    let mut p = params();
    p.hold = 2;
    let (mut s, now) = started(p);
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(102), now);
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.held(), 2);
    s.on_request(3, poll(103), now);
    assert_eq!(one(&mut s).0, 1);
    s.on_output(&stanza("x"), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!(t, 2);
    assert_eq!(body.children().count(), 1);
    assert_eq!(s.held(), 1);
}

#[test]
fn hold_zero_answers_every_request_at_once() {
    let mut p = params();
    p.hold = 0;
    p.polling = 0;
    let (mut s, now) = started(p);
    s.on_request(1, message(101), now);
    assert_eq!(one(&mut s).0, 1);
    s.on_output(&stanza("x"), now).expect("output");
    assert!(answers(&mut s).is_empty());
    s.on_request(2, poll(102), now);
    let (t, body) = one(&mut s);
    assert_eq!((t, body.children().count()), (2, 1));
}

#[test]
fn a_held_request_is_answered_empty_after_wait() {
    {
        let mut clock = Clock(Instant::now());
        let (mut s, now) = started_at(params(), clock.now());
        s.on_request(1, poll(101), now);
        assert_eq!(s.deadline(), Some(now + Duration::from_secs(30)));
        clock.advance(Duration::from_secs(29));
        s.on_timer(clock.now());
        assert!(answers(&mut s).is_empty());
        clock.advance(Duration::from_secs(1));
        s.on_timer(clock.now());
        let (t, body) = one(&mut s);
        assert_eq!((t, body.children().count()), (1, 0));
        assert_eq!(s.end(), None);
        // The next request comes at once: the wait paced it, no polling violation even
        // with a wait shorter than `polling`.
        s.on_request(2, poll(102), clock.now());
        assert!(answers(&mut s).is_empty());
        assert_eq!(s.end(), None);
    }
}

/// A clock the test moves: the session only knows the time it is given.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Instant {
        self.0
    }
    fn advance(&mut self, d: Duration) {
        self.0 += d;
    }
}

#[test]
fn requests_are_processed_in_rid_order_and_wait_for_a_gap() {
    let mut p = params();
    p.hold = 2;
    let (mut s, now) = started(p);
    // 102 before 101: it waits, its payload not yet given to the stream.
    s.on_request(2, message(102), now);
    let mut events = Vec::new();
    s.take_events(&mut events);
    assert!(events.is_empty());
    assert!(answers(&mut s).is_empty());
    s.on_request(1, message(101), now);
    s.take_events(&mut events);
    let ids: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(el) => el.attr("id"),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["101", "102"]);
    // Responses in rid order too.
    s.on_output(&stanza("x"), now).expect("output");
    assert_eq!(one(&mut s).0, 1);
}

#[test]
fn the_rid_window_is_requests_wide() {
    // hold 1: requests 2, so after 100 the window is 101..=102.
    let (mut s, now) = started(params());
    s.on_request(1, poll(102), now);
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.end(), None);
    let (mut s, now) = started(params());
    s.on_request(1, poll(103), now);
    let (t, body) = one(&mut s);
    assert_eq!((t, condition(&body)), (1, Some("item-not-found")));
    assert_eq!(s.end(), Some(End::Violation(Condition::ItemNotFound)));
    // A request for a dead session is told so.
    s.on_request(2, poll(101), now);
    assert_eq!(condition(&one(&mut s).1), Some("item-not-found"));
}

#[test]
fn a_repeated_rid_gets_the_kept_response() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    s.on_output(&stanza("a"), now).expect("output");
    let (_, first) = one(&mut s);
    s.on_request(2, poll(101), now);
    let (t, again) = one(&mut s);
    assert_eq!(t, 2);
    assert_eq!(first, again);
    // The creation response is kept too, while within the last `requests`.
    s.on_request(3, poll(100), now);
    assert_eq!(one(&mut s).1.attr("sid"), Some("sid"));
    // Two more responses push 100 out of the kept ones.
    s.on_request(4, poll(102), now);
    s.on_request(5, poll(103), now);
    assert_eq!(one(&mut s).0, 4);
    s.on_request(6, poll(100), now);
    // The session is over: the request it held is told so too.
    let a = answers(&mut s);
    assert_eq!(a.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [5, 6]);
    assert!(a
        .iter()
        .all(|(_, b)| condition(b) == Some("item-not-found")));
}

#[test]
fn a_repeated_rid_still_held_moves_the_answer_to_the_new_request() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(101), now);
    let (t, body) = one(&mut s);
    assert_eq!((t, body.attr("type")), (1, Some("error")));
    s.on_output(&stanza("a"), now).expect("output");
    assert_eq!(one(&mut s).0, 2);
}

#[test]
fn too_many_simultaneous_requests_are_a_policy_violation() {
    let (mut s, now) = started(params());
    // hold 1, requests 2: 101 held and 103 waiting for 102 are two unanswered; 102 would
    // be a third.
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(103), now);
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.end(), None);
    s.on_request(3, poll(102), now);
    let a = answers(&mut s);
    assert_eq!(a.len(), 3);
    assert!(a
        .iter()
        .all(|(_, b)| condition(b) == Some("policy-violation")));
    let mut p = params();
    p.hold = 2;
    let (mut s, now) = started(p);
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(102), now);
    s.on_request(3, poll(104), now);
    s.on_request(4, poll(103), now);
    let a = answers(&mut s);
    assert!(a
        .iter()
        .all(|(_, b)| condition(b) == Some("policy-violation")));
    assert_eq!(a.len(), 4);
    assert_eq!(s.end(), Some(End::Violation(Condition::PolicyViolation)));
}

#[test]
fn one_more_request_is_allowed_to_terminate() {
    let mut p = params();
    p.hold = 2;
    let (mut s, now) = started(p);
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(102), now);
    s.on_request(4, poll(104), now);
    let mut t = poll(103);
    t.terminate = true;
    s.on_request(3, t, now);
    assert_eq!(s.end(), Some(End::Client));
}

#[test]
fn polling_faster_than_allowed_is_a_policy_violation() {
    {
        let mut clock = Clock(Instant::now());
        let mut p = params();
        p.hold = 0;
        let (mut s, _) = started_at(p, clock.now());
        s.on_request(1, poll(101), clock.now());
        assert_eq!(one(&mut s).0, 1);
        clock.advance(Duration::from_secs(2));
        s.on_request(2, poll(102), clock.now());
        assert_eq!(one(&mut s).0, 2);
        // A request with a payload is no poll.
        clock.advance(Duration::from_millis(10));
        s.on_request(3, message(103), clock.now());
        assert_eq!(one(&mut s).0, 3);
        clock.advance(Duration::from_millis(10));
        s.on_request(4, poll(104), clock.now());
        assert_eq!(one(&mut s).0, 4);
        clock.advance(Duration::from_secs(1));
        s.on_request(5, poll(105), clock.now());
        let (t, body) = one(&mut s);
        assert_eq!((t, condition(&body)), (5, Some("policy-violation")));
    }
}

#[test]
fn a_poll_after_an_answer_with_payloads_is_no_violation() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    s.on_output(&stanza("a"), now).expect("output");
    assert_eq!(one(&mut s).0, 1);
    s.on_request(2, poll(102), now);
    assert!(answers(&mut s).is_empty());
    assert_eq!(s.end(), None);
}

#[test]
fn pause_answers_everything_and_stretches_inactivity() {
    {
        let mut clock = Clock(Instant::now());
        let (mut s, now) = started_at(params(), clock.now());
        s.on_request(1, poll(101), now);
        let mut p = poll(102);
        p.pause = Some(100);
        s.on_request(2, p, now);
        let a = answers(&mut s);
        assert_eq!(a.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 2]);
        assert!(a.iter().all(|(_, b)| b.children().count() == 0));
        clock.advance(Duration::from_secs(99));
        s.on_timer(clock.now());
        assert_eq!(
            s.end(),
            None,
            "60 s of inactivity are not enough while paused"
        );
        clock.advance(Duration::from_secs(1));
        s.on_timer(clock.now());
        assert_eq!(s.end(), Some(End::Inactive));
    }
}

#[test]
fn a_pause_past_maxpause_is_refused() {
    let (mut s, now) = started(params());
    let mut p = poll(101);
    p.pause = Some(121);
    s.on_request(1, p, now);
    assert_eq!(condition(&one(&mut s).1), Some("policy-violation"));
    let mut none = params();
    none.maxpause = 0;
    let (mut s, now) = started(none);
    let mut p = poll(101);
    p.pause = Some(1);
    s.on_request(1, p, now);
    assert_eq!(condition(&one(&mut s).1), Some("policy-violation"));
}

#[test]
fn no_request_for_the_inactivity_period_ends_the_session() {
    {
        let mut clock = Clock(Instant::now());
        let (mut s, now) = started_at(params(), clock.now());
        assert_eq!(s.deadline(), Some(now + Duration::from_secs(60)));
        // A held request stops the clock.
        clock.advance(Duration::from_secs(50));
        s.on_request(1, poll(101), clock.now());
        clock.advance(Duration::from_secs(30));
        s.on_timer(clock.now());
        assert_eq!(one(&mut s).0, 1, "answered after wait");
        clock.advance(Duration::from_secs(59));
        s.on_timer(clock.now());
        assert_eq!(s.end(), None);
        clock.advance(Duration::from_secs(1));
        s.on_timer(clock.now());
        assert_eq!(s.end(), Some(End::Inactive));
        // Nothing is sent to a client that is gone (§9.4).
        assert!(answers(&mut s).is_empty());
    }
}

#[test]
fn client_terminate_ends_the_stream_after_its_payloads() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    let mut t = message(102);
    t.terminate = true;
    s.on_request(2, t, now);
    let a = answers(&mut s);
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].0, a[0].1.attr("type")), (1, None));
    assert_eq!((a[1].0, condition(&a[1].1)), (2, Some("")));
    let mut events = Vec::new();
    s.take_events(&mut events);
    assert!(matches!(
        &events[..],
        [StreamEvent::Stanza(_), StreamEvent::Close]
    ));
    assert_eq!(s.end(), Some(End::Client));
    // What the stream writes as it closes goes nowhere.
    s.on_output(&stanza("late"), now).expect("ignored");
    assert!(answers(&mut s).is_empty());
}

#[test]
fn a_stream_error_becomes_a_terminate_wrapping_it() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    let mut out = stanza("last");
    let error = Element::new("error", rookery_xml::NS_STREAMS).with_child(Element::new(
        "conflict",
        "urn:ietf:params:xml:ns:xmpp-streams",
    ));
    Framing::Bosh.write_error(&mut out, &error);
    Framing::Bosh.write_close(&mut out);
    s.on_output(&out, now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!((t, condition(&body)), (1, Some("remote-stream-error")));
    let children: Vec<_> = body.children().collect();
    assert!(children[0].is("message", "jabber:client"));
    assert!(children[1].is("error", rookery_xml::NS_STREAMS));
    assert_eq!(s.end(), Some(End::StreamClosed));
}

#[test]
fn shutdown_is_system_shutdown_for_the_next_request_when_none_is_held() {
    let (mut s, now) = started(params());
    let mut out = Vec::new();
    Framing::Bosh.write_error(
        &mut out,
        &Element::new("error", rookery_xml::NS_STREAMS).with_child(Element::new(
            "system-shutdown",
            "urn:ietf:params:xml:ns:xmpp-streams",
        )),
    );
    Framing::Bosh.write_close(&mut out);
    s.on_output(&out, now).expect("output");
    assert!(answers(&mut s).is_empty());
    s.on_request(1, poll(101), now);
    assert_eq!(condition(&one(&mut s).1), Some("system-shutdown"));
}

#[test]
fn a_graceful_close_is_a_terminate_without_condition() {
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    let mut out = Vec::new();
    Framing::Bosh.write_close(&mut out);
    s.on_output(&out, now).expect("output");
    let (_, body) = one(&mut s);
    assert_eq!(condition(&body), Some(""));
    let mut out = Vec::new();
    let (mut s, now) = started(params());
    s.on_request(1, poll(101), now);
    Framing::Bosh.write_close_see_other(&mut out, "https://other.example/bosh");
    s.on_output(&out, now).expect("output");
    let (_, body) = one(&mut s);
    assert_eq!(condition(&body), Some("see-other-uri"));
    assert_eq!(
        body.children().next().map(|u| u.text()),
        Some("https://other.example/bosh".into())
    );
}

#[test]
fn output_beyond_the_buffer_ends_the_session() {
    let (mut s, now) = started(params());
    for i in 0..20 {
        if s.on_output(&stanza(&format!("{i:040}")), now).is_err() {
            assert!(s.buffered() == 0);
            assert_eq!(s.end(), Some(End::Violation(Condition::PolicyViolation)));
            s.on_request(1, poll(101), now);
            assert_eq!(condition(&one(&mut s).1), Some("policy-violation"));
            return;
        }
        assert!(s.buffered() <= 1000);
    }
    panic!("the buffer grew past its bound");
}

#[test]
fn restart_is_allowed_after_the_stream_asks_and_answered_with_features() {
    let (mut s, now) = started(params());
    let mut r = poll(101);
    r.restart = true;
    s.on_request(1, r.clone(), now);
    assert_eq!(condition(&one(&mut s).1), Some("bad-request"));

    let (mut s, now) = started(params());
    s.on_request(1, message(101), now);
    // SASL success, then the stream restarts: what came after in the request is dropped.
    s.restart();
    let mut events = Vec::new();
    s.take_events(&mut events);
    assert!(events.is_empty());
    s.on_output(&stanza("success"), now).expect("output");
    assert_eq!(one(&mut s).0, 1);
    let mut r = poll(102);
    r.restart = true;
    s.on_request(2, r, now);
    s.take_events(&mut events);
    assert!(matches!(&events[..], [StreamEvent::Open(h)] if h.attr("version") == Some("1.0")));
    // Held until the new header and features come, whatever the wait.
    s.on_timer(now + Duration::from_secs(31));
    assert!(answers(&mut s).is_empty());
    s.on_output(&header(), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!(t, 2);
    assert!(body
        .children()
        .next()
        .is_some_and(|f| f.is("features", rookery_xml::NS_STREAMS)));
    assert_eq!(body.attr("sid"), None, "not a creation response");
}

#[test]
fn acks_name_the_highest_rid_in_order() {
    let mut p = params();
    p.ack = true;
    p.hold = 2;
    let (mut s, now) = started(p);
    s.on_request(1, poll(101), now);
    s.on_request(2, poll(102), now);
    s.on_output(&stanza("a"), now).expect("output");
    let (t, body) = one(&mut s);
    assert_eq!((t, body.attr("ack")), (1, Some("102")));
    s.on_output(&stanza("b"), now).expect("output");
    let (t, body) = one(&mut s);
    // The response to the highest request carries no ack (§9.1).
    assert_eq!((t, body.attr("ack")), (2, None));
}

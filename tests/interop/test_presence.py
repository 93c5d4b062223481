"""Presence (RFC 6121 §4) and message routing by priority (§8.5.2).

Subscriptions are set up over the wire (subscribe, subscribed). A check that something did
*not* arrive uses ``sync``: the server has finished with the sender's stanza once the
sender's ping is answered, and the recipient's own ping answer comes after anything queued
for it before.
"""

from __future__ import annotations

import pytest

from harness import (
    CLIENT_NS,
    STANZA_ERR_NS,
    UserPool,
    abort_connection,
    find_or_wait,
    im_login,
    is_presence,
    login_scram,
    messages,
    presences,
    qn,
    send_presence,
    stanza_error_condition,
    sync,
    unique_localpart,
)


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "pres", workers=2)
    users.prefetch(41)
    yield users
    users.close()


@pytest.fixture(scope="module")
def loner(pool):
    """One account for the error tests, which leave no state behind."""
    return pool.take()


def online(raw, user, resource=None, **kw):
    """A logged-in, interested, available stream (see ``im_login``); ``stream.got`` holds what
    arrived during the login."""
    stream = raw()
    stream.got = im_login(stream, user, resource or unique_localpart("r"), **kw)
    return stream


def subscribe(a_stream, a, b_stream, b) -> list:
    """``a`` subscribes to ``b``'s presence and ``b`` approves: "To" for a, "From" for b.
    Returns what ``a`` received meanwhile (such as ``b``'s presence)."""
    send_presence(a_stream, to=b.jid, ptype="subscribe")
    sync(a_stream)
    send_presence(b_stream, to=a.jid, ptype="subscribed")
    sync(b_stream)
    return sync(a_stream)


def chat(stream, to: str, body: str) -> None:
    stream.send(f"<message to='{to}' type='chat' id='{unique_localpart('m')}'><body>{body}</body></message>")


def bodies(elems) -> list[str]:
    return [m.findtext(qn(CLIENT_NS, "body")) for m in messages(elems)]


# -- Broadcast and probes (§4.2, §4.3) ---------------------------------------------------------


def test_initial_presence_reaches_subscribers_only_and_probes_contacts(server, raw, pool):
    user = pool.take()
    # Contacts whose relationship is, for the user: From, Both, To, None + Pending Out,
    # None + Pending In; and a stranger.
    f, b, t, n, pi, s = (pool.take() for _ in range(6))
    streams = {x: online(raw, x, status=f"I am {x.localpart}") for x in (f, b, t, n, pi, s)}
    setup = raw()
    login_scram(setup, user, "setup")  # neither interested nor available
    subscribe(streams[f], f, setup, user)
    subscribe(streams[b], b, setup, user)
    subscribe(setup, user, streams[b], b)
    subscribe(setup, user, streams[t], t)
    send_presence(setup, to=n.jid, ptype="subscribe")  # never answered
    sync(setup)
    send_presence(streams[pi], to=user.jid, ptype="subscribe")  # never answered
    sync(streams[pi])
    setup.close()
    for st in streams.values():
        sync(st)

    u = raw()
    got = im_login(u, user, "desk", status="hello")
    me = user.full("desk")
    # §4.2.2: initial presence goes to contacts with a subscription from the user.
    for contact in (f, b):
        p = find_or_wait(streams[contact], sync(streams[contact]), is_presence(None, me), what=f"presence at {contact.jid}")
        assert p.findtext(qn(CLIENT_NS, "status")) == "hello"
    # ...and to no one else: not to "To", "None + Pending Out/In" or unrelated accounts.
    for other in (t, n, pi, s):
        assert presences(sync(streams[other]), "*", from_=user.jid) == [], f"presence leaked to {other.jid}"
    # §4.3: the server probes the contacts the user is subscribed to; their presence comes back.
    for contact in (t, b):
        p = find_or_wait(u, got, is_presence(None, contact.jid), what=f"probe answer from {contact.jid}")
        assert p.findtext(qn(CLIENT_NS, "status")) == f"I am {contact.localpart}"
    for contact in (f, n, pi, s):
        assert presences(got + sync(u), None, from_=contact.jid) == [], f"got presence of {contact.jid}"

    # A change of presence follows the same rules.
    send_presence(u, status="busy", show="dnd")
    sync(u)
    for contact in (f, b):
        p = find_or_wait(streams[contact], sync(streams[contact]), is_presence(None, me))
        assert p.findtext(qn(CLIENT_NS, "show")) == "dnd"
    for other in (t, n, pi, s):
        assert presences(sync(streams[other]), "*", from_=user.jid) == []


def test_every_login_sees_contacts_current_presence(server, raw, pool):
    user, contact, offline = pool.take(), pool.take(), pool.take()
    c = online(raw, contact, "phone")
    send_presence(c, show="away", status="at lunch")
    sync(c)
    first = online(raw, user, "first")
    subscribe(first, user, c, contact)
    o = online(raw, offline, "gone")
    subscribe(first, user, o, offline)
    o.send("</stream:stream>")
    o.read_until_closed(timeout=5)
    for resource in ("second", "third"):
        stream = raw()
        got = im_login(stream, user, resource)
        p = find_or_wait(stream, got, is_presence(None, contact.full("phone")), what="contact's presence")
        assert (p.findtext(qn(CLIENT_NS, "show")), p.findtext(qn(CLIENT_NS, "status"))) == ("away", "at lunch")
        # §4.3.2: a probe of a contact without available resources is answered "unavailable".
        find_or_wait(stream, got, is_presence("unavailable", offline.jid), what="unavailable of the offline contact")
        assert presences(got + sync(stream), None, from_=offline.jid) == []


def test_new_resource_alone_gets_contacts_presence(server, raw, pool):
    """§4.3: the probes sent for a resource that comes online are answered to that resource
    (they go out from its full JID, as in Prosody and ejabberd); the account's other
    resources already have the contacts' presence and are not sent it again."""
    user, contact, offline = pool.take(), pool.take(), pool.take()
    c = online(raw, contact, "desk", status="here")
    first = online(raw, user, "one")
    subscribe(first, user, c, contact)
    o = online(raw, offline, "gone")
    subscribe(first, user, o, offline)
    o.send("</stream:stream>")
    o.read_until_closed(timeout=5)
    first.wait_for(is_presence("unavailable", offline.full("gone")), timeout=5, what="the contact leaving")
    sync(first)

    second = raw()
    got = im_login(second, user, "two")
    p = find_or_wait(second, got, is_presence(None, contact.full("desk")), what="contact's presence")
    assert p.get("to") == user.full("two")
    assert p.findtext(qn(CLIENT_NS, "status")) == "here"
    p = find_or_wait(second, got, is_presence("unavailable", offline.jid), what="unavailable of the offline contact")
    assert p.get("to") == user.full("two")

    seen = sync(first)
    # The first resource hears of the new one...
    find_or_wait(first, seen, is_presence(None, user.full("two")), what="presence of the new resource")
    # ...and nothing from the contacts: their presence did not change.
    assert presences(seen, "*", from_=contact.jid) == [], "contact's presence replayed"
    assert presences(seen, "*", from_=offline.jid) == [], "offline contact's unavailable replayed"


def test_own_resources_see_each_other(server, raw, pool):
    user = pool.take()
    r1 = online(raw, user, "one", status="first")
    r2 = raw()
    got = im_login(r2, user, "two", status="second")
    # The new resource learns about the other one...
    p = find_or_wait(r2, got, is_presence(None, user.full("one")), what="presence of the other resource")
    assert p.findtext(qn(CLIENT_NS, "status")) == "first"
    # ...gets its own presence back (§4.2.2: "including the resource that generated it")...
    find_or_wait(r2, got, is_presence(None, user.full("two")), what="own presence echoed")
    # ...and the other resource learns about it.
    p = find_or_wait(r1, sync(r1), is_presence(None, user.full("two")), what="presence of the new resource")
    assert p.findtext(qn(CLIENT_NS, "status")) == "second"
    # Not available (no initial presence): not told, not seen.
    r3 = raw()
    got = im_login(r3, user, "three", available=False)
    assert presences(got + sync(r3), "*", from_=user.jid) == []
    assert presences(sync(r1), "*", from_=user.full("three")) == []


def test_probe_from_stranger_reveals_nothing(server, raw, pool):
    user, stranger = pool.take(), pool.take()
    online(raw, user, "home", status="secret")
    s = online(raw, stranger, "snoop")
    send_presence(s, to=user.jid, ptype="probe")
    got = sync(s)
    assert presences(got, None, from_=user.jid) == [], "presence revealed to a non-subscriber"


# -- Unavailable (§4.5) ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["unavailable-presence", "stream-close", "tcp-abort"])
def test_unavailable_broadcast_when_session_ends(server, raw, pool, how):
    user, watcher = pool.take(), pool.take()
    w = online(raw, watcher, "w")
    other = online(raw, user, "other")
    subscribe(w, watcher, other, user)
    leaving = online(raw, user, "leaving")
    find_or_wait(w, sync(w), is_presence(None, user.full("leaving")))
    sync(other)

    if how == "unavailable-presence":
        send_presence(leaving, ptype="unavailable", status="bye")
        leaving.send("</stream:stream>")
    elif how == "stream-close":
        leaving.send("</stream:stream>")  # §4.5.2: the server sends unavailable for the user
    else:
        abort_connection(leaving)  # no closing tag, no TLS close_notify, a TCP reset
    for st in (w, other):
        p = st.wait_for(is_presence("unavailable", user.full("leaving")), timeout=5, what=f"unavailable ({how})")
        if how == "unavailable-presence":
            assert p.findtext(qn(CLIENT_NS, "status")) == "bye"
    # Exactly once.
    assert presences(sync(w), "unavailable", from_=user.full("leaving")) == []


# -- Directed presence (§4.6) ------------------------------------------------------------------


@pytest.mark.parametrize("end", ["logout", "abort", "unavailable-broadcast"])
def test_directed_presence_and_its_unavailable(server, raw, pool, end):
    user, stranger = pool.take(), pool.take()
    s = online(raw, stranger, "s")
    u = online(raw, user, "u")
    send_presence(u, to=stranger.full("s"), status="just for you")
    sync(u)
    p = find_or_wait(s, sync(s), is_presence(None, user.full("u")), what="directed presence")
    assert p.findtext(qn(CLIENT_NS, "status")) == "just for you"
    # Directed presence does not subscribe the stranger to later broadcasts.
    send_presence(u, status="broadcast")
    sync(u)
    assert presences(sync(s), None, from_=user.jid) == []

    if end == "logout":
        u.send("</stream:stream>")
    elif end == "abort":
        abort_connection(u)
    else:
        send_presence(u, ptype="unavailable")
    s.wait_for(is_presence("unavailable", user.full("u")), timeout=5, what=f"unavailable after directed presence ({end})")


def test_directed_presence_without_initial_presence_gets_unavailable_on_logout(server, raw, pool):
    """§4.6: a client may send directed presence without ever broadcasting presence; the
    server still has to tell that entity when the session ends (§4.6.3)."""
    user, stranger = pool.take(), pool.take()
    s = online(raw, stranger, "s")
    u = raw()
    login_scram(u, user, "u")
    send_presence(u, to=stranger.full("s"), status="only for you")
    sync(u)
    find_or_wait(s, sync(s), is_presence(None, user.full("u")), what="directed presence")
    u.send("</stream:stream>")
    u.read_until_closed(timeout=5)
    s.wait_for(is_presence("unavailable", user.full("u")), timeout=3, what="unavailable at the end of the session")


def test_directed_presence_to_bare_jid_reaches_available_resources(server, raw, pool):
    user, other = pool.take(), pool.take()
    o1 = online(raw, other, "one")
    o2 = online(raw, other, "two")
    u = online(raw, user, "u")
    send_presence(u, to=other.jid, status="hi both")
    sync(u)
    for st in (o1, o2):
        find_or_wait(st, sync(st), is_presence(None, user.full("u")), what="directed presence to bare JID")


# -- Message routing by priority (§8.5.2) ------------------------------------------------------


def test_message_to_bare_jid_goes_to_highest_non_negative_priority(server, raw, pool):
    user, sender = pool.take(), pool.take()
    c = online(raw, sender, "c")
    hi = online(raw, user, "hi", priority=5)
    lo = online(raw, user, "lo", priority=1)
    neg = online(raw, user, "neg", priority=-1)
    quiet = online(raw, user, "quiet", available=False)
    resources = {"hi": hi, "lo": lo, "neg": neg, "quiet": quiet}

    def deliveries(body: str) -> dict:
        chat(c, user.jid, body)
        errors = [e for e in sync(c) if e.get("type") == "error"]
        assert errors == [], f"sender got an error for {body!r}"
        return {name: bodies(sync(st)).count(body) for name, st in resources.items()}

    assert deliveries("first") == {"hi": 1, "lo": 0, "neg": 0, "quiet": 0}
    send_presence(hi, ptype="unavailable")
    sync(hi)
    assert deliveries("second") == {"hi": 0, "lo": 1, "neg": 0, "quiet": 0}
    # Only negative priorities left: no resource gets it (§8.5.2.1.1); it is kept offline.
    send_presence(lo, priority=-5)
    sync(lo)
    assert deliveries("third") == {"hi": 0, "lo": 0, "neg": 0, "quiet": 0}
    # A full JID reaches its resource whatever the priority (§8.5.3.1).
    chat(c, user.full("neg"), "direct")
    sync(c)
    assert bodies(sync(neg)) == ["direct"]
    # Back to a non-negative priority: the kept message arrives.
    send_presence(lo, priority=0)
    m = lo.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message"), timeout=5, what="the message kept offline")
    assert m.findtext(qn(CLIENT_NS, "body")) == "third"


def test_message_to_bare_jid_with_tied_top_priority(server, raw, pool):
    """Two resources share the top priority: the server delivers to both or to one of them
    (§8.5.2.1.1); rookery's default (messages.to_all_top_priority_resources) is both."""
    user, sender = pool.take(), pool.take()
    c = online(raw, sender, "c")
    a = online(raw, user, "a", priority=3)
    b = online(raw, user, "b", priority=3)
    low = online(raw, user, "low", priority=2)
    chat(c, user.jid, "tie")
    sync(c)
    got = {name: bodies(sync(st)).count("tie") for name, st in (("a", a), ("b", b), ("low", low))}
    assert got["low"] == 0
    if getattr(server, "external", False):
        assert got["a"] + got["b"] >= 1
    else:
        assert (got["a"], got["b"]) == (1, 1)


# -- Errors ------------------------------------------------------------------------------------


def test_presence_to_unserved_domain_bounces(server, raw, loner):
    u = online(raw, loner)
    target = "someone@unserved.example"
    u.send(f"<presence to='{target}' id='dir-1'><status>anyone?</status></presence>")
    err = find_or_wait(u, sync(u), is_presence("error", target), timeout=2, what="presence error")
    assert err.get("id") == "dir-1"
    assert stanza_error_condition(err)[1] == "remote-server-not-found"


def test_subscription_request_to_unserved_domain_bounces(server, raw, loner):
    """The user's own subscription request cannot be routed: the user must learn it (RFC 6120
    §8.3.3.16 remote-server-not-found), not wait for an answer forever."""
    u = online(raw, loner)
    target = "someone@unserved.example"
    u.send(f"<presence to='{target}' type='subscribe' id='sub-1'/>")
    err = find_or_wait(
        u, sync(u), is_presence("error", target), timeout=1, what="error for a subscription to an unserved domain"
    )
    assert stanza_error_condition(err)[1] == "remote-server-not-found"


def test_presence_with_unknown_type_is_bad_request(server, raw, pool):
    user, contact = pool.take(), pool.take()
    u = online(raw, user, "u")
    c = online(raw, contact, "c")
    u.send(f"<presence to='{contact.jid}' type='bogus' id='bad-1'/>")
    err = find_or_wait(u, sync(u), is_presence("error"), timeout=2, what="bad-request")
    assert err.get("id") == "bad-1"
    assert stanza_error_condition(err) == ("modify", "bad-request")
    assert presences(sync(c), "*", from_=user.jid) == [], "the bad presence was delivered"


def test_presence_to_unknown_local_account_is_ignored(server, raw, loner):
    u = online(raw, loner)
    ghost = f"{unique_localpart('ghost')}@{server.domain}"
    for ptype in (None, "subscribe", "probe"):
        send_presence(u, to=ghost, ptype=ptype)
    got = sync(u)
    assert presences(got, "*", from_=ghost) == [], "RFC 6121 §8.5.1: presence to no account is ignored"


def test_error_presence_is_not_answered_with_an_error(server, raw, loner):
    u = online(raw, loner)
    u.send(
        "<presence to='someone@unserved.example' type='error' id='e-1'>"
        f"<error type='cancel'><item-not-found xmlns='{STANZA_ERR_NS}'/></error></presence>"
    )
    assert presences(sync(u), "error") == []

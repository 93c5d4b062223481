"""Account services, each checked against its XEP: vcard-temp (XEP-0054), private XML storage
(XEP-0049), last activity (XEP-0012), the blocking command (XEP-0191), in-band registration,
password change and account removal (XEP-0077), contact addresses in service discovery
(XEP-0157, XEP-0128), and disco#info on an account's bare JID answered by the server
(XEP-0030, RFC 6121 §8.5.1)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from harness import (
    CLIENT_NS,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    ROSTER_NS,
    RawStream,
    User,
    UserPool,
    find_or_wait,
    im_login,
    is_presence,
    login_scram,
    loopback_source,
    messages,
    presences,
    qn,
    request,
    roster_get,
    roster_of,
    send_presence,
    stanza_error_condition,
    sync,
    unique_localpart,
)

CLOSED_HOST = "closed.localhost"
CONTACT_ADMIN = ["mailto:admin@localhost", "xmpp:admin@localhost"]
CONTACT_ABUSE = ["mailto:abuse@localhost"]

SERVER_CONFIG = {
    "extra_hosts": [CLOSED_HOST],
    "host_extra": "\n".join(
        [
            "registration = true",
            "",
            "[host.contact]",
            "admin = [" + ", ".join(f'"{a}"' for a in CONTACT_ADMIN) + "]",
            "abuse = [" + ", ".join(f'"{a}"' for a in CONTACT_ABUSE) + "]",
        ]
    ),
}

VCARD_NS = "vcard-temp"
PRIVATE_NS = "jabber:iq:private"
LAST_NS = "jabber:iq:last"
BLOCKING_NS = "urn:xmpp:blocking"
BLOCKING_ERRORS_NS = "urn:xmpp:blocking:errors"
REGISTER_NS = "jabber:iq:register"
REGISTER_FEATURE_NS = "http://jabber.org/features/iq-register"
DATA_NS = "jabber:x:data"
SERVERINFO = "http://jabber.org/network/serverinfo"


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "acct", workers=2)
    users.prefetch(22)
    yield users
    users.close()


@pytest.fixture(scope="module")
def plain(pool):
    """One account for the tests that leave no state behind."""
    return pool.take()


def online(raw, user, resource=None, **kw):
    stream = raw()
    stream.got = im_login(stream, user, resource or unique_localpart("r"), **kw)
    return stream


def error_of(reply) -> tuple[str | None, str | None]:
    assert reply.get("type") == "error", f"expected an error, got {reply.get('type')}"
    return stanza_error_condition(reply)


def subscribe(a_stream, a, b_stream, b) -> list:
    """``a`` subscribes to ``b`` and ``b`` approves (a: "To", b: "From"); returns what ``a``
    received meanwhile (such as ``b``'s presence)."""
    send_presence(a_stream, to=b.jid, ptype="subscribe")
    sync(a_stream)
    send_presence(b_stream, to=a.jid, ptype="subscribed")
    sync(b_stream)
    return sync(a_stream)


def disco_info(stream, to: str):
    return stream.iq(f"<query xmlns='{DISCO_INFO_NS}'/>", to=to)


def features_of(reply) -> set[str]:
    return {f.get("var") for f in reply.iter(qn(DISCO_INFO_NS, "feature"))}


# -- Service discovery (XEP-0030, XEP-0157) ----------------------------------------------------


def test_server_advertises_account_services(server, raw, plain):
    s = online(raw, plain)
    reply = disco_info(s, server.domain)
    assert reply.get("type") == "result"
    missing = {VCARD_NS, PRIVATE_NS, LAST_NS, BLOCKING_NS, REGISTER_NS} - features_of(reply)
    assert not missing, f"features not advertised: {sorted(missing)}"


def test_contact_addresses_in_server_disco(server, raw, plain):
    if server.external:
        pytest.skip("checks the addresses of this module's configuration")
    s = online(raw, plain)
    reply = disco_info(s, server.domain)
    forms = [
        x
        for x in reply.iter(qn(DATA_NS, "x"))
        if any(
            f.get("var") == "FORM_TYPE" and f.findtext(qn(DATA_NS, "value")) == SERVERINFO
            for f in x.findall(qn(DATA_NS, "field"))
        )
    ]
    assert len(forms) == 1, "XEP-0157: exactly one serverinfo form in the server's disco#info"
    form = forms[0]
    assert form.get("type") == "result"
    fields = {f.get("var"): f for f in form.findall(qn(DATA_NS, "field"))}
    assert fields["FORM_TYPE"].get("type") == "hidden", "XEP-0128: FORM_TYPE is a hidden field"
    values = {var: [v.text for v in f.findall(qn(DATA_NS, "value"))] for var, f in fields.items()}
    assert values["admin-addresses"] == CONTACT_ADMIN
    assert values["abuse-addresses"] == CONTACT_ABUSE
    for role in ("feedback", "sales", "security", "status", "support"):
        assert values.get(f"{role}-addresses", []) == [], f"{role}-addresses not configured"


def test_disco_info_on_bare_jid_answered_by_server(server, raw, pool):
    asker, target = pool.take(), pool.take()
    a = online(raw, asker)
    t = online(raw, target, "t")  # online: the server still answers for the bare JID
    reply = disco_info(a, target.jid)
    assert reply.get("type") == "result", reply
    assert reply.get("from") == target.jid
    identities = {(i.get("category"), i.get("type")) for i in reply.iter(qn(DISCO_INFO_NS, "identity"))}
    assert ("account", "registered") in identities
    assert DISCO_INFO_NS in features_of(reply), "XEP-0030 §3.1: every entity supports disco#info"
    items = a.iq(f"<query xmlns='{DISCO_ITEMS_NS}'/>", to=target.jid)
    assert items.get("type") == "result" and items.find(qn(DISCO_ITEMS_NS, "query")) is not None
    assert not [e for e in sync(t) if e.tag == qn(CLIENT_NS, "iq") and e.get("type") == "get"], (
        "a request to the bare JID is the server's to answer (RFC 6121 §8.5.2.1.3)"
    )
    # Offline, same answer; no such account: service-unavailable (RFC 6121 §8.5.1).
    t.close()
    assert disco_info(a, target.jid).get("type") == "result"
    ghost = f"{unique_localpart('ghost')}@{server.domain}"
    assert error_of(disco_info(a, ghost)) == ("cancel", "service-unavailable")


# -- vcard-temp (XEP-0054) ---------------------------------------------------------------------

VCARD = (
    f"<vCard xmlns='{VCARD_NS}'><FN>Juliet Capulet</FN><NICKNAME>JC</NICKNAME>"
    "<EMAIL><INTERNET/><PREF/><USERID>juliet@example.com</USERID></EMAIL></vCard>"
)


def test_vcard(server, raw, pool):
    juliet, romeo = pool.take(), pool.take()
    j = online(raw, juliet)
    r = online(raw, romeo)
    # §3.1: no vCard yet: an empty vCard, or item-not-found.
    reply = j.iq(f"<vCard xmlns='{VCARD_NS}'/>")
    if reply.get("type") == "result":
        card = reply.find(qn(VCARD_NS, "vCard"))
        assert card is not None and len(card) == 0, "expected an empty vCard"
    else:
        assert error_of(reply)[1] == "item-not-found"

    # §3.2: publish.
    assert j.iq(VCARD, itype="set").get("type") == "result"
    for to in (None, juliet.jid):
        card = j.iq(f"<vCard xmlns='{VCARD_NS}'/>", to=to).find(qn(VCARD_NS, "vCard"))
        assert card.findtext(qn(VCARD_NS, "FN")) == "Juliet Capulet"
        assert card.findtext(f"{qn(VCARD_NS, 'EMAIL')}/{qn(VCARD_NS, 'USERID')}") == "juliet@example.com"
    # §3.3: anyone can read it, answered by the server for the bare JID.
    reply = r.iq(f"<vCard xmlns='{VCARD_NS}'/>", to=juliet.jid)
    assert reply.get("type") == "result" and reply.get("from") == juliet.jid
    assert reply.find(qn(VCARD_NS, "vCard")).findtext(qn(VCARD_NS, "NICKNAME")) == "JC"
    # Nobody else can change it.
    reply = r.iq(f"<vCard xmlns='{VCARD_NS}'><FN>Not Juliet</FN></vCard>", itype="set", to=juliet.jid)
    assert error_of(reply)[1] in ("forbidden", "not-allowed", "not-authorized")
    card = j.iq(f"<vCard xmlns='{VCARD_NS}'/>").find(qn(VCARD_NS, "vCard"))
    assert card.findtext(qn(VCARD_NS, "FN")) == "Juliet Capulet"
    # A second set replaces the whole vCard.
    assert j.iq(f"<vCard xmlns='{VCARD_NS}'><FN>J.</FN></vCard>", itype="set").get("type") == "result"
    card = r.iq(f"<vCard xmlns='{VCARD_NS}'/>", to=juliet.jid).find(qn(VCARD_NS, "vCard"))
    assert card.findtext(qn(VCARD_NS, "FN")) == "J." and card.find(qn(VCARD_NS, "NICKNAME")) is None


def test_vcard_of_account_without_one_or_unknown(server, raw, pool):
    asker, plain = pool.take(), pool.take()
    a = online(raw, asker)
    for jid in (plain.jid, f"{unique_localpart('ghost')}@{server.domain}"):
        reply = a.iq(f"<vCard xmlns='{VCARD_NS}'/>", to=jid)
        if reply.get("type") == "result":
            card = reply.find(qn(VCARD_NS, "vCard"))
            assert jid == plain.jid and card is not None and len(card) == 0
        else:
            # XEP-0054 §3.3: service-unavailable or item-not-found.
            assert error_of(reply)[1] in ("service-unavailable", "item-not-found"), jid


# -- Private XML storage (XEP-0049) ------------------------------------------------------------

PREFS = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>"


def private(stream, inner: str, itype: str = "get", to: str | None = None):
    return stream.iq(f"<query xmlns='{PRIVATE_NS}'>{inner}</query>", itype=itype, to=to)


def test_private_storage(server, raw, pool):
    hamlet, horatio = pool.take(), pool.take()
    h = online(raw, hamlet)
    o = online(raw, horatio)
    # Nothing stored: the empty element comes back.
    reply = private(h, "<exodus xmlns='exodus:prefs'/>")
    assert reply.get("type") == "result"
    el = reply.find(f"{qn(PRIVATE_NS, 'query')}/{{exodus:prefs}}exodus")
    assert el is not None and len(el) == 0
    assert private(h, PREFS, "set").get("type") == "result"
    # A second namespace is kept apart.
    assert private(h, "<bookmarks xmlns='storage:bookmarks'><url name='x' url='https://example.com/'/></bookmarks>", "set").get("type") == "result"
    reply = private(h, "<exodus xmlns='exodus:prefs'/>")
    assert reply.findtext(f"{qn(PRIVATE_NS, 'query')}/{{exodus:prefs}}exodus/{{exodus:prefs}}defaultnick") == "Hamlet"
    reply = private(h, "<bookmarks xmlns='storage:bookmarks'/>")
    assert reply.find(f"{qn(PRIVATE_NS, 'query')}/{{storage:bookmarks}}bookmarks/{{storage:bookmarks}}url") is not None
    # Another resource of the same account sees it.
    h2 = online(raw, hamlet)
    reply = private(h2, "<exodus xmlns='exodus:prefs'/>")
    assert reply.findtext(f"{qn(PRIVATE_NS, 'query')}/{{exodus:prefs}}exodus/{{exodus:prefs}}defaultnick") == "Hamlet"
    # Another account has its own (empty) storage...
    reply = private(o, "<exodus xmlns='exodus:prefs'/>")
    assert len(reply.find(f"{qn(PRIVATE_NS, 'query')}/{{exodus:prefs}}exodus")) == 0
    # ...and cannot read or write Hamlet's (§3: forbidden, or service-unavailable).
    for itype, inner in (("get", "<exodus xmlns='exodus:prefs'/>"), ("set", PREFS)):
        assert error_of(private(o, inner, itype, to=hamlet.jid))[1] in ("forbidden", "service-unavailable")


def test_private_storage_without_element_is_not_acceptable(server, raw, plain):
    s = online(raw, plain)
    for itype in ("get", "set"):
        assert error_of(private(s, "", itype))[1] == "not-acceptable"


# -- Last activity (XEP-0012) ------------------------------------------------------------------


def test_last_activity_of_server(server, raw, plain):
    s = online(raw, plain)
    reply = s.iq(f"<query xmlns='{LAST_NS}'/>", to=server.domain)
    assert reply.get("type") == "result"
    assert int(reply.find(qn(LAST_NS, "query")).get("seconds")) >= 0


def test_last_activity_of_offline_contact(server, raw, pool):
    watcher, gone, stranger = pool.take(), pool.take(), pool.take()
    w = online(raw, watcher)
    g = online(raw, gone, "g")
    subscribe(w, watcher, g, gone)
    # §3: while the account has an available resource, seconds='0'.
    reply = w.iq(f"<query xmlns='{LAST_NS}'/>", to=gone.jid)
    assert reply.get("type") == "result", reply
    assert reply.find(qn(LAST_NS, "query")).get("seconds") == "0"
    send_presence(g, ptype="unavailable", status="Heading home")
    g.send("</stream:stream>")
    w.wait_for(is_presence("unavailable", gone.full("g")), timeout=5)
    g.read_until_closed(timeout=5)
    sync(w)

    reply = w.iq(f"<query xmlns='{LAST_NS}'/>", to=gone.jid)
    assert reply.get("type") == "result", reply
    assert reply.get("from") == gone.jid
    query = reply.find(qn(LAST_NS, "query"))
    assert 0 <= int(query.get("seconds")) <= 10
    assert (query.text or "") == "Heading home", "§3: the status of the last unavailable presence"
    # §3: not for entities not allowed to see the account's presence.
    s = online(raw, stranger)
    assert error_of(s.iq(f"<query xmlns='{LAST_NS}'/>", to=gone.jid))[1] == "forbidden"


def test_last_activity_of_full_jid_goes_to_the_client(server, raw, pool):
    asker, target = pool.take(), pool.take()
    a = online(raw, asker)
    t = online(raw, target, "t")
    a.send(f"<iq type='get' id='last-1' to='{target.full('t')}'><query xmlns='{LAST_NS}'/></iq>")
    q = t.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "last-1", timeout=5)
    assert q.get("from") == a.jid
    t.send(f"<iq type='result' id='last-1' to='{a.jid}'><query xmlns='{LAST_NS}' seconds='42'/></iq>")
    reply = a.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "last-1", timeout=5)
    assert reply.find(qn(LAST_NS, "query")).get("seconds") == "42"


# -- Blocking command (XEP-0191) ---------------------------------------------------------------


def blocklist(stream) -> list[str]:
    reply = stream.iq(f"<blocklist xmlns='{BLOCKING_NS}'/>")
    assert reply.get("type") == "result", reply
    return sorted(i.get("jid") for i in reply.iter(qn(BLOCKING_NS, "item")))


def block_pushes(elems, command: str) -> list[list[str]]:
    return [
        sorted(i.get("jid") for i in e.find(qn(BLOCKING_NS, command)))
        for e in elems
        if e.tag == qn(CLIENT_NS, "iq") and e.get("type") == "set" and e.find(qn(BLOCKING_NS, command)) is not None
    ]


def items_xml(*jids: str) -> str:
    return "".join(f"<item jid='{j}'/>" for j in jids)


def is_message_error(e) -> bool:
    return e.tag == qn(CLIENT_NS, "message") and e.get("type") == "error"


def test_block_and_unblock_with_pushes(server, raw, pool):
    user = pool.take()
    r1, r2, r3 = online(raw, user, "one"), online(raw, user, "two"), online(raw, user, "three")
    assert blocklist(r1) == [] and blocklist(r2) == []  # r1, r2 interested; r3 never asked
    bad = [f"{unique_localpart('bad')}@{server.domain}", "spam.example", f"x@{server.domain}/phone"]
    before, reply = request(r1, f"<block xmlns='{BLOCKING_NS}'>{items_xml(*bad)}</block>", itype="set")
    assert reply.get("type") == "result"
    assert block_pushes(before + sync(r1), "block") == [sorted(bad)]
    assert block_pushes(sync(r2), "block") == [sorted(bad)]
    assert block_pushes(sync(r3), "block") == [], "§3.3: pushes go to resources that asked for the list"
    assert blocklist(r3) == sorted(bad)

    before, reply = request(r2, f"<unblock xmlns='{BLOCKING_NS}'>{items_xml(bad[0])}</unblock>", itype="set")
    assert reply.get("type") == "result"
    assert block_pushes(sync(r1), "unblock") == [[bad[0]]]
    assert blocklist(r1) == sorted(bad[1:])
    # §3.5: an empty unblock removes everything; the push is empty too.
    assert r1.iq(f"<unblock xmlns='{BLOCKING_NS}'/>", itype="set").get("type") == "result"
    assert block_pushes(sync(r2), "unblock") == [[]]
    assert blocklist(r2) == []


@pytest.mark.parametrize(
    "payload, condition",
    [
        pytest.param(f"<block xmlns='{BLOCKING_NS}'/>", "bad-request", id="block-without-items"),
        pytest.param(f"<block xmlns='{BLOCKING_NS}'><item jid='a@b@c'/></block>", "jid-malformed", id="malformed-jid"),
    ],
)
def test_block_errors(server, raw, plain, payload, condition):
    s = online(raw, plain)
    assert error_of(s.iq(payload, itype="set"))[1] == condition
    assert blocklist(s) == []


def test_blocking_enforced_both_ways(server, raw, pool):
    user, pest = pool.take(), pool.take()
    u = online(raw, user, "u")
    p = online(raw, pest, "p")
    got = subscribe(p, pest, u, user)  # the pest sees the user's presence
    find_or_wait(p, got, is_presence(None, user.full("u")), what="presence on approval")
    assert u.iq(f"<block xmlns='{BLOCKING_NS}'>{items_xml(pest.jid)}</block>", itype="set").get("type") == "result"
    # §3.3: the blocked contact is told the user went unavailable...
    find_or_wait(p, sync(p), is_presence("unavailable", user.full("u")), what="unavailable on block")
    # ...and sees no further presence.
    send_presence(u, status="new status")
    sync(u)
    assert presences(sync(p), "*", from_=user.jid) == []

    # Inbound: a message gets service-unavailable, an IQ too, presence is dropped.
    p.send(f"<message to='{user.jid}' type='chat' id='in-1'><body>let me in</body></message>")
    p.send(f"<iq type='get' id='in-2' to='{user.full('u')}'><query xmlns='jabber:iq:version'/></iq>")
    send_presence(p, to=user.full("u"), status="directed")
    got = sync(p)
    err = find_or_wait(p, got, is_message_error, timeout=2, what="message bounce")
    assert err.get("id") == "in-1" and stanza_error_condition(err)[1] == "service-unavailable"
    iq_err = find_or_wait(p, got, lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "in-2", timeout=2)
    assert error_of(iq_err)[1] == "service-unavailable"
    assert not [e for e in sync(u) if e.get("from", "").startswith(pest.jid)], "the user got something from a blocked JID"

    # Outbound: not-acceptable with <blocked/> (§3.3), nothing reaches the pest.
    u.send(f"<message to='{pest.jid}' type='chat' id='out-1'><body>go away</body></message>")
    err = find_or_wait(u, sync(u), is_message_error, timeout=2, what="outbound bounce")
    assert err.get("id") == "out-1"
    assert stanza_error_condition(err) == ("cancel", "not-acceptable")
    assert err.find(f"{qn(CLIENT_NS, 'error')}/{qn(BLOCKING_ERRORS_NS, 'blocked')}") is not None
    assert messages(sync(p)) == []

    # Unblocking: the contact gets the user's current presence again (§3.4), messages flow.
    assert u.iq(f"<unblock xmlns='{BLOCKING_NS}'>{items_xml(pest.jid)}</unblock>", itype="set").get("type") == "result"
    again = find_or_wait(p, sync(p), is_presence(None, user.full("u")), what="presence after unblock")
    assert again.findtext(qn(CLIENT_NS, "status")) == "new status"
    p.send(f"<message to='{user.jid}' type='chat' id='in-3'><body>friends?</body></message>")
    sync(p)
    assert [m.get("id") for m in messages(sync(u))] == ["in-3"]


# -- In-band registration, password change, removal (XEP-0077) ---------------------------------


def preauth_stream(server, domain: str | None = None, cafile=None) -> RawStream:
    """A stream after STARTTLS, not authenticated."""
    s = RawStream(
        server.host,
        server.c2s_port,
        domain=domain or server.domain,
        cafile=cafile or server.cert_path,
        source_address=loopback_source(),
    )
    s.open_stream()
    s.starttls()
    return s


def test_in_band_registration(server):
    s = preauth_stream(server)
    try:
        assert s.features.find(qn(REGISTER_FEATURE_NS, "register")) is not None, "no iq-register stream feature"
        form = s.iq(f"<query xmlns='{REGISTER_NS}'/>")
        assert form.get("type") == "result"
        query = form.find(qn(REGISTER_NS, "query"))
        assert query.find(qn(REGISTER_NS, "username")) is not None
        assert query.find(qn(REGISTER_NS, "password")) is not None
        user = User(unique_localpart("ibr"), server.domain, "in-band-pw")
        reply = s.iq(
            f"<query xmlns='{REGISTER_NS}'><username>{user.localpart}</username><password>{user.password}</password></query>",
            itype="set",
        )
        assert reply.get("type") == "result", reply
        # §3.1: taken.
        again = s.iq(
            f"<query xmlns='{REGISTER_NS}'><username>{user.localpart}</username><password>other-password</password></query>",
            itype="set",
        )
        assert error_of(again)[1] == "conflict"
        # §3.1: a required field missing.
        missing = s.iq(f"<query xmlns='{REGISTER_NS}'><username>{unique_localpart('nopw')}</username></query>", itype="set")
        assert error_of(missing)[1] == "not-acceptable"
        # Shorter than limits.min_password_length (8): not-acceptable, saying why.
        short = s.iq(
            f"<query xmlns='{REGISTER_NS}'><username>{unique_localpart('short')}</username><password>1234567</password></query>",
            itype="set",
        )
        assert error_of(short)[1] == "not-acceptable"
        assert "too short" in ET.tostring(short, encoding="unicode")
        # The new account logs in on the same stream.
        assert s.auth_scram(user.localpart, user.password).ok
    finally:
        s.close()
    assert user.jid in server.user("list").stdout.splitlines()


def test_in_band_registration_closed_host(server):
    if server.external:
        pytest.skip("needs this module's second host")
    s = preauth_stream(server, CLOSED_HOST, server.data_dir / "certs" / f"{CLOSED_HOST}.pem")
    try:
        assert s.features.find(qn(REGISTER_FEATURE_NS, "register")) is None
        reply = s.iq(
            f"<query xmlns='{REGISTER_NS}'><username>{unique_localpart('no')}</username><password>pw</password></query>",
            itype="set",
        )
        assert error_of(reply)[1] in ("service-unavailable", "not-allowed", "forbidden")
    finally:
        s.close()


def test_password_change(server, raw, pool):
    user = pool.take()
    s = online(raw, user)
    other = online(raw, user)
    reply = s.iq(
        f"<query xmlns='{REGISTER_NS}'><username>{user.localpart}</username><password>changed-pw</password></query>",
        itype="set",
        to=server.domain,
    )
    assert reply.get("type") == "result", reply
    old = raw()
    old.open_stream()
    old.starttls()
    assert not old.auth_scram(user.localpart, user.password).ok, "the old password still works"
    login_scram(raw(), User(user.localpart, user.domain, "changed-pw"), "new")
    assert sync(other) is not None  # other sessions keep working


def test_cli_deletion_on_a_running_server_tells_the_contacts(server, raw, pool):
    """`rookery user delete` while the server runs: the server deletes the account itself,
    as in-band cancellation and the XEP-0133 command do, so contacts are unsubscribed both
    ways and the account's sessions end."""
    if server.external:
        pytest.skip("rookery CLI only")
    user, friend = pool.take(), pool.take()
    f = online(raw, friend, "f")
    u = online(raw, user, "u")
    subscribe(u, user, f, friend)
    subscribe(f, friend, u, user)
    sync(f)
    res = server.user("delete", user.jid)
    assert res.returncode == 0, res.stderr
    assert f"deleted {user.jid}" in res.stdout
    u.read_until_closed(timeout=5)
    got = sync(f)
    for ptype in ("unsubscribe", "unsubscribed"):
        find_or_wait(f, got, is_presence(ptype, user.jid), timeout=2, what=ptype)
    assert user.jid not in server.user("list").stdout.splitlines()
    again = server.user("delete", user.jid)
    assert again.returncode == 1 and "does not exist" in again.stderr, again.stderr


def test_account_removal(server, raw, pool):
    user, friend = pool.take(), pool.take()
    f = online(raw, friend, "f")
    # An offline message waiting, then state of every kind.
    f.send(f"<message to='{user.jid}' type='chat' id='wait'><body>waiting for you</body></message>")
    sync(f)
    u = raw()
    im_login(u, user, "u", available=False)  # not available: the offline message stays stored
    second = online(raw, user, "second", available=False)
    subscribe(u, user, f, friend)
    subscribe(f, friend, u, user)
    assert u.iq(VCARD, itype="set").get("type") == "result"
    assert private(u, PREFS, "set").get("type") == "result"
    assert u.iq(f"<block xmlns='{BLOCKING_NS}'><item jid='spam.example'/></block>", itype="set").get("type") == "result"
    sync(f)

    reply = u.iq(f"<query xmlns='{REGISTER_NS}'><remove/></query>", itype="set")
    assert reply.get("type") == "result", reply
    # The stream ends (§3.2); other sessions of the account too.
    u.read_until_closed(timeout=5)
    assert u.stream_error() in (None, "not-authorized"), u.stream_error()
    second.read_until_closed(timeout=5)
    assert second.stream_error() is not None, "another session of the removed account was not closed"
    # The friend is unsubscribed both ways.
    got = sync(f)
    for ptype in ("unsubscribe", "unsubscribed"):
        find_or_wait(f, got, is_presence(ptype, user.jid), timeout=2, what=ptype)
    item = roster_of(roster_get(f).find(qn(ROSTER_NS, "query"))).get(user.jid)
    assert item is None or (item.subscription, item.ask) == ("none", None)
    # The account is gone...
    gone = raw()
    gone.open_stream()
    gone.starttls()
    assert not gone.auth_scram(user.localpart, user.password).ok
    assert user.jid not in server.user("list").stdout.splitlines()
    # ...with everything it had: created again, it starts empty.
    again = User(user.localpart, user.domain, "fresh-pw")
    res = server.user("add", again.jid, "--password", again.password)
    assert res.returncode == 0, res.stderr
    n = online(raw, again, "new")
    assert roster_of(n.roster) == {}
    reply = n.iq(f"<vCard xmlns='{VCARD_NS}'/>")
    assert reply.get("type") == "error" or len(reply.find(qn(VCARD_NS, "vCard"))) == 0, "old vCard survived"
    assert len(private(n, "<exodus xmlns='exodus:prefs'/>").find(f"{qn(PRIVATE_NS, 'query')}/{{exodus:prefs}}exodus")) == 0
    assert blocklist(n) == []
    try:
        stale = n.wait_for(qn(CLIENT_NS, "message"), timeout=1.0)
    except TimeoutError:
        stale = None
    assert stale is None, "an offline message of the removed account was delivered to the new one"

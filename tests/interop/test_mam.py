"""Message archives (XEP-0313) with stanza ids (XEP-0359) and paging (XEP-0059), against
the real binary: live messages carry their archive id, paging over 1,000 messages both
ways, every filter, preferences, errors, forged ids, a restart and account deletion."""

from __future__ import annotations

import datetime
import sqlite3
import time
import xml.etree.ElementTree as ET

import pytest

from harness import (
    CLIENT_NS,
    RawStream,
    DELAY_NS,
    UserPool,
    im_login,
    login_scram,
    messages,
    qn,
    request,
    restart_server,
    stanza_error_condition,
    sync,
    xml_attr_escape,
)

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"

# 1,000 messages to one offline account for the paging tests.
SERVER_CONFIG = {"extra_limits": {"max_offline_messages": 5000}}


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "mam", workers=2)
    users.prefetch(12)
    yield users
    users.close()


def send_chat(stream, to: str, body: str, extra: str = "") -> None:
    stream.send(f"<message to='{xml_attr_escape(to)}' type='chat' id='{body}'><body>{body}</body>{extra}</message>")


def stanza_ids(msg: ET.Element) -> list[tuple[str, str]]:
    return [(e.get("by"), e.get("id")) for e in msg.findall(qn(SID, "stanza-id"))]


class Answer:
    def __init__(self, results: list[ET.Element], iq: ET.Element):
        self.results, self.iq = results, iq

    @property
    def ok(self) -> bool:
        return self.iq.get("type") == "result"

    def forwarded(self) -> list[ET.Element]:
        out = []
        for m in self.results:
            fwd = m.find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded")
            assert fwd is not None and fwd.find(qn(DELAY_NS, "delay")) is not None
            out.append(fwd.find(qn(CLIENT_NS, "message")))
        return out

    def bodies(self) -> list[str]:
        return [m.findtext(qn(CLIENT_NS, "body")) for m in self.forwarded()]

    def ids(self) -> list[str]:
        return [m.find(qn(MAM, "result")).get("id") for m in self.results]

    @property
    def fin(self) -> ET.Element:
        fin = self.iq.find(qn(MAM, "fin"))
        assert fin is not None, ET.tostring(self.iq)
        return fin

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") == "true"

    def rsm(self, name: str) -> ET.Element | None:
        return self.fin.find(f"{{{RSM}}}set/{{{RSM}}}{name}")


def mam_query(stream, fields: str = "", rsm: str = "", *, flip: bool = False, queryid: str = "q") -> Answer:
    form = (
        f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
        f"{fields}</x>"
    )
    body = (
        f"<query xmlns='{MAM}' queryid='{queryid}'>{form}<set xmlns='{RSM}'>{rsm}</set>"
        f"{'<flip-page/>' if flip else ''}</query>"
    )
    before, reply = request(stream, body, itype="set", timeout=30)
    results = [m for m in messages(before) if m.find(qn(MAM, "result")) is not None]
    for m in results:
        assert m.find(qn(MAM, "result")).get("queryid") == queryid
    return Answer(results, reply)


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>" + "".join(f"<value>{xml_attr_escape(v)}</value>" for v in values) + "</field>"


def stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def test_live_message_carries_the_archived_stanza_id(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    a, b = raw(), raw()
    im_login(a, alice, "phone")
    im_login(b, bob, "desk")
    send_chat(a, bob.jid, "hello")
    live = b.wait_for(qn(CLIENT_NS, "message"), 5, what="live message")
    [(by, sid)] = stanza_ids(live)
    assert by == bob.jid
    got = mam_query(b, field("ids", sid))
    assert got.ok and got.ids() == [sid] and got.bodies() == ["hello"]
    assert got.complete
    # The sender's own copy is archived, not marked on the wire.
    sent = mam_query(a)
    assert sent.bodies() == ["hello"] and sent.ids() != [sid]
    assert sent.forwarded()[0].get("to") == bob.jid
    assert [m for m in messages(sync(a)) if m.find(qn(MAM, "result")) is None] == []


def test_forged_stanza_id_is_stripped(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    a, b = raw(), raw()
    im_login(a, alice, "phone")
    im_login(b, bob, "desk")
    a.send(
        f"<message to='{bob.jid}' type='chat' id='f1'><body>forged</body>"
        f"<stanza-id xmlns='{SID}' by='{bob.jid}' id='forged-id'/>"
        f"<stanza-id xmlns='{SID}' by='{server.domain}' id='forged-host'/></message>"
    )
    live = b.wait_for(qn(CLIENT_NS, "message"), 5, what="live message")
    ids = stanza_ids(live)
    assert len(ids) == 1 and ids[0][0] == bob.jid and ids[0][1] != "forged-id", ids
    archived = mam_query(b, field("ids", ids[0][1])).forwarded()[0]
    assert stanza_ids(archived) == [], "a forged id was archived"
    assert mam_query(b, field("ids", "forged-id")).iq.get("type") == "error"


def fill(raw, pool, n: int):
    """``n`` messages from alice to bob (offline), numbered; returns (alice, bob)."""
    alice, bob = pool.take(), pool.take()
    a = raw(timeout=30.0)
    im_login(a, alice, "filler")
    for i in range(n):
        send_chat(a, bob.jid, f"m{i:04d}")
        if i % 200 == 199:
            assert [e for e in sync(a) if e.get("type") == "error"] == []
    sync(a)
    return alice, bob


@pytest.fixture(scope="module")
def thousand(server, pool):
    streams = []

    def open_raw(timeout: float = 5.0) -> RawStream:
        stream = RawStream(
            server.host, server.c2s_port, domain=server.domain, cafile=server.cert_path, timeout=timeout
        )
        streams.append(stream)
        return stream

    try:
        yield fill(open_raw, pool, 1000)
    finally:
        for stream in streams:
            stream.close()


def test_paging_forwards_over_1000_messages(server, raw, thousand):
    _alice, bob = thousand
    b = raw(timeout=30.0)
    login_scram(b, bob, "reader")  # not available: no offline flood
    want = [f"m{i:04d}" for i in range(1000)]
    seen, rsm, pages = [], "<max>100</max>", 0
    while True:
        page = mam_query(b, rsm=rsm)
        assert page.ok, ET.tostring(page.iq)
        pages += 1
        assert page.rsm("count").text == "1000"
        assert page.rsm("first").get("index") == str(len(seen))
        assert page.rsm("first").text == page.ids()[0] and page.rsm("last").text == page.ids()[-1]
        seen += page.bodies()
        assert page.complete == (len(seen) == 1000), (len(seen), page.complete)
        if page.complete:
            break
        rsm = f"<max>100</max><after>{page.rsm('last').text}</after>"
    assert seen == want and pages == 10


def test_paging_backwards_over_1000_messages(server, raw, thousand):
    _alice, bob = thousand
    b = raw(timeout=30.0)
    login_scram(b, bob, "reader")
    want = [f"m{i:04d}" for i in range(1000)]
    seen, rsm, pages = [], "<max>150</max><before/>", 0
    while True:
        page = mam_query(b, rsm=rsm)
        pages += 1
        seen = page.bodies() + seen
        assert page.rsm("first").get("index") == str(1000 - len(seen))
        assert page.complete == (len(seen) == 1000)
        if page.complete:
            break
        rsm = f"<max>150</max><before>{page.rsm('first').text}</before>"
    assert seen == want and pages == 7
    flipped = mam_query(b, rsm="<max>3</max><before/>", flip=True)
    assert flipped.bodies() == ["m0999", "m0998", "m0997"]


async def test_slixmpp_iterates_the_archive(server, thousand):
    from harness import session

    _alice, bob = thousand
    async with session(server, bob, resource="slix") as client:
        for plugin in ("xep_0059", "xep_0297", "xep_0313"):
            client.register_plugin(plugin)
        got = []
        async for msg in client.plugin["xep_0313"].iterate(rsm={"max": 250}):
            got.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
        assert got == [f"m{i:04d}" for i in range(1000)]
        fields = await client.plugin["xep_0313"].get_fields()
        assert {"with", "start", "end", "before-id", "after-id", "ids"} <= set(fields.get_fields())


def test_filters(server, raw, pool):
    alice, carol, bob = pool.take(), pool.take(), pool.take()
    a1, a2, c, b = raw(), raw(), raw(), raw()
    im_login(a1, alice, "one")
    im_login(a2, alice, "two")
    im_login(c, carol, "c")
    login_scram(b, bob, "q")
    # Each from its own connection: wait for one before the next, to know the order.
    send_chat(a1, bob.jid, "a1")
    sync(a1)
    send_chat(c, bob.jid, "c1")
    sync(c)
    time.sleep(0.3)
    middle = time.time()
    time.sleep(0.3)
    send_chat(a2, bob.jid, "a2")
    sync(a2)
    send_chat(a1, bob.jid, "a3")
    sync(a1)
    ids = mam_query(b).ids()
    assert len(ids) == 4

    assert mam_query(b, field("with", alice.jid)).bodies() == ["a1", "a2", "a3"]
    assert mam_query(b, field("with", alice.full("two"))).bodies() == ["a2"]
    assert mam_query(b, field("with", carol.jid)).bodies() == ["c1"]
    assert mam_query(b, field("start", stamp(middle))).bodies() == ["a2", "a3"]
    assert mam_query(b, field("end", stamp(middle))).bodies() == ["a1", "c1"]
    assert mam_query(b, field("start", stamp(middle)) + field("with", alice.jid)).bodies() == ["a2", "a3"]
    assert mam_query(b, field("ids", ids[3], ids[0])).bodies() == ["a1", "a3"]
    assert mam_query(b, field("after-id", ids[0]) + field("before-id", ids[3])).bodies() == ["c1", "a2"]
    page = mam_query(b, field("with", alice.jid), "<max>1</max><after>" + ids[0] + "</after>")
    assert page.bodies() == ["a2"] and not page.complete and page.rsm("count").text == "3"


def test_unknown_ids_and_bad_forms(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    a, b = raw(), raw()
    im_login(a, alice, "a")
    login_scram(b, bob, "q")
    send_chat(a, bob.jid, "only")
    sync(a)
    cases = [
        (field("after-id", "nope"), "", "item-not-found"),
        (field("before-id", "nope"), "", "item-not-found"),
        (field("ids", "nope"), "", "item-not-found"),
        ("", "<after>nope</after>", "item-not-found"),
        ("", "<before>nope</before>", "item-not-found"),
        (field("start", "not a date"), "", "bad-request"),
        ("", "<max>many</max>", "bad-request"),
        (field("{urn:example}search", "x"), "", "feature-not-implemented"),
    ]
    for fields, rsm, condition in cases:
        got = mam_query(b, fields, rsm)
        assert got.iq.get("type") == "error" and got.results == [], (fields, rsm)
        assert stanza_error_condition(got.iq)[1] == condition, (fields, rsm)
    assert mam_query(b).bodies() == ["only"]


def test_preference_never_stops_archiving(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    a, b = raw(), raw()
    im_login(a, alice, "a")
    im_login(b, bob, "b")
    reply = b.iq(f"<prefs xmlns='{MAM}' default='never'><always/><never/></prefs>", itype="set")
    assert reply.get("type") == "result"
    reply = b.iq(f"<prefs xmlns='{MAM}'/>")
    assert reply.find(qn(MAM, "prefs")).get("default") == "never"
    send_chat(a, bob.jid, "unarchived")
    live = b.wait_for(qn(CLIENT_NS, "message"), 5, what="message")
    assert stanza_ids(live) == []
    assert mam_query(b).results == []
    b.iq(f"<prefs xmlns='{MAM}' default='always'/>", itype="set")
    send_chat(a, bob.jid, "archived")
    live = b.wait_for(qn(CLIENT_NS, "message"), 5, what="message")
    assert len(stanza_ids(live)) == 1
    assert mam_query(b).bodies() == ["archived"]


def test_disco_and_metadata(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    a = raw()
    im_login(a, alice, "a")
    info = a.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=bob.jid)
    features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {MAM, MAM + "#extended", SID} <= features
    md = a.iq(f"<metadata xmlns='{MAM}'/>").find(qn(MAM, "metadata"))
    assert list(md) == []
    send_chat(a, bob.jid, "x")
    sync(a)
    md = a.iq(f"<metadata xmlns='{MAM}'/>").find(qn(MAM, "metadata"))
    [only] = mam_query(a).ids()
    assert md.find(qn(MAM, "start")).get("id") == only == md.find(qn(MAM, "end")).get("id")


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_archive_survives_restart(make_server, raw_factory, how):
    srv = make_server()
    alice, bob = srv.add_user("a"), srv.add_user("b")
    a = raw_factory(srv)
    im_login(a, alice, "a")
    for i in range(5):
        send_chat(a, bob.jid, f"{how}{i}")
    sync(a)
    restart_server(srv, kill=(how == "sigkill"))
    b = raw_factory(srv)
    login_scram(b, bob, "b")
    got = mam_query(b)
    assert got.bodies() == [f"{how}{i}" for i in range(5)] and got.complete


def test_archive_is_deleted_with_the_account(make_server, raw_factory):
    srv = make_server()
    alice, bob = srv.add_user("a"), srv.add_user("b")
    a = raw_factory(srv)
    im_login(a, alice, "a")
    for i in range(3):
        send_chat(a, bob.jid, f"d{i}")
    sync(a)
    db = srv.data_dir / "rookery.db"

    def rows(user) -> int:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM archive JOIN archive_owners ON archive_owners.id = archive.owner WHERE username = ?", (user.localpart,)).fetchone()[0]

    assert rows(bob) == 3 and rows(alice) == 3
    res = srv.user("delete", bob.jid)
    assert res.returncode == 0, res.stderr
    assert rows(bob) == 0 and rows(alice) == 3
    # Created again, the account starts with an empty archive.
    res = srv.user("add", bob.jid, "--password", bob.password)
    assert res.returncode == 0, res.stderr
    b = raw_factory(srv)
    login_scram(b, bob, "b")
    assert mam_query(b).results == []


def test_every_received_message_is_in_both_archives_after_sigkill(make_server, raw_factory):
    """The durability rule of the message path with archiving: a message its recipient has
    received is in the recipient's and the sender's archive, even when the server is
    killed (SIGKILL) while messages are in flight. The sender's copy is appended without
    waiting for its commit; the recipient's copy, queued after it, is committed before the
    message is delivered."""
    srv = make_server()
    alice, bob = srv.add_user("a"), srv.add_user("b")
    a, b = raw_factory(srv), raw_factory(srv)
    im_login(a, alice, "a")
    im_login(b, bob, "b")
    total = 3000
    # Sent in one burst: the server is still archiving and delivering when it is killed.
    a.send("".join(
        f"<message to='{bob.jid}' type='chat' id='k{i}'><body>k{i}</body></message>" for i in range(total)
    ))
    received: list[str] = []
    deadline = time.monotonic() + 30
    while len(received) < 150 and time.monotonic() < deadline:
        m = b.wait_for(qn(CLIENT_NS, "message"), timeout=10)
        body = m.findtext(qn(CLIENT_NS, "body"))
        if body:
            received.append(body)
    srv.kill()
    # Whatever reached the socket before the kill counts as received.
    while b.pump(0.2):
        pass
    for m in messages(b.elements):
        body = m.findtext(qn(CLIENT_NS, "body"))
        if body and body not in received:
            received.append(body)
    assert len(received) >= 150, f"only {len(received)} messages arrived before the kill"
    assert len(received) < total, "every message was delivered before the kill: nothing was in flight"

    with sqlite3.connect(srv.data_dir / "rookery.db") as c:
        def archived(user) -> set[str]:
            rows = c.execute("SELECT stanza FROM archive JOIN archive_owners ON archive_owners.id = archive.owner WHERE username = ?", (user.localpart,)).fetchall()
            return {ET.fromstring(r[0]).findtext(qn(CLIENT_NS, "body")) for r in rows}

        in_bob, in_alice = archived(bob), archived(alice)
    missing_bob = [x for x in received if x not in in_bob]
    missing_alice = [x for x in received if x not in in_alice]
    assert not missing_bob and not missing_alice, (
        f"received but not archived: recipient {missing_bob[:5]}, sender {missing_alice[:5]}"
    )
    # The archive keeps the order in which the messages were sent.
    with sqlite3.connect(srv.data_dir / "rookery.db") as c:
        rows = c.execute("SELECT stanza FROM archive JOIN archive_owners ON archive_owners.id = archive.owner WHERE username = ? ORDER BY seq", (bob.localpart,)).fetchall()
    order = [ET.fromstring(r[0]).findtext(qn(CLIENT_NS, "body")) for r in rows]
    assert order == sorted(order, key=lambda x: int(x[1:]))

"""Message archives (XEP-0313) with stanza ids (XEP-0359) and paging (XEP-0059), against
the real binary: live messages carry their archive id, paging over 1,000 messages both
ways, every filter, preferences, errors, forged ids, a restart and account deletion."""

from __future__ import annotations

import datetime
import sqlite3
import struct
import time
import zlib
from pathlib import Path
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

    # The server commits archived messages shortly after they are journaled.
    deadline = time.monotonic() + 10
    while (rows(bob), rows(alice)) != (3, 3) and time.monotonic() < deadline:
        time.sleep(0.02)
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


def journal_leftovers(db: Path) -> list[tuple[str, str]]:
    """The archive journal's records that the database has not committed yet, as (owner,
    stanza id) pairs, read independently of the server: segments named by number in
    ``<db>.archive-journal``, records ``[length u32][CRC-32 u32][payload]`` little-endian,
    the payload a table byte, an i64 timestamp and six length-prefixed strings (domain,
    user, id, with, resource, stanza); a segment ends at a zero length or a bad checksum."""
    with sqlite3.connect(db) as c:
        segment, offset = c.execute("SELECT segment, offset FROM archive_journal").fetchone()
    out = []
    for path in sorted((db.parent / (db.name + ".archive-journal")).glob("*.log")):
        number = int(path.stem)
        if number < segment:
            continue
        data = path.read_bytes()
        at = offset if number == segment else 0
        while at + 8 <= len(data):
            length, crc = struct.unpack_from("<II", data, at)
            payload = data[at + 8 : at + 8 + length]
            if length == 0 or len(payload) < length or zlib.crc32(payload) != crc:
                break
            fields, pos = [], 9
            for _ in range(6):
                (n,) = struct.unpack_from("<I", payload, pos)
                fields.append(payload[pos + 4 : pos + 4 + n].decode())
                pos += 4 + n
            out.append((fields[1], ET.fromstring(fields[5]).findtext(qn(CLIENT_NS, "body"))))
            at += 8 + length
    return out


@pytest.mark.parametrize("database", ["free", "locked"])
def test_every_received_message_is_in_both_archives_after_sigkill(make_server, raw_factory, database):
    """The durability rule of the message path with archiving: a message its recipient has
    received is in the recipient's and the sender's archive, even when the server is
    killed (SIGKILL) while messages are in flight. Both copies are in the archive journal
    before the message is delivered; what the database had not committed at the kill is
    committed when the server starts again, once. With the database's write lock held by
    another process during the burst (``locked``), nothing can be committed: every message
    delivered is then only in the journal at the kill."""
    srv = make_server()
    alice, bob = srv.add_user("a"), srv.add_user("b")
    a, b = raw_factory(srv), raw_factory(srv)
    im_login(a, alice, "a")
    im_login(b, bob, "b")
    db = srv.data_dir / "rookery.db"
    holder = None
    if database == "locked":
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
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
    if holder is not None:
        holder.execute("ROLLBACK")
        holder.close()
    # Whatever reached the socket before the kill counts as received.
    while b.pump(0.2):
        pass
    for m in messages(b.elements):
        body = m.findtext(qn(CLIENT_NS, "body"))
        if body and body not in received:
            received.append(body)
    assert len(received) >= 150, f"only {len(received)} messages arrived before the kill"
    assert len(received) < total, "every message was delivered before the kill: nothing was in flight"

    def archived(user) -> list[str]:
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT stanza FROM archive JOIN archive_owners ON archive_owners.id = archive.owner WHERE username = ? ORDER BY seq", (user.localpart,)).fetchall()
        return [ET.fromstring(r[0]).findtext(qn(CLIENT_NS, "body")) for r in rows]

    # At the kill: committed, or in the journal past the committed position.
    pending = journal_leftovers(db)
    for user in (bob, alice):
        have = set(archived(user)) | {body for owner, body in pending if owner == user.localpart}
        missing = [x for x in received if x not in have]
        assert not missing, f"received but neither committed nor journaled for {user.localpart}: {missing[:5]}"
    committed = {user.localpart: len(archived(user)) for user in (bob, alice)}
    if database == "locked":
        assert committed == {bob.localpart: 0, alice.localpart: 0}
        assert {body for owner, body in pending if owner == bob.localpart} >= set(received)

    # Started again, the server commits the journal's records before it serves anyone.
    srv.start()
    for user in (bob, alice):
        rows = archived(user)
        assert len(rows) == len(set(rows)), f"an entry of {user.localpart} was committed twice"
        assert len(rows) == committed[user.localpart] + sum(1 for o, _ in pending if o == user.localpart)
        missing = [x for x in received if x not in rows]
        assert not missing, f"received but not archived for {user.localpart}: {missing[:5]}"
    assert journal_leftovers(db) == []
    bob_again = raw_factory(srv)
    login_scram(bob_again, bob, "b")
    # The client's view agrees: the archive's count covers what the database holds.
    got = mam_query(bob_again, rsm="<max>10</max><before/>")
    assert int(got.rsm("count").text) == len(archived(bob)) and got.bodies() == archived(bob)[-10:]
    # The archive keeps the order in which the messages were sent.
    with sqlite3.connect(srv.data_dir / "rookery.db") as c:
        rows = c.execute("SELECT stanza FROM archive JOIN archive_owners ON archive_owners.id = archive.owner WHERE username = ? ORDER BY seq", (bob.localpart,)).fetchall()
    order = [ET.fromstring(r[0]).findtext(qn(CLIENT_NS, "body")) for r in rows]
    assert order == sorted(order, key=lambda x: int(x[1:]))

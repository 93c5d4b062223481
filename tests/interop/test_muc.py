"""XEP-0045 Multi-User Chat with slixmpp's xep_0045 plugin (raw XML where the plugin has no
call): discovery of the service, creating and configuring a room, joining, messages,
history, private messages, nick changes, kicks and bans, members-only and password rooms,
destruction, self-ping, and persistent rooms across a restart and a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import PresenceError

from harness import (
    CLIENT_NS,
    DISCO_INFO_NS,
    RawStream,
    im_login,
    loopback_source,
    qn,
    session,
    stanza_error_condition,
)

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
MUC_OWNER_NS = "http://jabber.org/protocol/muc#owner"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
DATA_NS = "jabber:x:data"


def service(server) -> str:
    return f"conference.{server.domain}"


def room_jid(server, prefix: str = "room") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{service(server)}"


@contextlib.asynccontextmanager
async def muc_client(server, user, resource: str | None = None):
    async with session(server, user, resource=resource) as c:
        c.register_plugin("xep_0004")
        c.register_plugin("xep_0045")
        c.muc_presences = []
        c.muc_seen_mark = 0
        c.muc_arrived = asyncio.Event()

        def record(p):
            c.muc_presences.append(p)
            c.muc_arrived.set()

        c.add_event_handler("groupchat_presence", record)
        c.send_presence()
        yield c


def codes(presence) -> set[str]:
    x = presence.xml.find(f"{{{MUC_USER_NS}}}x")
    if x is None:
        return set()
    return {s.get("code") for s in x.findall(f"{{{MUC_USER_NS}}}status")}


def occupant_id(stanza) -> str | None:
    el = stanza.xml.find("{urn:xmpp:occupant-id:0}occupant-id")
    return None if el is None else el.get("id")


def item(presence) -> ET.Element | None:
    x = presence.xml.find(f"{{{MUC_USER_NS}}}x")
    return None if x is None else x.find(f"{{{MUC_USER_NS}}}item")


async def create_instant(c, room: str, nick: str):
    """Creates a room (status 201) and accepts the default configuration (§10.1.2)."""
    pres, _subject, _occ, _hist = await c.plugin["xep_0045"].join_muc_wait(room, nick, timeout=10)
    assert "201" in codes(pres) and "110" in codes(pres), pres
    reply = await c.iq(
        room,
        "set",
        f"<query xmlns='{MUC_OWNER_NS}'><x xmlns='{DATA_NS}' type='submit'/></query>",
    )
    assert reply["type"] == "result", reply
    return pres


async def configure(c, room: str, **fields):
    fields_xml = "".join(
        f"<field var='muc#roomconfig_{k}'><value>{v}</value></field>" for k, v in fields.items()
    )
    reply = await c.iq(
        room,
        "set",
        f"<query xmlns='{MUC_OWNER_NS}'><x xmlns='{DATA_NS}' type='submit'>"
        f"<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
        f"{fields_xml}</x></query>",
    )
    assert reply["type"] == "result", reply


async def next_groupchat(c, body: str | None = None, timeout: float = 5.0):
    return await c.next_message(
        timeout=timeout,
        predicate=lambda m: m["type"] == "groupchat" and (body is None or m["body"] == body),
    )


async def test_the_service_is_discovered_from_the_host(server, alice):
    async with muc_client(server, alice) as c:
        items = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        jids = [i.get("jid") for i in items.xml.iter(f"{{{DISCO_ITEMS_NS}}}item")]
        assert service(server) in jids
        info = await c.iq(service(server), "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        ident = info.xml.find(f".//{{{DISCO_INFO_NS}}}identity")
        assert ident.get("category") == "conference" and ident.get("type") == "text"
        feats = {f.get("var") for f in info.xml.iter(f"{{{DISCO_INFO_NS}}}feature")}
        assert MUC_NS in feats


async def test_create_join_talk_and_history(server, new_user):
    owner, guest, late = new_user(), new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        pres, subject, occupants, _ = await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        assert "110" in codes(pres)
        assert item(pres).get("role") == "participant" and item(pres).get("affiliation") == "none"
        assert [p["from"].resource for p in occupants][0] == "owner", "the others come first"
        assert not subject["subject"], "an empty subject when none is set"
        # The owner hears of the guest, with the real JID (moderators see it).
        seen = await _presence_from(o, f"{room}/guest")
        assert item(seen).get("jid", "").startswith(guest.jid)
        guest_id = occupant_id(seen)
        assert guest_id, "XEP-0421: the room gives each occupant an id"
        for i in range(3):
            g.send_message(mto=room, mbody=f"line {i}", mtype="groupchat")
            # Reflected to the sender and delivered to the others, with the sender's id.
            assert (await next_groupchat(g, f"line {i}"))["from"] == f"{room}/guest"
            got = await next_groupchat(o, f"line {i}")
            assert got["from"] == f"{room}/guest" and occupant_id(got) == guest_id
        async with muc_client(server, late) as lt:
            _, _, _, history = await lt.plugin["xep_0045"].join_muc_wait(
                room, "late", maxstanzas=2, timeout=10
            )
            assert [m["body"] for m in history] == ["line 1", "line 2"]
            assert all(m["delay"]["from"] == room for m in history)


async def _presence_from(c, jid: str, timeout: float = 5.0, after: int | None = None):
    """The first room presence from ``jid`` that ``c`` received (at index ``after`` or
    later of everything it received), waiting for it if needed."""
    start = c.muc_seen_mark if after is None else after
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for i in range(start, len(c.muc_presences)):
            if c.muc_presences[i]["from"] == jid:
                c.muc_seen_mark = i + 1
                return c.muc_presences[i]
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"no presence from {jid}")
        c.muc_arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(c.muc_arrived.wait(), remaining)


def _presence_from_now(c, jid: str):
    """Like ``_presence_from``, for a presence caused by what is sent next."""
    return _presence_from(c, jid, after=len(c.muc_presences))


async def test_a_taken_nick_is_a_conflict_and_a_locked_room_is_not_found(server, new_user):
    owner, other = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, other) as x:
        pres, *_ = await o.plugin["xep_0045"].join_muc_wait(room, "owner", timeout=10)
        assert "201" in codes(pres)
        with pytest.raises(PresenceError) as e:
            await x.plugin["xep_0045"].join_muc_wait(room, "other", timeout=10)
        assert e.value.condition == "item-not-found", "a locked room"
        reply = await o.iq(room, "set", f"<query xmlns='{MUC_OWNER_NS}'><x xmlns='{DATA_NS}' type='submit'/></query>")
        assert reply["type"] == "result"
        with pytest.raises(PresenceError) as e:
            await x.plugin["xep_0045"].join_muc_wait(room, "owner", timeout=10)
        assert e.value.condition == "conflict"


async def test_private_messages_and_nick_changes(server, new_user):
    owner, guest = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        g.send_message(mto=f"{room}/owner", mbody="psst", mtype="chat")
        pm = await o.next_message(predicate=lambda m: m["body"] == "psst")
        assert pm["from"] == f"{room}/guest"
        assert pm.xml.find(f"{{{MUC_USER_NS}}}x") is not None
        # A nick change: unavailable with 303 and the new nick, then available.
        waiting = asyncio.ensure_future(_presence_from_now(o, f"{room}/guest"))
        g.send_presence(pto=f"{room}/renamed")
        gone = await asyncio.wait_for(waiting, 5)
        assert gone["type"] == "unavailable" and "303" in codes(gone)
        assert item(gone).get("nick") == "renamed"
        back = await _presence_from(o, f"{room}/renamed")
        assert back["type"] != "unavailable"


async def test_kick_and_ban_with_their_codes(server, new_user):
    owner, guest = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        own = asyncio.ensure_future(_presence_from_now(g, f"{room}/guest"))
        await o.plugin["xep_0045"].set_role(room, "guest", "none", reason="out")
        kicked = await asyncio.wait_for(own, 5)
        assert kicked["type"] == "unavailable" and {"307", "110"} <= codes(kicked)
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        own = asyncio.ensure_future(_presence_from_now(g, f"{room}/guest"))
        await o.plugin["xep_0045"].set_affiliation(room, "outcast", jid=guest.jid, reason="banned")
        banned = await asyncio.wait_for(own, 5)
        assert {"301", "110"} <= codes(banned)
        with pytest.raises(PresenceError) as e:
            await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        assert e.value.condition == "forbidden"
        outcasts = await o.plugin["xep_0045"].get_affiliation_list(room, "outcast")
        assert [str(j) for j in outcasts] == [guest.jid]


async def test_members_only_and_password_rooms_refuse_with_the_xep_errors(server, new_user):
    owner, guest = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await configure(o, room, membersonly="1")
        with pytest.raises(PresenceError) as e:
            await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        assert e.value.condition == "registration-required"
        await o.plugin["xep_0045"].set_affiliation(room, "member", jid=guest.jid)
        await configure(o, room, passwordprotectedroom="1", roomsecret="s3cret")
        with pytest.raises(PresenceError) as e:
            await g.plugin["xep_0045"].join_muc_wait(room, "guest", password="wrong", timeout=10)
        assert e.value.condition == "not-authorized"
        pres, *_ = await g.plugin["xep_0045"].join_muc_wait(room, "guest", password="s3cret", timeout=10)
        assert item(pres).get("affiliation") == "member"


async def test_destroying_a_room_sends_everyone_the_alternate_venue(server, new_user):
    owner, guest = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        own = asyncio.ensure_future(_presence_from_now(g, f"{room}/guest"))
        await o.plugin["xep_0045"].destroy(room, reason="moving", altroom=f"elsewhere@{service(server)}")
        gone = await asyncio.wait_for(own, 5)
        destroy = gone.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}destroy")
        assert destroy is not None and destroy.get("jid") == f"elsewhere@{service(server)}"
        # The room no longer exists: disco says so.
        reply = await g.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        assert reply["type"] == "error" and reply["error"]["condition"] == "item-not-found"


async def test_self_ping_tells_a_ghost_it_left(server, new_user):
    owner = new_user()
    room = room_jid(server)
    async with muc_client(server, owner, "one") as o:
        await create_instant(o, room, "owner")
        reply = await o.iq(f"{room}/owner", "get", "<ping xmlns='urn:xmpp:ping'/>")
        assert reply["type"] == "result"
        async with muc_client(server, owner, "two") as other:
            reply = await other.iq(f"{room}/owner", "get", "<ping xmlns='urn:xmpp:ping'/>")
            assert reply["type"] == "error" and reply["error"]["condition"] == "not-acceptable"


async def test_a_temporary_room_ends_when_its_last_occupant_goes(server, new_user):
    owner = new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o:
        await create_instant(o, room, "owner")
    # The session ended: the server sent the room unavailable presence, and the room went.
    async with muc_client(server, owner) as o:
        for _ in range(50):
            reply = await o.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
            if reply["type"] == "error":
                break
            await asyncio.sleep(0.1)
        assert reply["error"]["condition"] == "item-not-found"


@pytest.mark.parametrize("how", ["restart", "sigkill"])
async def test_a_persistent_room_survives_the_server(make_server, how):
    srv = make_server()
    owner, member = srv.add_user(), srv.add_user()
    room = room_jid(srv, "keep")
    async with muc_client(srv, owner) as o:
        await create_instant(o, room, "owner")
        await configure(o, room, persistentroom="1", roomname="Kept room", membersonly="1")
        await o.plugin["xep_0045"].set_affiliation(room, "member", jid=member.jid)
        o.send_message(mto=room, mbody="before the stop", mtype="groupchat")
        await next_groupchat(o, "before the stop")
        if how == "sigkill":
            # A kill keeps what was committed: make sure it was (a query sees every message
            # broadcast before it). A graceful stop stores what the rooms handed over.
            assert [forwarded(r)["body"] for r in await room_archive(o, room)] == ["before the stop"]
    srv.stop(signal.SIGTERM if how == "restart" else signal.SIGKILL)
    srv.start()
    async with muc_client(srv, member) as m:
        assert [forwarded(r)["body"] for r in await room_archive(m, room)] == ["before the stop"]
        pres, _subject, _occupants, history = await m.plugin["xep_0045"].join_muc_wait(
            room, "member", timeout=10
        )
        assert item(pres).get("affiliation") == "member"
        # The history a newcomer gets comes back from the room's archive.
        assert [h["body"] for h in history] == ["before the stop"]
        info = await m.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        feats = {f.get("var") for f in info.xml.iter(f"{{{DISCO_INFO_NS}}}feature")}
        assert {"muc_persistent", "muc_membersonly"} <= feats
        ident = info.xml.find(f".//{{{DISCO_INFO_NS}}}identity")
        assert ident.get("name") == "Kept room"
        items = await m.iq(service(srv), "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert room in [i.get("jid") for i in items.xml.iter(f"{{{DISCO_ITEMS_NS}}}item")]


def test_room_creation_is_limited_per_user_per_hour(make_server, raw_factory):
    srv = make_server(host_extra="[host.muc]\nrooms_per_user_per_hour = 2")
    user = srv.add_user()
    stream = raw_factory(srv)
    im_login(stream, user, "r")
    answers = []
    for i in range(3):
        room = room_jid(srv, f"rate{i}")
        stream.send(f"<presence to='{room}/me'><x xmlns='{MUC_NS}'/></presence>")
        answers.append(
            stream.wait_for(
                lambda e, room=room: e.tag == qn(CLIENT_NS, "presence") and e.get("from") == f"{room}/me",
                what=f"the answer of {room}",
            )
        )
    assert [a.get("type") for a in answers] == [None, None, "error"]
    assert stanza_error_condition(answers[2])[1] == "policy-violation"
    assert answers[2].find(qn(MUC_NS, "x")) is not None


async def test_a_second_client_library_talks_in_a_room(server, new_user):
    """go-sendxmpp (Go, its own XMPP library) joins a room and sends to it; a slixmpp
    occupant receives the message from the nick go-sendxmpp chose."""
    owner, sender = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o:
        await create_instant(o, room, "owner")
        proc = await asyncio.create_subprocess_exec(
            "go-sendxmpp", "-u", sender.jid, "-p", sender.password,
            "-j", f"{server.host}:{server.c2s_port}", "-n", "-c", "-a", "gopher", room,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(b"hello from go\n"), 30)
        assert proc.returncode == 0, (out, err)
        got = await next_groupchat(o, "hello from go", timeout=10)
        assert got["from"] == f"{room}/gopher"
        joined = await _presence_from(o, f"{room}/gopher", after=0)
        assert item(joined).get("jid", "").startswith(sender.jid), "the owner sees the real JID"


async def test_an_occupants_vcard_is_fetched_through_the_room(server, new_user):
    """Business rules, IQ 3: a request to an occupant JID reaches the user (a vCard: the
    user's account), and the answer comes back from the occupant JID, real JIDs unrevealed."""
    owner, guest = new_user(), new_user()
    room = room_jid(server)
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        reply = await o.iq(None, "set", "<vCard xmlns='vcard-temp'><FN>The Owner</FN></vCard>")
        assert reply["type"] == "result"
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        reply = await g.iq(f"{room}/owner", "get", "<vCard xmlns='vcard-temp'/>")
        assert reply["type"] == "result", reply
        assert reply["from"] == f"{room}/owner"
        fn = reply.xml.find("{vcard-temp}vCard/{vcard-temp}FN")
        assert fn is not None and fn.text == "The Owner"
        assert owner.jid not in str(reply)


async def test_the_room_list_is_paged(server, new_user):
    """XEP-0059 on the service's disco#items (XEP-0045 §6.3): pages follow each other, and
    the count is the whole list."""
    owner = new_user()
    async with muc_client(server, owner) as o:
        for i in range(3):
            await create_instant(o, room_jid(server, f"paged{i}"), "owner")
        rsm = "http://jabber.org/protocol/rsm"
        first = await o.iq(service(server), "get", f"<query xmlns='{DISCO_ITEMS_NS}'><set xmlns='{rsm}'><max>2</max></set></query>")
        got = [i.get("jid") for i in first.xml.iter(f"{{{DISCO_ITEMS_NS}}}item")]
        count = int(first.xml.find(f".//{{{rsm}}}count").text)
        last = first.xml.find(f".//{{{rsm}}}last").text
        assert len(got) == 2 and count >= 3 and last == got[-1]
        second = await o.iq(service(server), "get", f"<query xmlns='{DISCO_ITEMS_NS}'><set xmlns='{rsm}'><max>2</max><after>{last}</after></set></query>")
        more = [i.get("jid") for i in second.xml.iter(f"{{{DISCO_ITEMS_NS}}}item")]
        assert more and not set(more) & set(got) and min(more) > max(got)


SID_NS = "urn:xmpp:sid:0"
MAM_NS = "urn:xmpp:mam:2"
RETRACT_NS = "urn:xmpp:message-retract:1"
MODERATE_NS = "urn:xmpp:message-moderate:1"


def room_stanza_id(msg, room: str) -> str | None:
    for sid in msg.xml.findall(f"{{{SID_NS}}}stanza-id"):
        if sid.get("by") == room:
            return sid.get("id")
    return None


async def room_archive(c, room: str, max_: int = 10) -> list:
    """Every archived message of the room, paging with slixmpp's xep_0313 iterator."""
    for plugin in ("xep_0059", "xep_0297", "xep_0313"):
        c.register_plugin(plugin)
    got = []
    async for msg in c.plugin["xep_0313"].iterate(jid=room, rsm={"max": max_}):
        assert msg["from"] == room, "results come from the room"
        got.append(msg)
    return got


def forwarded(result):
    return result["mam_result"]["forwarded"]["stanza"]


async def test_the_room_archive_is_paged_with_the_ids_occupants_saw(server, new_user):
    """XEP-0313 on the room JID: messages carry the room's stanza id; anyone who may enter
    pages through the archive (slixmpp's MAM iterator, 10 per page); real JIDs only for
    those who may see them."""
    owner, guest, outsider = new_user(), new_user(), new_user()
    room = room_jid(server, "mam")
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        pres = await create_instant(o, room, "owner")
        assert "170" in codes(pres), "the room says it is archived"
        info = await g.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        feats = {f.get("var") for f in info.xml.iter(f"{{{DISCO_INFO_NS}}}feature")}
        assert {MAM_NS, SID_NS, MODERATE_NS} <= feats
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        ids = []
        for i in range(25):
            g.send_message(mto=room, mbody=f"archived {i}", mtype="groupchat")
            live = await next_groupchat(o, f"archived {i}")
            ids.append(room_stanza_id(live, room))
        assert all(ids) and len(set(ids)) == 25
        async with muc_client(server, outsider) as out:
            results = await room_archive(out, room)
            assert [forwarded(r)["body"] for r in results] == [f"archived {i}" for i in range(25)]
            assert [r["mam_result"]["id"] for r in results] == ids
            first = forwarded(results[0])
            assert first["from"] == f"{room}/guest"
            assert guest.jid not in str(first), "a semi-anonymous room hides real JIDs"
            assert occupant_id(first), "the occupant id is kept"
        # The owner (a moderator) sees who sent them.
        mine = await room_archive(o, room, max_=50)
        assert guest.jid in str(forwarded(mine[0]))
        # An outcast may not read it.
        await o.plugin["xep_0045"].set_affiliation(room, "outcast", jid=outsider.jid)
        async with session(server, outsider) as out:
            reply = await out.iq(room, "set", f"<query xmlns='{MAM_NS}'/>")
            assert reply["type"] == "error" and reply["error"]["condition"] == "forbidden"


async def test_a_moderator_retracts_a_message_and_the_archive_keeps_a_tombstone(server, new_user):
    """XEP-0425: a participant may not moderate; the owner may, everyone is told with a
    retraction from the room, newcomers' history loses it, and the archive answers with a
    tombstone (XEP-0425 §5) in its place."""
    owner, guest, late = new_user(), new_user(), new_user()
    room = room_jid(server, "mod")
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        g.send_message(mto=room, mbody="buy potions", mtype="groupchat")
        bad = await next_groupchat(o, "buy potions")
        sid = room_stanza_id(bad, room)
        g.send_message(mto=room, mbody="fine words", mtype="groupchat")
        await next_groupchat(o, "fine words")
        moderate = (
            f"<moderate xmlns='{MODERATE_NS}' id='{sid}'><retract xmlns='{RETRACT_NS}'/>"
            "<reason>spam</reason></moderate>"
        )
        reply = await g.iq(room, "set", moderate)
        assert reply["type"] == "error" and reply["error"]["condition"] == "forbidden"
        reply = await o.iq(room, "set", moderate)
        assert reply["type"] == "result", reply
        for c in (o, g):
            notice = await c.next_message(
                predicate=lambda m: m.xml.find(f"{{{RETRACT_NS}}}retract") is not None
            )
            assert notice["from"] == room and notice["type"] == "groupchat"
            retract = notice.xml.find(f"{{{RETRACT_NS}}}retract")
            assert retract.get("id") == sid
            moderated = retract.find(f"{{{MODERATE_NS}}}moderated")
            assert moderated.get("by") == f"{room}/owner"
            assert retract.find(f"{{{RETRACT_NS}}}reason").text == "spam"
        reply = await o.iq(room, "set", moderate.replace(sid, "no-such-id"))
        assert reply["type"] == "error" and reply["error"]["condition"] == "item-not-found"
        async with muc_client(server, late) as lt:
            _, _, _, history = await lt.plugin["xep_0045"].join_muc_wait(room, "late", timeout=10)
            assert [m["body"] for m in history] == ["fine words"]
            results = await room_archive(lt, room)
        by_id = {r["mam_result"]["id"]: forwarded(r) for r in results}
        tomb = by_id[sid]
        assert not tomb["body"], "the tombstone says nothing of the message"
        retracted = tomb.xml.find(f"{{{RETRACT_NS}}}retracted")
        assert retracted is not None and retracted.get("stamp")
        assert retracted.find(f"{{{MODERATE_NS}}}moderated").get("by") == f"{room}/owner"
        assert tomb["from"] == f"{room}/guest" and occupant_id(tomb)
        assert [m["body"] for m in by_id.values() if m["body"]] == ["fine words"]


async def test_owners_set_the_room_avatar(server, new_user):
    """XEP-0486: an owner sets the room's vCard, occupants are told (104), disco#info has the
    photo's SHA-1, and anyone reads the vCard; others may not set it."""
    import base64
    import hashlib

    owner, guest, outsider = new_user(), new_user(), new_user()
    room = room_jid(server, "avatar")
    photo = bytes(range(256)) * 4
    vcard = (
        "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>"
        f"<BINVAL>{base64.b64encode(photo).decode()}</BINVAL></PHOTO></vCard>"
    )
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        reply = await g.iq(room, "set", vcard)
        assert reply["type"] == "error" and reply["error"]["condition"] == "forbidden"
        reply = await o.iq(room, "set", vcard)
        assert reply["type"] == "result", reply
        changed = await g.next_message(predicate=lambda m: m["from"] == room and m.xml.find(f"{{{MUC_USER_NS}}}x") is not None)
        assert {s.get("code") for s in changed.xml.iter(f"{{{MUC_USER_NS}}}status")} == {"104"}
        async with session(server, outsider) as out:
            info = await out.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
            fields = {
                f.get("var"): [v.text for v in f.findall(f"{{{DATA_NS}}}value")]
                for f in info.xml.iter(f"{{{DATA_NS}}}field")
            }
            assert fields["muc#roominfo_avatarhash"] == [hashlib.sha1(photo).hexdigest()]
            got = await out.iq(room, "get", "<vCard xmlns='vcard-temp'/>")
            binval = got.xml.find("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL")
            assert base64.b64decode(binval.text) == photo
        reply = await o.iq(room, "set", "<vCard xmlns='vcard-temp'/>")
        assert reply["type"] == "result"
        info = await g.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        assert "muc#roominfo_avatarhash" not in str(info)


def test_a_join_leave_loop_is_refused_once_its_budget_is_spent(make_server, raw_factory):
    """A user who enters and leaves a room over and over gets policy-violation after the
    burst ([host.muc] presence_burst), so one client cannot make a room broadcast without
    end; the room's owner is not limited."""
    srv = make_server(host_extra="[host.muc]\npresence_burst = 3\npresence_interval_ms = 60000")
    owner, looper = srv.add_user(), srv.add_user()
    room = room_jid(srv, "loop")
    o, s = raw_factory(srv), raw_factory(srv)
    im_login(o, owner, "o")
    im_login(s, looper, "l")
    o.send(f"<presence to='{room}/owner'><x xmlns='{MUC_NS}'/></presence>")
    o.wait_for(lambda e: e.tag == qn(CLIENT_NS, "presence") and e.get("from") == f"{room}/owner", what="owner in")
    o.iq(f"<query xmlns='{MUC_OWNER_NS}'><x xmlns='{DATA_NS}' type='submit'/></query>", to=room, itype="set")
    answers = []
    for _ in range(4):
        s.send(f"<presence to='{room}/looper'><x xmlns='{MUC_NS}'/></presence>")
        answers.append(
            s.wait_for(
                lambda e: e.tag == qn(CLIENT_NS, "presence") and e.get("from") == f"{room}/looper",
                what="the answer to the entry",
            )
        )
        if answers[-1].get("type") != "error":
            s.send(f"<presence to='{room}/looper' type='unavailable'/>")
            s.wait_for(
                lambda e: e.tag == qn(CLIENT_NS, "presence") and e.get("type") == "unavailable",
                what="the leave",
            )
    assert [a.get("type") for a in answers] == [None, None, None, "error"]
    assert stanza_error_condition(answers[3])[1] == "policy-violation"


async def test_mediated_invitation_and_decline(server, new_user):
    """§7.8.2: an occupant's invitation reaches the invitee from the room, with the inviter's
    address, the reason, the password of a protected room and a direct (XEP-0249) invitation
    beside it; members-only rooms make the invitee a member; a decline goes back to the
    inviter from the room."""
    owner, guest = new_user(), new_user()
    room = room_jid(server, "invite")
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await configure(o, room, membersonly="1", passwordprotectedroom="1", roomsecret="s3cret")
        o.plugin["xep_0045"].invite(room, guest.jid, reason="come in")
        inv = await g.next_message(predicate=lambda m: m["from"] == room)
        x = inv.xml.find(f"{{{MUC_USER_NS}}}x")
        invite = x.find(f"{{{MUC_USER_NS}}}invite")
        assert invite.get("from", "").startswith(owner.jid)
        assert invite.find(f"{{{MUC_USER_NS}}}reason").text == "come in"
        assert x.find(f"{{{MUC_USER_NS}}}password").text == "s3cret"
        direct = inv.xml.find("{jabber:x:conference}x")
        assert direct is not None and direct.get("jid") == room
        members = await o.plugin["xep_0045"].get_affiliation_list(room, "member")
        assert guest.jid in [str(j) for j in members], "the invitee became a member"
        g.plugin["xep_0045"].decline(room, owner.jid, reason="busy")
        dec = await o.next_message(
            predicate=lambda m: m["from"] == room
            and m.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}decline") is not None
        )
        decline = dec.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}decline")
        assert decline is not None and decline.get("from", "").startswith(guest.jid)
        assert decline.find(f"{{{MUC_USER_NS}}}reason").text == "busy"


async def test_a_visitor_asks_for_voice_and_a_moderator_grants_it(server, new_user):
    """§7.13 and §8.6: in a moderated room a newcomer is a visitor whose messages are refused;
    its voice request reaches the moderators as a form; granting voice makes it a participant
    (everyone sees the new role) and its messages go through."""
    owner, guest = new_user(), new_user()
    room = room_jid(server, "voice")
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await configure(o, room, moderatedroom="1")
        pres, *_ = await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        assert item(pres).get("role") == "visitor"
        g.send_message(mto=room, mbody="may I?", mtype="groupchat")
        refused = await g.next_message(predicate=lambda m: m["type"] == "error")
        assert refused["error"]["condition"] == "forbidden"
        g.plugin["xep_0045"].request_voice(room, "participant")
        req = await o.next_message(predicate=lambda m: m.xml.find(f"{{{DATA_NS}}}x") is not None)
        fields = {f.get("var"): f for f in req.xml.iter(f"{{{DATA_NS}}}field")}
        assert fields["FORM_TYPE"].find(f"{{{DATA_NS}}}value").text == "http://jabber.org/protocol/muc#request"
        assert fields["muc#roomnick"].find(f"{{{DATA_NS}}}value").text == "guest"
        mark = len(o.muc_presences)
        await o.plugin["xep_0045"].set_role(room, "guest", "participant")
        seen = await _presence_from(o, f"{room}/guest", after=mark)
        assert item(seen).get("role") == "participant"
        g.send_message(mto=room, mbody="thank you", mtype="groupchat")
        assert (await next_groupchat(o, "thank you"))["from"] == f"{room}/guest"


async def test_subject_changes_and_configuration_announcements(server, new_user):
    """§8.1: only moderators change the subject unless the room allows participants; everyone
    gets the new subject from its author. §10.2: a configuration change is announced with
    104, plus 172 when the room becomes non-anonymous and 171 when archiving stops."""
    owner, guest = new_user(), new_user()
    room = room_jid(server, "subject")
    async with muc_client(server, owner) as o, muc_client(server, guest) as g:
        await create_instant(o, room, "owner")
        await g.plugin["xep_0045"].join_muc_wait(room, "guest", timeout=10)
        g.send_message(mto=room, msubject="guest's topic", mtype="groupchat")
        refused = await g.next_message(predicate=lambda m: m["type"] == "error")
        assert refused["error"]["condition"] == "forbidden"
        o.plugin["xep_0045"].set_subject(room, "owner's topic")
        got = await g.next_message(predicate=lambda m: m["subject"] == "owner's topic")
        assert got["from"] == f"{room}/owner"
        await configure(o, room, changesubject="1", whois="anyone", enablearchiving="0")
        note = await g.next_message(predicate=lambda m: m["from"] == room and m.xml.find(f"{{{MUC_USER_NS}}}x") is not None)
        assert {s.get("code") for s in note.xml.iter(f"{{{MUC_USER_NS}}}status")} == {"104", "172", "171"}
        g.send_message(mto=room, msubject="guest's topic", mtype="groupchat")
        got = await o.next_message(predicate=lambda m: m["subject"] == "guest's topic")
        assert got["from"] == f"{room}/guest"


async def test_a_registered_nick_is_reserved(server, new_user):
    """§7.10: a user registers a nick with the room and becomes a member; another user
    cannot enter under it (conflict); the room tells the owner of the nick what it is
    (disco#info node x-roomuser-item, §7.12)."""
    owner, holder, other = new_user(), new_user(), new_user()
    room = room_jid(server, "reg")
    async with muc_client(server, owner) as o, muc_client(server, holder) as h, muc_client(server, other) as x:
        await create_instant(o, room, "owner")
        form = await h.iq(room, "get", "<query xmlns='jabber:iq:register'/>")
        assert form["type"] == "result", form
        reply = await h.iq(
            room,
            "set",
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
            "<field var='muc#register_roomnick'><value>keeper</value></field></x></query>",
        )
        assert reply["type"] == "result", reply
        members = await o.plugin["xep_0045"].get_affiliation_list(room, "member")
        assert holder.jid in [str(j) for j in members]
        with pytest.raises(PresenceError) as refused:
            await x.plugin["xep_0045"].join_muc_wait(room, "keeper", timeout=10)
        assert refused.value.presence["error"]["condition"] == "conflict"
        info = await h.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}' node='x-roomuser-item'/>")
        ident = info.xml.find(f".//{{{DISCO_INFO_NS}}}identity")
        assert ident is not None and ident.get("name") == "keeper"
        info = await x.iq(room, "get", f"<query xmlns='{DISCO_INFO_NS}' node='x-roomuser-item'/>")
        assert info["type"] == "result" and info.xml.find(f".//{{{DISCO_INFO_NS}}}identity") is None
        pres, *_ = await h.plugin["xep_0045"].join_muc_wait(room, "keeper", timeout=10)
        assert item(pres).get("affiliation") == "member"


def test_room_entries_are_limited_per_address(make_server):
    """[host.muc] joins_per_ip_burst: entries from one address, whatever the account, share
    one budget; over it, entering gets policy-violation (with the MUC <x/>); another
    address has its own."""
    srv = make_server(host_extra="[host.muc]\njoins_per_ip_burst = 3\njoin_interval_per_ip_ms = 60000")
    users = [srv.add_user(), srv.add_user(), srv.add_user()]
    shared = loopback_source()
    streams = []
    try:
        for i, u in enumerate(users):
            st = RawStream(
                srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path,
                source_address=shared if i < 2 else loopback_source(),
            )
            streams.append(st)
            im_login(st, u, f"r{i}")
        _entries_from_one_address(srv, streams)
    finally:
        for st in streams:
            st.close()


def _entries_from_one_address(srv, streams):
    answers = []
    for i in range(4):
        st = streams[i % 2]
        room = room_jid(srv, f"ip{i}")
        st.send(f"<presence to='{room}/me'><x xmlns='{MUC_NS}'/></presence>")
        answers.append(
            st.wait_for(
                lambda e, room=room: e.tag == qn(CLIENT_NS, "presence") and e.get("from") == f"{room}/me",
                what=f"the answer of {room}",
            )
        )
    assert [a.get("type") for a in answers] == [None, None, None, "error"]
    assert stanza_error_condition(answers[3])[1] == "policy-violation"
    assert answers[3].find(qn(MUC_NS, "x")) is not None
    # Another address is not held back.
    room = room_jid(srv, "elsewhere")
    streams[2].send(f"<presence to='{room}/me'><x xmlns='{MUC_NS}'/></presence>")
    other = streams[2].wait_for(
        lambda e: e.tag == qn(CLIENT_NS, "presence") and e.get("from") == f"{room}/me",
        what="the answer from another address",
    )
    assert other.get("type") is None


async def test_malformed_room_archive_queries_get_the_xep_errors(server, new_user):
    """XEP-0313 on a room: a bad field value is bad-request, an unknown field
    feature-not-implemented, an id the archive does not hold item-not-found, and the room
    keeps answering afterwards."""
    owner = new_user()
    room = room_jid(server, "badmam")
    async with muc_client(server, owner) as o:
        await create_instant(o, room, "owner")
        o.send_message(mto=room, mbody="kept", mtype="groupchat")
        await next_groupchat(o, "kept")

        def form(fields: str) -> str:
            return (
                f"<query xmlns='{MAM_NS}'><x xmlns='{DATA_NS}' type='submit'>"
                f"<field var='FORM_TYPE'><value>{MAM_NS}</value></field>{fields}</x></query>"
            )

        cases = [
            (form("<field var='start'><value>yesterday</value></field>"), "bad-request"),
            (form("<field var='colour'><value>red</value></field>"), "feature-not-implemented"),
            (
                f"<query xmlns='{MAM_NS}'><set xmlns='http://jabber.org/protocol/rsm'>"
                "<after>no-such-id</after></set></query>",
                "item-not-found",
            ),
            (f"<query xmlns='{MAM_NS}'><set xmlns='http://jabber.org/protocol/rsm'><max>x</max></set></query>", "bad-request"),
            (f"<moderate xmlns='{MODERATE_NS}'><retract xmlns='{RETRACT_NS}'/></moderate>", "bad-request"),
        ]
        for payload, condition in cases:
            reply = await o.iq(room, "set", payload)
            assert reply["type"] == "error" and reply["error"]["condition"] == condition, (payload, reply)
        assert [forwarded(r)["body"] for r in await room_archive(o, room)] == ["kept"]

"""Rookery on PostgreSQL (``[storage] backend = "postgresql"``), against a real PostgreSQL
server the tests start themselves (postgres.py): the CLI creates accounts the server logs
in, rosters, offline messages and message archives are stored there, a persistent MUC room
survives a restart of Rookery, and a database that goes away mid-run gives clients
``internal-server-error`` answers while the server stays up and recovers when it returns,
with every message that was delivered in the archives afterwards."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from harness import (
    CLIENT_NS,
    ROSTER_NS,
    im_login,
    messages,
    qn,
    request,
    roster_get,
    roster_item_xml,
    roster_of,
    roster_set,
    session,
    stanza_error_condition,
    sync,
    xml_attr_escape,
)
from conftest import start_rookery
from postgres import postgres_server, storage_toml  # noqa: F401 (a fixture)
from test_muc import configure, create_instant, forwarded, item, muc_client, next_groupchat, room_archive, room_jid

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


@pytest.fixture(scope="module")
def database(postgres_server):  # noqa: F811
    """The URL of a fresh database for the module's Rookery."""
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """Rookery on the module's PostgreSQL database."""
    srv = start_rookery(tmp_path_factory.mktemp("rookery-pg"), extra_toml=storage_toml(database))
    try:
        yield srv
    finally:
        srv.kill()


def send_chat(stream, to: str, body: str) -> None:
    stream.send(f"<message to='{xml_attr_escape(to)}' type='chat' id='{body}'><body>{body}</body></message>")


def archived_bodies(stream, with_jid: str | None = None) -> list[str]:
    """The bodies of every message in the stream's account archive (optionally with one
    correspondent), oldest first, paging 50 at a time."""
    bodies: list[str] = []
    after = ""
    for _ in range(100):
        fields = f"<field var='with'><value>{with_jid}</value></field>" if with_jid else ""
        form = (
            f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{MAM}</value></field>{fields}</x>"
        )
        rsm = f"<max>50</max>{f'<after>{after}</after>' if after else ''}"
        before, reply = request(
            stream, f"<query xmlns='{MAM}' queryid='q'>{form}<set xmlns='{RSM}'>{rsm}</set></query>", itype="set", timeout=30
        )
        assert reply.get("type") == "result", ET.tostring(reply)
        for m in messages(before):
            result = m.find(qn(MAM, "result"))
            if result is None:
                continue
            inner = result.find(f".//{qn(CLIENT_NS, 'message')}")
            bodies.append(inner.findtext(qn(CLIENT_NS, "body")))
        fin = reply.find(qn(MAM, "fin"))
        if fin.get("complete") == "true":
            return bodies
        after = fin.find(f"{{{RSM}}}set/{{{RSM}}}last").text
    raise AssertionError("the archive did not end within 100 pages")


def test_check_reports_the_database(server):
    # The running server is recognised by its admin socket, made just after the listeners.
    deadline = time.monotonic() + 10
    while not (server.data_dir / "rookery.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    res = server.cli("check")
    assert res.returncode == 0, res.stderr
    assert "database: PostgreSQL postgres@127.0.0.1:" in res.stdout, res.stdout
    assert "database reachable: PostgreSQL 1" in res.stdout, res.stdout
    assert "schema version 6" in res.stdout, res.stdout


async def test_cli_accounts_log_in_with_slixmpp(server, new_user):
    alice = new_user("alice")
    res = server.user("list")
    assert res.returncode == 0, res.stderr
    assert alice.jid in res.stdout.split()
    async with session(server, alice) as client:
        assert str(client.boundjid.bare) == alice.jid
    res = server.user("delete", alice.jid)
    assert res.returncode == 0, res.stderr
    assert alice.jid not in server.user("list").stdout.split()


def test_roster_offline_and_archive_are_stored(server, new_user, raw):
    alice, bob = new_user("alice"), new_user("bob")
    a = raw()
    im_login(a, alice, "desk")
    reply = roster_set(a, roster_item_xml(bob.jid, name="Bob", groups=["Friends", "Work"]))
    assert reply.get("type") == "result", ET.tostring(reply)
    # Bob is offline: the messages wait for him.
    for body in ("one", "two", "three"):
        send_chat(a, bob.jid, body)
    errors = [m for m in messages(sync(a)) if m.get("type") == "error"]
    assert errors == [], [ET.tostring(e) for e in errors]
    b = raw()
    got = messages(im_login(b, bob, "phone"))
    # The backlog follows the initial presence: wait for it (bounded).
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        got += messages(sync(b))
    offline = [m.findtext(qn(CLIENT_NS, "body")) for m in got]
    assert offline == ["one", "two", "three"]
    assert archived_bodies(b, alice.jid) == ["one", "two", "three"]
    assert archived_bodies(a) == ["one", "two", "three"]
    # A new stream reads the roster back from the database.
    a2 = raw()
    im_login(a2, alice, "laptop")
    entry = roster_of(a2.roster)[bob.jid]
    assert (entry.name, entry.groups) == ("Bob", ["Friends", "Work"])


async def test_a_persistent_room_survives_a_restart(server, new_user):
    owner, member = new_user("owner"), new_user("member")
    room = room_jid(server, "kept")
    async with muc_client(server, owner) as o:
        await create_instant(o, room, "owner")
        await configure(o, room, persistentroom="1", roomname="Kept on PostgreSQL", membersonly="1")
        await o.plugin["xep_0045"].set_affiliation(room, "member", jid=member.jid)
        o.send_message(mto=room, mbody="before the restart", mtype="groupchat")
        await next_groupchat(o, "before the restart")
    # A graceful stop may take the whole shutdown grace (10 s) on a loaded machine.
    rc, _out, err = server.stop(timeout=30)
    assert rc == 0, err[-3000:]
    server.start()
    async with muc_client(server, member) as m:
        assert [forwarded(r)["body"] for r in await room_archive(m, room)] == ["before the restart"]
        pres, _subject, _occupants, _history = await m.plugin["xep_0045"].join_muc_wait(room, "member", timeout=10)
        assert item(pres).get("affiliation") == "member"


def test_database_outage_gives_errors_and_recovers_without_losing_messages(server, postgres_server, new_user, raw):  # noqa: F811
    alice, bob = new_user("alice"), new_user("bob")
    a, b = raw(timeout=15.0), raw(timeout=15.0)
    im_login(a, alice, "desk")
    im_login(b, bob, "phone")
    delivered: list[str] = []

    def exchange(body: str) -> ET.Element | None:
        """Alice sends; returns the error she got, or None when Bob got the message."""
        send_chat(a, bob.jid, body)
        answer = [m for m in messages(sync(a)) if m.get("id") == body]
        got = [m for m in messages(sync(b)) if m.findtext(qn(CLIENT_NS, "body")) == body]
        if answer:
            assert answer[0].get("type") == "error", ET.tostring(answer[0])
            assert got == [], "a refused message was delivered"
            return answer[0]
        assert len(got) == 1, f"{body} neither refused nor delivered"
        delivered.append(body)
        return None

    assert exchange("before") is None
    postgres_server.stop()
    try:
        # The database is gone: the message is refused with internal-server-error (it could
        # not be archived), a roster change fails the same way, and the server stays up.
        started = time.monotonic()
        refused = exchange("during")
        assert refused is not None
        assert stanza_error_condition(refused)[1] in ("internal-server-error", "resource-constraint")
        reply = roster_set(a, roster_item_xml(f"carol@{server.domain}"))
        assert reply.get("type") == "error", ET.tostring(reply)
        assert stanza_error_condition(reply)[1] in ("internal-server-error", "resource-constraint")
        assert time.monotonic() - started < 30, "errors come within the pool's timeouts"
        assert server.running
        res = server.cli("check")
        assert res.returncode == 1, res.stdout
        assert "storage.url: cannot reach the PostgreSQL database" in res.stderr, res.stderr
    finally:
        postgres_server.start()
    # Back: the same operations succeed on the same streams, without restarting Rookery.
    deadline = time.monotonic() + 30
    while exchange(f"after-{len(delivered)}") is not None:
        assert time.monotonic() < deadline, "no recovery within 30 s"
        time.sleep(0.5)
    for i in range(3):
        assert exchange(f"later-{i}") is None
    reply = roster_set(a, roster_item_xml(f"carol@{server.domain}"))
    assert reply.get("type") == "result", ET.tostring(reply)
    assert f"carol@{server.domain}" in roster_of(roster_get(a).find(qn(ROSTER_NS, "query")))
    # Every delivered message is in both archives, and nothing refused is.
    assert archived_bodies(b, alice.jid) == delivered
    assert archived_bodies(a, bob.jid) == delivered
    assert "during" not in delivered


async def test_room_messages_sent_during_an_outage_are_archived_when_it_returns(server, postgres_server, new_user):  # noqa: F811
    """A room broadcasts while the database is away; its archive worker retries, so the
    room's archive has every message, in order, once PostgreSQL is back."""
    owner = new_user("roomowner")
    room = room_jid(server, "outage")
    async with muc_client(server, owner) as o:
        await create_instant(o, room, "owner")
        o.send_message(mto=room, mbody="room-before", mtype="groupchat")
        await next_groupchat(o, "room-before")
        assert [forwarded(r)["body"] for r in await room_archive(o, room)] == ["room-before"]
        postgres_server.stop()
        try:
            for body in ("room-during-1", "room-during-2"):
                o.send_message(mto=room, mbody=body, mtype="groupchat")
                await next_groupchat(o, body)
            assert server.running
        finally:
            postgres_server.start()
        o.send_message(mto=room, mbody="room-after", mtype="groupchat")
        await next_groupchat(o, "room-after")
        want = ["room-before", "room-during-1", "room-during-2", "room-after"]
        deadline = time.monotonic() + 30
        while True:
            got = [forwarded(r)["body"] for r in await room_archive(o, room)]
            if got == want:
                break
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.5)
    log = server.stderr_text()
    assert "a room message could not be archived yet; retrying" in log, "the outage was not seen"
    assert "a room message was not archived" not in log


async def test_export_then_import_into_another_database(server, postgres_server, new_user, raw, raw_factory, tmp_path):  # noqa: F811
    """`rookery export` reads the accounts from PostgreSQL, `rookery import` writes them into
    another PostgreSQL database, and a server on that database logs them in with their
    passwords and rosters."""
    alice, bob = new_user("alice"), new_user("bob")
    a = raw()
    im_login(a, alice, "desk")
    assert roster_set(a, roster_item_xml(bob.jid, name="Bob")).get("type") == "result"
    res = server.cli("export")
    assert res.returncode == 0, res.stderr
    assert f"name='{alice.localpart}'" in res.stdout.replace('"', "'"), res.stdout[:2000]
    dump = tmp_path / "export.xml"
    dump.write_text(res.stdout)
    dst = start_rookery(tmp_path / "dst", extra_toml=storage_toml(postgres_server.create_database("dst")))
    try:
        res = dst.cli("import", str(dump))
        assert res.returncode == 0, res.stderr
        listed = dst.user("list").stdout.split()
        assert alice.jid in listed and bob.jid in listed
        async with session(dst, alice) as client:
            assert str(client.boundjid.bare) == alice.jid
        b = raw_factory(dst)
        im_login(b, alice, "moved")
        assert roster_of(b.roster)[bob.jid].name == "Bob"
    finally:
        dst.kill()


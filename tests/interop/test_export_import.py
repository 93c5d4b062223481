"""`rookery export` and `rookery import` (XEP-0227): accounts with their data, made by slixmpp
clients on one server, exported, imported into a second server's empty data directory and used
there with the old passwords; the second server's export equals the first's; a malformed or
hostile file is refused (exit 1) and changes nothing."""

from __future__ import annotations

import asyncio

import pytest
import time
import xml.etree.ElementTree as ET

from conftest import ROOKERY_BIN
from harness import CLIENT_NS, ROSTER_NS, LoginError, RookeryServer, connect_client, qn, session

PIE_NS = "urn:xmpp:pie:0"
VCARD = "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard>"
NOTES = "<notes xmlns='urn:example:notes'><note>tea at four</note></notes>"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
NICK_NS = "http://jabber.org/protocol/nick"
NICK = (
    f"<pubsub xmlns='{PUBSUB_NS}'><publish node='{NICK_NS}'>"
    f"<item id='current'><nick xmlns='{NICK_NS}'>Al</nick></item></publish></pubsub>"
)


async def roster(client) -> dict[str, ET.Element]:
    reply = await client.iq(None, "get", f"<query xmlns='{ROSTER_NS}'/>")
    query = reply.xml.find(qn(ROSTER_NS, "query"))
    return {i.get("jid"): i for i in query.findall(qn(ROSTER_NS, "item"))}


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.2)


def hostile_files(document: str) -> dict[str, str]:
    return {
        "truncated.xml": document[: len(document) // 2],
        "bad-base64.xml": document.replace("<salt>", "<salt>!!", 1),
        "iterations.xml": document.replace("<iter-count>4096<", "<iter-count>1<", 1),
        "bad-jid.xml": document.replace('<user name="', '<user name="da ve', 1),
        "bad-contact.xml": document.replace('<item jid="', '<item jid="@', 1),
        "deep.xml": f"<server-data xmlns='{PIE_NS}'>" + "<x>" * 100000 + "</x>" * 100000 + "</server-data>",
        "entity.xml": "<!DOCTYPE s [<!ENTITY a 'aaaa'>]><server-data xmlns='urn:xmpp:pie:0'>&a;</server-data>",
        "not-xml.xml": "this is not XML",
        "other-host.xml": document.replace('jid="localhost"', 'jid="elsewhere.example"'),
        "huge.xml": "<server-data xmlns='urn:xmpp:pie:0'>" + " " * (65 * 1024 * 1024) + "</server-data>",
    }


def export(server) -> str:
    res = server.cli("export")
    assert res.returncode == 0, res.stderr
    return res.stdout


async def populate(src, alice, bob, carol) -> None:
    """Alice: a mutual subscription with Bob (named, grouped), a request from Carol pending,
    a vCard, a private element, a PEP node with an item and two offline messages from Bob."""
    async with session(src, alice) as a, session(src, bob) as b:
        await a.iq(
            None,
            "set",
            f"<query xmlns='{ROSTER_NS}'><item jid='{bob.jid}' name='Bobby'><group>Friends</group></item></query>",
        )
        a.send_presence(pto=bob.jid, ptype="subscribe")
        b.send_presence(pto=alice.jid, ptype="subscribed")
        b.send_presence(pto=alice.jid, ptype="subscribe")
        a.send_presence(pto=bob.jid, ptype="subscribed")

        async def mutual():
            ra, rb = await roster(a), await roster(b)
            return (
                bob.jid in ra
                and ra[bob.jid].get("subscription") == "both"
                and alice.jid in rb
                and rb[alice.jid].get("subscription") == "both"
            )

        await wait_for(mutual, what="mutual subscription")
        reply = await a.iq(None, "set", VCARD)
        assert reply["type"] == "result"
        reply = await a.iq(None, "set", f"<query xmlns='jabber:iq:private'>{NOTES}</query>")
        assert reply["type"] == "result"
        reply = await a.iq(None, "set", NICK)
        assert reply["type"] == "result", reply
    async with session(src, carol) as c:
        c.send_presence(pto=alice.jid, ptype="subscribe")
        await asyncio.sleep(0.5)
    async with session(src, bob) as b:
        for body in ("first", "second"):
            b.send_message(mto=alice.jid, mbody=body, mtype="chat")
        await asyncio.sleep(0.5)


async def test_export_then_import_into_an_empty_server(make_server, tmp_path):
    src = make_server()
    alice, bob, carol = (src.add_user(p) for p in ("alice", "bob", "carol"))
    await populate(src, alice, bob, carol)

    def complete():
        text = export(src)
        offline = [
            b for box in ET.fromstring(text.encode()).iter(qn(PIE_NS, "offline-messages")) for b in box.iter(qn(CLIENT_NS, "body"))
        ]
        return len(offline) == 2 and "type=\"subscribe\"" in text

    deadline = time.monotonic() + 10
    while not complete():
        assert time.monotonic() < deadline, "the offline messages were not stored"
        time.sleep(0.2)
    document = export(src)
    for password in (alice.password, bob.password, carol.password):
        assert password not in document
    root = ET.fromstring(document.encode())
    users = {u.get("name"): u for u in root.iter(qn(PIE_NS, "user"))}
    assert set(users) == {alice.localpart, bob.localpart, carol.localpart}
    mechanisms = [s.get("mechanism") for s in users[alice.localpart].findall("{urn:xmpp:pie:0#scram}scram-credentials")]
    assert mechanisms == ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    # Carol's request is pending in Alice's account.
    pending = users[alice.localpart].findall(qn(CLIENT_NS, "presence"))
    assert [(p.get("type"), p.get("from").split("/")[0]) for p in pending] == [("subscribe", carol.jid)]
    # Alice's PEP node: its configuration and affiliations, and the item (XEP-0227 1.1).
    owner = users[alice.localpart].find(f"{{{PUBSUB_NS}#owner}}pubsub")
    assert owner is not None and owner.find(f"{{{PUBSUB_NS}#owner}}configure").get("node") == NICK_NS
    nick = users[alice.localpart].find(f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}items/{{{PUBSUB_NS}}}item/{{{NICK_NS}}}nick")
    assert nick is not None and nick.text == "Al"
    # Bob's message archive (XEP-0227's urn:xmpp:pie:0#mam form): what he sent, in order.
    archive = users[bob.localpart].find("{urn:xmpp:pie:0#mam}archive")
    assert archive is not None, document
    results = archive.findall("{urn:xmpp:mam:2}result")
    bodies = [r.find(f"{{urn:xmpp:forward:0}}forwarded/{{{CLIENT_NS}}}message/{{{CLIENT_NS}}}body").text for r in results]
    assert bodies == ["first", "second"], bodies
    archived_ids = [r.get("id") for r in results]
    path = tmp_path / "export.xml"
    path.write_text(document)

    # The second server: its configuration written, its data directory empty, not running.
    dst = RookeryServer(ROOKERY_BIN, tmp_path / "second")
    try:
        dst.write_config()
        # Hostile files first, into the empty directory: refused before any database exists.
        for name, text in hostile_files(document).items():
            bad = tmp_path / name
            bad.write_text(text)
            res = dst.cli("import", str(bad))
            assert res.returncode == 1, f"{name}: {res.stdout}{res.stderr}"
            assert not (dst.data_dir / "rookery.db").exists(), name
        res = dst.cli("import", str(path))
        assert res.returncode == 0, res.stderr
        assert "imported 3 accounts" in res.stdout
        assert export(dst) == document

        # Importing again: the existing accounts are named and nothing changes.
        res = dst.cli("import", str(path))
        assert res.returncode == 1
        assert alice.jid in res.stderr and "already exist" in res.stderr
        res = dst.cli("import", "--skip-existing", str(path))
        assert res.returncode == 0, res.stderr
        assert "imported 0 accounts (3 existing skipped)" in res.stdout

        # Malformed and hostile files (of new accounts, so that only what is wrong in them
        # refuses them): exit 1, the database unchanged.
        fresh = document
        for user in (alice, bob, carol):
            fresh = fresh.replace(user.localpart, "new-" + user.localpart)
        for name, text in hostile_files(fresh).items():
            bad = tmp_path / name
            bad.write_text(text)
            res = dst.cli("import", str(bad))
            assert res.returncode == 1, f"{name}: {res.stdout}{res.stderr}"
            assert res.stderr.startswith("rookery: "), res.stderr
            assert export(dst) == document, name
        res = dst.cli("import", str(tmp_path / "other-host.xml"))
        assert "elsewhere.example" in res.stderr and "does not serve" in res.stderr

        # The second server runs with what was imported.
        dst.start()
        assert export(dst) == document
        async with session(dst, alice) as a:
            items = await roster(a)
            assert items[bob.jid].get("subscription") == "both"
            assert items[bob.jid].get("name") == "Bobby"
            assert [g.text for g in items[bob.jid].findall(qn(ROSTER_NS, "group"))] == ["Friends"]
            reply = await a.iq(None, "get", "<vCard xmlns='vcard-temp'/>")
            fn = reply.xml.find("{vcard-temp}vCard/{vcard-temp}FN")
            assert fn is not None and fn.text == "Alice Liddell"
            reply = await a.iq(None, "get", "<query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'/></query>")
            note = reply.xml.find("{jabber:iq:private}query/{urn:example:notes}notes/{urn:example:notes}note")
            assert note is not None and note.text == "tea at four"
            reply = await a.iq(None, "get", f"<pubsub xmlns='{PUBSUB_NS}'><items node='{NICK_NS}'/></pubsub>")
            nick = reply.xml.find(f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}items/{{{PUBSUB_NS}}}item/{{{NICK_NS}}}nick")
            assert nick is not None and nick.text == "Al", reply
            # Offline messages come with the first available presence.
            a.send_presence()
            first = await a.next_message(timeout=10)
            second = await a.next_message(timeout=10)
            assert [first["body"], second["body"]] == ["first", "second"]
            assert first["from"].bare == bob.jid
        async with session(dst, bob) as b:
            assert (await roster(b))[alice.jid].get("subscription") == "both"
            # The archive came along with its ids: a client's MAM sync goes on where it was.
            reply = await b.iq(None, "set", "<query xmlns='urn:xmpp:mam:2' queryid='q'/>")
            assert reply["type"] == "result", reply
            first_id = reply.xml.find("{urn:xmpp:mam:2}fin/{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}first")
            assert first_id is not None and first_id.text == archived_ids[0], reply
        async with session(dst, carol):
            pass
    finally:
        dst.kill()


async def test_an_ejabberd_export_imports_and_its_users_keep_their_passwords(ejabberd_peer, tmp_path):
    """What ejabberd 23.01 itself writes (`ejabberdctl export_piefxis`: a main file including
    one file per host, SCRAM-SHA-1 records whose values it encodes twice): a roster item and
    an offline message made by slixmpp clients on the real ejabberd come over, and the users
    log in to Rookery with the passwords they had: with the mechanisms limited to those
    ejabberd's records allow (`[sasl]`), the client's own choice works, and PLAIN too."""
    peer = ejabberd_peer
    alice, bob = peer.add_user("moved"), peer.add_user("moved")
    async with session(peer, alice) as a:
        reply = await a.iq(
            None,
            "set",
            f"<query xmlns='{ROSTER_NS}'><item jid='{bob.jid}' name='Bobby'><group>Friends</group></item></query>",
        )
        assert reply["type"] == "result", reply
    async with session(peer, bob) as b:
        b.send_message(mto=alice.jid, mbody="sent while you were away", mtype="chat")
        await b.iq(peer.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
    out = tmp_path / "piefxis"
    out.mkdir()
    res = peer.ctl("export_piefxis", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    main = next(p for p in sorted(out.iterdir()) if "<server-data" in p.read_text())

    # While such accounts remain, the operator offers only what they can use ([sasl]).
    dst = RookeryServer(
        ROOKERY_BIN,
        tmp_path / "rookery",
        domain=peer.domain,
        extra_toml='[sasl]\nmechanisms = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"]',
    )
    try:
        dst.write_config()
        res = dst.cli("import", str(main))
        assert res.returncode == 0, res.stderr
        assert "SHA-1" in res.stderr, "accounts with SHA-1 records only are named"
        dst.start()
        # slixmpp picks the strongest mechanism offered, as other clients do.
        async with session(dst, alice) as a:
            items = await roster(a)
            assert items[bob.jid].get("name") == "Bobby"
            assert [g.text for g in items[bob.jid].findall(qn(ROSTER_NS, "group"))] == ["Friends"]
            a.send_presence()
            msg = await a.next_message(timeout=5)
            assert msg["body"] == "sent while you were away" and msg["from"].bare == bob.jid
        # PLAIN checks the password against the SHA-1 record too, and the server makes the
        # records the account lacks from it.
        async with session(dst, bob, mech="PLAIN"):
            pass

        async def rekeyed() -> bool:
            root = ET.fromstring(export(dst).encode())
            for user in root.iter(qn(PIE_NS, "user")):
                if user.get("name") == bob.localpart:
                    mechs = [c.get("mechanism") for c in user.findall("{urn:xmpp:pie:0#scram}scram-credentials")]
                    return mechs == ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
            return False

        await wait_for(rekeyed, what="SCRAM records for every hash after a PLAIN login")
        with pytest.raises(LoginError):
            await connect_client(dst, bob.jid, bob.password, mech="SCRAM-SHA-256", timeout=10)
        with pytest.raises(LoginError):
            await connect_client(dst, alice.jid, "not the password", mech="SCRAM-SHA-1", timeout=10)
    finally:
        dst.kill()

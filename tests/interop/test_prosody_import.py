"""`rookery import --prosody DIR`: a real Prosody 0.12 (the Debian package, started privately
by the federation helpers) gets accounts, a mutual roster subscription, a pending request,
private XML, a PEP node, a blocklist, archived messages (mod_mam) and offline messages from
slixmpp clients; its data directory is imported into an
empty Rookery, and the users log in with their old passwords (SCRAM-SHA-1 with the records
Prosody made, and PLAIN) and find their roster, request and messages. Malformed and hostile
data directories are refused (exit 1) and change nothing."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOKERY_BIN
from harness import ROSTER_NS, LoginError, RookeryServer, connect_client, qn, session

PIE_NS = "urn:xmpp:pie:0"
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


def escaped(name: str) -> str:
    """Prosody's file-name escaping (util.datamanager): %xx for all but letters and digits."""
    return "".join(c if c.isascii() and c.isalnum() else f"%{ord(c):02x}" for c in name)


def hostile_dirs(data, tmp_path, domain: str, user: str) -> dict[str, object]:
    """Copies of Prosody's data directory, each with one malformed or hostile file."""
    host = escaped(domain)
    out = {}

    def variant(name: str, rel: str, content: str):
        copy = tmp_path / f"hostile-{name}"
        shutil.copytree(data, copy)
        path = copy / host / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        out[name] = copy

    roster = (data / host / "roster" / f"{escaped(user)}.dat").read_text()
    variant("truncated", f"roster/{escaped(user)}.dat", roster[: len(roster) // 2])
    variant("deep", f"private/{escaped(user)}.dat", "return " + "{" * 100000 + "}" * 100000 + ";\n")
    variant("huge", f"vcard/{escaped(user)}.dat", 'return "' + "a" * (17 * 1024 * 1024) + '";\n')
    variant("code", f"accounts/{escaped(user)}.dat", 'return os.execute("touch /tmp/owned");\n')
    variant("bad-stanza", f"offline/{escaped(user)}.list", 'item({ name = "message"; attr = { ["a b"] = "x" } });\n')
    return out


def export(server) -> str:
    res = server.cli("export")
    assert res.returncode == 0, res.stderr
    return res.stdout


async def own_archive(client) -> list[tuple[str, str, str]]:
    """(archive id, body, time) of every message in the client's own archive, oldest first."""
    for plugin in ("xep_0059", "xep_0297", "xep_0313"):
        client.register_plugin(plugin)
    got = []
    async for msg in client.plugin["xep_0313"].iterate(rsm={"max": 10}):
        fwd = msg["mam_result"]["forwarded"]
        got.append((msg["mam_result"]["id"], fwd["stanza"]["body"], fwd["delay"]["stamp"].timestamp()))
    return got


BLOCKING_NS = "urn:xmpp:blocking"


async def test_a_prosody_data_directory_imports_and_its_users_keep_their_passwords(prosody_peer, tmp_path):
    peer = prosody_peer
    alice, bob, carol = peer.add_user("moved"), peer.add_user("moved"), peer.add_user("moved")
    async with session(peer, alice) as a, session(peer, bob) as b:
        reply = await a.iq(
            None,
            "set",
            f"<query xmlns='{ROSTER_NS}'><item jid='{bob.jid}' name='Bobby'><group>Friends</group></item></query>",
        )
        assert reply["type"] == "result", reply
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

        await wait_for(mutual, what="mutual subscription on Prosody")
        reply = await a.iq(None, "set", f"<query xmlns='jabber:iq:private'>{NOTES}</query>")
        assert reply["type"] == "result", reply
        # A PEP node (XEP-0172 nickname) with one item.
        reply = await a.iq(None, "set", NICK)
        assert reply["type"] == "result", reply
        # A vCard: Prosody's mod_vcard_legacy keeps it as the PEP node urn:xmpp:vcard4.
        reply = await a.iq(None, "set", "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>")
        assert reply["type"] == "result", reply
        # A blocklist (mod_blocklist) and a conversation both archive (mod_mam).
        reply = await a.iq(None, "set", f"<block xmlns='{BLOCKING_NS}'><item jid='spammer@spam.example'/></block>")
        assert reply["type"] == "result", reply
        a.send_message(mto=b.boundjid.full, mbody="archived hello", mtype="chat")
        await b.next_message(timeout=10, predicate=lambda m: m["body"] == "archived hello")
        b.send_message(mto=a.boundjid.full, mbody="archived reply", mtype="chat")
        await a.next_message(timeout=10, predicate=lambda m: m["body"] == "archived reply")
    async with session(peer, carol) as c:
        c.send_presence(pto=alice.jid, ptype="subscribe")
        await c.iq(peer.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
    async with session(peer, bob) as b:
        for body in ("first", "second"):
            b.send_message(mto=alice.jid, mbody=body, mtype="chat")
        await b.iq(peer.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
    # Bob's archive as Prosody answers it: what he sent and received, Alice offline or not.
    async with session(peer, bob) as b:
        bob_archive = await own_archive(b)
    assert [body for _id, body, _t in bob_archive] == ["archived hello", "archived reply", "first", "second"], bob_archive
    # Prosody writes each change at once; stopped, it holds nothing back.
    peer.stop()
    data = peer.data_dir
    host_dir = data / escaped(peer.domain)
    stored = (host_dir / "offline" / f"{escaped(alice.localpart)}.list").read_text()
    assert stored.count("item(") == 2
    stamps = re.findall(r'\["stamp"\] = "([^"]+)"', stored)
    assert "stored_key" in (host_dir / "accounts" / f"{escaped(alice.localpart)}.dat").read_text()

    # While the accounts have SCRAM-SHA-1 records only, the operator offers what they can use.
    dst = RookeryServer(
        ROOKERY_BIN,
        tmp_path / "rookery",
        domain=peer.domain,
        extra_toml='[sasl]\nmechanisms = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"]',
    )
    try:
        dst.write_config()
        db = dst.data_dir / "rookery.db"
        hostile = hostile_dirs(data, tmp_path, peer.domain, alice.localpart)
        expected = {
            "truncated": "roster",
            "deep": "nested deeper",
            "huge": "larger than 16 MiB",
            "code": "only data is read",
            "bad-stanza": "not an XML name",
        }
        for name, path in hostile.items():
            res = dst.cli("import", "--prosody", str(path))
            assert res.returncode == 1, f"{name}: {res.stdout}{res.stderr}"
            assert res.stderr.startswith("rookery: ") and expected[name] in res.stderr, f"{name}: {res.stderr}"
            assert not db.exists(), name

        res = dst.cli("import", "--prosody", str(data))
        assert res.returncode == 0, res.stderr
        assert "imported 3 accounts" in res.stdout, res.stdout
        assert "SHA-1" in res.stderr, "accounts with SHA-1 records only are named"
        document = export(dst)
        root = ET.fromstring(document.encode())
        users = {u.get("name"): u for u in root.iter(qn(PIE_NS, "user"))}
        assert set(users) == {alice.localpart, bob.localpart, carol.localpart}
        mechanisms = [s.get("mechanism") for s in users[alice.localpart].findall(f"{{{PIE_NS}#scram}}scram-credentials")]
        assert mechanisms == ["SCRAM-SHA-1"]

        # Again: the accounts exist; with --skip-existing nothing changes either.
        res = dst.cli("import", "--prosody", str(data))
        assert res.returncode == 1 and "already exist" in res.stderr, res.stderr
        res = dst.cli("import", "--prosody", "--skip-existing", str(data))
        assert res.returncode == 0 and "imported 0 accounts (3 existing skipped)" in res.stdout, res.stdout
        # A hostile file among new accounts refuses the whole directory: nothing is written.
        for name, path in hostile.items():
            fresh = path / escaped(peer.domain) / "accounts" / "newcomer.dat"
            fresh.write_text('return {\n\t["password"] = "newcomer\\039s password";\n};\n')
            res = dst.cli("import", "--prosody", "--skip-existing", str(path))
            assert res.returncode == 1, f"{name}: {res.stdout}{res.stderr}"
            assert export(dst) == document, name

        dst.start()
        # slixmpp picks the strongest mechanism offered: SCRAM-SHA-1 with Prosody's record.
        async with session(dst, alice) as a:
            items = await roster(a)
            assert items[bob.jid].get("subscription") == "both"
            assert items[bob.jid].get("name") == "Bobby"
            assert [g.text for g in items[bob.jid].findall(qn(ROSTER_NS, "group"))] == ["Friends"]
            reply = await a.iq(None, "get", "<query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'/></query>")
            note = reply.xml.find("{jabber:iq:private}query/{urn:example:notes}notes/{urn:example:notes}note")
            assert note is not None and note.text == "tea at four"
            reply = await a.iq(None, "get", f"<pubsub xmlns='{PUBSUB_NS}'><items node='{NICK_NS}'/></pubsub>")
            item = reply.xml.find(f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}items/{{{PUBSUB_NS}}}item")
            assert item is not None and item.get("id") == "current", reply
            assert item.find(f"{{{NICK_NS}}}nick").text == "Al"
            reply = await a.iq(None, "get", f"<pubsub xmlns='{PUBSUB_NS}'><items node='urn:xmpp:vcard4'/></pubsub>")
            vcard4 = "urn:ietf:params:xml:ns:vcard-4.0"
            fn = reply.xml.find(
                f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}items/{{{PUBSUB_NS}}}item/{{{vcard4}}}vcard/{{{vcard4}}}fn/{{{vcard4}}}text"
            )
            assert fn is not None and fn.text == "Alice Liddell", reply
            requests: list[str] = []
            a.add_event_handler("presence_subscribe", lambda p: requests.append(p["from"].bare))
            # The offline messages (in order, with the time Prosody stored them) and Carol's
            # pending request come with the first available presence.
            a.send_presence()
            first = await a.next_message(timeout=10)
            second = await a.next_message(timeout=10)
            assert [first["body"], second["body"]] == ["first", "second"]
            assert first["from"].bare == bob.jid
            delay = first.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("stamp") == stamps[0], ET.tostring(first.xml)
            await wait_for(lambda: asyncio.sleep(0, result=carol.jid in requests), what="Carol's pending request")
            reply = await a.iq(None, "get", f"<blocklist xmlns='{BLOCKING_NS}'/>")
            blocked = [i.get("jid") for i in reply.xml.iter(f"{{{BLOCKING_NS}}}item")]
            assert blocked == ["spammer@spam.example"], reply
        async with session(dst, bob, mech="PLAIN") as b:
            assert (await roster(b))[alice.jid].get("subscription") == "both"
            # The same archive on Rookery: ids, bodies, order and times (to the microsecond).
            moved = await own_archive(b)
            assert [(i, body) for i, body, _t in moved] == [(i, body) for i, body, _t in bob_archive]
            assert all(abs(t1 - t2) < 1e-5 for (_i, _b, t1), (_j, _c, t2) in zip(moved, bob_archive)), (moved, bob_archive)
            # A query by correspondent finds the conversation with Alice.
            reply = await b.iq(None, "set", (
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
                f"<field var='with'><value>{alice.jid}</value></field></x></query>"
            ))
            assert reply["type"] == "result", reply
            fin = reply.xml.find("{urn:xmpp:mam:2}fin/{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}count")
            assert fin is not None and fin.text == "4", reply
        async with session(dst, carol, mech="SCRAM-SHA-1"):
            pass
        with pytest.raises(LoginError):
            await connect_client(dst, alice.jid, "not the password", mech="SCRAM-SHA-1", timeout=10)
    finally:
        dst.kill()

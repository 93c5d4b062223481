"""XEP-0280 Message Carbons with slixmpp's xep_0280 plugin: three resources of one account
(two with carbons enabled, one without) and a contact on a second account."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import xml.etree.ElementTree as ET

from harness import DISCO_INFO_NS, qn, session

CARBONS_NS = "urn:xmpp:carbons:2"


@contextlib.asynccontextmanager
async def carbon_client(server, user, resource: str, enable: bool, priority: int = 0):
    """A logged-in, available client; ``carbons`` collects ("sent"|"received", outer
    message) as the plugin reports them (the plugin only reports copies from the
    account's own bare JID)."""
    async with session(server, user, resource=resource) as c:
        c.register_plugin("xep_0297")
        c.register_plugin("xep_0280")
        c.carbons = asyncio.Queue()
        c.add_event_handler("carbon_sent", lambda m: c.carbons.put_nowait(("sent", m)))
        c.add_event_handler("carbon_received", lambda m: c.carbons.put_nowait(("received", m)))
        if enable:
            reply = await c.plugin["xep_0280"].enable(timeout=5)
            assert reply["type"] == "result"
        c.send_presence(ppriority=priority)
        yield c


async def next_carbon(c, timeout: float = 5.0):
    return await asyncio.wait_for(c.carbons.get(), timeout)


async def barrier(sender, targets, private: bool = True) -> None:
    """``sender`` sends a marker to each target's full JID; each target's next message must
    be that marker. Stanzas from one sender are routed in order, so anything the server
    would have sent a target because of the sender's earlier stanzas arrives before it."""
    tag = uuid.uuid4().hex
    for t in targets:
        m = sender.make_message(mto=t.boundjid.full, mbody=f"barrier {tag}", mtype="chat")
        if private:
            m.append(ET.fromstring(f"<private xmlns='{CARBONS_NS}'/>"))
        m.send()
    for t in targets:
        got = await t.next_message(timeout=5)
        assert got["body"] == f"barrier {tag}", f"{t.boundjid}: unexpected {got}"
        assert t.carbons.empty(), f"{t.boundjid}: unexpected carbon {t.carbons._queue}"


def chat(sender, to: str, body: str) -> str:
    m = sender.make_message(mto=to, mbody=body, mtype="chat")
    m["id"] = uuid.uuid4().hex
    m.send()
    return m["id"]


async def settle(*clients) -> None:
    """Let the presence exchanged at login pass, then drop whatever the inboxes hold."""
    await asyncio.sleep(0.3)
    for c in clients:
        while not c.inbox.empty():
            c.inbox.get_nowait()


async def test_server_advertises_carbons(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        features = {f.get("var") for f in reply.xml.iter(qn(DISCO_INFO_NS, "feature"))}
        assert CARBONS_NS in features


async def test_sent_and_received_copies_only_to_enabled_resources(server, alice, bob):
    async with (
        carbon_client(server, alice, "r1", enable=True) as r1,
        carbon_client(server, alice, "r2", enable=True) as r2,
        carbon_client(server, alice, "r3", enable=False) as r3,
        carbon_client(server, bob, "b", enable=False) as b,
    ):
        await settle(r1, r2, r3, b)

        # Received: bob -> alice/r1. r1 gets the original, r2 a copy, r3 nothing.
        mid = chat(b, r1.boundjid.full, "to r1")
        got = await r1.next_message()
        assert got["body"] == "to r1" and got["id"] == mid
        kind, outer = await next_carbon(r2)
        assert kind == "received"
        assert outer["from"].full == alice.jid
        assert outer["to"].full == r2.boundjid.full
        assert outer["type"] == "chat"
        inner = outer["carbon_received"]
        assert inner["body"] == "to r1"
        assert inner["from"].full == b.boundjid.full
        assert inner["to"].full == r1.boundjid.full
        assert inner["id"] == mid
        await r2.next_message()  # the outer copy also reaches the inbox
        await barrier(b, [r1, r2, r3])

        # Sent from the resource without carbons: both enabled resources get a copy.
        mid = chat(r3, b.boundjid.full, "from r3")
        got = await b.next_message()
        assert got["body"] == "from r3"
        for r in (r1, r2):
            kind, outer = await next_carbon(r)
            assert kind == "sent"
            assert outer["from"].full == alice.jid
            assert outer["to"].full == r.boundjid.full
            inner = outer["carbon_sent"]
            assert (inner["body"], inner["id"]) == ("from r3", mid)
            assert inner["from"].full == r3.boundjid.full
            assert inner["to"].full == b.boundjid.full
            await r.next_message()
        await barrier(r3, [r1, r2], private=False)

        # Sent from an enabled resource: the other enabled one only.
        chat(r1, bob.jid, "from r1")
        kind, outer = await next_carbon(r2)
        assert kind == "sent" and outer["carbon_sent"]["body"] == "from r1"
        await r2.next_message()
        await barrier(r1, [r2, r3], private=False)
        assert r1.carbons.empty()

        # r2 disables: it gets nothing any more.
        reply = await r2.plugin["xep_0280"].disable(timeout=5)
        assert reply["type"] == "result"
        chat(b, r1.boundjid.full, "after disable")
        assert (await r1.next_message())["body"] == "after disable"
        await barrier(b, [r2, r3])


async def test_private_and_no_copy_are_respected(server, alice, bob):
    async with (
        carbon_client(server, alice, "r1", enable=True) as r1,
        carbon_client(server, alice, "r2", enable=True) as r2,
        carbon_client(server, bob, "b", enable=False) as b,
    ):
        await settle(r1, r2, b)
        marks = {
            "private": f"<private xmlns='{CARBONS_NS}'/>",
            "no-copy": "<no-copy xmlns='urn:xmpp:hints'/>",
        }
        for name, xml in marks.items():
            # Received.
            m = b.make_message(mto=r1.boundjid.full, mbody=f"in {name}", mtype="chat")
            m.append(ET.fromstring(xml))
            m.send()
            got = await r1.next_message()
            assert got["body"] == f"in {name}"
            if name == "private":
                # The server leaves <private/> in place (XEP-0280 §9).
                assert got.xml.find(qn(CARBONS_NS, "private")) is not None
            await barrier(b, [r2])
            # Sent.
            m = r1.make_message(mto=b.boundjid.full, mbody=f"out {name}", mtype="chat")
            m.append(ET.fromstring(xml))
            m.send()
            assert (await b.next_message())["body"] == f"out {name}"
            await barrier(r1, [r2], private=False)


async def test_bare_jid_delivery(server, alice, bob):
    async with (
        carbon_client(server, alice, "r1", enable=True) as r1,
        carbon_client(server, alice, "r2", enable=True, priority=-1) as r2,
        carbon_client(server, alice, "r3", enable=False) as r3,
        carbon_client(server, bob, "b", enable=False) as b,
    ):
        await settle(r1, r2, r3, b)
        # r1 and r3 share the top priority and get the original (RFC 6121 §8.5.2.1.1);
        # r2 (negative priority) gets no original but, being carbon-enabled, a copy (§7).
        chat(b, alice.jid, "to bare")
        for r in (r1, r3):
            got = await r.next_message()
            assert got["body"] == "to bare"
            assert got.xml.find(qn(CARBONS_NS, "received")) is None
        kind, outer = await next_carbon(r2)
        assert kind == "received"
        assert outer["to"].full == r2.boundjid.full
        assert outer["carbon_received"]["body"] == "to bare"
        assert outer["carbon_received"]["to"].full == alice.jid
        await r2.next_message()
        await barrier(b, [r1, r2, r3])
        assert r1.carbons.empty()


async def test_forged_carbon_from_another_account_is_refused(server, alice, bob):
    async with (
        carbon_client(server, alice, "r1", enable=True) as r1,
        carbon_client(server, alice, "r2", enable=True) as r2,
        carbon_client(server, bob, "b", enable=False) as b,
    ):
        await settle(r1, r2, b)
        b.send_raw(
            f"<message to='{alice.jid}' type='chat' id='forged-1'>"
            f"<received xmlns='{CARBONS_NS}'><forwarded xmlns='urn:xmpp:forward:0'>"
            f"<message xmlns='jabber:client' from='mallory@{server.domain}/x' to='{r1.boundjid.full}' type='chat'>"
            "<body>forged</body></message></forwarded></received></message>"
        )
        err = await b.next_message(predicate=lambda m: m["type"] == "error")
        assert err["id"] == "forged-1"
        assert err["error"]["condition"] == "not-acceptable"
        await barrier(b, [r1, r2])
        # The same from one of the account's own resources: refused too.
        r2.send_raw(
            f"<message to='{r1.boundjid.full}' type='chat' id='forged-2'>"
            f"<sent xmlns='{CARBONS_NS}'><forwarded xmlns='urn:xmpp:forward:0'>"
            f"<message xmlns='jabber:client' from='{r2.boundjid.full}' to='{bob.jid}' type='chat'>"
            "<body>forged</body></message></forwarded></sent></message>"
        )
        err = await r2.next_message(predicate=lambda m: m["type"] == "error")
        assert err["id"] == "forged-2"
        assert err["error"]["condition"] == "not-acceptable"
        await barrier(r2, [r1], private=False)

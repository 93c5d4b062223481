"""XEP-0353 Jingle Message Initiation as the server carries it: a call proposal sent to the
callee's bare JID reaches every client of the callee (the ones of the highest priority
directly, the others as carbons), the caller's other client gets a sent carbon, the proposal
and its retraction are archived for both parties (they carry a `<store/>` hint), and a
Jingle IQ between full JIDs passes untouched."""

from __future__ import annotations

import asyncio

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import session

JMI = "urn:xmpp:jingle-message:0"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"


def _jmi(msg, name: str):
    """The JMI element `name` of a message, directly or inside a carbon copy."""
    direct = msg.xml.find(f"{{{JMI}}}{name}")
    if direct is not None:
        return direct
    for kind in ("received", "sent"):
        inner = msg.xml.find(f"{{{CARBONS}}}{kind}/{{{FORWARD}}}forwarded/{{jabber:client}}message/{{{JMI}}}{name}")
        if inner is not None:
            return inner
    return None


async def _enable_carbons(*clients):
    for c in clients:
        reply = await c.iq(None, "set", f"<enable xmlns='{CARBONS}'/>")
        assert reply["type"] == "result", reply


async def test_a_call_proposal_rings_every_client_and_is_archived(server, new_user):
    callee, caller = new_user("callee"), new_user("caller")
    async with session(server, callee, resource="phone") as phone, session(
        server, callee, resource="laptop"
    ) as laptop, session(server, caller, resource="desk") as desk, session(server, caller, resource="mobile") as mobile:
        await _enable_carbons(phone, laptop, desk, mobile)
        for c in (phone, laptop, desk, mobile):
            c.send_presence()
        await asyncio.sleep(0.3)
        desk.send_raw(
            f"<message to='{callee.jid}' type='chat' id='call-1'>"
            f"<propose xmlns='{JMI}' id='jmi-1'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>"
            "<store xmlns='urn:xmpp:hints'/></message>"
        )
        for c in (phone, laptop):
            got = await c.next_message(timeout=5, predicate=lambda m: _jmi(m, "propose") is not None)
            assert _jmi(got, "propose").get("id") == "jmi-1"
        sent = await mobile.next_message(timeout=5, predicate=lambda m: _jmi(m, "propose") is not None)
        assert sent.xml.find(f"{{{CARBONS}}}sent") is not None

        desk.send_raw(
            f"<message to='{callee.jid}' type='chat' id='call-2'>"
            f"<retract xmlns='{JMI}' id='jmi-1'/><store xmlns='urn:xmpp:hints'/></message>"
        )
        for c in (phone, laptop):
            await c.next_message(timeout=5, predicate=lambda m: _jmi(m, "retract") is not None)

        # Both are in the callee's archive.
        found = []
        phone.register_handler(
            Callback("mam", MatchXPath("{jabber:client}message/{urn:xmpp:mam:2}result"), found.append)
        )
        done = await phone.iq(None, "set", "<query xmlns='urn:xmpp:mam:2' queryid='jmi'/>")
        assert done["type"] == "result", done
        await asyncio.sleep(0.3)
        kinds = set()
        for m in found:
            inner = m.xml.find("{urn:xmpp:mam:2}result/{urn:xmpp:forward:0}forwarded/{jabber:client}message")
            for name in ("propose", "retract"):
                if inner is not None and inner.find(f"{{{JMI}}}{name}") is not None:
                    kinds.add(name)
        assert kinds == {"propose", "retract"}, kinds


async def test_jingle_iqs_pass_between_full_jids_untouched(server, new_user):
    a, b = new_user("a"), new_user("b")
    async with session(server, a, resource="x") as ca, session(server, b, resource="y") as cb:
        seen = asyncio.get_running_loop().create_future()

        def on_jingle(iq):
            if not seen.done():
                seen.set_result(iq)
            cb.send_raw(f"<iq type='result' id='{iq['id']}' to='{iq['from']}'/>")

        cb.register_handler(Callback("jingle", MatchXPath("{jabber:client}iq/{urn:xmpp:jingle:1}jingle"), on_jingle))
        jingle = (
            f"<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s1' initiator='{a.full('x')}'>"
            "<content creator='initiator' name='voice'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/>"
            "<transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='u' pwd='p'/></content></jingle>"
        )
        reply = await ca.iq(b.full("y"), "set", jingle)
        assert reply["type"] == "result", reply
        got = await asyncio.wait_for(seen, 5)
        inner = got.xml.find("{urn:xmpp:jingle:1}jingle")
        assert inner.get("sid") == "s1" and inner.get("action") == "session-initiate"
        assert got.xml.find(
            "{urn:xmpp:jingle:1}jingle/{urn:xmpp:jingle:1}content/{urn:xmpp:jingle:transports:ice-udp:1}transport"
        ).get("ufrag") == "u"

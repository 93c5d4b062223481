"""Client state indication (XEP-0352) with slixmpp: an inactive client gets no presence
churn or chat states until something important arrives, then the latest presence per
contact and the held chat states, in order, before the message."""

from __future__ import annotations

import asyncio

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import CLIENT_NS, connect_client, session

CHATSTATES_NS = "http://jabber.org/protocol/chatstates"


async def inactive_client(server, user, resource):
    client = await connect_client(server, user.full(resource), user.password, plugins=["xep_0352"])
    assert client.plugin["xep_0352"].enabled, "the server advertised csi"
    client.plugin["xep_0352"].send_inactive()
    return client


async def drain(client, seconds: float) -> list:
    """Everything (presence and messages) that arrives within `seconds`."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            got.append(await asyncio.wait_for(client.csi_seen.get(), left))
        except (TimeoutError, asyncio.TimeoutError):
            break
    return got


def watch(client):
    """Record every presence and message stanza as it arrives, straight from the XML."""
    client.csi_seen = asyncio.Queue()

    def record(stanza):
        xml = stanza.xml
        if xml.tag == f"{{{CLIENT_NS}}}presence":
            show = xml.find(f"{{{CLIENT_NS}}}show")
            client.csi_seen.put_nowait(("presence", stanza["from"].full, show.text if show is not None else ""))
        else:
            body = xml.find(f"{{{CLIENT_NS}}}body")
            what = body.text if body is not None else ",".join(
                c.tag.rsplit("}", 1)[-1] for c in xml if c.tag.startswith(f"{{{CHATSTATES_NS}}}")
            )
            client.csi_seen.put_nowait(("message", stanza["from"].full, what))

    client.register_handler(Callback("csi presence", MatchXPath(f"{{{CLIENT_NS}}}presence"), record))
    client.register_handler(Callback("csi message", MatchXPath(f"{{{CLIENT_NS}}}message"), record))


async def test_inactive_holds_presence_and_chat_states_until_a_message(server, alice, bob):
    phone = await inactive_client(server, alice, "phone")
    watch(phone)
    try:
        async with session(server, bob, resource="pc") as cb:
            # Let the <inactive/> reach the server before anything is sent to the phone.
            await phone.plugin["xep_0199"].ping(server.domain, timeout=5)
            for show in ("away", "dnd", "xa"):
                cb.send_presence(pto=alice.full("phone"), pshow=show)
            cb.send_raw(
                f"<message type='chat' to='{alice.full('phone')}'>"
                f"<composing xmlns='{CHATSTATES_NS}'/></message>"
            )
            await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
            assert await drain(phone, 1.0) == [], "nothing wakes an inactive client"

            cb.send_message(mto=alice.full("phone"), mbody="wake up", mtype="chat")
            got = await drain(phone, 1.5)
            # Only the latest presence, the chat state, then the message (slixmpp may
            # dispatch presence and message handlers in either order; the wire order is
            # asserted by the Rust test crates/testkit/tests/client_state.rs).
            assert sorted(got[:2]) == [
                ("message", bob.full("pc"), "composing"),
                ("presence", bob.full("pc"), "xa"),
            ], got
            assert got[2:] == [("message", bob.full("pc"), "wake up")], got

            # Held again, then released by <active/>.
            cb.send_presence(pto=alice.full("phone"), pshow="chat")
            await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
            assert await drain(phone, 0.7) == []
            phone.plugin["xep_0352"].send_active()
            got = await drain(phone, 1.5)
            assert got == [("presence", bob.full("pc"), "chat")], got
            # Active: delivered at once.
            cb.send_presence(pto=alice.full("phone"), pshow="away")
            got = await drain(phone, 1.5)
            assert got == [("presence", bob.full("pc"), "away")], got
    finally:
        await phone.close()


async def test_iq_requests_are_not_held(server, alice, bob):
    phone = await inactive_client(server, alice, "phone")
    try:
        async with session(server, bob, resource="pc") as cb:
            await phone.plugin["xep_0199"].ping(server.domain, timeout=5)
            # An IQ to the inactive client's full JID is answered promptly by slixmpp: the
            # server did not hold the request.
            reply = await cb.plugin["xep_0199"].ping(alice.full("phone"), timeout=3)
            assert reply is not None
    finally:
        await phone.close()


def test_csi_and_sm_are_advertised_after_authentication(server, alice, raw_factory):
    s = raw_factory(server, direct_tls=True)
    s.open_stream()
    assert s.features.find("{urn:xmpp:csi:0}csi") is None, "not before authentication"
    assert s.auth_plain(alice.localpart, alice.password).ok
    features = s.open_stream()
    assert features.find("{urn:xmpp:csi:0}csi") is not None
    assert features.find("{urn:xmpp:sm:3}sm") is not None

"""External components (XEP-0114): slixmpp's ComponentXMPP against a ``component`` listener.

A component attaches under its domain with the handshake, answers a user's disco#info, gets
the messages users send to JIDs in its domain and answers them, and asks a user something
itself; a wrong secret and an unknown domain are refused; once it disconnects, a message to
it comes back as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET

import pytest
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout

from harness import DISCO_INFO_NS, PING_NS, session

GATEWAY = "gateway.localhost"
SECRET = "a secret only the gateway knows"

SERVER_CONFIG = {"components": {GATEWAY: SECRET}}


@pytest.fixture(autouse=True)
def _own_server(server):
    if getattr(server, "external", False):
        pytest.skip("needs a component listener on the server under test")


class Gateway(ComponentXMPP):
    """A component that records how its connection went and echoes messages."""

    def __init__(self, domain: str, secret: str):
        super().__init__(domain, secret)
        self.enable_direct_tls = False
        self.whitespace_keepalive = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.plugin["xep_0030"].add_identity(category="gateway", itype="smtp", name="Test gateway", jid=domain)
        self.outcome: asyncio.Future = asyncio.get_running_loop().create_future()
        self.stream_errors: list[str] = []
        self.received: asyncio.Queue = asyncio.Queue()
        self.disconnected_event = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self._settle(None))
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("message", self._on_message)

    def _settle(self, reason: str | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(reason)

    def _on_stream_error(self, error) -> None:
        self.stream_errors.append(error["condition"])
        self._settle(f"stream error: {error['condition']}")

    def _on_disconnected(self, reason) -> None:
        self.disconnected_event.set()
        self._settle(f"disconnected before the handshake: {reason}")
        # Never let slixmpp reconnect in the background.
        self.cancel_connection_attempt()

    def _on_message(self, msg) -> None:
        self.received.put_nowait(msg)
        if msg["type"] in ("chat", "normal") and msg["body"]:
            reply = msg.reply(f"echo: {msg['body']}")
            reply.send()

    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnect(wait=1.0), 3.0)
        self.abort()


async def connect_gateway(server, domain: str = GATEWAY, secret: str = SECRET) -> Gateway:
    """A component that connected and finished its handshake, or failed: see ``outcome``."""
    gw = Gateway(domain, secret)
    gw.connect(server.host, server.component_port)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(gw.outcome), 10)
    return gw


@contextlib.asynccontextmanager
async def gateway(server):
    gw = await connect_gateway(server)
    try:
        assert gw.outcome.done() and gw.outcome.result() is None, gw.outcome
        yield gw
    finally:
        await gw.close()


async def test_user_and_component_exchange_iqs_and_messages(server, alice):
    async with gateway(server) as gw, session(server, alice, "phone") as c:
        # disco#info from a user to the component's domain, answered by the component.
        reply = await c.iq(GATEWAY, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        assert reply["type"] == "result", reply
        assert reply["from"].full == GATEWAY
        identities = {
            (i.get("category"), i.get("type"))
            for i in reply.xml.find(f"{{{DISCO_INFO_NS}}}query").findall(f"{{{DISCO_INFO_NS}}}identity")
        }
        assert ("gateway", "smtp") in identities, identities

        # A message to a JID in the component's domain reaches it, and its answer comes back.
        c.send_message(mto=f"bot@{GATEWAY}", mbody="hello bot", mtype="chat")
        got = await asyncio.wait_for(gw.received.get(), 5)
        assert got["from"].full == alice.full("phone")
        assert got["body"] == "hello bot"
        echo = await c.next_message(predicate=lambda m: m["body"] == "echo: hello bot")
        assert echo["from"].bare == f"bot@{GATEWAY}"

        # The component asks the user something: its IQ is routed to the user's session and
        # the answer back to it.
        iq = gw.Iq()
        iq["type"] = "get"
        iq["to"] = alice.full("phone")
        iq["from"] = GATEWAY
        iq.append(ET.fromstring(f"<ping xmlns='{PING_NS}'/>"))
        try:
            answer = await iq.send(timeout=5)
        except IqError as e:
            answer = e.iq
        except IqTimeout:
            pytest.fail("the user's answer never reached the component")
        assert answer["type"] == "result", answer
        assert answer["from"].full == alice.full("phone")


async def test_wrong_secret_is_refused(server):
    gw = await connect_gateway(server, secret="not the secret")
    try:
        assert gw.stream_errors == ["not-authorized"], (gw.stream_errors, gw.outcome)
        await asyncio.wait_for(gw.disconnected_event.wait(), 5)
    finally:
        await gw.close()
    # The domain was never taken: the right secret still works.
    async with gateway(server):
        pass


async def test_unknown_domain_is_refused(server):
    gw = await connect_gateway(server, domain="unknown.localhost")
    try:
        assert gw.stream_errors == ["host-unknown"], (gw.stream_errors, gw.outcome)
    finally:
        await gw.close()


async def test_message_after_disconnect_comes_back(server, alice):
    async with session(server, alice) as c:
        async with gateway(server) as gw:
            c.send_message(mto=f"bot@{GATEWAY}", mbody="before", mtype="chat")
            await asyncio.wait_for(gw.received.get(), 5)
            await c.next_message(predicate=lambda m: m["body"] == "echo: before")
        await asyncio.wait_for(gw.disconnected_event.wait(), 5)
        # The server notices the closed stream at once; give it a moment to detach.
        for attempt in range(20):
            c.send_message(mto=f"bot@{GATEWAY}", mbody=f"after {attempt}", mtype="chat")
            try:
                error = await c.next_message(
                    timeout=0.5, predicate=lambda m: m["type"] == "error"
                )
            except (TimeoutError, asyncio.TimeoutError):
                continue
            assert error["error"]["condition"] == "remote-server-not-found", error
            assert error["from"].bare == f"bot@{GATEWAY}"
            break
        else:
            pytest.fail("no error for a message to a disconnected component")

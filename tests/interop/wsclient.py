"""A raw XMPP-over-WebSocket client (RFC 7395) on the ``websockets`` package, for tests:
slixmpp speaks XMPP over TCP only.

Each text message is one element: ``<open/>``, ``<close/>`` (both in
``urn:ietf:params:xml:ns:xmpp-framing``) or a stanza/negotiation element that declares its
namespace. SCRAM-SHA-256 is computed here (independent of the server's code).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import xml.etree.ElementTree as ET

import websockets
from websockets.asyncio.client import ClientConnection, connect

from harness import BIND_NS, CLIENT_NS, SASL_NS, STREAM_ERR_NS, STREAM_NS, client_ssl_context, qn, saslname

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
SM_NS = "urn:xmpp:sm:3"


class Refused(Exception):
    """The server refused the WebSocket handshake with this HTTP status."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


class WsStream:
    """One WebSocket connection; ``elements`` holds everything received, parsed."""

    def __init__(self, ws: ClientConnection, domain: str):
        self.ws = ws
        self.domain = domain
        self.elements: list[ET.Element] = []
        self.texts: list[str] = []
        self.features: ET.Element | None = None

    @classmethod
    async def connect(
        cls,
        server,
        *,
        tls: bool = True,
        path: str = "/xmpp-websocket",
        subprotocols: tuple[str, ...] | None = ("xmpp",),
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> "WsStream":
        scheme = "wss" if tls else "ws"
        port = server.https_port if tls else server.http_port
        kwargs = {}
        if tls:
            kwargs["ssl"] = client_ssl_context(server.cert_path)
            kwargs["server_hostname"] = server.domain
        if source:
            kwargs["local_addr"] = (source, 0)
        try:
            ws = await asyncio.wait_for(
                connect(
                    f"{scheme}://{server.domain}:{port}{path}",
                    host=server.host,
                    port=port,
                    subprotocols=list(subprotocols) if subprotocols else None,
                    origin=origin,
                    additional_headers=headers or {},
                    max_size=None,
                    open_timeout=10,
                    **kwargs,
                ),
                15,
            )
        except websockets.exceptions.InvalidStatus as e:
            raise Refused(e.response.status_code, e.response.body or b"") from None
        return cls(ws, server.domain)

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, timeout: float = 10.0) -> ET.Element | None:
        """The next element; ``None`` once the connection is closed."""
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.exceptions.ConnectionClosed:
            return None
        assert isinstance(text, str), f"a binary message: {text!r}"
        self.texts.append(text)
        elem = ET.fromstring(text)
        self.elements.append(elem)
        return elem

    async def wait_for(self, match, timeout: float = 10.0, what: str = "an element") -> ET.Element:
        """The next element for which ``match`` (a tag or a predicate) holds."""
        if isinstance(match, str):
            tag = match
            match = lambda e: e.tag == tag  # noqa: E731
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            elem = await self.recv(max(0.01, deadline - loop.time()))
            if elem is None:
                raise AssertionError(f"closed while waiting for {what}; got {self.texts[-5:]}")
            if match(elem):
                return elem

    async def read_until_closed(self, timeout: float = 10.0) -> list[ET.Element]:
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            elem = await self.recv(max(0.01, deadline - loop.time()))
            if elem is None:
                return got
            got.append(elem)

    def stream_error(self) -> str | None:
        for e in self.elements:
            if e.tag == qn(STREAM_NS, "error"):
                for child in e:
                    if child.tag.startswith("{" + STREAM_ERR_NS + "}") and not child.tag.endswith("}text"):
                        return child.tag.split("}", 1)[1]
        return None

    async def open(self) -> ET.Element:
        await self.send(f"<open xmlns='{FRAMING_NS}' to='{self.domain}' version='1.0'/>")
        opened = await self.recv()
        assert opened is not None and opened.tag == qn(FRAMING_NS, "open"), self.texts
        self.features = await self.wait_for(qn(STREAM_NS, "features"))
        return self.features

    def mechanisms(self) -> list[str]:
        assert self.features is not None
        mechs = self.features.find(qn(SASL_NS, "mechanisms"))
        return [m.text or "" for m in (mechs if mechs is not None else [])]

    async def auth_scram(self, username: str, password: str) -> bool:
        """SCRAM-SHA-256 and the stream restart (a new ``<open/>``)."""
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={saslname(username)},r={cnonce}"
        await self.send(
            f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>"
            f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>"
        )
        sasl = lambda e: e.tag.startswith("{" + SASL_NS + "}")  # noqa: E731
        answer = await self.wait_for(sasl, what="SASL challenge")
        if answer.tag != qn(SASL_NS, "challenge"):
            return False
        server_first = base64.b64decode(answer.text or "").decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        final_no_proof = f"c=biws,r={attrs['r']}"
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{first_bare},{server_first},{final_no_proof}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = f"{final_no_proof},p={base64.b64encode(proof).decode()}"
        await self.send(f"<response xmlns='{SASL_NS}'>{base64.b64encode(final.encode()).decode()}</response>")
        answer = await self.wait_for(sasl, what="SASL outcome")
        if answer.tag != qn(SASL_NS, "success"):
            return False
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        expected = base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest()).decode()
        assert base64.b64decode(answer.text or "").decode() == f"v={expected}", "the server's proof"
        await self.open()
        return True

    async def bind(self, resource: str) -> str:
        await self.send(
            f"<iq xmlns='{CLIENT_NS}' type='set' id='bind'><bind xmlns='{BIND_NS}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        iq = await self.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "bind")
        jid = iq.find(f"{qn(BIND_NS, 'bind')}/{qn(BIND_NS, 'jid')}")
        assert jid is not None, self.texts[-3:]
        return jid.text or ""

    async def login(self, user, resource: str) -> str:
        await self.open()
        assert await self.auth_scram(user.localpart, user.password), self.texts[-3:]
        return await self.bind(resource)

    async def message(self, to: str, body: str, msg_id: str) -> None:
        await self.send(
            f"<message xmlns='{CLIENT_NS}' type='chat' to='{to}' id='{msg_id}'><body>{body}</body></message>"
        )

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a phone losing its network)."""
        self.ws.transport.abort()


def bodies(elems) -> list[str]:
    out = []
    for e in elems:
        if e.tag == qn(CLIENT_NS, "message"):
            b = e.find(qn(CLIENT_NS, "body"))
            if b is not None and b.text:
                out.append(b.text)
    return out


__all__ = ["FRAMING_NS", "SM_NS", "Refused", "WsStream", "bodies", "ssl"]

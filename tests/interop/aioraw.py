"""A small asyncio XMPP client for tests that drive many connections at once (floods,
load, soak): direct TLS or plain TCP, SCRAM-SHA-256, binding, pings and messages, with
everything received parsed into top-level elements. Every wait has a deadline.

``harness.RawStream`` is the synchronous equivalent with more options; this one exists so
that thousands of sockets can be handled by one thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import re
import ssl
import time
import xml.etree.ElementTree as ET
from typing import Callable

from harness import (
    BIND_NS,
    CLIENT_NS,
    PING_NS,
    SASL_NS,
    STREAM_ERR_NS,
    STREAM_NS,
    client_ssl_context,
    local_name,
    namespace_of,
    qn,
    saslname,
    stream_header,
    xml_attr_escape,
)


class AsyncStreamClosed(Exception):
    pass


class AsyncStream:
    """One client connection. A background task reads and parses; ``elements`` holds the
    top-level children of the server's current stream, ``data`` every byte received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str):
        self.reader, self.writer, self.domain = reader, writer, domain
        self.data = bytearray()
        self.elements: list[ET.Element] = []
        self.closed = False  # the peer closed the connection (EOF or reset)
        self.stream_closed = False  # the peer sent </stream:stream>
        self.features: ET.Element | None = None
        self.jid: str | None = None
        self._cursor = 0
        self._ids = 0
        # Called with each top-level element as it arrives; one it returns True for is not kept.
        self.on_element: Callable[[ET.Element], bool] | None = None
        self._changed = asyncio.Event()
        self._reset_parser()
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # -- connecting ----------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        domain: str,
        cafile=None,
        direct_tls: bool = True,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> "AsyncStream":
        """TCP (and, with ``direct_tls``, TLS) to ``host:port`` from ``source`` (an address to
        bind, such as 127.1.2.3)."""
        ctx: ssl.SSLContext | None = client_ssl_context(cafile) if direct_tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=ctx,
                server_hostname=domain if ctx else None,
                local_addr=(source, 0) if source else None,
            ),
            timeout,
        )
        return cls(reader, writer, domain)

    def _reset_parser(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.elements = []
        self._cursor = 0
        self.stream_closed = False

    async def _read_loop(self) -> None:
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                self.data += chunk
                self._feed(chunk)
                self._changed.set()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    def _feed(self, chunk: bytes) -> None:
        try:
            self._parser.feed(chunk)
            for event, elem in self._parser.read_events():
                if event == "start":
                    if self._depth == 0:
                        self._root = elem
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self.stream_closed = True
                    elif self._depth == 1:
                        if self.on_element is None or not self.on_element(elem):
                            self.elements.append(elem)
                        # The stream element would otherwise keep every stanza ever received.
                        with contextlib.suppress(ValueError):
                            self._root.remove(elem)
        except ET.ParseError:
            pass

    def trim(self) -> None:
        """Forget the elements already consumed by ``wait_for`` (for long-running clients)."""
        del self.elements[: self._cursor]
        self._cursor = 0

    # -- sending and receiving -----------------------------------------------

    def next_id(self, prefix: str = "a") -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    async def send(self, data: str | bytes, timeout: float = 10.0) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    def send_nowait(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def wait_for(
        self, predicate: Callable[[ET.Element], bool] | str, timeout: float = 10.0, what: str = ""
    ) -> ET.Element:
        """The next not-yet-consumed top-level element matching ``predicate`` (or a tag)."""
        if isinstance(predicate, str):
            tag = predicate
            what = what or tag
            predicate = lambda e: e.tag == tag  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.elements):
                elem = self.elements[self._cursor]
                self._cursor += 1
                if predicate(elem):
                    return elem
            if self.closed or self.stream_closed:
                raise AsyncStreamClosed(
                    f"stream closed while waiting for {what or 'an element'}; stream error: {self.stream_error()}; "
                    f"received: {self.text[-800:]}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing matching {what or 'predicate'} within {timeout}s: {self.text[-800:]}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def read_until_closed(self, timeout: float = 10.0) -> str:
        """Wait until the server closes the connection (EOF or reset); returns ``text``."""
        await asyncio.wait_for(asyncio.shield(self._reader_task), timeout)
        return self.text

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the server to close the connection; True if it did."""
        if self.closed:
            return True
        done, _ = await asyncio.wait({self._reader_task}, timeout=timeout)
        return bool(done) or self.closed

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def stream_error(self) -> str | None:
        for elem in self.elements:
            if elem.tag == qn(STREAM_NS, "error"):
                for child in elem:
                    if namespace_of(child.tag) == STREAM_ERR_NS and local_name(child.tag) != "text":
                        return local_name(child.tag)
        m = re.search(r"<([A-Za-z-]+)\s+xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]", self.text)
        return m.group(1) if m and m.group(1) != "text" else None

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task
        self.writer.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)

    def abort(self) -> None:
        """Drop the connection at once (no closing tag)."""
        self._reader_task.cancel()
        transport = self.writer.transport
        with contextlib.suppress(Exception):
            transport.abort()

    # -- XMPP ------------------------------------------------------------------

    async def open_stream(self, timeout: float = 10.0) -> ET.Element:
        self._reset_parser()
        await self.send(stream_header(self.domain))
        self.features = await self.wait_for(qn(STREAM_NS, "features"), timeout)
        return self.features

    async def auth_scram(self, username: str, password: str, timeout: float = 20.0) -> tuple[bool, str | None]:
        """SCRAM-SHA-256; (True, None) on success, else (False, SASL condition)."""
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={saslname(username)},r={cnonce}"
        await self.send(
            f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>"
            f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>"
        )
        sasl = lambda e: namespace_of(e.tag) == SASL_NS  # noqa: E731
        answer = await self.wait_for(sasl, timeout, "SASL challenge")
        if answer.tag != qn(SASL_NS, "challenge"):
            return False, _condition(answer)
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
        answer = await self.wait_for(sasl, timeout, "SASL outcome")
        if answer.tag == qn(SASL_NS, "challenge"):
            await self.send(f"<response xmlns='{SASL_NS}'/>")
            answer = await self.wait_for(sasl, timeout, "SASL outcome")
        if answer.tag == qn(SASL_NS, "success"):
            return True, None
        return False, _condition(answer)

    async def bind(self, resource: str | None = None, timeout: float = 10.0) -> str:
        iq_id = self.next_id("bind")
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(f"<iq type='set' id='{iq_id}'><bind xmlns='{BIND_NS}'>{res}</bind></iq>")
        answer = await self.wait_for(lambda e: e.get("id") == iq_id, timeout, "bind result")
        jid = answer.find(f"{qn(BIND_NS, 'bind')}/{qn(BIND_NS, 'jid')}")
        if answer.get("type") != "result" or jid is None:
            raise AssertionError(f"bind failed: {ET.tostring(answer)!r}")
        self.jid = jid.text
        return self.jid

    async def login(self, localpart: str, password: str, resource: str | None = None, timeout: float = 20.0) -> str:
        """Open the stream (the connection must be TLS already), SCRAM-SHA-256, bind."""
        await self.open_stream(timeout)
        ok, cond = await self.auth_scram(localpart, password, timeout)
        if not ok:
            raise AssertionError(f"SCRAM-SHA-256 failed for {localpart}: {cond}")
        await self.open_stream(timeout)
        return await self.bind(resource, timeout)

    async def ping(self, timeout: float = 10.0) -> float:
        """A ping to the server; returns the round-trip time in seconds."""
        iq_id = self.next_id("ping")
        started = time.monotonic()
        await self.send(f"<iq type='get' id='{iq_id}' to='{self.domain}'><ping xmlns='{PING_NS}'/></iq>")
        reply = await self.wait_for(
            lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == iq_id, timeout, f"answer to {iq_id}"
        )
        if reply.get("type") != "result":
            raise AssertionError(f"ping failed: {ET.tostring(reply)!r}")
        return time.monotonic() - started

    def received(self, tag: str = "message") -> list[ET.Element]:
        """Every top-level element with this local name in the jabber:client namespace
        received on the current stream (consumed or not)."""
        return [e for e in self.elements if e.tag == qn(CLIENT_NS, tag)]

    async def message(self, to: str, body: str, msg_id: str, mtype: str = "chat") -> None:
        await self.send(
            f"<message to='{xml_attr_escape(to)}' type='{mtype}' id='{msg_id}'><body>{body}</body></message>"
        )


def _condition(elem: ET.Element) -> str | None:
    return next((local_name(c.tag) for c in elem if local_name(c.tag) != "text"), None)


async def login(
    server, user, resource: str | None = None, *, source: str | None = None, timeout: float = 20.0
) -> AsyncStream:
    """A logged-in stream over direct TLS to ``server`` (a harness server object)."""
    stream = await AsyncStream.connect(
        server.host, server.tls_port, domain=server.domain, cafile=server.cert_path, source=source, timeout=timeout
    )
    try:
        await stream.login(user.localpart, user.password, resource, timeout)
    except BaseException:
        await stream.close()
        raise
    return stream


def read_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))

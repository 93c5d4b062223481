"""XEP-0065 SOCKS5 Bytestreams proxy on proxy.localhost: found through disco, its network
address given to local users, a file sent from one slixmpp client to another through it
with slixmpp's own XEP-0065 plugin, and the rest with plain sockets: activation errors
(§5.3.5), early data kept for the relay, a third party refused, the byte limit cutting a
transfer off, the per-user limit, the pending timeout, malformed SOCKS5, and a user of
another host refused (`allowed = "local"`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import types
import uuid

import pytest

from harness import DISCO_INFO_NS, DISCO_ITEMS_NS, connect_client, session

NS = "http://jabber.org/protocol/bytestreams"
PROXY = "proxy.localhost"
OTHER_HOST = "other.localhost"
BYTE_LIMIT = 1024 * 1024

SERVER_CONFIG = {
    "extra_hosts": [OTHER_HOST],
    "host_extra": f"""
[host.proxy65]
address = "127.0.0.1:0"
max_bytes_per_transfer = {BYTE_LIMIT}
max_transfers_per_user = 2
pending_timeout_secs = 2
""",
}


def dst_addr(sid: str, requester: str, target: str) -> str:
    return hashlib.sha1((sid + requester + target).encode()).hexdigest()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the peer closes."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def socks_connect(address: tuple[str, int], dst: str) -> tuple[socket.socket, int]:
    """A SOCKS5 CONNECT to `dst` (port 0); the socket and the reply code."""
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(dst)]) + dst.encode() + b"\x00\x00")
    head = recv_exact(s, 5)
    bound = recv_exact(s, head[4] + 2)
    if head[1] == 0:
        # BND.ADDR echoes DST.ADDR, BND.PORT is 0 (§5.3.2).
        assert head[3] == 3 and bound == dst.encode() + b"\x00\x00"
    return s, head[1]


async def streamhost(client) -> tuple[str, int]:
    reply = await client.iq(PROXY, "get", f"<query xmlns='{NS}'/>")
    assert reply["type"] == "result", reply
    (host,) = list(reply.xml.iter(f"{{{NS}}}streamhost"))
    assert host.get("jid") == PROXY
    return host.get("host"), int(host.get("port"))


async def activate(client, sid: str, target: str):
    return await client.iq(PROXY, "set", f"<query xmlns='{NS}' sid='{sid}'><activate>{target}</activate></query>")


def condition(iq) -> str | None:
    return iq["error"]["condition"] if iq["type"] == "error" else None


async def pair(client, target: str, sid: str | None = None):
    """Two connections of one bytestream (as target and requester would open them)."""
    sid = sid or uuid.uuid4().hex
    address = await streamhost(client)
    dst = dst_addr(sid, str(client.boundjid.full), target)
    t, code_t = socks_connect(address, dst)
    r, code_r = socks_connect(address, dst)
    assert (code_t, code_r) == (0, 0)
    return sid, t, r


async def test_disco_lists_the_proxy(server, alice):
    async with session(server, alice) as c:
        items = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert PROXY in {i.get("jid") for i in items.xml.iter(f"{{{DISCO_ITEMS_NS}}}item")}
        info = await c.iq(PROXY, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        identities = {(i.get("category"), i.get("type")) for i in info.xml.iter(f"{{{DISCO_INFO_NS}}}identity")}
        assert ("proxy", "bytestreams") in identities
        assert NS in {f.get("var") for f in info.xml.iter(f"{{{DISCO_INFO_NS}}}feature")}


async def test_streamhost_is_the_listening_address(server, alice):
    async with session(server, alice) as c:
        host, port = await streamhost(c)
        assert host == "127.0.0.1" and port > 0
        socket.create_connection((host, port), timeout=5).close()


async def test_a_file_goes_through_with_slixmpps_plugin(server, alice, bob):
    data = os.urandom(200 * 1024)
    async with session(server, alice, plugins=["xep_0065"]) as a, session(server, bob, plugins=["xep_0065"]) as b:
        b.plugin["xep_0065"].auto_accept = True
        received = bytearray()
        closed = asyncio.Event()
        b.add_event_handler("socks5_data", received.extend)
        b.add_event_handler("socks5_closed", lambda _exc: closed.set())

        stream = await a.plugin["xep_0065"].handshake(b.boundjid.full, timeout=10)
        assert stream is not None, "no bytestream through the proxy"
        assert PROXY in {str(j) for j in a.plugin["xep_0065"]._proxies}
        for i in range(0, len(data), 16384):
            await stream.write(data[i : i + 16384])
        deadline = time.monotonic() + 15
        while len(received) < len(data) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stream.transport.close()
        await asyncio.wait_for(closed.wait(), 10)
        assert len(received) == len(data)
        assert bytes(received) == data


async def test_activation_errors_then_relay_both_ways(server, alice, bob):
    target = bob.full("phone")
    async with session(server, alice) as c:
        address = await streamhost(c)
        sid = uuid.uuid4().hex
        dst = dst_addr(sid, str(c.boundjid.full), target)

        t, code = socks_connect(address, dst)
        assert code == 0
        # Only one party connected: not-allowed (§5.3.5).
        assert condition(await activate(c, sid, target)) == "not-allowed"
        r, code = socks_connect(address, dst)
        assert code == 0
        # A third connection for the same bytestream is refused (RFC 1928 X'02').
        third, code = socks_connect(address, dst)
        assert code == 2
        third.close()

        # Early data is kept for after activation.
        t.sendall(b"from the target, early")
        assert condition(await activate(c, "wrong-" + sid, target)) == "item-not-found"
        assert condition(await activate(c, sid, bob.full("laptop"))) == "item-not-found"
        assert condition(await c.iq(PROXY, "set", f"<query xmlns='{NS}'><activate>{target}</activate></query>")) == "bad-request"
        assert condition(await c.iq(PROXY, "set", f"<query xmlns='{NS}' sid='{sid}'/>")) == "bad-request"
        assert condition(await activate(c, sid, "@not a jid")) == "jid-malformed"

        ok = await activate(c, sid, target)
        assert ok["type"] == "result", ok
        # Activated once: again is item-not-found.
        assert condition(await activate(c, sid, target)) == "item-not-found"

        r.settimeout(5)
        assert recv_exact(r, 22) == b"from the target, early"
        r.sendall(b"and back")
        t.settimeout(5)
        assert recv_exact(t, 8) == b"and back"
        r.close()
        assert recv_all(t) == b""
        t.close()


async def test_the_byte_limit_cuts_a_transfer_off(server, alice, bob):
    async with session(server, alice) as c:
        sid, t, r = await pair(c, bob.full("phone"))
        assert (await activate(c, sid, bob.full("phone")))["type"] == "result"
        payload = os.urandom(BYTE_LIMIT + 512 * 1024)

        async def send():
            def run():
                try:
                    r.sendall(payload)
                except OSError:
                    pass  # closed at the limit

            await asyncio.to_thread(run)

        sender = asyncio.create_task(send())
        got = await asyncio.to_thread(recv_all, t, 15.0)
        await sender
        assert len(got) == BYTE_LIMIT
        assert got == payload[:BYTE_LIMIT]
        r.close()
        t.close()


async def test_transfers_per_user_are_limited(server, alice, bob):
    async with session(server, alice) as c:
        sockets = []
        for n in range(3):
            sid, t, r = await pair(c, bob.full(f"r{n}"))
            sockets += [t, r]
            reply = await activate(c, sid, bob.full(f"r{n}"))
            if n < 2:
                assert reply["type"] == "result", reply
            else:
                assert condition(reply) == "resource-constraint"
        for s in sockets:
            s.close()
        # Once the transfers end, there is room again.
        deadline = time.monotonic() + 5
        while True:
            sid, t, r = await pair(c, bob.full("again"))
            reply = await activate(c, sid, bob.full("again"))
            t.close()
            r.close()
            if reply["type"] == "result" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert reply["type"] == "result", reply


async def test_a_lone_connection_times_out(server, alice, bob):
    async with session(server, alice) as c:
        address = await streamhost(c)
        s, code = socks_connect(address, dst_addr("lonely", str(c.boundjid.full), bob.full("x")))
        assert code == 0
        started = time.monotonic()
        assert await asyncio.to_thread(recv_all, s, 10.0) == b""
        assert 1.0 <= time.monotonic() - started <= 6.0
        s.close()


async def test_malformed_socks5_is_closed(server, alice):
    async with session(server, alice) as c:
        address = await streamhost(c)
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    # Closed unanswered; with the rest of the request unread, the close may be a reset.
    try:
        assert recv_all(s, 5.0) == b""
    except ConnectionResetError:
        pass
    s.close()
    # Only username/password offered: no acceptable method.
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"\x05\x01\x02")
    assert recv_all(s, 5.0) == b"\x05\xff"
    s.close()
    # CONNECT to an IP address: address type not supported.
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert recv_all(s, 5.0)[:2] == b"\x05\x08"
    s.close()


async def test_a_user_of_another_host_is_refused(server):
    carol = types.SimpleNamespace(jid=f"carol-{uuid.uuid4().hex[:8]}@{OTHER_HOST}", password="pw-" + uuid.uuid4().hex[:12])
    res = server.user("add", carol.jid, "--password", carol.password)
    assert res.returncode == 0, res.stderr
    other = types.SimpleNamespace(
        host=server.host,
        c2s_port=server.c2s_port,
        tls_port=server.tls_port,
        cert_path=server.data_dir / "certs" / f"{OTHER_HOST}.pem",
    )
    c = await connect_client(other, carol.jid, carol.password)
    try:
        reply = await c.iq(PROXY, "get", f"<query xmlns='{NS}'/>")
        assert condition(reply) == "forbidden"
        assert reply["error"]["type"] == "auth"
        denied = await activate(c, "sid", f"someone@{OTHER_HOST}/r")
        assert condition(denied) == "forbidden"
    finally:
        await c.close()

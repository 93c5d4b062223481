"""The built-in STUN/TURN server (RFC 8489/8656), switched on with one `[turn]` section: the
host's external service discovery (XEP-0215) lists it with TURN REST API credentials;
**coturn's `turnutils_uclient`** allocates with them and relays UDP between two allocations
without loss; **aioice** (aiortc's STUN/TURN client) gets its mapped address by a STUN
binding, allocates, and exchanges datagrams with a plain UDP peer through the relay; wrong,
expired and made-up credentials are refused; the per-user allocation quota answers 486; a
peer in `denied_peers` is never relayed to or from; a TURN port another process holds stops
the server at start, saying why, instead of discovery announcing a server that is not there."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import shutil
import subprocess
import time

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from conftest import ROOKERY_BIN
from harness import RookeryServer, free_udp_port, session

NS = "urn:xmpp:extdisco:2"
SECRET = "the built-in server's secret"
PER_USER = 8


TURN_PORT = free_udp_port()
RELAY_LOW = 42000 + (TURN_PORT % 15000)

SERVER_CONFIG = {
    "extra_toml": f"""
[turn]
enabled = true
address = "127.0.0.1:{TURN_PORT}"
secret = "{SECRET}"
relay_min_port = {RELAY_LOW}
relay_max_port = {RELAY_LOW + 300}
max_allocations_per_user = {PER_USER}
allow_loopback_peers = true
denied_peers = ["127.0.0.2/32"]
"""
}


def _password(username: str, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def _services(iq) -> list[dict[str, str]]:
    return [dict(s.attrib) for s in iq.xml.iter(f"{{{NS}}}service")]


async def _credentials(server, user) -> tuple[str, str]:
    async with session(server, user) as c:
        reply = await c.iq(server.domain, "get", f"<services xmlns='{NS}' type='turn'/>")
    (turn,) = _services(reply)
    return turn["username"], turn["password"]


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait((data, addr))


async def _allocate(username: str, password: str):
    return await asyncio.wait_for(
        create_turn_endpoint(_Inbox, server_addr=("127.0.0.1", TURN_PORT), username=username, password=password),
        10,
    )


def _error_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    return response.attributes.get("ERROR-CODE", (None,))[0]


async def test_discovery_lists_the_builtin_server(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<services xmlns='{NS}'/>")
    assert reply["type"] == "result", reply
    services = {s["type"]: s for s in _services(reply)}
    assert set(services) == {"stun", "turn"}
    for s in services.values():
        assert (s["host"], s["port"], s["transport"]) == ("127.0.0.1", str(TURN_PORT), "udp")
    turn = services["turn"]
    assert turn["restricted"] in ("1", "true")
    expiry, user = turn["username"].split(":", 1)
    assert user == alice.jid and int(expiry) > time.time()
    assert turn["password"] == _password(turn["username"])


async def test_stun_binding_returns_the_mapped_address():
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transport.sendto(bytes(request), ("127.0.0.1", TURN_PORT))
        data, _ = await asyncio.wait_for(proto.queue.get(), 5)
        response = stun.parse_message(data)
        assert response.message_class == stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_turnutils_uclient_relays_between_two_allocations(server, alice):
    if shutil.which("turnutils_uclient") is None:
        pytest.fail("these tests need coturn's turnutils_uclient (test.sh installs coturn)", pytrace=False)
    username, password = await _credentials(server, alice)
    # -y: client to client, two allocations relaying to each other; 20 messages of 400 bytes.
    ok = subprocess.run(
        ["turnutils_uclient", "-u", username, "-w", password, "-p", str(TURN_PORT), "-n", "20", "-m", "1",
         "-l", "400", "-y", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    out = ok.stdout + ok.stderr
    assert ok.returncode == 0, out[-3000:]
    assert "Total lost packets 0" in out, out[-3000:]
    refused = subprocess.run(
        ["turnutils_uclient", "-u", username, "-w", _password(username, "not the secret"), "-p", str(TURN_PORT),
         "-n", "1", "-m", "1", "-l", "100", "-y", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0, refused.stdout[-2000:]


async def test_a_relay_carries_datagrams_both_ways(server, alice):
    username, password = await _credentials(server, alice)
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
    transport, client = await _allocate(username, password)
    try:
        relayed = transport.get_extra_info("sockname")
        assert relayed[0] == "127.0.0.1" and RELAY_LOW <= relayed[1] <= RELAY_LOW + 300
        peer_addr = peer_transport.get_extra_info("sockname")
        payload = bytes(range(256)) * 4
        transport.sendto(payload, peer_addr)
        data, came_from = await asyncio.wait_for(peer.queue.get(), 5)
        assert data == payload and came_from == relayed, "the peer sees the relayed address"
        peer_transport.sendto(b"answer", relayed)
        data, came_from = await asyncio.wait_for(client.queue.get(), 5)
        assert data == b"answer" and came_from == peer_addr
    finally:
        transport.close()
        peer_transport.close()


async def test_bad_and_expired_credentials_are_refused(server, alice):
    username, password = await _credentials(server, alice)
    with pytest.raises(stun.TransactionFailed) as wrong:
        await _allocate(username, password[:-2] + "x=")
    assert _error_code(wrong.value) == 401
    past = f"{int(time.time()) - 60}:{alice.jid}"
    with pytest.raises(stun.TransactionFailed) as expired:
        await _allocate(past, _password(past))
    assert _error_code(expired.value) == 401
    with pytest.raises(stun.TransactionFailed) as nobody:
        await _allocate(alice.jid, _password(alice.jid))
    assert _error_code(nobody.value) == 401


async def test_the_per_user_quota_and_its_release(server, new_user):
    user = new_user("quota")
    username, password = await _credentials(server, user)
    held = [await _allocate(username, password) for _ in range(PER_USER)]
    try:
        with pytest.raises(stun.TransactionFailed) as over:
            await _allocate(username, password)
        assert _error_code(over.value) == 486, "Allocation Quota Reached"
        # Another user is not held back by this one's quota.
        other = new_user("quota-other")
        o_user, o_pass = await _credentials(server, other)
        t, _ = await _allocate(o_user, o_pass)
        t.close()
    finally:
        for t, _ in held:
            t.close()
    # Released allocations (a refresh with lifetime 0, sent on close) free the places.
    deadline = time.monotonic() + 10
    while True:
        try:
            t, _ = await _allocate(username, password)
            t.close()
            break
        except stun.TransactionFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_a_denied_peer_is_never_relayed(server, alice):
    username, password = await _credentials(server, alice)
    loop = asyncio.get_running_loop()
    denied_t, denied = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.2", 0))
    allowed_t, allowed = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
    transport, client = await _allocate(username, password)
    try:
        relayed = transport.get_extra_info("sockname")
        transport.sendto(b"to the denied", denied_t.get_extra_info("sockname"))
        transport.sendto(b"to the allowed", allowed_t.get_extra_info("sockname"))
        data, _ = await asyncio.wait_for(allowed.queue.get(), 5)
        assert data == b"to the allowed"
        denied_t.sendto(b"from the denied", relayed)
        allowed_t.sendto(b"from the allowed", relayed)
        data, _ = await asyncio.wait_for(client.queue.get(), 5)
        assert data == b"from the allowed"
        await asyncio.sleep(0.5)
        assert denied.queue.empty(), "nothing reached the denied peer"
        assert client.queue.empty(), "nothing from the denied peer reached the client"
    finally:
        transport.close()
        denied_t.close()
        allowed_t.close()


def test_a_turn_port_in_use_stops_the_server(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        srv = RookeryServer(
            ROOKERY_BIN, tmp_path, extra_toml=f'[turn]\nenabled = true\naddress = "127.0.0.1:{port}"'
        )
        error = srv.start_failure()
        assert f"cannot listen on 127.0.0.1:{port} (turn.address)" in error, error

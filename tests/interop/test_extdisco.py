"""XEP-0215 External Service Discovery: a local user gets the host's STUN and TURN services
with TURN REST API credentials (username `expiry:bare JID`, password base64(HMAC-SHA1(secret,
username))), filtered by type and renewed with `<credentials/>`; and **coturn** (Debian's,
started here with `use-auth-secret` and the same secret) accepts an allocation with those
credentials (`turnutils_uclient` relays through it) and refuses a made-up password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from harness import DISCO_INFO_NS, free_udp_port, session

NS = "urn:xmpp:extdisco:2"
SECRET = "a secret the TURN server shares"
TTL = 3600


TURN_PORT = free_udp_port()

SERVER_CONFIG = {
    "host_extra": f"""
[host.extdisco]
secret = "{SECRET}"
credential_ttl_secs = {TTL}
[[host.extdisco.services]]
type = "stun"
host = "127.0.0.1"
port = {TURN_PORT}
transport = "udp"
[[host.extdisco.services]]
type = "turn"
host = "127.0.0.1"
port = {TURN_PORT}
transport = "udp"
name = "coturn"
"""
}


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("the XEP-0215 tests need coturn (Debian package `coturn`; test.sh installs it)", pytrace=False)
    work = tmp_path_factory.mktemp("coturn")
    low = 41000 + (TURN_PORT % 20000)
    proc = subprocess.Popen(
        [
            binary, "--listening-ip=127.0.0.1", f"--listening-port={TURN_PORT}", "--relay-ip=127.0.0.1",
            "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=localhost",
            "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
            f"--min-port={low}", f"--max-port={low + 200}",
            f"--log-file={work / 'turn.log'}", f"--pidfile={work / 'turn.pid'}", f"--userdb={work / 'turn.db'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        assert proc.poll() is None, "turnserver exited at once"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _services(iq) -> list[dict[str, str]]:
    return [dict(s.attrib) for s in iq.xml.iter(f"{{{NS}}}service")]


def _password(username: str) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def test_advertised_on_the_host(server, alice):
    async with session(server, alice) as c:
        info = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        assert NS in {f.get("var") for f in info.xml.iter(f"{{{DISCO_INFO_NS}}}feature")}


async def test_services_with_turn_credentials(server, alice):
    async with session(server, alice) as c:
        before = int(time.time())
        reply = await c.iq(server.domain, "get", f"<services xmlns='{NS}'/>")
        assert reply["type"] == "result", reply
        services = {s["type"]: s for s in _services(reply)}
        assert set(services) == {"stun", "turn"}
        stun, turn = services["stun"], services["turn"]
        assert (stun["host"], stun["port"], stun.get("transport")) == ("127.0.0.1", str(TURN_PORT), "udp")
        assert "username" not in stun and "restricted" not in stun
        assert turn["restricted"] in ("1", "true") and turn["name"] == "coturn"
        expiry, user = turn["username"].split(":", 1)
        assert user == alice.jid
        assert before + TTL - 5 <= int(expiry) <= int(time.time()) + TTL + 5
        assert turn["password"] == _password(turn["username"])
        assert turn["expires"].endswith("Z")

        only_stun = await c.iq(server.domain, "get", f"<services xmlns='{NS}' type='stun'/>")
        assert [s["type"] for s in _services(only_stun)] == ["stun"]


async def test_credentials_request_and_unknown_service(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(
            server.domain, "get", f"<credentials xmlns='{NS}'><service host='127.0.0.1' type='turn'/></credentials>"
        )
        assert reply["type"] == "result", reply
        (turn,) = _services(reply)
        assert turn["password"] == _password(turn["username"])
        missing = await c.iq(
            server.domain, "get", f"<credentials xmlns='{NS}'><service host='elsewhere.example' type='turn'/></credentials>"
        )
        assert missing["type"] == "error" and missing["error"]["condition"] == "item-not-found"
        wrong = await c.iq(server.domain, "set", f"<services xmlns='{NS}'/>")
        assert wrong["type"] == "error" and wrong["error"]["condition"] == "bad-request"


def _allocate(username: str, password: str) -> subprocess.CompletedProcess:
    """A TURN allocation through coturn, and a few packets relayed between two clients."""
    return subprocess.run(
        ["turnutils_uclient", "-u", username, "-w", password, "-p", str(TURN_PORT), "-n", "1", "-m", "1",
         "-l", "100", "-y", "127.0.0.1"],
        capture_output=True, text=True, timeout=30,
    )


async def test_coturn_accepts_the_credentials(server, alice, coturn):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<services xmlns='{NS}' type='turn'/>")
        (turn,) = _services(reply)
    ok = _allocate(turn["username"], turn["password"])
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "Total lost packets 0" in ok.stdout + ok.stderr
    refused = _allocate(turn["username"], _password(turn["username"] + "x"))
    assert refused.returncode != 0, refused.stdout[-2000:]

"""A client's TLS against a second TLS implementation: OpenSSL's ``s_client``.

After rustls's handshake the server protects the records of a client stream, and of an
HTTPS connection, itself (``net::tls_records``). These tests drive whole sessions through
``openssl s_client``: XMPP over STARTTLS and direct TLS with every TLS 1.3 suite and the
TLS 1.2 AEAD suites, asking on TLS 1.3 for key updates in both directions (``K``: update
and request one back; ``k``: update only) in the middle of the stream and checking that
what follows still goes both ways; and HTTPS requests on one kept-alive connection.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import threading
import time

import pytest

from harness import unique_localpart

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (test.sh installs it)")

HEADER = (
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='{domain}' version='1.0'>\n"
)


class SClient:
    """``openssl s_client`` with its output gathered by a thread; every wait is bounded."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(
            ["openssl", "s_client", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.out = b""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            with self.lock:
                self.out += chunk

    def text(self) -> str:
        with self.lock:
            return self.out.decode("utf-8", "replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} (x{count}) from s_client; it printed:\n{self.text()[-4000:]}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.reader.join(timeout=5)


SUITES = [
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], True, id="tls13-aes128"),
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], True, id="tls13-aes256"),
    pytest.param(["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"], True, id="tls13-chacha"),
    pytest.param(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], False, id="tls12-aes128"),
    pytest.param(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"], False, id="tls12-aes256"),
    pytest.param(["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"], False, id="tls12-chacha"),
]


@pytest.mark.parametrize("direct_tls", [pytest.param(False, id="starttls"), pytest.param(True, id="direct")])
@pytest.mark.parametrize("suite,tls13", SUITES)
def test_session_over_openssl(server, suite, tls13, direct_tls):
    user = server.add_user(unique_localpart("ossl"))
    if direct_tls:
        args = ["-connect", f"127.0.0.1:{server.tls_port}", "-alpn", "xmpp-client"]
    else:
        args = ["-connect", f"127.0.0.1:{server.c2s_port}", "-starttls", "xmpp", "-xmpphost", server.domain]
    client = SClient([*args, "-servername", server.domain, "-CAfile", str(server.cert_path), *suite])
    try:
        client.wait_for(r"Verify return code: 0 \(ok\)")
        text = client.text()
        assert ("TLSv1.3" if tls13 else "TLSv1.2") in text, text[-3000:]
        client.send(HEADER.format(domain=server.domain))
        client.wait_for(r"</stream:features>")
        plain = base64.b64encode(f"\0{user.localpart}\0{user.password}".encode()).decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>\n")
        client.wait_for(r"<success")
        if tls13:
            # Update our keys and ask the server to update its own (RFC 8446 §4.6.3).
            client.send("K\n")
            client.wait_for(r"KEYUPDATE")
        client.send(HEADER.format(domain=server.domain))
        client.wait_for(r"</stream:features>", count=2)
        client.send(
            "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>ossl</resource></bind></iq>\n"
        )
        text = client.wait_for(r"<jid>[^<]+</jid>")
        assert f"<jid>{user.localpart}@{server.domain}/ossl</jid>" in text
        if tls13:
            client.send("k\n")
            client.wait_for(r"KEYUPDATE", count=2)
        # A stanza larger than one TLS record each way: a message to ourselves.
        body = "x" * 40000
        client.send(
            f"<message to='{user.localpart}@{server.domain}/ossl' id='m1' type='chat'><body>{body}</body></message>\n"
        )
        text = client.wait_for(r"</message>", timeout=20)
        assert body in text
        client.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>\n")
        client.wait_for(r"id=['\"]p1['\"]")
        client.send("</stream:stream>\n")
        client.wait_for(r"</stream:stream>")
        text = client.text()
        assert "alert" not in text.lower(), text[-3000:]
        assert "error" not in text.lower().split("verify return code")[-1], text[-3000:]
    finally:
        client.close()


@pytest.mark.parametrize("suite,tls13", [SUITES[0], SUITES[2], SUITES[3]])
def test_https_keep_alive_over_openssl(server, suite, tls13):
    """HTTPS connections use the same record layer: requests on one kept-alive connection,
    with key updates between them on TLS 1.3."""
    client = SClient(
        [
            "-connect", f"127.0.0.1:{server.https_port}", "-servername", server.domain,
            "-alpn", "http/1.1", "-CAfile", str(server.cert_path), *suite,
        ]
    )
    request = f"GET /.well-known/host-meta HTTP/1.1\r\nHost: {server.domain}:{server.https_port}\r\n\r\n"
    try:
        client.wait_for(r"Verify return code: 0 \(ok\)")
        for i in range(1, 4):
            client.send(request)
            client.wait_for(r"HTTP/1\.1 200", count=i)
            client.wait_for(r"</XRD>", count=i)
            if tls13:
                client.send("K\n" if i % 2 else "k\n")
                client.wait_for(r"KEYUPDATE", count=i)
        text = client.text()
        assert "xmpp-websocket" in text
        assert "alert" not in text.lower(), text[-3000:]
    finally:
        client.close()

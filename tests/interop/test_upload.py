"""HTTP File Upload (XEP-0363) against the real binary: a slixmpp client asks the upload
service for slots over XMPP, then the file goes up and comes back over HTTPS (the generated
certificate) with the standard library's HTTP client: a round trip, a wrong size, an expired
slot, a user over the daily quota, a file over the size limit."""

from __future__ import annotations

import asyncio
import http.client
import socket
import urllib.parse
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from harness import client_ssl_context, session

NS = "urn:xmpp:http:upload:0"

SERVER_CONFIG = {
    "host_extra": "[host.upload]\nmax_file_size = 4096\nquota_per_user_per_day = 6000\nslot_lifetime_secs = 2\n",
}


def service(server) -> str:
    return f"upload.{server.domain}"


async def request_slot(client, server, filename: str, size: int, content_type: str = "text/plain"):
    """The slot's (put URL, put headers, get URL), or the IqError."""
    iq = client.make_iq_get(ito=service(server))
    iq.append(ET.fromstring(
        f"<request xmlns='{NS}' filename='{filename}' size='{size}' content-type='{content_type}'/>"
    ))
    reply = await iq.send(timeout=10)
    slot = reply.xml.find(f"{{{NS}}}slot")
    put = slot.find(f"{{{NS}}}put")
    headers = {h.get("name"): (h.text or "") for h in put.findall(f"{{{NS}}}header")}
    return put.get("url"), headers, slot.find(f"{{{NS}}}get").get("url")


def https(server, method: str, url: str, body: bytes | None = None, headers=None):
    """(status, headers, body) of one request to the server's HTTPS listener, with SNI and
    the certificate check for the domain whatever address the URL names."""
    u = urllib.parse.urlsplit(url)
    ctx = client_ssl_context(server.cert_path)

    class Connection(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection((server.host, u.port or 443), timeout=10)
            self.sock = ctx.wrap_socket(raw, server_hostname=server.domain)

    conn = Connection(server.host, u.port or 443, context=ctx, timeout=10)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers={"Host": u.netloc, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def error_of(exc: IqError) -> tuple[str, str, ET.Element | None]:
    err = exc.iq.xml.find("{jabber:client}error")
    cond = next(c.tag.split("}")[1] for c in err if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}")
                and not c.tag.endswith("}text"))
    return err.get("type"), cond, err


async def test_upload_round_trip_and_refusals(server, alice):
    async with session(server, alice, resource="up") as a:
        # Disco advertises the service and its size limit (XEP-0363 §3).
        info = await a.plugin["xep_0030"].get_info(jid=service(server), timeout=10)
        features = info["disco_info"]["features"]
        assert NS in features
        assert b"4096" in ET.tostring(info.xml)

        data = b"hello, world\n" * 10
        put, put_headers, get = await request_slot(a, server, "hello world.txt", len(data))
        assert put.startswith("https://") and get.startswith("https://")
        # Nothing is there before the upload.
        status, _, _ = https(server, "GET", get)
        assert status == 404
        # A wrong size is refused and leaves nothing visible.
        status, _, _ = https(server, "PUT", put, data + b"x", {**put_headers, "Content-Type": "text/plain"})
        assert status in (400, 413), status
        assert https(server, "GET", get)[0] == 404
        status, _, _ = https(server, "PUT", put, data, {**put_headers, "Content-Type": "text/plain"})
        assert status in (200, 201), status
        # The same slot cannot be used twice.
        assert https(server, "PUT", put, data, {**put_headers, "Content-Type": "text/plain"})[0] == 409
        status, headers, body = https(server, "GET", get)
        assert status == 200 and body == data
        assert headers["content-type"].startswith("text/plain")
        assert headers.get("x-content-type-options") == "nosniff"

        # A slot used after it expired is refused.
        put2, h2, get2 = await request_slot(a, server, "late.txt", 5)
        await asyncio.sleep(3)
        assert https(server, "PUT", put2, b"late!", {**h2, "Content-Type": "text/plain"})[0] == 403
        assert https(server, "GET", get2)[0] == 404

        # A tampered signature is refused.
        put3, h3, _ = await request_slot(a, server, "t.txt", 5)
        tampered = put3[:-2] + ("AA" if not put3.endswith("AA") else "BB")
        assert https(server, "PUT", tampered, b"12345", {**h3, "Content-Type": "text/plain"})[0] in (403, 404)

        # Too large a file: not-acceptable with <file-too-large><max-file-size/> (§5).
        with pytest.raises(IqError) as e:
            await request_slot(a, server, "big.bin", 5000)
        etype, cond, err = error_of(e.value)
        assert (etype, cond) == ("modify", "not-acceptable")
        assert err.find(f"{{{NS}}}file-too-large/{{{NS}}}max-file-size").text == "4096"

        # The daily quota: 6000 bytes; 130 + 5 + 5 used or reserved so far, 4000 more fit once.
        await request_slot(a, server, "a.bin", 4000)
        with pytest.raises(IqError) as e:
            await request_slot(a, server, "b.bin", 4000)
        assert error_of(e.value)[:2] == ("wait", "resource-constraint")

"""SIGHUP and `rookery reload`: certificates and log level are read again, a host added is
served, a host no longer listed stops being served (its sessions end with host-gone) and
comes back when listed again, `[limits]` and the live module settings apply, sessions on
other hosts stay connected, and a bad certificate or configuration is logged and changes
nothing."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import signal
import socket
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

from harness import (
    CLIENT_NS,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    PING_NS,
    LoginError,
    RawStream,
    User,
    connect_client,
    login_scram,
    pem_to_der,
    qn,
    session,
    write_self_signed_cert,
)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def served_fingerprint(srv) -> str:
    """SHA-256 of the certificate a new direct TLS connection is shown (not verified: the
    point is to see which one it is)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((srv.host, srv.tls_port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=srv.domain) as tls:
            return fingerprint(tls.getpeercert(binary_form=True))


def wait_for_admin_socket(srv) -> None:
    """The admin socket opens just after the listeners the harness waits for."""
    deadline = time.monotonic() + 10
    while srv.cli("stats").returncode != 0:
        assert time.monotonic() < deadline, "no admin socket"
        time.sleep(0.1)


def hup(srv) -> int:
    """Send SIGHUP; return the log's length before it, to look for what it caused."""
    mark = len(srv.stderr_text())
    srv.proc.send_signal(signal.SIGHUP)
    return mark


async def test_sighup_serves_the_new_certificate_and_keeps_sessions(make_server, tmp_path):
    srv = make_server()
    alice, bob = srv.add_user("alice"), srv.add_user("bob")
    old = fingerprint(pem_to_der(srv.cert_path))
    assert served_fingerprint(srv) == old
    old_ca = tmp_path / "old.pem"
    old_ca.write_bytes(srv.cert_path.read_bytes())

    async with session(srv, alice) as a, session(srv, bob) as b:
        # Replace the certificate and key on disk, as a renewal would.
        write_self_signed_cert(srv.cert_path, srv.key_path, srv.domain)
        new = fingerprint(pem_to_der(srv.cert_path))
        assert new != old
        mark = await asyncio.to_thread(hup, srv)
        line = await asyncio.to_thread(srv.wait_for_log, r"certificates read again", mark)
        assert f"changed: [{srv.domain}]" in line, line
        assert "log level is now" in srv.stderr_text()[mark:]
        assert srv.running, "the server exited on SIGHUP"

        # The sessions established before the reload go on.
        reply = await a.iq(srv.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "result"
        a.send_message(mto=b.boundjid.full, mbody="after the reload", mtype="chat")
        msg = await b.next_message(timeout=5)
        assert msg["body"] == "after the reload"

        # New connections are shown the new certificate, over direct TLS and STARTTLS
        # (the client trusts only the new one: srv.cert_path).
        assert served_fingerprint(srv) == new
        async with session(srv, srv.add_user("carol")) as c:
            assert c.boundjid.bare.startswith("carol")
        # A client that still trusts only the old certificate no longer gets in.
        srv_old = _with_ca(srv, old_ca)
        with pytest.raises(LoginError, match="not trusted|CERTIFICATE_VERIFY_FAILED"):
            await connect_client(srv_old, alice.jid, alice.password, timeout=10)

        reply = await a.iq(srv.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "result"


class _with_ca:
    """The server as seen by a client that trusts ``cafile`` instead of the server's file."""

    def __init__(self, srv, cafile):
        self.host, self.c2s_port, self.tls_port, self.domain = srv.host, srv.c2s_port, srv.tls_port, srv.domain
        self.cert_path = cafile


async def test_sighup_with_a_broken_certificate_keeps_the_old_one(make_server, tmp_path):
    srv = make_server()
    alice = srv.add_user("alice")
    old = fingerprint(pem_to_der(srv.cert_path))
    old_ca = tmp_path / "old.pem"
    old_ca.write_bytes(srv.cert_path.read_bytes())
    async with session(srv, alice) as a:
        srv.cert_path.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        mark = await asyncio.to_thread(hup, srv)
        line = await asyncio.to_thread(srv.wait_for_log, r"certificates not reloaded", mark)
        assert "ERROR" in line and str(srv.cert_path) in line, line
        assert srv.running, "the server exited on SIGHUP with a broken certificate"
        reply = await a.iq(srv.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "result"
        assert served_fingerprint(srv) == old
        async with session(_with_ca(srv, old_ca), alice, resource="second") as second:
            assert second.boundjid.resource == "second"


def test_sighup_applies_the_log_level_and_refuses_a_bad_configuration(make_server, raw_factory):
    srv = make_server()  # log_level = "debug"
    text = srv.config_path.read_text()
    assert 'log_level = "debug"' in text
    srv.config_path.write_text(
        text.replace('log_level = "debug"', 'log_level = "info"').replace(
            "unauthenticated_timeout_secs = 5", "unauthenticated_timeout_secs = 7"
        )
    )
    mark = hup(srv)
    srv.wait_for_log(r'log level is now "info"', mark)
    srv.wait_for_log(r"\[limits\] applied to new connections", mark)
    assert "take effect only after a restart" not in srv.stderr_text()[mark:]
    # Debug lines (such as "client connected") stop.
    after = len(srv.stderr_text())
    stream = raw_factory(srv)
    stream.open_stream()
    stream.close()
    time.sleep(0.5)
    assert " DEBUG " not in srv.stderr_text()[after:], srv.stderr_text()[after:]

    # An invalid configuration is reported and changes nothing.
    srv.config_path.write_text(text.replace('log_level = "debug"', 'log_level = "loud"'))
    mark = hup(srv)
    line = srv.wait_for_log(r"reload failed", mark)
    assert "ERROR" in line and "log_level" in line, line
    assert srv.running
    stream = raw_factory(srv)
    stream.open_stream()
    assert stream.features is not None
    rc, _out, err = srv.stop(signal.SIGTERM, timeout=10)
    assert rc == 0, err[-3000:]


def test_rookery_reload_reports_what_it_applied_and_refuses_a_bad_file(make_server):
    """`rookery reload` does what SIGHUP does, through the admin socket, and prints the
    outcome; an invalid file is a readable error (exit 1) and the server runs on as before;
    without a running server it says so."""
    srv = make_server()
    wait_for_admin_socket(srv)
    text = srv.config_path.read_text()
    srv.config_path.write_text(text.replace('log_level = "debug"', 'log_level = "info"'))
    res = srv.cli("reload")
    assert res.returncode == 0, res.stderr
    assert 'log level is now "info"' in res.stdout, res.stdout
    assert f"changed: [], unchanged: [{srv.domain}]" in res.stdout, res.stdout
    assert "restart" not in res.stdout

    srv.config_path.write_text(text.replace('log_level = "debug"', 'log_level = "loud"'))
    bad = srv.cli("reload")
    assert bad.returncode == 1, bad.stdout
    # The command reads the file first (for the data directory) and names the bad key.
    assert "log_level" in bad.stderr and "loud" in bad.stderr, bad.stderr
    assert srv.running
    srv.config_path.write_text(text)
    again = srv.cli("reload")
    assert again.returncode == 0 and 'log level is now "debug"' in again.stdout, again.stdout + again.stderr

    srv.stop(signal.SIGTERM, timeout=10)
    gone = srv.cli("reload")
    assert gone.returncode == 1 and "not running" in gone.stderr, gone.stderr


OTHER = "other.localhost"


def other_stream(srv) -> RawStream:
    """A client stream to the second host, trusting that host's certificate."""
    return RawStream(srv.host, srv.c2s_port, domain=OTHER, cafile=srv.data_dir / "certs" / f"{OTHER}.pem")


def ping_ok(stream: RawStream) -> None:
    reply = stream.iq(f"<ping xmlns='{PING_NS}'/>", to=stream.domain)
    assert reply.get("type") == "result", reply


def test_a_host_removed_by_reload_is_gone_and_comes_back(make_server):
    srv = make_server(extra_hosts=[OTHER])
    text = srv.config_path.read_text()
    block = f'[[host]]\ndomain = "{OTHER}"\n'
    assert block in text, text
    alice = srv.add_user("alice")
    carol = User("carol", OTHER, "carol-secret")
    assert srv.user("add", carol.jid, "--password", carol.password).returncode == 0
    a = RawStream(srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path)
    c = other_stream(srv)
    streams = [a, c]
    try:
        a.login(alice, "desk")
        c.login(carol, "phone")

        # Removed from the file: its session ends with host-gone (RFC 6120 §4.9.3.7).
        srv.config_path.write_text(text.replace(block, ""))
        mark = hup(srv)
        line = srv.wait_for_log(rf"host {OTHER} removed", mark)
        assert "1 session(s) closed with host-gone" in line, line
        c.read_until_closed(timeout=10)
        assert c.stream_error() == "host-gone", c.text[-2000:]
        assert "take effect only after a restart" not in srv.stderr_text()[mark:]
        # The other host's session goes on.
        ping_ok(a)
        # A new stream to the removed host: host-unknown.
        n = other_stream(srv)
        streams.append(n)
        n.open_stream(wait_features=False)
        n.read_until_closed(timeout=10)
        assert n.stream_error() == "host-unknown", n.text[-2000:]
        # A message to its user is no longer delivered locally.
        a.send(f"<message to='{carol.jid}' id='m1' type='chat'><body>hi</body></message>")
        bounce = a.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("id") == "m1", what="bounce")
        assert bounce.get("type") == "error", bounce

        # An invalid file changes nothing: the host stays removed.
        srv.config_path.write_text(text.replace('log_level = "debug"', 'log_level = "loud"'))
        mark = hup(srv)
        srv.wait_for_log(r"reload failed", mark)
        n2 = other_stream(srv)
        streams.append(n2)
        n2.open_stream(wait_features=False)
        n2.read_until_closed(timeout=10)
        assert n2.stream_error() == "host-unknown", n2.text[-2000:]

        # Listed again: served again, its accounts log in, the other session still on.
        srv.config_path.write_text(text)
        mark = hup(srv)
        srv.wait_for_log(rf"host {OTHER} is served again", mark)
        back = other_stream(srv)
        streams.append(back)
        assert back.login(carol, "again").startswith(carol.jid)
        ping_ok(back)
        ping_ok(a)
        assert srv.running
    finally:
        for st in streams:
            st.close()


def https_request(srv, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request to the server's HTTPS listener, whatever host the URL names (the
    certificate is not checked: the point is the route)."""
    u = urllib.parse.urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(srv.host, srv.https_port, context=ctx, timeout=10)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers={"Host": u.netloc})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_a_host_added_by_reload_is_served_with_its_modules(make_server):
    """A host added to the file is served after `rookery reload`, without a restart: a
    certificate is generated for it, its accounts log in over STARTTLS, its modules answer
    (disco, MUC service domain, HTTP upload through the running HTTPS listener), messages
    cross between the hosts, and the sessions of the other host stay connected."""
    srv = make_server()
    wait_for_admin_socket(srv)
    alice = srv.add_user("alice")
    a = RawStream(srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path)
    streams = [a]
    try:
        a.login(alice, "desk")
        text = srv.config_path.read_text()
        srv.config_path.write_text(text + f'\n[[host]]\ndomain = "{OTHER}"\n')
        res = srv.cli("reload")
        assert res.returncode == 0, res.stderr
        assert f"host {OTHER} added: served with" in res.stdout, res.stdout
        assert "restart" not in res.stdout, res.stdout
        assert (srv.data_dir / "certs" / f"{OTHER}.pem").exists()

        carol = User("carol", OTHER, "carol-secret")
        assert srv.user("add", carol.jid, "--password", carol.password).returncode == 0
        c = other_stream(srv)
        streams.append(c)
        assert c.login(carol, "phone").startswith(carol.jid)
        ping_ok(c)
        info = c.iq(f"<query xmlns='{DISCO_INFO_NS}'/>", to=OTHER)
        assert info.get("type") == "result", ET.tostring(info)
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO_NS}}}feature")}
        assert "urn:xmpp:ping" in features and "jabber:iq:last" in features, features
        items = c.iq(f"<query xmlns='{DISCO_ITEMS_NS}'/>", to=OTHER)
        jids = {i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS_NS}}}item")}
        assert f"conference.{OTHER}" in jids and f"upload.{OTHER}" in jids, jids
        muc = c.iq(f"<query xmlns='{DISCO_INFO_NS}'/>", to=f"conference.{OTHER}")
        assert muc.find(f"{{{DISCO_INFO_NS}}}query/{{{DISCO_INFO_NS}}}feature[@var='http://jabber.org/protocol/muc']") is not None, ET.tostring(muc)

        # Its upload service's HTTP handler is mounted on the running listener.
        data = b"added at runtime\n"
        slot = c.iq(
            f"<request xmlns='urn:xmpp:http:upload:0' filename='a.txt' size='{len(data)}' content-type='text/plain'/>",
            to=f"upload.{OTHER}",
        )
        assert slot.get("type") == "result", ET.tostring(slot)
        ns = "urn:xmpp:http:upload:0"
        put = slot.find(f"{{{ns}}}slot/{{{ns}}}put").get("url")
        get = slot.find(f"{{{ns}}}slot/{{{ns}}}get").get("url")
        status, _ = https_request(srv, "PUT", put, data)
        assert status == 201, status
        status, body = https_request(srv, "GET", get)
        assert status == 200 and body == data, (status, body)

        # Messages cross between the hosts; the first host's session never dropped.
        a.send(f"<message to='{carol.jid}/phone' id='x1' type='chat'><body>welcome</body></message>")
        got = c.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("id") == "x1", what="message")
        assert got.findtext(qn(CLIENT_NS, "body")) == "welcome"
        ping_ok(a)

        # Removed again: retired like a host the server started with.
        srv.config_path.write_text(text)
        res = srv.cli("reload")
        assert f"host {OTHER} removed" in res.stdout, res.stdout
        c.read_until_closed(timeout=10)
        assert c.stream_error() == "host-gone", c.text[-2000:]
        ping_ok(a)
    finally:
        for st in streams:
            st.close()


def test_reload_applies_the_core_limits_to_new_connections(make_server):
    """`[limits]` is applied by a reload: a new stream gets the new stanza size limit (a
    larger stanza ends it with policy-violation), while a stream opened before keeps the
    limits it started with."""
    srv = make_server(max_stanza_bytes=65536)
    wait_for_admin_socket(srv)
    alice, bob = srv.add_user("alice"), srv.add_user("bob")
    before = RawStream(srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path)
    streams = [before]
    try:
        before.login(alice, "old")
        text = srv.config_path.read_text()
        assert "max_stanza_bytes = 65536" in text, text
        srv.config_path.write_text(text.replace("max_stanza_bytes = 65536", "max_stanza_bytes = 8192"))
        res = srv.cli("reload")
        assert res.returncode == 0, res.stderr
        assert "[limits] applied to new connections" in res.stdout, res.stdout
        assert "restart" not in res.stdout, res.stdout
        body = "x" * 20000
        # The stream from before the reload: its 64 KiB limit still holds.
        before.send(f"<message to='{alice.jid}/old' id='big1' type='chat'><body>{body}</body></message>")
        echo = before.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("id") == "big1", what="own message")
        assert len(echo.findtext(qn(CLIENT_NS, "body"))) == len(body)
        # A new stream: the 8 KiB limit.
        after = RawStream(srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path)
        streams.append(after)
        after.login(bob, "new")
        after.send(f"<message to='{alice.jid}' id='big2' type='chat'><body>{body}</body></message>")
        after.read_until_closed(timeout=10)
        assert after.stream_error() == "policy-violation", after.text[-2000:]
        ping_ok(before)
    finally:
        for st in streams:
            st.close()


def test_reload_applies_a_module_limit_to_the_running_server(make_server, raw_factory):
    """A module setting read at each use (here `[limits] max_roster_items`) takes effect on
    reload, for sessions already connected, without a restart; lowering it again applies too."""
    srv = make_server(extra_limits={"max_roster_items": 2})
    wait_for_admin_socket(srv)
    user = srv.add_user("lim")
    stream = raw_factory(srv)
    login_scram(stream, user, "r")

    def add(n: int) -> ET.Element:
        return stream.iq(
            f"<query xmlns='jabber:iq:roster'><item jid='contact{n}@{srv.domain}'/></query>", itype="set"
        )

    assert add(1).get("type") == "result" and add(2).get("type") == "result"
    refused = add(3)
    assert refused.get("type") == "error", ET.tostring(refused)
    assert refused.find(f"{{{CLIENT_NS}}}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}not-allowed") is not None

    text = srv.config_path.read_text()
    assert "max_roster_items = 2" in text
    srv.config_path.write_text(text.replace("max_roster_items = 2", "max_roster_items = 4"))
    res = srv.cli("reload")
    assert res.returncode == 0, res.stderr
    assert "module settings applied: [limits]" in res.stdout, res.stdout
    assert "restart" not in res.stdout, res.stdout
    # The same session, no reconnect: the new limit holds.
    assert add(3).get("type") == "result" and add(4).get("type") == "result"
    assert add(5).get("type") == "error"

    srv.config_path.write_text(text)
    res = srv.cli("reload")
    assert res.returncode == 0 and "module settings applied: [limits]" in res.stdout, res.stdout
    assert add(6).get("type") == "error"
    ping = stream.iq(f"<ping xmlns='{PING_NS}'/>", to=srv.domain)
    assert ping.get("type") == "result"


def test_reload_applies_the_offered_sasl_mechanisms_to_new_streams(make_server, raw_factory):
    """`[sasl] mechanisms` is a live section: after a reload, new streams are offered the new
    list (no restart), and accounts log in with what is offered."""
    srv = make_server()
    wait_for_admin_socket(srv)
    user = srv.add_user("mech")

    def offered() -> list[str]:
        stream = raw_factory(srv)
        stream.open_stream()
        stream.starttls()
        mechanisms = stream.mechanisms()
        stream.close()
        return mechanisms

    assert "PLAIN" in offered() and "SCRAM-SHA-256" in offered()
    text = srv.config_path.read_text()
    srv.config_path.write_text(text + '\n[sasl]\nmechanisms = ["SCRAM-SHA-256"]\n')
    res = srv.cli("reload")
    assert res.returncode == 0, res.stderr
    assert "module settings applied: [sasl]" in res.stdout, res.stdout
    assert "restart" not in res.stdout, res.stdout
    assert offered() == ["SCRAM-SHA-256"]
    stream = raw_factory(srv)
    login_scram(stream, user, "after")
    ping_ok(stream)
    srv.config_path.write_text(text)
    res = srv.cli("reload")
    assert "module settings applied: [sasl]" in res.stdout, res.stdout
    assert "PLAIN" in offered()

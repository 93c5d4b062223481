"""Graceful shutdown on SIGTERM/SIGINT, and restart on the same data dir."""

from __future__ import annotations

import asyncio
import signal
import time

from harness import PING_NS, excerpt, pem_to_der, session


def _read_shutdown(stream) -> None:
    stream.read_until_closed(timeout=5, eof=True)
    assert stream.stream_error() == "system-shutdown", excerpt(stream.text)
    assert stream.stream_closed, "no </stream:stream> after system-shutdown"


def test_sigterm_closes_every_stream_with_system_shutdown(make_server, raw_factory):
    srv = make_server()
    user = srv.add_user("bye")
    authed_starttls = raw_factory(srv)
    authed_starttls.login(user, resource="one")
    authed_direct = raw_factory(srv, direct_tls=True)
    authed_direct.login(user, resource="two")
    unauthenticated = raw_factory(srv)
    unauthenticated.open_stream()
    # Make sure the server has processed everything so far.
    assert authed_direct.iq(f"<ping xmlns='{PING_NS}'/>", to=srv.domain).get("type") == "result"

    started = time.monotonic()
    rc, _out, err = srv.stop(signal.SIGTERM, timeout=10)
    elapsed = time.monotonic() - started
    assert rc == 0, f"exit code {rc} after SIGTERM\n{err[-3000:]}"
    assert elapsed < 5, f"took {elapsed:.1f}s to exit"
    for stream in (authed_starttls, authed_direct, unauthenticated):
        _read_shutdown(stream)


async def test_slixmpp_client_sees_system_shutdown(make_server):
    srv = make_server()
    user = srv.add_user("bye")
    async with session(srv, user) as client:
        rc, _out, err = await asyncio.to_thread(srv.stop, signal.SIGTERM, 10)
        assert rc == 0, err[-3000:]
        await client.wait_disconnected(timeout=5)
        assert client.stream_errors == ["system-shutdown"]


def test_sigint_exits_zero(make_server, raw_factory):
    srv = make_server()
    stream = raw_factory(srv)
    stream.open_stream()
    rc, _out, err = srv.stop(signal.SIGINT, timeout=10)
    assert rc == 0, err[-3000:]
    _read_shutdown(stream)


def test_idle_server_sigterm_exits_zero_quickly(make_server):
    srv = make_server()
    started = time.monotonic()
    rc, _out, err = srv.stop(signal.SIGTERM, timeout=10)
    assert rc == 0, err[-3000:]
    assert time.monotonic() - started < 3


async def test_restart_keeps_users_and_certificate(make_server):
    srv = make_server()
    user = srv.add_user("persist")
    cert = pem_to_der(srv.cert_path)
    rc, _out, err = srv.stop()
    assert rc == 0, err[-3000:]
    srv.start()  # same config dir and data dir, new ports
    assert pem_to_der(srv.cert_path) == cert, "certificate regenerated on restart"
    async with session(srv, user) as client:
        assert client.boundjid.bare == user.jid
    assert user.jid in srv.user("list").stdout.splitlines()

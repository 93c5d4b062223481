"""A real browser client: Converse.js in Debian's headless Chromium (browser.py), talking to
slixmpp users through the server's WebSocket (RFC 7395) and BOSH (XEP-0124/0206) endpoints.

The server under test comes from the fixture named by ``WEB_SERVER``. It provides what a
browser and a slixmpp client connect to::

    websocket_url   wss://DOMAIN:PORT/xmpp-websocket
    bosh_url        https://DOMAIN:PORT/http-bind
    domain, host, c2s_port, tls_port, cert_path   (for harness.connect_client)
    upload          whether an HTTP upload service (XEP-0363) is on offer
    add_user(prefix) -> harness.User, log_tail()

It is the module's Rookery (the ``server`` fixture): its HTTPS listener serves both, and
file upload on ``upload.<domain>``.

Needs the Debian package chromium and the converse.js npm package in
tests/interop/browser/node_modules (test.sh installs both).
"""

from __future__ import annotations

import os
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest

from browser import Chromium, LoginFailed, processes_using, missing_requirements
from harness import client_ssl_context, session

# The fixture that provides the server under test (see the module's docstring).
WEB_SERVER = "server"

TRANSPORTS = ["websocket", "bosh"]


@pytest.fixture(scope="module")
def web_server(request):
    return request.getfixturevalue(WEB_SERVER)


def connection(web_server, transport: str) -> dict:
    """The keyword arguments of ``open_converse`` for one transport."""
    if transport == "websocket":
        return {"websocket_url": web_server.websocket_url}
    return {"bosh_url": web_server.bosh_url}


def body_of(msg) -> str:
    return msg["body"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_converse_chats_with_slixmpp(web_server, browser, transport):
    """Converse logs in, a message typed into its chat reaches a slixmpp user, and the
    answer appears in Converse's chat on screen."""
    alice, bob = web_server.add_user("alice"), web_server.add_user("bob")
    async with session(web_server, bob, resource="slix") as slix:
        slix.send_presence()
        converse = await browser.open_converse(alice.jid, alice.password, **connection(web_server, transport))
        full_jid = (await converse.status())["jid"]
        assert full_jid.split("/")[0] == alice.jid

        text = f"hello over {transport} — ünïcödé ☃ <b>&amp; {uuid.uuid4().hex[:6]}"
        await converse.type_message(bob.jid, text)
        got = await slix.next_message(timeout=10, predicate=body_of)
        assert got["body"] == text
        assert got["type"] == "chat"
        assert got["from"].full == full_jid

        answer = f"answer over {transport} ☃ {uuid.uuid4().hex[:6]}"
        slix.send_message(mto=got["from"], mbody=answer, mtype="chat")
        shown = await converse.wait_for_message(bob.jid, answer, timeout=10)
        assert shown["from"].split("/")[0] == bob.jid

        # The chat model's own send path, as other Converse features (and plugins) use it.
        await converse.send_message(bob.jid, "sent through the chat model")
        got = await slix.next_message(timeout=10, predicate=body_of)
        assert got["body"] == "sent through the chat model"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_converse_login_refused_with_wrong_password(web_server, browser, transport):
    alice = web_server.add_user("alice")
    with pytest.raises(LoginFailed):
        await browser.open_converse(
            alice.jid, alice.password + "-wrong", login_timeout=15, **connection(web_server, transport)
        )


async def test_converse_uploads_a_file(web_server, browser, tmp_path):
    """XEP-0363 from the chat toolbar's file input: a slot, the HTTP PUT, then a message
    with the URL (body and jabber:x:oob) that the slixmpp user can download the file from."""
    if not getattr(web_server, "upload", False):
        pytest.skip("the server under test offers no HTTP upload service")
    alice, bob = web_server.add_user("alice"), web_server.add_user("bob")
    payload = f"file contents {uuid.uuid4().hex}\n".encode() * 50
    path = tmp_path / "notes.txt"
    path.write_bytes(payload)
    async with session(web_server, bob, resource="slix") as slix:
        slix.send_presence()
        converse = await browser.open_converse(
            alice.jid, alice.password, websocket_url=web_server.websocket_url
        )
        assert await converse.upload_supported(), "Converse found no upload service on the domain"
        url = await converse.upload_file(bob.jid, path)

        got = await slix.next_message(timeout=10, predicate=body_of)
        assert got["body"] == url
        oob = got.xml.find("{jabber:x:oob}x/{jabber:x:oob}url")
        assert oob is not None and oob.text == url

    with urllib.request.urlopen(url, context=client_ssl_context(web_server.cert_path), timeout=10) as resp:
        assert resp.read() == payload


def test_chromium_stops_every_process(tmp_path):
    """Stopping the browser leaves none of its processes, zombies included, also when the
    browser no longer answers (stopped with SIGSTOP)."""
    missing = missing_requirements()
    if missing:
        pytest.fail("the browser tests need:\n  " + "\n  ".join(missing), pytrace=False)
    for wedge in (False, True):
        proc = Chromium(tmp_path / f"chromium-{wedge}").start()
        pids = proc.running_pids()
        assert len(pids) > 2, pids  # the browser, its zygotes, GPU and network processes...
        if wedge:
            for pid in pids - {proc.proc.pid}:
                os.kill(pid, signal.SIGSTOP)
        proc.stop(timeout=10)
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not processes_using(str(proc.profile))

"""Administration of a running server: `rookery user delete` of an account that is logged
in (its data goes, its sessions end) and `rookery sessions`."""

from __future__ import annotations

import time

import pytest

from harness import (
    CLIENT_NS,
    ROSTER_NS,
    User,
    UserPool,
    im_login,
    login_scram,
    presences,
    qn,
    roster_get,
    roster_of,
    send_presence,
    sync,
)


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "adm", workers=2)
    users.prefetch(8)
    yield users
    users.close()


@pytest.fixture(autouse=True)
def rookery_only(server):
    if server.external:
        pytest.skip("rookery CLI and admin socket only")


def test_user_delete_while_logged_in(server, raw, pool):
    user, contact, asker = pool.take(), pool.take(), pool.take()
    c = raw()
    im_login(c, contact, "c")
    a = raw()
    im_login(a, asker, "a")
    # Waiting for the account: an offline message and a subscription request.
    c.send(f"<message to='{user.jid}' type='chat' id='off-1'><body>read me later</body></message>")
    send_presence(a, to=user.jid, ptype="subscribe")
    sync(c)
    sync(a)
    # The account's own data: roster with a mutual subscription, vCard, private XML, blocklist.
    u = raw()
    im_login(u, user, "u", available=False)  # not available: the offline message stays stored
    for actor, target, ptype in ((u, contact, "subscribe"), (c, user, "subscribed"), (c, user, "subscribe"), (u, contact, "subscribed")):
        send_presence(actor, to=target.jid, ptype=ptype)
        sync(actor)
    assert u.iq("<vCard xmlns='vcard-temp'><FN>To Be Deleted</FN></vCard>", itype="set").get("type") == "result"
    assert (
        u.iq("<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>x</prefs></query>", itype="set").get("type")
        == "result"
    )
    assert u.iq("<block xmlns='urn:xmpp:blocking'><item jid='spam.example'/></block>", itype="set").get("type") == "result"
    assert roster_of(roster_get(u).find(qn(ROSTER_NS, "query")))[contact.jid].subscription == "both"

    res = server.user("delete", user.jid)
    assert res.returncode == 0, res.stderr
    # The live session ends with a stream error.
    u.read_until_closed(timeout=5, eof=True)
    assert u.stream_error() is not None, "the session of a deleted account was closed without a stream error"
    assert u.stream_closed, "no </stream:stream> after the stream error"
    assert user.jid not in server.user("list").stdout.splitlines()
    gone = raw()
    gone.open_stream()
    gone.starttls()
    assert not gone.auth_scram(user.localpart, user.password).ok

    # Created again with the same name, the account starts empty.
    again = User(user.localpart, user.domain, "second-life")
    res = server.user("add", again.jid, "--password", again.password)
    assert res.returncode == 0, res.stderr
    n = raw()
    got = im_login(n, again, "new")
    assert roster_of(n.roster) == {}, "roster survived the deletion"
    assert presences(got, "subscribe") == [], "pending subscription request survived the deletion"
    card = n.iq("<vCard xmlns='vcard-temp'/>")
    assert card.get("type") == "error" or len(card.find("{vcard-temp}vCard")) == 0, "vCard survived"
    prefs = n.iq("<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>")
    assert (prefs.findtext("{jabber:iq:private}query/{urn:example:prefs}prefs") or "") == "", "private XML survived"
    blocked = n.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
    assert blocked.find("{urn:xmpp:blocking}blocklist/{urn:xmpp:blocking}item") is None, "blocklist survived"
    try:
        stale = n.wait_for(qn(CLIENT_NS, "message"), timeout=1.0)
    except TimeoutError:
        stale = None
    assert stale is None, "an offline message survived the deletion"


def session_lines(server, *args: str) -> list[str]:
    res = server.cli("sessions", *args)
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]


def test_sessions_lists_online_sessions(server, raw, pool):
    one, two = pool.take(), pool.take()
    hi = raw()
    im_login(hi, one, "hi", priority=5)
    quiet = raw()
    login_scram(quiet, one, "quiet")  # bound, no presence yet
    neg = raw()
    im_login(neg, two, "neg", priority=-3)
    default = raw()
    im_login(default, two, "default")

    lines = session_lines(server)
    assert lines == sorted(lines), lines
    for expected in (
        f"{one.full('hi')} available priority=5",
        f"{one.full('quiet')} unavailable",
        f"{two.full('neg')} available priority=-3",
        f"{two.full('default')} available priority=0",
    ):
        assert expected in lines, f"{expected!r} not in {lines}"
    assert set(session_lines(server, server.domain)) >= {f"{one.full('hi')} available priority=5"}

    # Presence changes show; a session that ends disappears.
    send_presence(hi, ptype="unavailable")
    sync(hi)
    hi.send("</stream:stream>")
    hi.read_until_closed(timeout=5)
    send_presence(quiet, priority=1)
    sync(quiet)
    deadline = time.monotonic() + 5
    while True:
        lines = session_lines(server)
        done = f"{one.full('quiet')} available priority=1" in lines and not any(
            line.startswith(one.full("hi") + " ") for line in lines
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f"{one.full('quiet')} available priority=1" in lines, lines
    assert not any(line.startswith(one.full("hi") + " ") for line in lines), lines


def test_sessions_without_running_server(make_server):
    srv = make_server()
    rc, _out, err = srv.stop()
    assert rc == 0, err[-2000:]
    res = srv.cli("sessions")
    assert res.returncode != 0
    message = (res.stderr + res.stdout).strip()
    assert message and "panicked" not in message, message
    assert "not running" in message.lower(), message



def stats(server) -> dict[str, int]:
    res = server.cli("stats")
    assert res.returncode == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        name, value = line.split()
        out[name] = int(value)
    return out


def test_stats_count_what_the_limits_refused(server, raw, pool):
    before = stats(server)
    assert "auth_failures" in before and "sessions" in before, before
    user = pool.take()
    s = raw()
    s.open_stream()
    s.starttls()
    assert not s.auth_plain(user.localpart, "wrong password").ok
    after = stats(server)
    assert after["auth_failures"] == before["auth_failures"] + 1, (before, after)
    # Not-well-formed XML is counted as it closes the stream.
    bad = raw()
    bad.open_stream()
    bad.send("<a></b>")
    bad.read_until_closed(timeout=5)
    deadline = time.monotonic() + 5
    while stats(server)["bad_xml"] == before["bad_xml"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats(server)["bad_xml"] == before["bad_xml"] + 1

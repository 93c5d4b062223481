"""XEP-0133 service administration beyond accounts: disabling and re-enabling accounts, the
message of the day, the welcome message and the admin list, each over XMPP (ad-hoc
commands as a client sends them) and through the `rookery` CLI, which reaches the running
server through its admin socket and uses the same operations. Effects are checked where
they land: logins refused with RFC 6120's `<account-disabled/>`, sessions ended, messages
kept while disabled, headlines received once per message of the day, the stored values
surviving a restart, the admin list as `rookery admins` prints it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from harness import LoginError, RawStream, User, connect_client, loopback_source, restart_server, session
from test_admin_commands import ADMIN_NS, BOSS, NS, DATA, execute, field, q, run, submit

SERVER_CONFIG = {"host_extra": f'[host.admin]\nadmins = ["{BOSS}@localhost"]'}


@pytest.fixture
def boss(server):
    user = User(BOSS, server.domain, "the boss's password")
    res = server.user("add", user.jid, "--password", user.password)
    assert res.returncode == 0 or "already exists" in res.stderr, res.stderr
    return user


def form_values(cmd, var: str) -> list[str]:
    for f in cmd.find(q(DATA, "x")).findall(q(DATA, "field")):
        if f.get("var") == var:
            return [v.text or "" for v in f.findall(q(DATA, "value"))]
    raise AssertionError(f"no field {var}")


async def refused_login(server, user: User) -> LoginError:
    with pytest.raises(LoginError) as e:
        await connect_client(server, user.jid, user.password, timeout=10)
    return e.value


def is_motd(m) -> bool:
    return m["type"] == "headline" and m["subject"] == "Message of the day"


async def no_motd(c, wait: float = 1.5) -> None:
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        await c.next_message(timeout=wait, predicate=is_motd)


async def test_disable_and_reenable_over_xmpp_and_the_cli(server, boss, alice, bob):
    async with session(server, boss) as b:
        async with session(server, alice) as a:
            out = await run(b, server.domain, "disable-user", field("accountjids", alice.jid))
            assert f"disabled: {alice.jid}" in out.findtext(q(NS, "note"))
            # XEP-0133 §4.5: the active sessions end.
            await a.wait_disconnected(timeout=10)
            assert "policy-violation" in a.stream_errors
        err = await refused_login(server, alice)
        assert "account-disabled" in err.auth_failures, err
        # The data is kept (Prosody's behaviour): the account is listed and messages to it
        # are stored, delivered once it is enabled again.
        assert alice.jid in server.user("list", server.domain).stdout.split()
        async with session(server, bob) as c:
            c.send_message(mto=alice.jid, mbody="while you were away", mtype="chat")
            ping = await c.iq(server.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
            assert ping["type"] == "result"
        out = await run(b, server.domain, "reenable-user",
                        field("accountjids", alice.jid, f"nobody-{uuid.uuid4().hex[:6]}@{server.domain}"))
        note = out.findtext(q(NS, "note"))
        assert f"re-enabled: {alice.jid}" in note and "no such account: nobody-" in note
        async with session(server, alice) as a:
            a.send_presence()
            msg = await a.next_message(timeout=10, predicate=lambda m: m["body"] == "while you were away")
            assert msg["from"].bare == bob.jid

        # A foreign or malformed address is refused as a whole.
        started = await execute(b, server.domain, "disable-user")
        sid = started.xml.find(q(NS, "command")).get("sessionid")
        bad = await b.iq(server.domain, "set",
                         f"<command xmlns='{NS}' node='{ADMIN_NS}#disable-user' sessionid='{sid}' action='complete'>"
                         + submit(field("accountjids", "someone@elsewhere.example")) + "</command>")
        assert bad["type"] == "error" and bad["error"]["condition"] == "not-acceptable"

    # The CLI: through the running server, which ends the session.
    async with session(server, alice) as a:
        res = server.user("disable", alice.jid)
        assert res.returncode == 0 and f"disabled {alice.jid}" in res.stdout, res.stderr
        await a.wait_disconnected(timeout=10)
    err = await refused_login(server, alice)
    assert "account-disabled" in err.auth_failures
    res = server.user("enable", alice.jid)
    assert res.returncode == 0 and f"enabled {alice.jid}" in res.stdout, res.stderr
    async with session(server, alice):
        pass
    missing = server.user("disable", f"ghost-{uuid.uuid4().hex[:6]}@{server.domain}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    log = server.stderr_text()
    assert "account disabled" in log and "actor=rookery CLI" in log.replace('"', "")


async def test_non_admins_are_refused_the_new_commands(server, boss, alice):
    async with session(server, alice) as a:
        for cmd in ("disable-user", "reenable-user", "set-motd", "edit-motd", "delete-motd",
                    "set-welcome", "delete-welcome", "edit-admin", "get-active-users-num",
                    "get-active-users", "get-idle-users-num", "get-idle-users", "get-user-lastlogin"):
            refused = await execute(a, server.domain, cmd)
            assert refused["type"] == "error" and refused["error"]["condition"] == "forbidden", cmd
    async with session(server, boss) as b:
        b.register_plugin("xep_0050")
        items = await b.plugin["xep_0050"].get_commands(server.domain)
        nodes = {node for _jid, node, _name in items["disco_items"]["items"]}
        for cmd in ("disable-user", "reenable-user", "set-motd", "edit-motd", "delete-motd",
                    "set-welcome", "delete-welcome", "edit-admin", "get-active-users-num",
                    "get-active-users", "get-idle-users-num", "get-idle-users", "get-user-lastlogin"):
            assert f"{ADMIN_NS}#{cmd}" in nodes, nodes


async def test_message_of_the_day_once_per_account_and_after_a_restart(server, boss, alice, bob):
    async with session(server, boss) as b, session(server, alice) as a:
        a.send_presence()
        await a.iq(server.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
        await run(b, server.domain, "set-motd", field("motd", "Welcome to the", "new server"))
        # Online accounts get it at once.
        msg = await a.next_message(timeout=5, predicate=is_motd)
        assert msg["body"] == "Welcome to the\nnew server" and msg["from"].full == server.domain
        # The edit form shows the current text.
        started = await execute(b, server.domain, "edit-motd")
        cmd = started.xml.find(q(NS, "command"))
        assert form_values(cmd, "motd") == ["Welcome to the", "new server"]
        await b.iq(server.domain, "set",
                   f"<command xmlns='{NS}' node='{ADMIN_NS}#edit-motd' sessionid='{cmd.get('sessionid')}' action='cancel'/>")
    # Alice saw it: not again at her next login.
    async with session(server, alice) as a:
        a.send_presence()
        await no_motd(a)
    # Bob gets it at his next initial presence, once.
    async with session(server, bob) as c:
        c.send_presence()
        msg = await c.next_message(timeout=5, predicate=is_motd)
        assert msg["body"] == "Welcome to the\nnew server"
        c.send_presence(pstatus="still here")
        await no_motd(c)
    async with session(server, bob) as c:
        c.send_presence()
        await no_motd(c)

    # The CLI sees the same message and sets a new one (from stdin), which everyone gets once.
    shown = server.cli("motd", "show")
    assert shown.returncode == 0 and shown.stdout == "Welcome to the\nnew server\n", shown
    res = server.cli("motd", "set", input="Maintenance tonight\nat 22:00\n")
    assert res.returncode == 0 and "set" in res.stdout, res.stderr

    # Stored: the server restarts and still sends it.
    restart_server(server)
    assert server.cli("motd", "show").stdout == "Maintenance tonight\nat 22:00\n"
    async with session(server, bob) as c:
        c.send_presence()
        msg = await c.next_message(timeout=5, predicate=is_motd)
        assert msg["body"] == "Maintenance tonight\nat 22:00"

    async with session(server, boss) as b:
        out = await execute(b, server.domain, "delete-motd")
        cmd = out.xml.find(q(NS, "command"))
        assert cmd.get("status") == "completed" and "deleted" in cmd.findtext(q(NS, "note"))
    shown = server.cli("motd", "show")
    assert shown.returncode == 0 and shown.stdout == "" and "no message of the day" in shown.stderr
    async with session(server, alice) as a:
        a.send_presence()
        await no_motd(a)
    res = server.cli("motd", "set", "x" * 9000)
    assert res.returncode == 1 and "longer than" in res.stderr
    res = server.cli("motd", "delete")
    assert res.returncode == 0 and "no message of the day" in res.stderr


async def test_welcome_message_for_accounts_added_by_an_admin(server, boss):
    name = f"new-{uuid.uuid4().hex[:8]}"
    jid = f"{name}@{server.domain}"
    async with session(server, boss) as b:
        await run(b, server.domain, "set-welcome", field("welcome", "Hello and welcome!", "Read the rules."))
        started = await execute(b, server.domain, "set-welcome")
        cmd = started.xml.find(q(NS, "command"))
        assert form_values(cmd, "welcome") == ["Hello and welcome!", "Read the rules."]
        await run(b, server.domain, "add-user", field("accountjid", jid),
                  field("password", "a long secret"), field("password-verify", "a long secret"))
    async with session(server, User(name, server.domain, "a long secret")) as n:
        n.send_presence()
        msg = await n.next_message(timeout=10, predicate=lambda m: m["subject"] == "Welcome")
        assert msg["body"] == "Hello and welcome!\nRead the rules." and msg["from"].full == server.domain
    async with session(server, boss) as b:
        await execute(b, server.domain, "delete-welcome")
        other = f"newer-{uuid.uuid4().hex[:8]}@{server.domain}"
        await run(b, server.domain, "add-user", field("accountjid", other),
                  field("password", "a long secret"), field("password-verify", "a long secret"))
    async with session(server, User(other.split("@")[0], server.domain, "a long secret")) as n:
        n.send_presence()
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await n.next_message(timeout=1.5, predicate=lambda m: m["subject"] == "Welcome")


async def test_edit_admin_list_keeps_the_configured_admins(server, boss, alice):
    async with session(server, boss) as b:
        started = await execute(b, server.domain, "edit-admin")
        cmd = started.xml.find(q(NS, "command"))
        assert form_values(cmd, "adminjids") == [boss.jid]
        assert "configuration" in cmd.find(q(DATA, "x")).findtext(q(DATA, "instructions"))
        await b.iq(server.domain, "set",
                   f"<command xmlns='{NS}' node='{ADMIN_NS}#edit-admin' sessionid='{cmd.get('sessionid')}' action='cancel'/>")
        await run(b, server.domain, "edit-admin", field("adminjids", boss.jid, alice.jid))
    listed = server.cli("admins")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [f"{boss.jid} config", f"{alice.jid} added"]
    # The added admin has the commands.
    async with session(server, alice) as a:
        done = await execute(a, server.domain, "get-online-users-num")
        assert done["type"] == "result", done
        # Removing an admin of the configuration is refused, and nothing changes.
        started = await execute(a, server.domain, "edit-admin")
        sid = started.xml.find(q(NS, "command")).get("sessionid")
        refused = await a.iq(server.domain, "set",
                             f"<command xmlns='{NS}' node='{ADMIN_NS}#edit-admin' sessionid='{sid}' action='complete'>"
                             + submit(field("adminjids", alice.jid)) + "</command>")
        assert refused["type"] == "error" and refused["error"]["condition"] == "not-acceptable"
        assert "configuration" in refused["error"]["text"]
        assert server.cli("admins").stdout.splitlines() == [f"{boss.jid} config", f"{alice.jid} added"]
        # An added admin survives a restart.
    restart_server(server)
    assert server.cli("admins").stdout.splitlines() == [f"{boss.jid} config", f"{alice.jid} added"]
    async with session(server, boss) as b:
        await run(b, server.domain, "edit-admin", field("adminjids", boss.jid))
    async with session(server, alice) as a:
        refused = await execute(a, server.domain, "get-online-users-num")
        assert refused["error"]["condition"] == "forbidden"
    assert server.cli("admins").stdout.splitlines() == [f"{boss.jid} config"]


async def test_welcome_after_in_band_registration_and_the_cli_on_a_stopped_server(make_server):
    srv = make_server(host_extra=f'registration = true\n\n[host.admin]\nadmins = ["{BOSS}@localhost"]')
    boss = User(BOSS, srv.domain, "the boss's password")
    res = srv.user("add", boss.jid, "--password", boss.password)
    assert res.returncode == 0, res.stderr
    async with session(srv, boss) as b:
        await run(b, srv.domain, "set-welcome", field("welcome", "Welcome, new reader."))
    # XEP-0077 in-band registration: the welcome message waits offline for the first login.
    name = f"ibr-{uuid.uuid4().hex[:8]}"
    s = RawStream(srv.host, srv.c2s_port, domain=srv.domain, cafile=srv.cert_path, source_address=loopback_source())
    try:
        s.open_stream()
        s.starttls()
        reply = s.iq(f"<query xmlns='jabber:iq:register'><username>{name}</username><password>in-band-pw</password></query>",
                     itype="set")
        assert reply.get("type") == "result", reply
    finally:
        s.close()
    newcomer = User(name, srv.domain, "in-band-pw")
    async with session(srv, newcomer) as n:
        n.send_presence()
        msg = await n.next_message(timeout=10, predicate=lambda m: m["subject"] == "Welcome")
        assert msg["body"] == "Welcome, new reader." and msg["type"] == "normal"

    # Without a running server the CLI works on the database with the same operations.
    srv.stop()
    res = srv.user("disable", newcomer.jid)
    assert res.returncode == 0 and f"disabled {newcomer.jid}" in res.stdout, res.stderr
    res = srv.cli("motd", "set", "Written while stopped")
    assert res.returncode == 0, res.stderr
    assert srv.cli("motd", "show").stdout == "Written while stopped\n"
    assert srv.cli("admins").stdout.splitlines() == [f"{boss.jid} config"]
    srv.start()
    err = await refused_login(srv, newcomer)
    assert "account-disabled" in err.auth_failures, err
    assert srv.user("enable", newcomer.jid).returncode == 0
    async with session(srv, newcomer) as n:
        n.send_presence()
        msg = await n.next_message(timeout=10, predicate=is_motd)
        assert msg["body"] == "Written while stopped"


async def completed_form(c, domain: str, command: str):
    """A command that answers at once (no form): its result <command/>."""
    done = await execute(c, domain, command)
    assert done["type"] == "result", done
    cmd = done.xml.find(q(NS, "command"))
    assert cmd.get("status") == "completed", cmd
    return cmd


async def csi(c, state: str) -> None:
    """Say `state` (XEP-0352), then wait until the server processed it (a ping after it)."""
    c.send_raw(f"<{state} xmlns='urn:xmpp:csi:0'/>")
    pong = await c.iq(c.boundjid.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert pong["type"] == "result"


async def test_active_and_idle_users_follow_client_state_indication(server, boss, alice, bob):
    """XEP-0133 §4.15–4.16, §4.20–4.21: an online user is idle when every session of it said
    `<inactive/>` (XEP-0352), active otherwise; counts and lists agree."""
    async with session(server, boss) as b, session(server, alice) as a, session(server, bob) as o:
        await csi(o, "inactive")

        async def lists():
            active = form_values(
                await run(b, server.domain, "get-active-users", field("max_items", "none")), "activeuserjids")
            idle = form_values(
                await run(b, server.domain, "get-idle-users", field("max_items", "none")), "idleuserjids")
            n_active = form_values(await completed_form(b, server.domain, "get-active-users-num"), "activeusersnum")
            n_idle = form_values(await completed_form(b, server.domain, "get-idle-users-num"), "idleusersnum")
            assert n_active == [str(len(active))] and n_idle == [str(len(idle))], (n_active, active, n_idle, idle)
            return active, idle

        active, idle = await lists()
        assert boss.jid in active and alice.jid in active and bob.jid not in active, active
        assert idle.count(bob.jid) == 1 and alice.jid not in idle, idle
        # A second session of bob, active: bob is active.
        async with session(server, bob, resource="desk"):
            active, idle = await lists()
            assert bob.jid in active and bob.jid not in idle
        await csi(o, "active")
        active, idle = await lists()
        assert bob.jid in active and bob.jid not in idle
        await csi(a, "inactive")
        active, idle = await lists()
        assert alice.jid in idle and alice.jid not in active


def parse_time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_user_last_login_time(server, boss):
    """XEP-0133 §4.12: the last login time (XEP-0082 DateTime) of each account named: the
    latest bind while online, kept after logout (the latest of several sessions, whichever
    closed last); "never" for an account that never logged out; an unknown account is
    item-not-found; a foreign one not-acceptable."""
    import time

    carol = User(f"carol-{uuid.uuid4().hex[:6]}", server.domain, "carol's password")
    never = User(f"never-{uuid.uuid4().hex[:6]}", server.domain, "never's password")
    for u in (carol, never):
        assert server.user("add", u.jid, "--password", u.password).returncode == 0

    async def last_login(b, *jids: str) -> list[str]:
        out = await run(b, server.domain, "get-user-lastlogin", field("accountjids", *jids))
        assert form_values(out, "accountjids") == list(jids)
        return form_values(out, "lastlogin")

    async with session(server, boss) as b:
        assert await last_login(b, never.jid) == ["never"]
        first = time.time()
        async with session(server, carol, resource="one"):
            (online,) = await last_login(b, carol.jid)
            assert first - 2 <= parse_time(online) <= time.time() + 1, online
            await asyncio.sleep(1.2)
            second = time.time()
            async with session(server, carol, resource="two"):
                (both,) = await last_login(b, carol.jid)
                assert parse_time(both) >= int(second), (both, second)
            # The later session closed first; the earlier one still stands for its login.
        # Offline now: the latest login of that stretch is kept.
        deadline = time.monotonic() + 10
        while True:
            kept, never_value = await last_login(b, carol.jid, never.jid)
            if kept != "never":
                break
            assert time.monotonic() < deadline, "no login recorded at logout"
            await asyncio.sleep(0.2)
        assert kept == both and never_value == "never", (kept, both)

        for jid, condition in ((f"nobody-{uuid.uuid4().hex[:6]}@{server.domain}", "item-not-found"),
                               ("someone@elsewhere.example", "not-acceptable")):
            started = await execute(b, server.domain, "get-user-lastlogin")
            sid = started.xml.find(q(NS, "command")).get("sessionid")
            refused = await b.iq(
                server.domain, "set",
                f"<command xmlns='{NS}' node='{ADMIN_NS}#get-user-lastlogin' sessionid='{sid}' action='complete'>"
                + submit(field("accountjids", jid)) + "</command>",
            )
            assert refused["type"] == "error" and refused["error"]["condition"] == condition, refused

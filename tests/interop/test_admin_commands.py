"""Administration over XMPP: XEP-0050 ad-hoc commands with the XEP-0133 service
administration set, for the admins named in `[host.admin]`. slixmpp's own XEP-0050 plugin
lists the commands; the commands run as a client sends them (execute, the form, submit or
cancel), and their effects are checked where they land: accounts created and deleted in the
database (`rookery user list`, logins), passwords changed (the old one refused), sessions
ended, announcements received, counts and lists matching what is connected. Non-admins see no
commands and get `forbidden`; bad sessions and actions get XEP-0050's errors."""

from __future__ import annotations

import uuid

import pytest

from harness import LoginError, User, connect_client, session

NS = "http://jabber.org/protocol/commands"
ADMIN_NS = "http://jabber.org/protocol/admin"
DATA = "jabber:x:data"
ITEMS = "http://jabber.org/protocol/disco#items"
INFO = "http://jabber.org/protocol/disco#info"
BOSS = "boss"

SERVER_CONFIG = {"host_extra": f'[host.admin]\nadmins = ["{BOSS}@localhost"]'}


@pytest.fixture
def boss(server):
    user = User(BOSS, server.domain, "the boss's password")
    res = server.user("add", user.jid, "--password", user.password)
    assert res.returncode == 0 or "already exists" in res.stderr, res.stderr
    return user


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def field(name: str, *values: str) -> str:
    return f"<field var='{name}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


def submit(*fields: str) -> str:
    return (
        f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{ADMIN_NS}</value></field>"
        + "".join(fields)
        + "</x>"
    )


async def execute(c, domain: str, command: str):
    return await c.iq(domain, "set", f"<command xmlns='{NS}' node='{ADMIN_NS}#{command}' action='execute'/>")


async def run(c, domain: str, command: str, *fields: str):
    """Execute, check the form, submit it; the completed <command/>."""
    started = await execute(c, domain, command)
    assert started["type"] == "result", started
    cmd = started.xml.find(q(NS, "command"))
    assert cmd.get("status") == "executing" and cmd.get("sessionid"), cmd
    assert cmd.find(q(DATA, "x")).get("type") == "form"
    done = await c.iq(
        domain,
        "set",
        f"<command xmlns='{NS}' node='{ADMIN_NS}#{command}' sessionid='{cmd.get('sessionid')}' action='complete'>"
        + submit(*fields)
        + "</command>",
    )
    assert done["type"] == "result", done
    out = done.xml.find(q(NS, "command"))
    assert out.get("status") == "completed" and out.get("sessionid") == cmd.get("sessionid")
    return out


def result_values(cmd, var: str) -> list[str]:
    for f in cmd.find(q(DATA, "x")).findall(q(DATA, "field")):
        if f.get("var") == var:
            return [v.text or "" for v in f.findall(q(DATA, "value"))]
    raise AssertionError(f"no field {var}")


async def test_admins_see_the_commands_and_others_do_not(server, boss, alice):
    async with session(server, boss) as b:
        b.register_plugin("xep_0050")
        items = await b.plugin["xep_0050"].get_commands(server.domain)
        nodes = {node for _jid, node, _name in items["disco_items"]["items"]}
        for cmd in ("add-user", "delete-user", "end-user-session", "change-user-password",
                    "get-registered-users-num", "get-online-users-num", "get-online-users-list", "announce"):
            assert f"{ADMIN_NS}#{cmd}" in nodes, nodes
        info = await b.iq(server.domain, "get", f"<query xmlns='{INFO}' node='{ADMIN_NS}#add-user'/>")
        ident = info.xml.find(f"{q(INFO, 'query')}/{q(INFO, 'identity')}")
        assert (ident.get("category"), ident.get("type")) == ("automation", "command-node")
        host_info = await b.iq(server.domain, "get", f"<query xmlns='{INFO}'/>")
        assert NS in {f.get("var") for f in host_info.xml.iter(q(INFO, "feature"))}
    async with session(server, alice) as a:
        items = await a.iq(server.domain, "get", f"<query xmlns='{ITEMS}' node='{NS}'/>")
        assert items["type"] == "result" and not list(items.xml.iter(q(ITEMS, "item")))
        refused = await execute(a, server.domain, "get-online-users-num")
        assert refused["type"] == "error" and refused["error"]["condition"] == "forbidden"
        refused = await execute(a, server.domain, "add-user")
        assert refused["error"]["condition"] == "forbidden"


async def test_add_change_password_and_delete_a_user(server, boss):
    name = f"made-{uuid.uuid4().hex[:8]}"
    jid = f"{name}@{server.domain}"
    async with session(server, boss) as b:
        out = await run(b, server.domain, "add-user",
                        field("accountjid", jid), field("password", "first secret"), field("password-verify", "first secret"))
        assert jid in out.findtext(q(NS, "note"))
        again = await execute(b, server.domain, "add-user")
        sid = again.xml.find(q(NS, "command")).get("sessionid")
        dup = await b.iq(server.domain, "set",
                         f"<command xmlns='{NS}' node='{ADMIN_NS}#add-user' sessionid='{sid}' action='complete'>"
                         + submit(field("accountjid", jid), field("password", "another long secret"), field("password-verify", "another long secret"))
                         + "</command>")
        assert dup["type"] == "error" and dup["error"]["condition"] == "conflict"
        assert jid in server.user("list", server.domain).stdout.split()
        made = User(name, server.domain, "first secret")
        async with session(server, made):
            pass

        await run(b, server.domain, "change-user-password", field("accountjid", jid), field("password", "second secret"))
        with pytest.raises(LoginError):
            await connect_client(server, jid, "first secret", timeout=10)
        changed = User(name, server.domain, "second secret")
        async with session(server, changed) as m:
            out = await run(b, server.domain, "delete-user", field("accountjids", jid))
            assert jid in out.findtext(q(NS, "note"))
            await m.wait_disconnected(timeout=10)
        assert jid not in server.user("list", server.domain).stdout.split()


async def test_counts_lists_end_sessions_and_announce(server, boss, alice, bob):
    async with session(server, boss) as b, session(server, alice) as a, session(server, alice, resource="two") as a2:
        done = await execute(b, server.domain, "get-online-users-num")
        cmd = done.xml.find(q(NS, "command"))
        assert cmd.get("status") == "completed", "no form: completed at once"
        assert int(result_values(cmd, "onlineusersnum")[0]) >= 2
        online = result_values(await run(b, server.domain, "get-online-users-list", field("max_items", "none")), "onlineuserjids")
        assert alice.jid in online and boss.jid in online and bob.jid not in online
        assert online == sorted(set(online)), "one entry per account"
        done = await execute(b, server.domain, "get-registered-users-num")
        registered = int(result_values(done.xml.find(q(NS, "command")), "registeredusersnum")[0])
        listed = server.user("list", server.domain).stdout.split()
        assert registered == len(listed)
        some = result_values(await run(b, server.domain, "get-registered-users-list", field("max_items", "25")),
                             "registereduserjids")
        assert len(some) == min(25, len(listed)) and set(some) <= set(listed)

        await run(b, server.domain, "announce", field("subject", "Maintenance"),
                  field("announcement", "Going down", "in two minutes"))
        for c in (a, a2, b):
            msg = await c.next_message(timeout=5, predicate=lambda m: m["type"] == "headline")
            assert msg["body"] == "Going down\nin two minutes" and msg["subject"] == "Maintenance"
            assert msg["from"].full == server.domain

        out = await run(b, server.domain, "end-user-session", field("accountjids", a2.boundjid.full))
        assert "sessions ended: 1" in out.findtext(q(NS, "note"))
        await a2.wait_disconnected(timeout=10)
        ping = await a.iq(server.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
        assert ping["type"] == "result", "the other session stays"


async def test_cancel_bad_session_and_bad_action(server, boss, alice):
    async with session(server, boss) as b:
        started = await execute(b, server.domain, "announce")
        sid = started.xml.find(q(NS, "command")).get("sessionid")
        canceled = await b.iq(server.domain, "set",
                              f"<command xmlns='{NS}' node='{ADMIN_NS}#announce' sessionid='{sid}' action='cancel'/>")
        assert canceled.xml.find(q(NS, "command")).get("status") == "canceled"
        # The session is gone once canceled.
        stale = await b.iq(server.domain, "set",
                           f"<command xmlns='{NS}' node='{ADMIN_NS}#announce' sessionid='{sid}' action='complete'>"
                           + submit(field("announcement", "late")) + "</command>")
        assert stale["type"] == "error" and stale["error"]["condition"] == "bad-request"
        assert stale.xml.find(f"{q('jabber:client', 'error')}/{q(NS, 'bad-sessionid')}") is not None
        wrong = await b.iq(server.domain, "set", f"<command xmlns='{NS}' node='{ADMIN_NS}#announce' action='complete'/>")
        assert wrong.xml.find(f"{q('jabber:client', 'error')}/{q(NS, 'bad-action')}") is not None
        unknown = await b.iq(server.domain, "set", f"<command xmlns='{NS}' node='{ADMIN_NS}#shutdown'/>")
        assert unknown["error"]["condition"] == "item-not-found"
        # Another account cannot use the admin's session id.
        started = await execute(b, server.domain, "announce")
        sid = started.xml.find(q(NS, "command")).get("sessionid")
    async with session(server, alice) as a:
        stolen = await a.iq(server.domain, "set",
                            f"<command xmlns='{NS}' node='{ADMIN_NS}#announce' sessionid='{sid}' action='complete'>"
                            + submit(field("announcement", "hijack")) + "</command>")
        assert stolen["type"] == "error" and stolen["error"]["condition"] == "forbidden"
    log = server.stderr_text()
    assert "admin command run" in log and "refused: not an admin" in log
    assert "the boss's password" not in log

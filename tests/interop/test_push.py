"""XEP-0357 Push Notifications. The app server's push service is a slixmpp client logged in as
``push@<domain>/app``: it receives the server's publish, checks it, and answers with a result
or an error (test_s2s.py has one on another server, reached over federation)."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import CLIENT_NS, DISCO_INFO_NS, qn, restart_server, session

PUSH_NS = "urn:xmpp:push:0"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"
PRIORITY_NS = "tigase:push:priority:0"
PUSH_JINGLE_NS = "tigase:push:jingle:0"
NODE = "node-1"
SECRET = "eruio234vzxc2kla-91"
QUIET = 1.5  # seconds without a notification that count as "none sent"


@contextlib.asynccontextmanager
async def app_server(server, user):
    """The push service: ``c.pushes`` collects the IQ sets carrying a pubsub publish."""
    async with session(server, user, resource="app") as c:
        c.pushes = asyncio.Queue()
        c.register_handler(
            Callback(
                "push publish",
                MatchXPath(f"{{{CLIENT_NS}}}iq/{{{PUBSUB_NS}}}pubsub"),
                lambda iq: c.pushes.put_nowait(iq),
            )
        )
        yield c


def answer(app, iq, error: str | None = None) -> None:
    if error is None:
        app.send_raw(f"<iq type='result' id='{iq['id']}' to='{iq['from']}'/>")
    else:
        app.send_raw(
            f"<iq type='error' id='{iq['id']}' to='{iq['from']}'>"
            f"<error type='cancel'><{error} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )


def summary(iq, user, app_jid: str) -> dict[str, str]:
    """The notification's summary fields, after checking the envelope."""
    assert iq["type"] == "set"
    assert iq["from"].full == user.jid, "published from the account's bare JID"
    assert iq["to"].full == app_jid
    publish = iq.xml.find(f"{qn(PUBSUB_NS, 'pubsub')}/{qn(PUBSUB_NS, 'publish')}")
    assert publish is not None and publish.get("node") == NODE
    form = publish.find(f"{qn(PUBSUB_NS, 'item')}/{qn(PUSH_NS, 'notification')}/{qn(DATA_NS, 'x')}")
    assert form is not None and form.get("type") == "submit"
    fields = {f.get("var"): f.findtext(qn(DATA_NS, "value")) for f in form.findall(qn(DATA_NS, "field"))}
    assert fields["FORM_TYPE"] == "urn:xmpp:push:summary"
    options = iq.xml.find(f"{qn(PUBSUB_NS, 'pubsub')}/{qn(PUBSUB_NS, 'publish-options')}/{qn(DATA_NS, 'x')}")
    assert options is not None, "the stored publish options are sent"
    assert {f.get("var"): f.findtext(qn(DATA_NS, "value")) for f in options}["secret"] == SECRET
    return fields


def notification_of(iq):
    found = iq.xml.find(
        f"{qn(PUBSUB_NS, 'pubsub')}/{qn(PUBSUB_NS, 'publish')}/{qn(PUBSUB_NS, 'item')}/{qn(PUSH_NS, 'notification')}"
    )
    assert found is not None
    return found


def assert_call_marker(iq, sid: str, media: list[str]) -> None:
    """A call proposal's notification is high priority and says it is a call (the form
    Tigase's push extensions define), so the app server rings the phone at once."""
    n = notification_of(iq)
    assert n.findtext(qn(PRIORITY_NS, "priority")) == "high"
    jingle = n.find(qn(PUSH_JINGLE_NS, "jingle"))
    assert jingle is not None, "the call marker"
    assert jingle.get("action") == "propose" and jingle.get("sid") == sid
    assert [m.text for m in jingle.findall(qn(PUSH_JINGLE_NS, "media"))] == media


async def enable_push(server, user, app_jid: str) -> None:
    """The user's client enables push to the app and goes offline."""
    async with session(server, user, resource="phone") as c:
        reply = await c.iq(
            None,
            "set",
            f"<enable xmlns='{PUSH_NS}' jid='{app_jid}' node='{NODE}'>"
            f"<x xmlns='{DATA_NS}' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='secret'><value>{SECRET}</value></field></x></enable>",
        )
        assert reply["type"] == "result", reply
    await asyncio.sleep(0.3)  # the server notices the close


async def next_push(app, timeout: float = 5.0):
    return await asyncio.wait_for(app.pushes.get(), timeout)


async def no_push(app) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        iq = await asyncio.wait_for(app.pushes.get(), QUIET)
        raise AssertionError(f"unexpected notification: {iq}")


def message(sender, to: str, body: str) -> None:
    sender.make_message(mto=to, mbody=body, mtype="chat").send()


async def test_push_is_advertised_on_the_account(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(alice.jid, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        features = {f.get("var") for f in reply.xml.iter(qn(DISCO_INFO_NS, "feature"))}
        assert PUSH_NS in features
        assert {PRIORITY_NS, PUSH_JINGLE_NS} <= features


async def test_offline_message_notifies_then_disable_stops(server, new_user):
    user, contact, push = new_user("user"), new_user("contact"), new_user("push")
    async with app_server(server, push) as app, session(server, contact) as sender:
        await enable_push(server, user, app.boundjid.full)
        message(sender, user.jid, "are you there?")
        iq = await next_push(app)
        fields = summary(iq, user, app.boundjid.full)
        assert fields["message-count"] == "1"
        assert fields["last-message-sender"] == sender.boundjid.full
        assert "last-message-body" not in fields, "no body unless configured"
        assert "are you there?" not in str(iq)
        answer(app, iq)

        # Not worth waking for: a chat state alone.
        m = sender.make_message(mto=user.jid, mtype="chat")
        m.append(ET.fromstring("<composing xmlns='http://jabber.org/protocol/chatstates'/>"))
        m.send()
        await no_push(app)

        message(sender, user.jid, "second")
        iq = await next_push(app)
        fields = summary(iq, user, app.boundjid.full)
        assert fields["message-count"] == "2"
        answer(app, iq)

        # The user disables push: no more notifications.
        async with session(server, user, resource="phone") as c:
            reply = await c.iq(None, "set", f"<disable xmlns='{PUSH_NS}' jid='{app.boundjid.full}' node='{NODE}'/>")
            assert reply["type"] == "result"
        await asyncio.sleep(0.3)
        message(sender, user.jid, "third")
        await no_push(app)


async def test_an_error_answer_removes_the_registration(server, new_user):
    user, contact, push = new_user("user"), new_user("contact"), new_user("push")
    async with app_server(server, push) as app, session(server, contact) as sender:
        await enable_push(server, user, app.boundjid.full)
        message(sender, user.jid, "one")
        iq = await next_push(app)
        answer(app, iq, error="item-not-found")
        await asyncio.sleep(0.3)
        message(sender, user.jid, "two")
        await no_push(app)


async def test_body_only_when_configured_and_registrations_survive_restart(make_server):
    srv = make_server(extra_toml="[push]\ninclude_body = true\n")
    user, contact, push = srv.add_user("user"), srv.add_user("contact"), srv.add_user("push")
    app_jid = push.full("app")
    await enable_push(srv, user, app_jid)
    restart_server(srv)
    async with app_server(srv, push) as app, session(srv, contact) as sender:
        message(sender, user.jid, "after the restart")
        iq = await next_push(app)
        fields = summary(iq, user, app_jid)
        assert fields["message-count"] == "1"
        assert fields["last-message-body"] == "after the restart"
        answer(app, iq)


async def test_message_for_a_session_held_by_stream_management_notifies(server, new_user):
    """The phone enables push and resumable stream management, then loses its network: the
    session is kept for resumption (still online), and a message for it wakes the phone."""
    from test_sm import kill_connection, reconnect_and_resume, sm_client

    user, contact, push = new_user("user"), new_user("contact"), new_user("push")
    async with app_server(server, push) as app, session(server, contact) as sender:
        phone = await sm_client(server, user, "phone")
        try:
            phone.send_presence()
            reply = await phone.iq(
                None,
                "set",
                f"<enable xmlns='{PUSH_NS}' jid='{app.boundjid.full}' node='{NODE}'>"
                f"<x xmlns='{DATA_NS}' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
                f"<field var='secret'><value>{SECRET}</value></field></x></enable>",
            )
            assert reply["type"] == "result", reply
            # While connected, messages go to the phone itself: no notification.
            message(sender, user.full("phone"), "live")
            await phone.next_message(timeout=5, predicate=lambda m: m["body"] == "live")
            await no_push(app)
            kill_connection(phone)
            await asyncio.sleep(0.3)
            message(sender, user.full("phone"), "while asleep")
            iq = await next_push(app)
            fields = summary(iq, user, app.boundjid.full)
            assert fields["last-message-sender"] == sender.boundjid.full
            assert notification_of(iq).findtext(qn(PRIORITY_NS, "priority")) == "high"
            assert notification_of(iq).find(qn(PUSH_JINGLE_NS, "jingle")) is None, "not a call"
            answer(app, iq)
            # The phone wakes up, resumes, and gets the message it was notified about.
            await reconnect_and_resume(server, phone)
            got = await phone.next_message(timeout=5, predicate=lambda m: m["body"] == "while asleep")
            assert got["from"].full == sender.boundjid.full
        finally:
            await phone.close()


async def test_a_call_proposal_wakes_the_phone(server, new_user):
    """XEP-0353: a Jingle call proposal (no body) to an account with no connected client is
    worth a notification, as a message is; a retraction alone is not."""
    user, caller, push = new_user("user"), new_user("caller"), new_user("push")
    async with app_server(server, push) as app, session(server, caller) as c:
        await enable_push(server, user, app.boundjid.full)
        c.send_raw(
            f"<message to='{user.jid}' type='chat' id='call-1'>"
            "<propose xmlns='urn:xmpp:jingle-message:0' id='jmi-1'>"
            "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>"
            "<store xmlns='urn:xmpp:hints'/></message>"
        )
        iq = await next_push(app)
        fields = summary(iq, user, app.boundjid.full)
        assert fields["last-message-sender"] == c.boundjid.full
        assert_call_marker(iq, "jmi-1", ["audio"])
        answer(app, iq)
        c.send_raw(
            f"<message to='{user.jid}' type='chat' id='call-2'>"
            "<retract xmlns='urn:xmpp:jingle-message:0' id='jmi-1'/><store xmlns='urn:xmpp:hints'/></message>"
        )
        await no_push(app)


async def test_a_call_to_a_parked_phone_pushes_the_call_marker(server, new_user):
    """The callee's only session is parked by stream management (the app asleep, its
    connection gone): the call proposal is held for it and the phone gets a high-priority
    call push; when it resumes, the proposal is there to ring."""
    from test_sm import kill_connection, reconnect_and_resume, sm_client

    user, caller, push = new_user("user"), new_user("caller"), new_user("push")
    async with app_server(server, push) as app, session(server, caller) as c:
        phone = await sm_client(server, user, "phone")
        try:
            phone.send_presence()
            reply = await phone.iq(
                None,
                "set",
                f"<enable xmlns='{PUSH_NS}' jid='{app.boundjid.full}' node='{NODE}'>"
                f"<x xmlns='{DATA_NS}' type='submit'>"
                "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
                f"<field var='secret'><value>{SECRET}</value></field></x></enable>",
            )
            assert reply["type"] == "result", reply
            kill_connection(phone)
            await asyncio.sleep(0.3)
            c.send_raw(
                f"<message to='{user.jid}' type='chat' id='call-p'>"
                "<propose xmlns='urn:xmpp:jingle-message:0' id='jmi-parked'>"
                "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/>"
                "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'/></propose>"
                "<store xmlns='urn:xmpp:hints'/></message>"
            )
            iq = await next_push(app)
            fields = summary(iq, user, app.boundjid.full)
            assert fields["last-message-sender"] == c.boundjid.full
            assert_call_marker(iq, "jmi-parked", ["audio", "video"])
            answer(app, iq)
            await reconnect_and_resume(server, phone)
            got = await phone.next_message(
                timeout=5, predicate=lambda m: m.xml.find("{urn:xmpp:jingle-message:0}propose") is not None
            )
            assert got.xml.find("{urn:xmpp:jingle-message:0}propose").get("id") == "jmi-parked"
        finally:
            await phone.close()

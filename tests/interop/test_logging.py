"""What the server's log says about failed logins and bad XML (one greppable line each, with
the client's address, as fail2ban-style tools need), and that it carries no colour codes
when it is not written to a terminal."""

from __future__ import annotations

import base64
import re

import pytest

from harness import SASL_NS, qn

SASL2_NS = "urn:xmpp:sasl:2"


@pytest.fixture(autouse=True)
def _own_server(server):
    if server.external:
        pytest.skip("reads the log of a rookery process it started")


def source_of(stream) -> str:
    return stream.transport.sock.getsockname()[0]


def failure_line(server, user: str, addr: str, mechanism: str, reason: str) -> str:
    pattern = (
        rf"WARN .*authentication failed user={re.escape(user)} addr={re.escape(addr)} "
        rf"mechanism={re.escape(mechanism)} reason={re.escape(reason)}$"
    )
    return server.wait_for_log(pattern)


def test_failed_scram_login_names_the_account_and_address(server, raw, alice):
    stream = raw()
    stream.open_stream()
    stream.starttls()
    # SCRAM fails on the client-final message, which does not carry the name any more.
    assert stream.auth_scram(alice.localpart, "not the password", "SHA-256").condition == "not-authorized"
    failure_line(server, alice.jid, source_of(stream), "SCRAM-SHA-256", "not-authorized")


def test_failed_plain_login_of_an_unknown_account_is_logged(server, raw):
    stream = raw()
    stream.open_stream()
    stream.starttls()
    assert stream.auth_plain("nobody-here", "guess").condition == "not-authorized"
    failure_line(server, f"nobody-here@{server.domain}", source_of(stream), "PLAIN", "not-authorized")


def test_failure_before_a_name_was_given_says_so(server, raw):
    stream = raw()
    stream.open_stream()
    stream.starttls()
    stream.send(f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1'>{base64.b64encode(b'xyz').decode()}</auth>")
    stream.wait_for(qn(SASL_NS, "failure"))
    failure_line(server, "(none)", source_of(stream), "SCRAM-SHA-1", "malformed-request")


def test_failed_sasl2_login_is_logged_the_same_way(server, raw, alice):
    stream = raw()
    stream.open_stream()
    stream.starttls()
    payload = base64.b64encode(f"\0{alice.localpart}\0wrong".encode()).decode()
    stream.send(
        f"<authenticate xmlns='{SASL2_NS}' mechanism='PLAIN'>"
        f"<initial-response>{payload}</initial-response></authenticate>"
    )
    stream.wait_for(qn(SASL2_NS, "failure"))
    failure_line(server, alice.jid, source_of(stream), "PLAIN", "not-authorized")


def test_names_cannot_forge_log_fields(server, raw):
    stream = raw()
    stream.open_stream()
    stream.starttls()
    assert stream.auth_plain('x" addr=10.9.8.7 reason=ok', "guess").condition == "not-authorized"
    escaped = rf"x\u{{22}}\u{{20}}addr=10.9.8.7\u{{20}}reason=ok@{server.domain}"
    failure_line(server, escaped, source_of(stream), "PLAIN", "not-authorized")


def test_bad_xml_is_logged_with_the_address_and_the_parser_error(server, raw):
    stream = raw()
    stream.open_stream()
    stream.send("<message><body>do-not-log-this-body</body><x></message>")
    stream.read_until_closed(timeout=5)
    assert stream.stream_error() == "not-well-formed"
    addr = re.escape(source_of(stream))
    line = server.wait_for_log(
        rf" INFO .*stream closed for bad XML addr={addr} condition=not-well-formed error=\"not well-formed: "
    )
    assert "do-not-log-this-body" not in line


def test_the_log_has_no_colour_codes_when_not_on_a_terminal(server, raw):
    stream = raw()
    stream.open_stream()
    stream.close()
    text = server.stderr_text()
    assert " INFO " in text and " DEBUG " in text
    assert "\x1b[" not in text

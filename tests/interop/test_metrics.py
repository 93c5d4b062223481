"""Prometheus metrics at ``/metrics`` on the HTTP listener, read with the Prometheus
project's own Python parsers (``prometheus_client``): the values move with logins, failed
logins and messages; the sessions gauge counts the connected clients by transport; only
allowed addresses may read it (the address a trusted proxy forwards is the one checked);
and the Grafana dashboard in ``contrib/grafana`` uses only metrics the server exposes.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOKERY_BIN
from harness import CLIENT_NS, RookeryServer, free_ports, qn, xml_text_escape
from wsclient import WsStream

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "rookery.json"


def fetch(server, *, headers: dict[str, str] | None = None, port: int | None = None):
    """GET /metrics over plain HTTP from 127.0.0.1: (status, content type, body)."""
    url = f"http://{server.host}:{port or server.http_port}/metrics"
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


class Scrape:
    """One scrape, parsed: samples by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[str, list] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples.setdefault(s.name, []).append(s)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value (0 if there is none); labels not given are summed over."""
        return sum(
            s.value
            for s in self.samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(server) -> Scrape:
    status, content_type, body = fetch(server)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return Scrape(body)


def wait_for_value(server, name: str, expected: float, timeout: float = 10.0, **labels: str) -> Scrape:
    """Scrapes until ``name{labels}`` is ``expected`` (sessions end a moment after their
    connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(server)
        if s.value(name, **labels) == expected or time.monotonic() > deadline:
            assert s.value(name, **labels) == expected, (name, labels, s.samples.get(name))
            return s
        time.sleep(0.1)


def message(stream, to: str, body: str) -> None:
    stream.send(f"<message to='{to}' type='chat'><body>{xml_text_escape(body)}</body></message>")


def test_values_move_with_logins_failures_and_messages(server, raw, alice, bob):
    before = wait_for_value(server, "rookery_sessions", 0)
    a = raw()
    a.login(alice, "desk")  # SASL PLAIN
    b = raw()
    b.open_stream()
    b.starttls()
    assert b.auth_scram(bob.localpart, bob.password, "SHA-256").ok
    b.open_stream()
    b.bind("phone")  # sets b.jid: messages go to this full JID (no presence sent)
    wrong = raw()
    wrong.open_stream()
    wrong.starttls()
    assert not wrong.auth_plain(alice.localpart, "not the password").ok

    for i in range(3):
        message(a, b.jid, f"hello {i}")
    for i in range(3):
        b.wait_for(
            lambda e, i=i: e.tag == qn(CLIENT_NS, "message") and e.findtext(qn(CLIENT_NS, "body")) == f"hello {i}",
            what=f"message {i}",
        )

    after = wait_for_value(server, "rookery_sessions", 2)
    # Both clients are XML streams over TCP on the module's host.
    assert after.value("rookery_sessions", host=server.domain, transport="tcp") == 2
    assert after.value("rookery_sessions", transport="websocket") == 0
    assert after.families["rookery_sessions"].type == "gauge"

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("rookery_auth_failures_total") == 1
    assert after.families["rookery_auth_failures"].type == "counter"
    assert moved("rookery_logins_total", mechanism="PLAIN", result="success") == 1
    assert moved("rookery_logins_total", mechanism="PLAIN", result="failure") == 1
    assert moved("rookery_logins_total", mechanism="SCRAM-SHA-256", result="success") == 1
    assert moved("rookery_stanzas_in_total", kind="message") >= 3
    assert moved("rookery_stanzas_out_total", kind="message") >= 3
    # The binds and whatever else the clients asked.
    assert moved("rookery_stanzas_in_total", kind="iq") >= 0
    assert after.value("rookery_client_connections") >= 3

    # Every counter of `rookery stats` is there, described.
    stats = server.cli("stats")
    assert stats.returncode == 0, stats.stderr
    for line in stats.stdout.splitlines():
        m = re.match(r"\s*([a-z_]+)\s*[:=]?\s*\d+\s*$", line)
        if m and m.group(1) not in ("sessions", "uptime_secs"):
            family = after.families.get(f"rookery_{m.group(1)}")
            assert family is not None, m.group(1)
            assert family.documentation, m.group(1)

    a.close()
    wait_for_value(server, "rookery_sessions", 1)


async def test_websocket_sessions_are_counted_as_websocket(server, alice):
    ws = await WsStream.connect(server)
    try:
        await ws.login(alice, "browser")
        # Scraped from a thread: the WebSocket's connection runs on this event loop.
        await asyncio.to_thread(
            wait_for_value, server, "rookery_sessions", 1, host=server.domain, transport="websocket"
        )
    finally:
        await ws.close()
    await asyncio.to_thread(wait_for_value, server, "rookery_sessions", 0, transport="websocket")


def test_process_and_build_figures(server):
    s = scrape(server)
    assert s.value("process_resident_memory_bytes") > 1_000_000
    assert s.value("process_open_fds") > 0
    assert s.value("process_max_fds") >= s.value("process_open_fds")
    assert s.value("process_cpu_seconds_total") > 0
    start = s.value("process_start_time_seconds")
    assert time.time() - 3600 < start <= time.time() + 1, start
    (info,) = s.samples["rookery_build_info"]
    assert info.value == 1 and re.fullmatch(r"\d+\.\d+\.\d+.*", info.labels["version"])


def test_openmetrics_when_asked_for(server):
    status, content_type, body = fetch(server, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert content_type.startswith("application/openmetrics-text"), content_type
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["rookery_auth_failures"].type == "counter"
    assert families["rookery_sessions"].type == "gauge"


def test_the_dashboard_uses_only_exposed_metrics(server):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    exposed = set(scrape(server).samples)
    used = {name for e in exprs for name in re.findall(r"\b((?:rookery|process)_[a-z0-9_]+)\b", e)}
    assert used, exprs
    assert used <= exposed, sorted(used - exposed)
    # What an operator looks for first.
    for name in (
        "rookery_sessions",
        "rookery_logins_total",
        "rookery_stanzas_in_total",
        "rookery_auth_failures_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in used, name


def test_addresses_not_allowed_are_refused(make_server):
    srv = make_server(extra_toml="[metrics]\nallowed = []")
    status, _, body = fetch(srv)
    assert status == 403, body
    # The rest of the HTTP listener is unaffected.
    with urllib.request.urlopen(
        urllib.request.Request(
            f"http://{srv.host}:{srv.http_port}/.well-known/host-meta.json", headers={"Host": srv.domain}
        ),
        timeout=10,
    ) as r:
        assert r.status == 200


def test_a_trusted_proxy_forwards_the_address_that_is_checked(make_server):
    srv = make_server(extra_toml='[http]\ntrusted_proxies = ["127.0.0.1"]')
    # From the proxy itself (no forwarding header): loopback, allowed.
    assert fetch(srv)[0] == 200
    # A request the proxy forwards from a client elsewhere is refused...
    assert fetch(srv, headers={"X-Forwarded-For": "203.0.113.5"})[0] == 403
    assert fetch(srv, headers={"Forwarded": "for=203.0.113.5;proto=https"})[0] == 403
    # ... and a client that writes a loopback address itself does not get through: the
    # rightmost address not of a trusted proxy counts.
    assert fetch(srv, headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.5"})[0] == 403


def test_forwarding_headers_from_untrusted_peers_are_ignored(server):
    # No trusted proxies here: the TCP peer (loopback) is the client, whatever it says.
    assert fetch(server, headers={"X-Forwarded-For": "203.0.113.5"})[0] == 200


def test_disabled_metrics_are_not_served(make_server):
    srv = make_server(extra_toml="[metrics]\nenabled = false")
    assert fetch(srv)[0] == 404


HISTOGRAM = "rookery_storage_operation_duration_seconds"


def storage_calls(s: Scrape, store: str, operation: str) -> float:
    return s.value(f"{HISTOGRAM}_count", store=store, operation=operation)


def test_storage_calls_are_timed_and_the_archive_counted(make_server, raw_factory):
    srv = make_server()
    alice, bob = srv.add_user("alice"), srv.add_user("bob")
    before = scrape(srv)
    # Every store and operation is there from the start (zeros included), with no error.
    assert before.families[HISTOGRAM].type == "histogram"
    for store in ("accounts", "roster", "offline", "user_data", "archive", "rooms", "room_archive", "pubsub", "upload"):
        assert before.value("rookery_storage_errors_total", store=store) == 0, store
        assert any(x.labels.get("store") == store for x in before.samples[f"{HISTOGRAM}_count"]), store
    # Counted when the server started: an empty archive.
    assert [(x.labels, x.value) for x in before.samples["rookery_archive_entries"]] == [
        ({"store": "archive"}, 0),
        ({"store": "room_archive"}, 0),
    ]

    a, b = raw_factory(srv), raw_factory(srv)
    a.login(alice, "desk")
    b.login(bob, "phone")
    for i in range(3):
        message(a, b.jid, f"kept {i}")
    for i in range(3):
        b.wait_for(
            lambda e, i=i: e.tag == qn(CLIENT_NS, "message") and e.findtext(qn(CLIENT_NS, "body")) == f"kept {i}",
            what=f"message {i}",
        )
    after = scrape(srv)
    # Two logins read the credentials; each message was archived for its sender and its
    # recipient (XEP-0313), each append timed once.
    assert storage_calls(after, "accounts", "get_credentials") - storage_calls(before, "accounts", "get_credentials") >= 2
    appended = storage_calls(after, "archive", "append_archive_journaled") - storage_calls(before, "archive", "append_archive_journaled")
    assert appended == 6, appended
    # Buckets are cumulative and end with every call; the sum is a positive duration.
    buckets = [
        x for x in after.samples[f"{HISTOGRAM}_bucket"] if x.labels["store"] == "archive" and x.labels["operation"] == "append_archive_journaled"
    ]
    values = [x.value for x in buckets]
    assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf", buckets
    assert values[-1] == storage_calls(after, "archive", "append_archive_journaled")
    assert 0 < after.value(f"{HISTOGRAM}_sum", store="archive", operation="append_archive_journaled") < 60
    assert after.value("rookery_storage_errors_total") == 0

    # The archive is counted at start (and every few minutes): after a restart on the same
    # database, it holds what was appended.
    a.close()
    b.close()
    rc, _, err = srv.stop()
    assert rc == 0, err
    srv.start()
    # The count runs in a task started with the server: wait for its first figures.
    deadline = time.monotonic() + 10
    restarted = scrape(srv)
    while not restarted.samples.get("rookery_archive_entries") and time.monotonic() < deadline:
        time.sleep(0.05)
        restarted = scrape(srv)
    assert restarted.value("rookery_archive_entries", store="archive") == 6
    assert restarted.value("rookery_archive_entries", store="room_archive") == 0


def test_the_metrics_own_listener_serves_only_metrics(make_server):
    (port,) = free_ports(1)
    srv = make_server(extra_toml=f'[metrics]\naddress = "127.0.0.1:{port}"')
    status, content_type, body = fetch(srv, port=port)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    assert Scrape(body).value("rookery_build_info") == 1
    # Nothing else is served there: no discovery, no WebSocket, no BOSH.
    for path in ("/.well-known/host-meta.json", "/xmpp-websocket", "/http-bind"):
        req = urllib.request.Request(f"http://{srv.host}:{port}{path}", headers={"Host": srv.domain})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 404, path
    # With an address of their own, the metrics leave the HTTP listeners, which go on
    # serving the rest.
    assert fetch(srv)[0] == 404
    with urllib.request.urlopen(
        urllib.request.Request(
            f"http://{srv.host}:{srv.http_port}/.well-known/host-meta.json", headers={"Host": srv.domain}
        ),
        timeout=10,
    ) as r:
        assert r.status == 200
    # The allowed addresses apply there too.
    (port2,) = free_ports(1)
    closed = make_server(extra_toml=f'[metrics]\naddress = "127.0.0.1:{port2}"\nallowed = []')
    assert fetch(closed, port=port2)[0] == 403


def test_a_metrics_address_in_use_stops_the_server(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = RookeryServer(ROOKERY_BIN, tmp_path, extra_toml=f'[metrics]\naddress = "127.0.0.1:{port}"')
        error = srv.start_failure()
        # Asked for and unavailable: the server does not start without it, and says why.
        assert f"metrics.address: cannot listen on 127.0.0.1:{port}" in error, error

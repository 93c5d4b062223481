"""A tiny run of every rookery-load scenario against the real server (over TCP, WebSocket and
BOSH), so the benchmark tool keeps working. This measures nothing: speeds are for bench/run.sh and BENCHMARKS.md."""

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

EXTERNAL = os.environ.get("ROOKERY_INTEROP_EXTERNAL")

LOAD_BIN = Path(
    os.environ.get("ROOKERY_LOAD_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or Path(__file__).resolve().parents[2] / "target") / "debug" / "rookery-load"
)

pytestmark = pytest.mark.skipif(EXTERNAL, reason="drives its own rookery accounts")

# The web-transport scenarios use the plain HTTP listener, as bench/run.sh does: the
# generator on loopback counts as a proxy that terminated TLS (it sends
# X-Forwarded-Proto: https), so WebSocket and BOSH in the clear are accepted.
SERVER_CONFIG = {"extra_toml": '[http]\ntrusted_proxies = ["127.0.0.1"]'}


@pytest.fixture(scope="module")
def accounts(server):
    """Eight accounts named by a pattern, as the load generator expects."""
    prefix = f"load{uuid.uuid4().hex[:6]}u"
    for n in range(8):
        res = server.user("add", f"{prefix}{n}@{server.domain}", "--password", f"password{n}")
        assert res.returncode == 0, res.stderr
    return prefix


def run_load(server, accounts, *args, timeout=60):
    if not LOAD_BIN.exists():
        pytest.fail(f"{LOAD_BIN} is missing: build the workspace first")
    cmd = [
        str(LOAD_BIN),
        "--port", str(server.c2s_port),
        "--http-port", str(server.http_port),
        "--domain", server.domain,
        "--user-pattern", accounts + "{n}",
        "--password-pattern", "password{n}",
        "--mechanism", "SCRAM-SHA-256",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stderr[-3000:]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    assert out["errors"]["total"] == 0, out["errors"]
    return out["results"]


def test_login(server, accounts):
    r = run_load(server, accounts, "login", "--count", "8", "--concurrency", "4", "--users", "8")
    assert r, r


def test_messages_without_loss_or_reordering(server, accounts):
    r = run_load(server, accounts, "messages", "--pairs", "2", "--duration", "1", "--warmup", "0", "--drain", "5")
    assert r["lost"] == 0 and r["out_of_order"] == 0, r
    assert r["received"] == r["sent"] > 0, r


def test_rate_reports_latency(server, accounts):
    r = run_load(server, accounts, "rate", "--pairs", "2", "--rate", "50", "--duration", "1", "--warmup", "0", "--drain", "5")
    assert r["lost"] == 0 and r["latency_ms"]["count"] > 0, r


def test_idle_sessions(server, accounts):
    r = run_load(server, accounts, "idle", "--count", "4", "--hold", "1")
    assert r, r


def test_presence_fanout(server, accounts):
    r = run_load(server, accounts, "fanout", "--contacts", "3", "--repeats", "2", "--interval-ms", "50")
    assert r["changes_complete"] == 2 and r["changes_incomplete"] == 0, r


def test_mam_queries(server, accounts):
    r = run_load(server, accounts, "mam", "--first", "6", "--messages", "300", "--fill-chunk", "100", "--queries", "3", "--page-size", "10")
    assert r["filled"] == r["received"] == 300, r
    assert r["archive_count"] >= 300, r
    assert r["queries"] == 12, r
    for kind in ("last", "start", "with", "after"):
        assert r["latency_ms"][kind]["count"] == 3, r


def test_group_chat_fanout(server, accounts):
    r = run_load(server, accounts, "muc", "--rooms", "2", "--occupants", "3", "--repeats", "3", "--interval-ms", "20")
    assert r["occupants_joined"] == 6 and r["rounds_complete"] == 3 and r["rounds_incomplete"] == 0, r


def test_pep_notifications(server, accounts):
    # Accounts 4..7: apart from the fan-out's rosters (0..3).
    r = run_load(server, accounts, "pep", "--first", "4", "--contacts", "3", "--repeats", "3", "--interval-ms", "20", "--warmup-timeout", "20")
    assert r["supported"] and r["contacts_notified"] == 3, r
    assert r["publishes_complete"] == 3 and r["publishes_incomplete"] == 0, r
    # One verification string for all three contacts: the server asked one of them.
    assert r["disco_info_answered"] == 1, r


def test_websocket_login(server, accounts):
    r = run_load(server, accounts, "ws-login", "--count", "8", "--concurrency", "4", "--users", "8")
    assert r["transport"] == "websocket" and r["logins_ok"] == 8, r


def test_websocket_idle_sessions(server, accounts):
    r = run_load(server, accounts, "ws-idle", "--count", "4", "--hold", "1")
    assert r["established"] == 4 and r["lost_while_held"] == 0, r


def test_bosh_round_trips(server, accounts):
    r = run_load(server, accounts, "bosh-rtt", "--sessions", "3", "--rate", "30", "--duration", "1", "--warmup", "0", "--drain", "5")
    assert r["sessions"] == 3 and r["lost"] == 0, r
    assert r["answered"] == r["sent"] == r["latency_ms"]["count"] > 0, r

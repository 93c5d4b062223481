"""A tiny run of every rookery-load scenario against the real server (over TCP, WebSocket and
BOSH; `s2s` between two federating Rookery processes), so the benchmark tool keeps working. This measures nothing: speeds are for bench/run.sh and BENCHMARKS.md."""

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


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    """Two Rookery processes federating (`rookery.test` and `other.test`, each finding the other
    through `[s2s.hosts]`, dialback over TLS as in test_s2s.py), with two accounts on each."""
    from conftest import ROOKERY_BIN
    from harness import RookeryServer, ServerStartError

    tmp = tmp_path_factory.mktemp("s2s-load")
    a = RookeryServer(ROOKERY_BIN, tmp / "a", domain="rookery.test", s2s=True)
    b = RookeryServer(ROOKERY_BIN, tmp / "b", domain="other.test", s2s=True)
    for me, peer in ((a, b), (b, a)):
        me.config_overrides["extra_toml"] = (
            f'[s2s]\nconnect_timeout_secs = 2\n[s2s.hosts]\n"{peer.domain}" = "127.0.0.1:{peer.s2s_port}"\n'
        )
    try:
        a.start()
        b.start()
    except ServerStartError as e:
        a.kill()
        b.kill()
        pytest.fail(str(e), pytrace=False)
    try:
        prefix = f"fed{uuid.uuid4().hex[:6]}u"
        for server in (a, b):
            for n in range(2):
                res = server.user("add", f"{prefix}{n}@{server.domain}", "--password", f"password{n}")
                assert res.returncode == 0, res.stderr
        yield a, b, prefix
    finally:
        a.kill()
        b.kill()


def test_s2s_messages_between_two_servers(federated):
    a, b, prefix = federated
    r = run_load(a, prefix, "--server-pid", str(a.proc.pid), "s2s", "--peer-port", str(b.c2s_port),
                 "--peer-domain", b.domain, "--peer-server-pid", str(b.proc.pid), "--pairs", "2",
                 "--duration", "1", "--warmup", "1", "--drain", "15", timeout=90)
    assert r["lost"] == 0 and r["out_of_order"] == 0 and r["starved_directions"] == 0, r
    assert r["received"] == r["sent"] > 0 and r["msgs_per_s"] > 0, r
    assert r["latency_ms"]["count"] > 0, r
    assert r["peer_server"]["cpu_s"] >= 0, r


def test_s2s_fixed_rate_both_ways(federated):
    a, b, prefix = federated
    r = run_load(a, prefix, "s2s", "--peer-port", str(b.c2s_port), "--peer-domain", b.domain,
                 "--pairs", "2", "--both-ways", "--rate", "40", "--duration", "1", "--warmup", "1",
                 "--drain", "15", timeout=90)
    assert r["lost"] == 0 and r["out_of_order"] == 0 and r["skipped_sends"] == 0, r
    # Every message is a latency sample at a fixed rate; both ways: 4 directions.
    assert r["received"] == r["sent"] > 0 and r["latency_ms"]["count"] > 0, r


def test_turn_relay_benchmark(tmp_path):
    """bench/turn_relay.py, tiny: the built-in TURN server and coturn each relay a few
    datagrams for turnutils_uclient, and the report has a row for each."""
    from conftest import ROOKERY_BIN

    script = Path(__file__).resolve().parents[2] / "bench" / "turn_relay.py"
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run(
        ["python3", str(script), "run", "--rookery-bin", str(ROOKERY_BIN), "--out", str(out), "--work", str(work),
         "--reps", "1", "--sessions", "2", "--messages", "50", "--length", "200", "--cpu-server", "", "--cpu-client", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "raw-turn.jsonl").read_text().splitlines()]
    assert [r["server"] for r in records] == ["rookery", "coturn"]
    for r in records:
        assert r["exit"] == 0 and r["sent_bytes"][0] == str(2 * 50 * 200), r
        assert r["server_cpu_secs"] >= 0
    report = subprocess.run(["python3", str(script), "report", str(out)], capture_output=True, text=True, timeout=30)
    assert report.returncode == 0, report.stderr
    assert "| Rookery (built-in) |" in report.stdout and "| coturn |" in report.stdout

"""contrib/systemd/rookery.service: systemd accepts it (`systemd-analyze verify`, with the
binary's path pointed at this build), and the commands it runs work as written against a
real configuration: the check before start, the server, a reload while it runs, and a
refused reload of a broken file."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import ROOKERY_BIN
from harness import free_ports

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "rookery.service"
BINARY = "/usr/local/bin/rookery"
CONFIG = "/etc/rookery/rookery.toml"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def command(value: str, config: Path) -> list[str]:
    return value.replace(BINARY, str(ROOKERY_BIN)).replace(CONFIG, str(config)).split()


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd; test.sh installs it)"
    unit = tmp_path / "rookery.service"
    unit.write_text(UNIT.read_text().replace(BINARY, str(ROOKERY_BIN)))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # Nothing it warns about in this unit either (an unknown or misspelt directive is a warning).
    assert "rookery.service" not in done.stderr, done.stderr


def test_the_units_commands_run_as_written(tmp_path):
    d = directives(UNIT.read_text())
    for key in ("ExecStartPre", "ExecStart", "ExecReload"):
        assert len(d[key]) == 1 and d[key][0].startswith(f"{BINARY} --config {CONFIG} "), d[key]
    assert d["ExecStartPre"][0].endswith(" check")
    assert d["ExecStart"][0].endswith(" serve")
    assert d["ExecReload"][0].endswith(" reload")
    assert d["ReadWritePaths"] == ["/var/lib/rookery"] and d["StateDirectory"] == ["rookery"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]

    (port,) = free_ports(1)
    config = tmp_path / "rookery.toml"
    good = f"""data_dir = "{tmp_path / 'data'}"
log_level = "info"
[[listener]]
kind = "c2s"
address = "127.0.0.1:{port}"
[[host]]
domain = "localhost"
"""
    config.write_text(good)
    pre = subprocess.run(command(d["ExecStartPre"][0], config), capture_output=True, text=True, timeout=60)
    assert pre.returncode == 0, pre.stderr
    server = subprocess.Popen(command(d["ExecStart"][0], config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reload = command(d["ExecReload"][0], config)
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(reload, capture_output=True, text=True, timeout=30)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert re.search(r"certificates read again; changed: \[\], unchanged: \[localhost\]", done.stdout), done.stdout
        config.write_text(good.replace('log_level = "info"', "log_level = 7"))
        refused = subprocess.run(reload, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1 and "log_level" in refused.stderr, refused.stderr
        assert server.poll() is None, "the server runs on"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0

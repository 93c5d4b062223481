"""A throwaway Prosody (Debian's ``prosody`` package, 0.12) for tests that need an XMPP
server with WebSocket (RFC 7395), BOSH and HTTP upload (XEP-0363) endpoints.

``ProsodyServer`` writes its own configuration, certificate, data and log into a
temporary directory, listens on free loopback ports only, and runs in the foreground
as the current user. It offers what ``harness.connect_client`` and the browser tests use:
``host``, ``c2s_port``, ``tls_port``, ``domain``, ``cert_path``, ``add_user``, and the
``websocket_url`` and ``bosh_url`` a browser connects to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from harness import ServerStartError, User, _die_with_parent, free_ports, unique_localpart

PROSODY_BIN = os.environ.get("PROSODY_BIN") or shutil.which("prosody") or "/usr/bin/prosody"
PROSODYCTL_BIN = os.environ.get("PROSODYCTL_BIN") or shutil.which("prosodyctl") or "/usr/bin/prosodyctl"


def _lua_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_certificate(cert_path: Path, key_path: Path, names: list[str]) -> None:
    """A self-signed certificate (also its own CA) for ``names``, made with openssl."""
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            f"/CN={names[0]}",
            "-addext",
            f"subjectAltName={san}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-keyout",
            str(key_path),
            "-out",
            str(cert_path),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def render_prosody_config(
    *,
    workdir: Path,
    domain: str,
    c2s_port: int,
    tls_port: int,
    http_port: int,
    https_port: int,
    cert_path: Path,
    key_path: Path,
    upload: bool,
) -> str:
    ssl = f"{{ certificate = {_lua_str(cert_path)}; key = {_lua_str(key_path)}; }}"
    upload_component = (
        f"""
-- XEP-0363 file upload, served on the same HTTPS port under /file_share.
Component {_lua_str("upload." + domain)} "http_file_share"
	http_host = {_lua_str(domain)}
	http_file_share_size_limit = 1048576
	ssl = {ssl}
"""
        if upload
        else ""
    )
    return f"""-- Prosody configuration written by the interop tests (tests/interop/prosody.py).
run_as_root = true
daemonize = false
pidfile = {_lua_str(workdir / "prosody.pid")}
data_path = {_lua_str(workdir / "data")}
certificates = {_lua_str(workdir / "certs")}
plugin_paths = {{ }}
admins = {{ }}

-- Roughly what Rookery offers a client (Converse waits for the blocking list before it
-- opens a chat with someone not in the roster), and the two browser transports.
modules_enabled = {{
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "version"; "posix";
	"carbons"; "blocklist"; "private"; "pep"; "bookmarks"; "vcard_legacy"; "smacks"; "mam";
	"websocket"; "bosh";
}}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; "dialback" }}

interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ {tls_port} }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ {https_port} }}
https_interfaces = {{ "127.0.0.1" }}
http_default_host = {_lua_str(domain)}
https_ssl = {ssl}

c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"

-- Browsers: the page that runs the client is served from another origin. Prosody 0.12
-- allows that by default (and logs that these two options are deprecated); older
-- versions need them.
consider_websocket_secure = true
cross_domain_websocket = true
cross_domain_bosh = true

log = {{
	{{ levels = {{ min = "info" }}, to = "file", filename = {_lua_str(workdir / "prosody.log")} }};
}}

ssl = {ssl}

VirtualHost {_lua_str(domain)}
	ssl = {ssl}
{upload_component}"""


class ProsodyServer:
    """``prosody -F`` with a private configuration, on free loopback ports."""

    host = "127.0.0.1"
    external = False

    def __init__(self, workdir: Path, *, domain: str = "localhost", upload: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)
        self.domain = domain
        self.upload = upload
        self.upload_domain = f"upload.{domain}" if upload else None
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.cert_path = self.workdir / f"{domain}.pem"
        self.key_path = self.workdir / f"{domain}.key"
        self.log_path = self.workdir / "prosody.log"
        self.output_path = self.workdir / "prosody.out"
        self.proc: subprocess.Popen | None = None
        self.c2s_port = self.tls_port = self.http_port = self.https_port = 0

    # -- what clients connect to -------------------------------------------

    @property
    def websocket_url(self) -> str:
        return f"wss://{self.domain}:{self.https_port}/xmpp-websocket"

    @property
    def bosh_url(self) -> str:
        return f"https://{self.domain}:{self.https_port}/http-bind"

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "ProsodyServer":
        for binary in (PROSODY_BIN, PROSODYCTL_BIN):
            if not Path(binary).is_file():
                raise ServerStartError(f"{binary} not found: apt-get install prosody (test.sh does)")
        names = [self.domain] + ([self.upload_domain] if self.upload_domain else [])
        write_certificate(self.cert_path, self.key_path, names)
        for attempt in range(3):
            self.c2s_port, self.tls_port, self.http_port, self.https_port = free_ports(4, self.host)
            self.config_path.write_text(
                render_prosody_config(
                    workdir=self.workdir,
                    domain=self.domain,
                    c2s_port=self.c2s_port,
                    tls_port=self.tls_port,
                    http_port=self.http_port,
                    https_port=self.https_port,
                    cert_path=self.cert_path,
                    key_path=self.key_path,
                    upload=self.upload,
                )
            )
            try:
                self._spawn_and_wait(timeout)
                return self
            except ServerStartError:
                log = self.log_tail()
                self.kill()
                # A port picked as free may have been taken before Prosody bound it.
                if attempt < 2 and "in use" in log.lower():
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, timeout: float) -> None:
        # A fresh log for each attempt: its lines tell when the ports are open.
        with contextlib.suppress(FileNotFoundError):
            self.log_path.rename(self.log_path.with_suffix(".log.old"))
        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(
                [PROSODY_BIN, "--config", str(self.config_path), "-F"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        ports = [self.c2s_port, self.tls_port, self.http_port, self.https_port]
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"prosody exited ({self.proc.returncode}) at start:\n{self.log_tail()}"
                )
            try:
                log = self.log_path.read_text(errors="replace")
            except OSError:
                log = ""
            # Prosody logs a port it could not open ("... in use ...") and runs on without it.
            if "Failed to open server port" in log:
                raise ServerStartError(f"prosody could not open its ports:\n{self.log_tail()}")
            activated = all(f"]:{port}\n" in log for port in ports)
            if activated and all(_accepts(self.host, port) for port in ports):
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"prosody did not listen on {ports} within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, chars: int = 6000) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-chars:])
        return "\n".join(parts) or "(no log)"

    # -- accounts ----------------------------------------------------------

    def add_user(self, prefix: str = "user", password: str | None = None) -> User:
        user = User(unique_localpart(prefix), self.domain, password or f"pw-{uuid.uuid4().hex[:12]}")
        res = subprocess.run(
            [
                PROSODYCTL_BIN,
                "--config",
                str(self.config_path),
                "register",
                user.localpart,
                user.domain,
                user.password,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.workdir,
        )
        assert (
            res.returncode == 0
        ), f"prosodyctl register {user.jid} failed ({res.returncode}): {res.stderr}{res.stdout}"
        return user


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

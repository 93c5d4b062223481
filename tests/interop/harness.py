"""Helpers for Rookery's interop tests.

* ``RookeryServer`` runs ``rookery serve`` from a private config in a temp dir;
  ``ExternalServer`` points the same tests at an already running XMPP server
  (see ``ROOKERY_INTEROP_EXTERNAL`` in conftest.py).
* ``Client`` / ``connect_client`` / ``session`` drive slixmpp clients.
* ``RawStream`` speaks XMPP by hand over a plain socket (STARTTLS, direct TLS,
  SASL PLAIN and SCRAM with channel binding, resource binding), so tests can
  send arbitrary bytes and look at exactly what the server answers.

Every wait is bounded by a deadline; every process started is stopped.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import dataclasses
import hashlib
import hmac
import os
import re
import select
import shlex
import signal
import socket
import ssl
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

# --------------------------------------------------------------------------
# Namespaces

STREAM_NS = "http://etherx.jabber.org/streams"
STREAM_ERR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"
SASL_CB_NS = "urn:xmpp:sasl-cb:0"
CLIENT_NS = "jabber:client"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
PING_NS = "urn:xmpp:ping"
VERSION_NS = "jabber:iq:version"
TIME_NS = "urn:xmpp:time"


def qn(ns: str, name: str) -> str:
    """Clark notation name, as ElementTree reports tags."""
    return f"{{{ns}}}{name}"


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def namespace_of(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def stanza_error_condition(stanza: ET.Element) -> tuple[str | None, str | None]:
    """(error type, defined condition) of an error stanza, or (None, None)."""
    err = stanza.find(qn(CLIENT_NS, "error"))
    if err is None:
        return None, None
    for child in err:
        if namespace_of(child.tag) == STANZA_ERR_NS and local_name(child.tag) != "text":
            return err.get("type"), local_name(child.tag)
    return err.get("type"), None


def xml_attr_escape(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;").replace('"', "&quot;")
    )


def stream_header(
    to: str | None,
    *,
    content_ns: str = CLIENT_NS,
    stream_ns: str = STREAM_NS,
    version: str | None = "1.0",
    xml_declaration: bool = True,
    from_: str | None = None,
) -> str:
    attrs = []
    if to is not None:
        attrs.append(f"to='{xml_attr_escape(to)}'")
    if from_ is not None:
        attrs.append(f"from='{xml_attr_escape(from_)}'")
    if version is not None:
        attrs.append(f"version='{version}'")
    attrs.append("xml:lang='en'")
    attrs.append(f"xmlns='{content_ns}'")
    attrs.append(f"xmlns:stream='{stream_ns}'")
    decl = "<?xml version='1.0'?>" if xml_declaration else ""
    return f"{decl}<stream:stream {' '.join(attrs)}>"


# --------------------------------------------------------------------------
# Ports, users, config


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago (STUN/TURN servers started by tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports that were free a moment ago (bind to port 0, then close)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback_source() -> str:
    """A random address in 127.0.0.0/8 to connect from, so that per-address state
    on the server (such as the slow-down of failed logins) does not carry over
    from one test's connection to another's."""
    import random

    return f"127.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def unique_localpart(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass(frozen=True)
class User:
    localpart: str
    domain: str
    password: str

    @property
    def jid(self) -> str:
        return f"{self.localpart}@{self.domain}"

    def full(self, resource: str) -> str:
        return f"{self.jid}/{resource}"


class ServerStartError(RuntimeError):
    pass


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    *,
    c2s_port: int,
    tls_port: int,
    domain: str = "localhost",
    data_dir: str = "data",
    log_level: str = "debug",
    require_starttls: bool | None = True,
    max_stanza_bytes: int | None = 65536,
    unauthenticated_timeout_secs: int | None = 5,
    modules: Iterable[str] | None = None,
    extra_hosts: Iterable[str] = (),
    host: str = "127.0.0.1",
    extra_limits: dict[str, int] | None = None,
    host_extra: str = "",
    extra_toml: str = "",
    https_port: int | None = None,
    http_port: int | None = None,
    s2s_port: int | None = None,
    component_port: int | None = None,
    components: dict[str, str] | None = None,
) -> str:
    """The server's TOML. ``extra_limits`` adds keys to ``[limits]`` (e.g.
    ``{"max_roster_items": 2}``); ``host_extra`` is TOML appended to the first host's
    ``[[host]]`` block (keys, then sub-tables such as ``[host.contact]``); ``extra_toml``
    adds top-level tables (e.g. ``"[stream_management]\nresume_timeout_secs = 2"``).
    ``components`` maps external component domains to their secrets (XEP-0114), served on
    a ``component`` listener at ``component_port``."""
    lines = [f"data_dir = {toml_str(data_dir)}", f"log_level = {toml_str(log_level)}", ""]
    if require_starttls is not None:
        lines += ["[tls]", f"require_starttls = {'true' if require_starttls else 'false'}", ""]
    limits = []
    if max_stanza_bytes is not None:
        limits.append(f"max_stanza_bytes = {int(max_stanza_bytes)}")
    if unauthenticated_timeout_secs is not None:
        limits.append(f"unauthenticated_timeout_secs = {int(unauthenticated_timeout_secs)}")
    for key, value in (extra_limits or {}).items():
        limits.append(f"{key} = {int(value)}")
    if limits:
        lines += ["[limits]", *limits, ""]
    if extra_toml:
        lines += [extra_toml.strip(), ""]
    for component_domain, secret in (components or {}).items():
        lines += [f"[component.{toml_str(component_domain)}]", f"secret = {toml_str(secret)}", ""]
    lines += [
        "[[listener]]",
        'kind = "c2s"',
        f"address = {toml_str(f'{host}:{c2s_port}')}",
        "",
        "[[listener]]",
        'kind = "c2s-direct-tls"',
        f"address = {toml_str(f'{host}:{tls_port}')}",
        "",
    ]
    for kind, port in (("https", https_port), ("http", http_port), ("s2s", s2s_port), ("component", component_port)):
        if port is not None:
            lines += ["[[listener]]", f'kind = "{kind}"', f"address = {toml_str(f'{host}:{port}')}", ""]
    for d in (domain, *extra_hosts):
        lines += ["[[host]]", f"domain = {toml_str(d)}"]
        if modules is not None and d == domain:
            lines.append("modules = [" + ", ".join(toml_str(m) for m in modules) + "]")
        if host_extra and d == domain:
            lines.append(host_extra.strip())
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Server processes

_LIVE_SERVERS: set["RookeryServer"] = set()


@atexit.register
def _kill_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        server.kill()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class RookeryServer:
    """A ``rookery serve`` process with its own config, data dir and ports."""

    host = "127.0.0.1"
    external = False

    def __init__(self, binary: Path, workdir: Path, *, domain: str = "localhost", **config):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        # Server-to-server: a port chosen now, so that peers can be configured with it
        # before this server starts.
        self.s2s_port = free_ports(1, self.host)[0] if config.pop("s2s", False) else None
        self.config_overrides = config
        self.config_path = self.workdir / "rookery.toml"
        self.data_dir = self.workdir / "data"
        self.cert_path = self.data_dir / "certs" / f"{domain}.pem"
        self.key_path = self.data_dir / "certs" / f"{domain}.key"
        # Run from elsewhere: relative paths in the config are relative to its directory.
        self.cwd = self.workdir / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.c2s_port = 0
        self.tls_port = 0
        # WebSocket (RFC 7395) and XEP-0156 discovery: HTTPS, and plain HTTP.
        self.https_port = 0
        self.http_port = 0
        # External components (XEP-0114): a listener only when ``components`` is configured.
        self.component_port = 0
        self.unauthenticated_timeout_secs = config.get("unauthenticated_timeout_secs", 5)
        self.max_stanza_bytes = config.get("max_stanza_bytes", 65536)

    # -- lifecycle ---------------------------------------------------------

    def write_config(self) -> None:
        with_components = self.config_overrides.get("components") is not None
        ports = free_ports(5 if with_components else 4, self.host)
        self.c2s_port, self.tls_port, self.https_port, self.http_port = ports[:4]
        self.component_port = ports[4] if with_components else 0
        self.config_path.write_text(
            render_config(
                c2s_port=self.c2s_port,
                tls_port=self.tls_port,
                https_port=self.https_port,
                http_port=self.http_port,
                s2s_port=self.s2s_port,
                component_port=self.component_port or None,
                domain=self.domain,
                host=self.host,
                **self.config_overrides,
            )
        )

    def start(self, deadline_secs: float = 30.0) -> "RookeryServer":
        if not self.binary.is_file():
            raise ServerStartError(
                f"rookery binary not found at {self.binary} (build it with `cargo build --workspace` "
                "or set ROOKERY_BIN)"
            )
        for attempt in range(3):
            self.write_config()
            try:
                self._spawn_and_wait(deadline_secs)
                return self
            except ServerStartError:
                err = self.stderr_text()
                self.kill()
                # A port picked as free can be taken by someone else before the
                # server binds it: retry with new ports in that case only.
                if attempt < 2 and re.search(r"in use|AddrInUse", err, re.IGNORECASE):
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, deadline_secs: float) -> None:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                preexec_fn=_die_with_parent,
            )
        _LIVE_SERVERS.add(self)
        deadline = time.monotonic() + deadline_secs
        pending = {self.c2s_port, self.tls_port, self.https_port, self.http_port}
        if self.s2s_port:
            pending.add(self.s2s_port)
        if self.component_port:
            pending.add(self.component_port)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"rookery serve exited with {rc} before listening.\n--- stderr ---\n{self.stderr_text()}"
                )
            for port in list(pending):
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        pending.discard(port)
                except OSError:
                    pass
            if not pending and self.cert_path.is_file():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"rookery serve not ready after {deadline_secs}s (ports still closed: {sorted(pending)}, "
                    f"certificate present: {self.cert_path.is_file()}).\n--- stderr ---\n{self.stderr_text()}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int | None, str, str]:
        """Send ``sig``, wait up to ``timeout`` s; return (exit code or None if it hung, stdout, stderr).

        A server that did not exit in time is killed, and the exit code reported is None.
        """
        rc: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    rc = self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    rc = None
                    self.kill()
            else:
                rc = self.proc.returncode
        _LIVE_SERVERS.discard(self)
        return rc, self.stdout_text(), self.stderr_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _LIVE_SERVERS.discard(self)

    def start_failure(self, deadline_secs: float = 10.0) -> str:
        """Starts a server that must refuse to start (a setting it cannot honour): the
        error it stopped with. One that starts is stopped, and the test fails."""
        try:
            self.start(deadline_secs=deadline_secs)
        except ServerStartError as e:
            return str(e)
        finally:
            self.kill()
        raise AssertionError("the server started")

    # -- output ------------------------------------------------------------

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        text = self.stdout_text() + self.stderr_text()
        return text[-chars:]

    # What a browser client connects to (test_browser.py): the HTTPS listener's endpoints,
    # named by the domain (the certificate's name).
    upload = True

    @property
    def websocket_url(self) -> str:
        return f"wss://{self.domain}:{self.https_port}/xmpp-websocket"

    @property
    def bosh_url(self) -> str:
        return f"https://{self.domain}:{self.https_port}/http-bind"

    def wait_for_log(self, pattern: str, after: int = 0, timeout: float = 10.0) -> str:
        """The first line of the server's log, from offset ``after``, matching the regular
        expression ``pattern``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr_text()[after:].splitlines():
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    # -- CLI ---------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``rookery --config <this config> ARGS...`` and return the completed process."""
        return subprocess.run(
            [str(self.binary), "--config", str(self.config_path), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
        )

    def user(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return self.cli("user", *args, input=input, timeout=timeout)

    def add_user(self, prefix: str = "user", password: str | None = None) -> User:
        user = User(unique_localpart(prefix), self.domain, password or f"pw-{uuid.uuid4().hex[:12]}")
        res = self.user("add", user.jid, "--password", user.password)
        assert res.returncode == 0, f"`user add {user.jid}` failed ({res.returncode}): {res.stderr}{res.stdout}"
        return user


class ExternalServer:
    """An XMPP server that is already running (for comparing servers).

    ``spec`` is ``HOST:C2S_PORT:TLS_PORT:DOMAIN:CA_CERT_FILE``; ``cli_prefix`` is a
    command that accepts the same ``user ...`` arguments as ``rookery``.
    """

    external = True

    def __init__(self, spec: str, cli_prefix: str | None):
        host, c2s, tls, domain, cert = spec.split(":", 4)
        self.host = host
        self.c2s_port = int(c2s)
        self.tls_port = int(tls)
        self.domain = domain
        self.cert_path = Path(cert)
        self.data_dir = None
        self.cli_prefix = shlex.split(cli_prefix) if cli_prefix else None
        self.unauthenticated_timeout_secs = int(os.environ.get("ROOKERY_INTEROP_EXTERNAL_TIMEOUT", "5"))
        self.max_stanza_bytes = int(os.environ.get("ROOKERY_INTEROP_EXTERNAL_MAX_STANZA", "65536"))

    def cli(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        if not self.cli_prefix:
            raise RuntimeError("ROOKERY_INTEROP_EXTERNAL_CLI is not set")
        return subprocess.run(
            [*self.cli_prefix, *args], input=input or "", capture_output=True, text=True, timeout=timeout
        )

    user = RookeryServer.user
    add_user = RookeryServer.add_user

    def log_tail(self, chars: int = 6000) -> str:
        return "(external server: no log)"

    def stop(self, *a, **kw):
        raise RuntimeError("cannot stop an external server")

    def kill(self) -> None:
        pass


def client_ssl_context(cafile: Path | str) -> ssl.SSLContext:
    """Trust exactly the server's certificate, and check that it names the domain."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --------------------------------------------------------------------------
# slixmpp clients


class LoginError(Exception):
    def __init__(self, reason: str, client: "Client"):
        super().__init__(
            f"{reason} (auth failures: {client.auth_failures}, stream errors: {client.stream_errors})"
        )
        self.reason = reason
        self.auth_failures = list(client.auth_failures)
        self.stream_errors = list(client.stream_errors)


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what happens to it, for assertions."""

    def __init__(self, jid: str, password: str, *, cafile: Path | str, mech: str | None = None):
        plugin_config = {}
        if mech:
            plugin_config["feature_mechanisms"] = {"use_mech": mech}
        super().__init__(jid, password, plugin_config=plugin_config)
        # Trust exactly the server's certificate, with host name checking.
        self.ssl_context = client_ssl_context(cafile)
        self.whitespace_keepalive = False
        for plugin in ("xep_0030", "xep_0092", "xep_0199", "xep_0202"):
            self.register_plugin(plugin)

        self.inbox: asyncio.Queue = asyncio.Queue()
        self.auth_failures: list[str] = []
        self.stream_errors: list[str] = []
        self.stream_error_stanzas: list = []
        self.disconnected_event = asyncio.Event()
        self.outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        self.register_handler(
            Callback("interop inbox", MatchXPath(f"{{{CLIENT_NS}}}message"), self.inbox.put_nowait)
        )
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", lambda *_: self._fail("authentication failed"))
        self.add_event_handler("no_auth", lambda *_: self._fail("no usable SASL mechanism"))
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("connection_failed", lambda e: self._fail(f"connection failed: {e}"))
        self.add_event_handler("ssl_invalid_chain", self._on_invalid_chain)
        self.add_event_handler("disconnected", self._on_disconnected)

    def _fail(self, reason: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(reason)
        # Never let slixmpp retry in the background.
        self.cancel_connection_attempt()

    def _on_session_start(self, _event) -> None:
        if not self.outcome.done():
            self.outcome.set_result(None)

    def _on_failed_auth(self, failure) -> None:
        self.auth_failures.append(failure["condition"])

    def _on_stream_error(self, error) -> None:
        self.stream_errors.append(error["condition"])
        self.stream_error_stanzas.append(error)

    def _on_invalid_chain(self, exc) -> None:
        self._fail(f"TLS certificate not trusted: {exc}")
        self.abort()

    def _on_disconnected(self, reason) -> None:
        self.disconnected_event.set()
        self._fail(f"disconnected before session start: {reason}")

    @property
    def used_mechanism(self) -> str | None:
        mech = getattr(self.plugin["feature_mechanisms"], "mech", None)
        return getattr(mech, "name", None)

    async def next_message(self, timeout: float = 5.0, predicate: Callable | None = None):
        """The next received <message/> (matching predicate, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.boundjid}: no matching message within {timeout}s")
            msg = await asyncio.wait_for(self.inbox.get(), remaining)
            if predicate is None or predicate(msg):
                return msg

    async def iq(self, to: str | None, itype: str, payload: str | None, timeout: float = 5.0):
        """Send an IQ with the given child XML; return the reply, error or not."""
        iq = self.Iq()
        iq["type"] = itype
        if to:
            iq["to"] = to
        if payload:
            iq.append(ET.fromstring(payload))
        try:
            return await iq.send(timeout=timeout)
        except IqError as e:
            return e.iq
        except IqTimeout as e:
            raise TimeoutError(f"no reply to IQ {iq['id']} to {to} within {timeout}s") from e

    async def wait_disconnected(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.disconnected_event.wait(), timeout)

    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnect(wait=1.0), 3.0)
        self.abort()


async def connect_client(
    server,
    jid: str,
    password: str,
    *,
    mech: str | None = None,
    direct_tls: bool = False,
    timeout: float = 15.0,
    plugins: Iterable[str] = (),
) -> Client:
    """Connect and log in; return the client once the session has started.

    ``direct_tls`` selects XEP-0368 direct TLS on the server's TLS port, else
    STARTTLS on the c2s port. ``mech`` forces one SASL mechanism. Raises
    ``LoginError`` (with the SASL failure conditions and stream errors seen)
    if the session does not start within ``timeout`` seconds.
    """
    client = Client(jid, password, cafile=server.cert_path, mech=mech)
    # Registered before connecting, so plugins that act on stream features see them.
    for plugin in plugins:
        client.register_plugin(plugin)
    client.enable_plaintext = False
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls
    client.connect(server.host, server.tls_port if direct_tls else server.c2s_port)
    try:
        reason = await asyncio.wait_for(asyncio.shield(client.outcome), timeout)
    except asyncio.TimeoutError:
        reason = f"no session within {timeout}s"
    if reason is not None:
        await client.close()
        raise LoginError(reason, client)
    return client


@contextlib.asynccontextmanager
async def session(server, user: User, resource: str | None = None, **kwargs):
    """``async with session(server, user) as client:`` — a logged-in client, closed afterwards."""
    jid = user.full(resource) if resource else user.jid
    client = await connect_client(server, jid, user.password, **kwargs)
    try:
        yield client
    finally:
        await client.close()


# --------------------------------------------------------------------------
# Raw streams


class StreamClosed(Exception):
    pass


class _Transport:
    """A plain TCP or stdlib-TLS socket with deadline-based reads."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def sendall(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        """Up to 64 KiB; b'' at EOF; None if nothing arrived within ``timeout``."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            timeout = max(timeout, 0.001)
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            return self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return None
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            return b""

    def peer_certificate_der(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def export_keying_material(self, label: bytes, length: int, context: bytes | None) -> bytes:
        raise NotImplementedError("the ssl module cannot export keying material; use tls_impl='pyopenssl'")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _OpenSSLTransport:
    """TLS through pyOpenSSL, which (unlike the ssl module) exports keying material (RFC 5705),
    needed for the tls-exporter channel binding (RFC 9266)."""

    def __init__(self, sock: socket.socket, cafile: Path | str, server_name: str, timeout: float):
        from cryptography import x509
        from OpenSSL import SSL

        self._SSL = SSL
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(str(cafile))
        ctx.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _errno, _depth, ok: bool(ok))
        self.sock = sock
        sock.setblocking(False)
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(server_name.encode())
        self.conn.set_connect_state()
        deadline = time.monotonic() + timeout
        self._retry(self.conn.do_handshake, deadline)
        # pyOpenSSL checks the chain only: check the name like ssl's check_hostname.
        cert = x509.load_der_x509_certificate(self.peer_certificate_der())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        if server_name not in names:
            raise ssl.SSLCertVerificationError(f"certificate names {names}, not {server_name}")

    def _retry(self, op, deadline: float):
        SSL = self._SSL
        while True:
            try:
                return op()
            except SSL.WantReadError:
                wait_r, wait_w = [self.sock], []
            except SSL.WantWriteError:
                wait_r, wait_w = [], [self.sock]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("TLS operation timed out")
            select.select(wait_r, wait_w, [], remaining)

    def sendall(self, data: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                sent = self._retry(lambda: self.conn.send(bytes(view[:16384])), deadline)
            except self._SSL.SysCallError as e:
                raise BrokenPipeError(str(e)) from e
            view = view[sent:]

    def recv(self, timeout: float) -> bytes | None:
        SSL = self._SSL
        try:
            return self._retry(lambda: self.conn.recv(65536), time.monotonic() + timeout)
        except socket.timeout:
            return None
        except (SSL.ZeroReturnError, SSL.SysCallError, ConnectionResetError):
            return b""
        except SSL.Error:
            return b""

    def peer_certificate_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.conn.get_peer_certificate(as_cryptography=True).public_bytes(Encoding.DER)

    def tls_version(self) -> str | None:
        return self.conn.get_protocol_version_name()

    def export_keying_material(self, label: bytes, length: int, context: bytes | None) -> bytes:
        return self.conn.export_keying_material(label, length, context)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.shutdown()
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclasses.dataclass
class SaslResult:
    ok: bool
    condition: str | None  # SASL failure condition when not ok
    element: ET.Element | None  # <success/> or <failure/>
    server_signature_ok: bool | None = None  # SCRAM only: did v= verify?


class RawStream:
    """A hand-driven XMPP client stream over a socket.

    Everything received is kept in ``data`` (decrypted, as bytes) and ``text``;
    the children of the server's current stream are parsed into ``elements``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        domain: str,
        cafile: Path | str,
        direct_tls: bool = False,
        timeout: float = 5.0,
        tls_impl: str = "stdlib",
        source_address: str | None = None,
    ):
        self.host, self.port, self.domain, self.cafile = host, port, domain, cafile
        self.timeout = timeout
        self.tls_impl = tls_impl
        self.tls = False
        self.features: ET.Element | None = None
        self.jid: str | None = None
        self.data = bytearray()
        self.closed = False  # the peer closed the connection
        self.stream_closed = False  # the peer sent </stream:stream>
        self.elements: list[ET.Element] = []
        self.stream_attrs: dict | None = None
        self.parse_error: str | None = None
        self._cursor = 0
        self._ids = 0
        source = (source_address, 0) if source_address else None
        sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = _Transport(sock)
        self._reset_parser()
        if direct_tls:
            self._start_tls_layer()

    # -- plumbing ----------------------------------------------------------

    def __enter__(self) -> "RawStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def next_id(self, prefix: str = "raw") -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def _reset_parser(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.elements = []
        self._cursor = 0
        self.stream_attrs = None
        self.stream_closed = False
        self.parse_error = None

    def _feed(self, chunk: bytes) -> None:
        if self.parse_error is not None:
            return
        try:
            self._parser.feed(chunk)
            for event, elem in self._parser.read_events():
                if event == "start":
                    if self._depth == 0:
                        self.stream_attrs = dict(elem.attrib)
                        self.stream_tag = elem.tag
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self.stream_closed = True
                    elif self._depth == 1:
                        self.elements.append(elem)
        except ET.ParseError as e:
            self.parse_error = str(e)

    def _start_tls_layer(self) -> None:
        sock = self.transport.sock
        if self.tls_impl == "pyopenssl":
            self.transport = _OpenSSLTransport(sock, self.cafile, self.domain, self.timeout)
        else:
            ctx = client_ssl_context(self.cafile)
            tls_sock = ctx.wrap_socket(sock, server_hostname=self.domain, do_handshake_on_connect=False)
            tls_sock.settimeout(self.timeout)
            tls_sock.do_handshake()
            self.transport = _Transport(tls_sock)
        self.tls = True

    def pump(self, timeout: float) -> bool:
        """Read once (waiting at most ``timeout``); False if nothing arrived."""
        if self.closed:
            return False
        chunk = self.transport.recv(timeout)
        if chunk is None:
            return False
        if chunk == b"":
            self.closed = True
            return True
        self.data += chunk
        self._feed(chunk)
        return True

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.transport.sendall(data, self.timeout)

    def send_tolerant(self, data: str | bytes, chunk: int = 4096) -> bool:
        """Send in chunks, reading between them, and stop early if the server
        closes the stream or the connection. Returns True if everything was sent."""
        if isinstance(data, str):
            data = data.encode()
        for i in range(0, len(data), chunk):
            if self.closed or self.stream_closed:
                return False
            try:
                self.transport.sendall(data[i : i + chunk], self.timeout)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
                return False
            while self.pump(0):
                pass
        return True

    def wait_for(
        self, predicate: Callable[[ET.Element], bool] | str, timeout: float | None = None, what: str = ""
    ) -> ET.Element:
        """The next not-yet-consumed top-level element matching ``predicate``
        (a callable, or a Clark-notation tag)."""
        if isinstance(predicate, str):
            tag = predicate
            what = what or tag
            predicate = lambda e: e.tag == tag  # noqa: E731
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.elements):
                elem = self.elements[self._cursor]
                self._cursor += 1
                if predicate(elem):
                    return elem
            if self.closed or self.stream_closed:
                raise StreamClosed(
                    f"stream closed while waiting for {what or 'an element'}; "
                    f"stream error: {self.stream_error()}; received:\n{excerpt(self.text)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing matching {what or 'predicate'} within {timeout}s; received:\n{excerpt(self.text)}")
            self.pump(remaining)

    def read_until_closed(self, timeout: float | None = None, eof: bool = False) -> str:
        """Read until the server ends the stream (``</stream:stream>``) or closes the
        connection; with ``eof`` until the connection itself is closed. Returns ``text``."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self.closed and not (self.stream_closed and not eof):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"server did not close the stream within {timeout}s; received:\n{excerpt(self.text)}")
            self.pump(remaining)
        return self.text

    def stream_error(self) -> str | None:
        """The defined condition of the stream error received on this stream, if any."""
        for elem in self.elements:
            if elem.tag == qn(STREAM_NS, "error"):
                for child in elem:
                    if namespace_of(child.tag) == STREAM_ERR_NS and local_name(child.tag) != "text":
                        return local_name(child.tag)
                return "(stream error without condition)"
        # Fallback for output the parser could not follow.
        for m in re.finditer(r"<([A-Za-z-]+)\s+xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]", self.text):
            if m.group(1) != "text":
                return m.group(1)
        return None

    # -- stream setup ------------------------------------------------------

    def open_stream(self, to: str | None = "", *, header: str | None = None, wait_features: bool = True) -> ET.Element | None:
        """Send a stream header (default: to our domain) and return the features."""
        self._reset_parser()
        if header is None:
            header = stream_header(self.domain if to == "" else to)
        self.send(header)
        if not wait_features:
            return None
        self.features = self.wait_for(qn(STREAM_NS, "features"))
        return self.features

    def mechanisms(self) -> list[str]:
        if self.features is None:
            return []
        mechs = self.features.find(qn(SASL_NS, "mechanisms"))
        if mechs is None:
            return []
        return [m.text or "" for m in mechs.findall(qn(SASL_NS, "mechanism"))]

    def starttls(self) -> ET.Element:
        """STARTTLS by hand: <starttls/>, <proceed/>, TLS handshake, new stream."""
        self.send(f"<starttls xmlns='{TLS_NS}'/>")
        answer = self.wait_for(lambda e: namespace_of(e.tag) == TLS_NS, what="<proceed/>")
        if answer.tag != qn(TLS_NS, "proceed"):
            raise AssertionError(f"STARTTLS refused: {ET.tostring(answer)!r}")
        self._start_tls_layer()
        return self.open_stream()

    def _sasl_outcome(self) -> ET.Element:
        # Servers may hold back a failure answer to slow down password guessing.
        return self.wait_for(lambda e: namespace_of(e.tag) == SASL_NS, max(self.timeout, 15.0), what="SASL answer")

    @staticmethod
    def _failure(elem: ET.Element) -> SaslResult:
        cond = next((local_name(c.tag) for c in elem if local_name(c.tag) != "text"), None)
        return SaslResult(False, cond, elem)

    def auth_plain(self, username: str, password: str, authzid: str = "") -> SaslResult:
        payload = base64.b64encode(f"{authzid}\0{username}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{payload}</auth>")
        answer = self._sasl_outcome()
        if answer.tag == qn(SASL_NS, "success"):
            return SaslResult(True, None, answer)
        return self._failure(answer)

    def channel_binding(self, cb_type: str) -> bytes:
        if cb_type == "tls-exporter":
            # RFC 9266: label "EXPORTER-Channel-Binding", no context, 32 bytes.
            return self.transport.export_keying_material(b"EXPORTER-Channel-Binding", 32, None)
        if cb_type == "tls-server-end-point":
            return tls_server_end_point(self.transport.peer_certificate_der())
        raise ValueError(cb_type)

    def auth_scram(
        self,
        username: str,
        password: str,
        hash_name: str = "SHA-256",
        *,
        cb_type: str | None = None,
        gs2_flag: str | None = None,
        mechanism: str | None = None,
        cb_data: bytes | None = None,
    ) -> SaslResult:
        """SCRAM (RFC 5802/7677) by hand. With ``cb_type`` this is the -PLUS variant,
        binding to the channel with that type (``cb_data`` overrides the binding data)."""
        algo = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}[hash_name]
        mechanism = mechanism or f"SCRAM-{hash_name}" + ("-PLUS" if cb_type else "")
        if gs2_flag is None:
            gs2_flag = f"p={cb_type}" if cb_type else "n"
        gs2_header = f"{gs2_flag},,"
        cnonce = base64.b64encode(os.urandom(18)).decode()
        client_first_bare = f"n={saslname(username)},r={cnonce}"
        self.send(
            f"<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>"
            f"{base64.b64encode((gs2_header + client_first_bare).encode()).decode()}</auth>"
        )
        answer = self._sasl_outcome()
        if answer.tag != qn(SASL_NS, "challenge"):
            return self._failure(answer) if answer.tag == qn(SASL_NS, "failure") else SaslResult(False, None, answer)
        server_first = base64.b64decode(answer.text or "").decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        if not attrs["r"].startswith(cnonce):
            raise AssertionError(f"server nonce does not extend ours: {server_first}")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        if cb_data is None:
            cb_data = self.channel_binding(cb_type) if cb_type else b""
        cbind_input = gs2_header.encode() + cb_data
        final_without_proof = f"c={base64.b64encode(cbind_input).decode()},r={attrs['r']}"
        salted = hashlib.pbkdf2_hmac(algo, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        stored_key = hashlib.new(algo, client_key).digest()
        auth_message = f"{client_first_bare},{server_first},{final_without_proof}".encode()
        client_signature = hmac.new(stored_key, auth_message, algo).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        expected_v = base64.b64encode(hmac.new(server_key, auth_message, algo).digest()).decode()
        final = f"{final_without_proof},p={base64.b64encode(proof).decode()}"
        self.send(f"<response xmlns='{SASL_NS}'>{base64.b64encode(final.encode()).decode()}</response>")
        answer = self._sasl_outcome()
        if answer.tag == qn(SASL_NS, "challenge"):
            # Server-final sent as a challenge (allowed by RFC 6120): acknowledge it.
            server_final = base64.b64decode(answer.text or "").decode()
            self.send(f"<response xmlns='{SASL_NS}'/>")
            answer = self._sasl_outcome()
        elif answer.tag == qn(SASL_NS, "success"):
            server_final = base64.b64decode(answer.text or "").decode() if answer.text else ""
        else:
            return self._failure(answer)
        if answer.tag != qn(SASL_NS, "success"):
            return self._failure(answer)
        final_attrs = dict(item.split("=", 1) for item in server_final.split(",") if "=" in item)
        return SaslResult(True, None, answer, final_attrs.get("v") == expected_v)

    def bind(self, resource: str | None = None) -> str:
        """Bind a resource (server-generated if None); returns the full JID."""
        iq_id = self.next_id("bind")
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='{iq_id}'><bind xmlns='{BIND_NS}'>{res}</bind></iq>")
        answer = self.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == iq_id, what="bind result")
        if answer.get("type") != "result":
            raise AssertionError(f"bind failed: {ET.tostring(answer)!r}")
        jid_el = answer.find(f"{qn(BIND_NS, 'bind')}/{qn(BIND_NS, 'jid')}")
        self.jid = jid_el.text
        # RFC 3921 sessions, only if the server says they are not optional.
        sess = self.features.find(qn(SESSION_NS, "session")) if self.features is not None else None
        if sess is not None and sess.find(qn(SESSION_NS, "optional")) is None:
            sid = self.next_id("sess")
            self.send(f"<iq type='set' id='{sid}'><session xmlns='{SESSION_NS}'/></iq>")
            self.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == sid, what="session result")
        return self.jid

    def login(self, user: User, resource: str | None = None) -> str:
        """STARTTLS (unless already on TLS), SASL PLAIN, new stream, bind. Returns the full JID."""
        if not self.tls:
            self.open_stream()
            self.starttls()
        elif self.features is None:
            self.open_stream()
        result = self.auth_plain(user.localpart, user.password)
        if not result.ok:
            raise AssertionError(f"SASL PLAIN failed for {user.jid}: {result.condition}")
        self.open_stream()
        return self.bind(resource)

    def iq(self, body: str, *, to: str | None = None, itype: str = "get", timeout: float | None = None) -> ET.Element:
        """Send an IQ and return the reply with the same id."""
        iq_id = self.next_id("iq")
        to_attr = f" to='{xml_attr_escape(to)}'" if to else ""
        self.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{body}</iq>")
        return self.wait_for(
            lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == iq_id and e.get("type") in ("result", "error"),
            timeout,
            what=f"reply to IQ {iq_id}",
        )


def excerpt(text: str, chars: int = 3000) -> str:
    """The end of ``text`` for error messages, with long runs of one character shortened."""
    text = re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1) * 8}...[{len(m.group(0))} x {m.group(1)!r}]", text)
    return text[-chars:]


def saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 channel binding: hash of the server certificate, with the hash of
    its signature algorithm (SHA-256 when that is MD5 or SHA-1)."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(cert_der)
    algo = cert.signature_hash_algorithm
    if algo is None:
        raise ValueError("certificate signature has no hash algorithm: tls-server-end-point is undefined")
    name = algo.name.lower()
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, cert_der).digest()


def pem_to_der(pem_path: Path | str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pem_path).read_text())


def write_self_signed_cert(cert_path: Path, key_path: Path, name: str) -> None:
    """A fresh self-signed certificate for ``name`` (for trust tests)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


# --------------------------------------------------------------------------
# Instant messaging helpers: synchronisation, rosters, presence, accounts in
# advance, restarts.

ROSTER_NS = "jabber:iq:roster"
ROSTERVER_FEATURE_NS = "urn:xmpp:features:rosterver"
PRE_APPROVAL_FEATURE_NS = "urn:xmpp:features:pre-approval"
DELAY_NS = "urn:xmpp:delay"


def collect_until(
    stream: "RawStream", predicate: Callable[[ET.Element], bool], timeout: float | None = None, what: str = ""
) -> tuple[list[ET.Element], ET.Element]:
    """Like ``RawStream.wait_for``, but also return every element consumed before the match."""
    seen: list[ET.Element] = []

    def record(elem: ET.Element) -> bool:
        seen.append(elem)
        return predicate(elem)

    match = stream.wait_for(record, timeout, what=what)
    return seen[:-1], match


def sync(stream: "RawStream", timeout: float | None = None) -> list[ET.Element]:
    """Ping the server and return everything that arrived before the answer (consumed).

    A server processes one client's stanzas in order, so once the answer is here, whatever
    the server did because of this client's earlier stanzas has been done, and whatever it
    queued for this client earlier has been received."""
    iq_id = stream.next_id("sync")
    stream.send(f"<iq type='get' id='{iq_id}' to='{stream.domain}'><ping xmlns='{PING_NS}'/></iq>")
    before, _ = collect_until(
        stream,
        lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == iq_id and e.get("type") in ("result", "error"),
        timeout,
        what=f"answer to ping {iq_id}",
    )
    return before


def presences(elems: Iterable[ET.Element], ptype: str | None = "*", from_: str | None = None) -> list[ET.Element]:
    """The <presence/> stanzas among ``elems``; ``ptype`` None means available, "*" any type;
    ``from_`` a full JID, or a bare JID matching it and all its resources."""
    out = []
    for e in elems:
        if e.tag != qn(CLIENT_NS, "presence"):
            continue
        if ptype != "*" and e.get("type") != ptype:
            continue
        if from_ is not None:
            sender = e.get("from") or ""
            if sender != from_ and not ("/" not in from_ and sender.split("/", 1)[0] == from_):
                continue
        out.append(e)
    return out


def messages(elems: Iterable[ET.Element]) -> list[ET.Element]:
    return [e for e in elems if e.tag == qn(CLIENT_NS, "message")]


@dataclasses.dataclass
class RosterEntry:
    jid: str
    subscription: str
    ask: str | None
    name: str | None
    groups: list[str]
    approved: bool

    @classmethod
    def parse(cls, item: ET.Element) -> "RosterEntry":
        return cls(
            jid=item.get("jid", ""),
            subscription=item.get("subscription", "none"),
            ask=item.get("ask"),
            name=item.get("name"),
            groups=[g.text or "" for g in item.findall(qn(ROSTER_NS, "group"))],
            approved=item.get("approved") in ("true", "1"),
        )


def roster_of(query: ET.Element | None) -> dict[str, RosterEntry]:
    """jid -> entry for the items of a roster <query/> (empty for None)."""
    if query is None:
        return {}
    return {e.jid: e for e in map(RosterEntry.parse, query.findall(qn(ROSTER_NS, "item")))}


def roster_get(stream: "RawStream", ver: str | None = None, to: str | None = None) -> ET.Element:
    """Send a roster get (with ``ver`` if given) and return the IQ reply."""
    ver_attr = f" ver='{xml_attr_escape(ver)}'" if ver is not None else ""
    return stream.iq(f"<query xmlns='{ROSTER_NS}'{ver_attr}/>", to=to)


def roster_item_xml(
    jid: str, name: str | None = None, groups: Iterable[str] = (), subscription: str | None = None, extra: str = ""
) -> str:
    attrs = f"jid='{xml_attr_escape(jid)}'"
    if name is not None:
        attrs += f" name='{xml_attr_escape(name)}'"
    if subscription is not None:
        attrs += f" subscription='{subscription}'"
    body = "".join(f"<group>{xml_text_escape(g)}</group>" for g in groups)
    return f"<item {attrs}{extra}>{body}</item>"


def roster_set(stream: "RawStream", *items: str, to: str | None = None) -> ET.Element:
    """Send a roster set with the given <item/> XML strings; return the IQ reply."""
    return stream.iq(f"<query xmlns='{ROSTER_NS}'>{''.join(items)}</query>", itype="set", to=to)


def roster_pushes(elems: Iterable[ET.Element]) -> list[ET.Element]:
    """The roster pushes (IQ sets with a roster query) among ``elems``."""
    return [
        e
        for e in elems
        if e.tag == qn(CLIENT_NS, "iq") and e.get("type") == "set" and e.find(qn(ROSTER_NS, "query")) is not None
    ]


def xml_text_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def send_presence(
    stream: "RawStream",
    to: str | None = None,
    ptype: str | None = None,
    *,
    priority: int | None = None,
    status: str | None = None,
    show: str | None = None,
) -> None:
    attrs = ""
    if to is not None:
        attrs += f" to='{xml_attr_escape(to)}'"
    if ptype is not None:
        attrs += f" type='{ptype}'"
    body = ""
    if show is not None:
        body += f"<show>{show}</show>"
    if status is not None:
        body += f"<status>{xml_text_escape(status)}</status>"
    if priority is not None:
        body += f"<priority>{priority}</priority>"
    stream.send(f"<presence{attrs}>{body}</presence>" if body else f"<presence{attrs}/>")


def login_scram(stream: "RawStream", user: User, resource: str | None = None) -> str:
    """STARTTLS (unless on TLS already), SCRAM-SHA-256, bind. Cheaper for the server than
    PLAIN, which derives the salted password on every login."""
    if not stream.tls:
        stream.open_stream()
        stream.starttls()
    elif stream.features is None:
        stream.open_stream()
    result = stream.auth_scram(user.localpart, user.password, "SHA-256")
    if not result.ok:
        raise AssertionError(f"SCRAM-SHA-256 failed for {user.jid}: {result.condition}")
    stream.open_stream()
    return stream.bind(resource)


def im_login(
    stream: "RawStream",
    user: User,
    resource: str | None = None,
    *,
    roster: bool = True,
    available: bool = True,
    priority: int | None = None,
    status: str | None = None,
) -> list[ET.Element]:
    """Log in like an IM client: bind, request the roster (an "interested resource"), send
    initial presence (an "available resource"), then ``sync``. Returns what arrived after
    the roster result up to the sync answer (presence of contacts and of the account's own
    resources, pending subscription requests...). The roster result is in ``stream.roster``."""
    login_scram(stream, user, resource)
    stream.roster = None
    if roster:
        reply = roster_get(stream)
        assert reply.get("type") == "result", ET.tostring(reply)
        stream.roster = reply.find(qn(ROSTER_NS, "query"))
    if available:
        send_presence(stream, priority=priority, status=status)
    return sync(stream)


def abort_connection(stream: "RawStream") -> None:
    """Drop the TCP connection at once (RST), with no closing tag and no TLS close_notify."""
    import struct

    sock = stream.transport.sock  # closing an ssl socket does not send close_notify
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    stream.closed = True


class UserPool:
    """Accounts created ahead of use by background threads (``rookery user add`` takes a
    noticeable part of a second in a debug build): ``prefetch(n)``, then ``take()``."""

    def __init__(self, server, prefix: str = "user", workers: int = 3):
        import collections
        from concurrent.futures import ThreadPoolExecutor

        self.server = server
        self.prefix = prefix
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="user-pool")
        self._ready: "collections.deque" = collections.deque()

    def prefetch(self, count: int) -> None:
        for _ in range(count):
            self._ready.append(self._executor.submit(self.server.add_user, self.prefix))

    def take(self, timeout: float = 60.0) -> User:
        if not self._ready:
            self.prefetch(1)
        return self._ready.popleft().result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def restart_server(server: RookeryServer, *, kill: bool = False, timeout: float = 10.0) -> int | None:
    """Stop the server — SIGTERM and wait, or SIGKILL with ``kill`` — and start it again on the
    same config and data dir (new ports). Returns the exit code of the stop (None if killed)."""
    if kill:
        server.kill()
        rc = None
    else:
        rc, _out, _err = server.stop(signal.SIGTERM, timeout=timeout)
    server.start()
    return rc


def request(
    stream: "RawStream", body: str, *, itype: str = "get", to: str | None = None, timeout: float | None = None
) -> tuple[list[ET.Element], ET.Element]:
    """Send an IQ; return (everything received before its reply, the reply) — ``RawStream.iq``
    skips what comes first, such as the push a roster set causes."""
    iq_id = stream.next_id("req")
    to_attr = f" to='{xml_attr_escape(to)}'" if to else ""
    stream.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{body}</iq>")
    return collect_until(
        stream,
        lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == iq_id and e.get("type") in ("result", "error"),
        timeout,
        what=f"reply to IQ {iq_id}",
    )


def find_or_wait(
    stream: "RawStream",
    seen: Iterable[ET.Element],
    predicate: Callable[[ET.Element], bool],
    timeout: float = 3.0,
    what: str = "",
) -> ET.Element:
    """The first element of ``seen`` matching ``predicate``, else the next one to arrive."""
    for elem in seen:
        if predicate(elem):
            return elem
    return stream.wait_for(predicate, timeout, what=what)


def is_presence(ptype: str | None = None, from_: str | None = None) -> Callable[[ET.Element], bool]:
    """A predicate: a presence of ``ptype`` (None: available) from ``from_`` (a full JID, or a
    bare JID matching all its resources)."""
    return lambda e: bool(presences([e], ptype, from_))

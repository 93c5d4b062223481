"""Fixtures for Rookery's interop tests.

Environment:
  ROOKERY_BIN                 the server binary (default: $CARGO_TARGET_DIR or <repo>/target,
                              then debug/rookery)
  ROOKERY_INTEROP_EXTERNAL    HOST:C2S_PORT:TLS_PORT:DOMAIN:CA_CERT_FILE — run the
                              tests that need just "a server" against an XMPP server
                              that is already running instead of starting rookery
                              (tests that start their own server are skipped)
  ROOKERY_INTEROP_EXTERNAL_CLI  command taking rookery's `user ...` arguments, to
                              manage accounts on that external server

A test module may set ``SERVER_CONFIG = {...}`` (keyword arguments of
``harness.render_config``) to configure its module-scoped ``server``.

Browser tests (browser.py): ``chromium`` (one headless Chromium per module), ``page_server``
(the Converse.js page over HTTP) and ``browser`` (a DevTools session for one test, whose
pages are photographed into the test's tmp_path when it fails).

Federation tests (federation.py): ``federation`` (a DNS server and a test CA for the module;
the module's ``FEDERATION_PEERS = {"prosody": {...}, "ejabberd": {...}}`` gives the peers'
settings), ``prosody_peer`` and ``ejabberd_peer`` (a real Prosody as prosody.test and a real
ejabberd as ejabberd.test, started once per module).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import browser as browser_client
import federation as federation_peers
from harness import ExternalServer, RawStream, RookeryServer, ServerStartError, loopback_source

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOKERY_BIN = Path(
    os.environ.get("ROOKERY_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target") / "debug" / "rookery"
)
EXTERNAL = os.environ.get("ROOKERY_INTEROP_EXTERNAL")


def start_rookery(workdir: Path, **config) -> RookeryServer:
    server = RookeryServer(ROOKERY_BIN, workdir, **config)
    try:
        return server.start()
    except ServerStartError as e:
        error = str(e)
    server.kill()
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """One server per test module, configured by the module's SERVER_CONFIG."""
    if EXTERNAL:
        yield ExternalServer(EXTERNAL, os.environ.get("ROOKERY_INTEROP_EXTERNAL_CLI"))
        return
    config = dict(getattr(request.module, "SERVER_CONFIG", {}))
    srv = start_rookery(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), **config)
    try:
        yield srv
    finally:
        srv.kill()


class ServerFactory:
    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.servers: list[RookeryServer] = []

    def __call__(self, **config) -> RookeryServer:
        srv = start_rookery(self.tmp_path_factory.mktemp("rookery"), **config)
        self.servers.append(srv)
        return srv


@pytest.fixture
def make_server(tmp_path_factory):
    """Start a private rookery for one test: ``make_server(**render_config kwargs)``."""
    if EXTERNAL:
        pytest.skip("needs its own rookery process (ROOKERY_INTEROP_EXTERNAL is set)")
    factory = ServerFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        for srv in factory.servers:
            srv.kill()


@pytest.fixture
def new_user(server):
    """``new_user(prefix="user")`` creates a fresh account through the CLI."""
    return server.add_user


@pytest.fixture
def alice(new_user):
    return new_user("alice")


@pytest.fixture
def bob(new_user):
    return new_user("bob")


@pytest.fixture
def raw_factory():
    """``raw_factory(server, direct_tls=False, timeout=5.0, tls_impl="stdlib")`` opens a
    RawStream to ``server``; all are closed after the test."""
    streams: list[RawStream] = []

    def open_raw(srv, direct_tls: bool = False, timeout: float = 5.0, tls_impl: str = "stdlib") -> RawStream:
        stream = RawStream(
            srv.host,
            srv.tls_port if direct_tls else srv.c2s_port,
            domain=srv.domain,
            cafile=srv.cert_path,
            direct_tls=direct_tls,
            timeout=timeout,
            tls_impl=tls_impl,
            source_address=loopback_source() if srv.host.startswith("127.") else None,
        )
        streams.append(stream)
        return stream

    try:
        yield open_raw
    finally:
        for stream in streams:
            stream.close()


@pytest.fixture
def raw(server, raw_factory):
    """``raw(direct_tls=False, timeout=5.0, tls_impl="stdlib")`` opens a RawStream to the module's server."""
    return lambda **kwargs: raw_factory(server, **kwargs)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A headless Chromium (Debian's) for the module's tests; stopped with all its processes."""
    missing = browser_client.missing_requirements()
    if missing:
        pytest.fail("the browser tests need:\n  " + "\n  ".join(missing), pytrace=False)
    proc = browser_client.Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        proc.start()
    except browser_client.BrowserError as e:
        proc.stop()
        pytest.fail(str(e), pytrace=False)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def page_server():
    """tests/interop/browser/ (the Converse.js page) over HTTP on loopback."""
    srv = browser_client.PageServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
async def browser(chromium, page_server, tmp_path):
    """``await browser.open_converse(jid, password, websocket_url=... | bosh_url=...)``."""
    async with browser_client.BrowserSession(chromium, page_server, tmp_path) as session:
        yield session


@pytest.fixture(scope="module")
def federation(request, tmp_path_factory):
    """The module's DNS server and test CA (``federation_peers.Federation``); its peers are
    started by ``prosody_peer``/``ejabberd_peer`` and all stopped after the module."""
    fed = federation_peers.Federation(
        tmp_path_factory.mktemp("federation"), getattr(request.module, "FEDERATION_PEERS", {})
    )
    try:
        yield fed
    finally:
        fed.close()


def _start_peer(fed: federation_peers.Federation, kind: str) -> federation_peers.Peer:
    missing = fed.missing_requirements(kind)
    if missing:
        pytest.fail("the federation tests need:\n  " + "\n  ".join(missing), pytrace=False)
    try:
        return fed.peer(kind)
    except federation_peers.PeerStartError as e:
        error = str(e)
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="module")
def prosody_peer(federation) -> federation_peers.ProsodyPeer:
    """Prosody serving prosody.test, found through the module's DNS server."""
    return _start_peer(federation, "prosody")


@pytest.fixture(scope="module")
def ejabberd_peer(federation) -> federation_peers.EjabberdPeer:
    """ejabberd serving ejabberd.test, found through the module's DNS server."""
    return _start_peer(federation, "ejabberd")


def _browser_failure_sections(session: browser_client.BrowserSession, name: str) -> list[tuple[str, str]]:
    """Screenshots of the open pages (paths) and the tail of each page's console."""
    try:
        paths = session.chromium.screenshot_pages_sync(session.artifacts, prefix=f"failure-{name}")
        shots = "\n".join(str(p) for p in paths) or "(no page open)"
    except Exception as e:  # the browser may be what failed
        shots = f"(no screenshot: {e!r})"
    sections = [("browser screenshots", shots)]
    for page in session.pages:
        sections.append((f"console of {page.name} (tail)", "\n".join(page.console[-40:]) or "(empty)"))
    return sections


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the tail of the server's log to failing tests, and for browser tests the
    paths of screenshots of the open pages and the tails of their consoles."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    servers = []
    funcargs = getattr(item, "funcargs", {})
    if "server" in funcargs:
        servers.append(funcargs["server"])
    factory = funcargs.get("make_server")
    if isinstance(factory, ServerFactory):
        servers.extend(factory.servers)
    if "web_server" in funcargs:
        servers.append(funcargs["web_server"])
    for i, srv in enumerate(servers):
        report.sections.append((f"server log (tail) #{i}", srv.log_tail()))
    fed = funcargs.get("federation")
    if isinstance(fed, federation_peers.Federation):
        for kind, peer in fed.peers.items():
            report.sections.append((f"{kind} log (tail)", peer.log_tail()))
    session = funcargs.get("browser")
    if isinstance(session, browser_client.BrowserSession) and session.devtools is not None:
        report.sections.extend(_browser_failure_sections(session, report.when))

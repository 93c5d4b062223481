"""A real browser client for the interop tests: Converse.js in Debian's headless Chromium.

* ``Chromium`` runs ``chromium --headless=new`` with a throwaway profile and the DevTools
  protocol on a loopback port (read from the profile's ``DevToolsActivePort``), and stops
  every process it started.
* ``PageServer`` serves ``tests/interop/browser/`` (the page, its plugin and the converse.js
  npm package that ``browser/install.sh`` unpacks there) over HTTP on loopback.
* ``BrowserSession`` is one DevTools connection, opened in the test's event loop; its
  ``open_converse`` opens a page in a fresh browser context (no storage shared with other
  pages) that logs in with the given connection settings, and returns a ``ConversePage``
  to log in, send, receive and upload with.

Chromium runs with ``--ignore-certificate-errors`` (the servers under test have
self-signed certificates) and resolves no host name but ``localhost`` and ``*.localhost``,
so that nothing leaves the machine. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import http.server
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import websockets
import websockets.sync.client
from websockets.asyncio.client import connect as ws_connect

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CONVERSE_DIR = BROWSER_DIR / "node_modules" / "converse.js"
INSTALL_SCRIPT = BROWSER_DIR / "install.sh"
CHROMIUM_BIN = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"

# The largest DevTools message read (a full-page screenshot in base64 is a few MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class BrowserError(RuntimeError):
    pass


class JavaScriptError(BrowserError):
    """An exception thrown by JavaScript evaluated in a page."""


class LoginFailed(BrowserError):
    """Converse's login was refused (SASL failure)."""


# Strophe.Status values that Converse's connection goes through.
STROPHE_STATUS = {
    0: "ERROR",
    1: "CONNECTING",
    2: "CONNFAIL",
    3: "AUTHENTICATING",
    4: "AUTHFAIL",
    5: "CONNECTED",
    6: "DISCONNECTED",
    7: "DISCONNECTING",
    8: "ATTACHED",
    9: "REDIRECT",
    10: "CONNTIMEOUT",
    11: "BINDREQUIRED",
    12: "ATTACHFAIL",
    13: "RECONNECTING",
}


def missing_requirements() -> list[str]:
    """What the browser tests lack on this machine, each with how to get it."""
    missing = []
    if not (Path(CHROMIUM_BIN).is_file() and os.access(CHROMIUM_BIN, os.X_OK)):
        missing.append(f"chromium ({CHROMIUM_BIN}): apt-get install chromium (test.sh does)")
    if not (CONVERSE_DIR / "dist" / "converse.min.js").is_file():
        missing.append(f"converse.js in {CONVERSE_DIR}: run {INSTALL_SCRIPT} (test.sh does)")
    return missing


# --------------------------------------------------------------------------
# The page's HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".wasm": "application/wasm",
        ".svg": "image/svg+xml",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(BROWSER_DIR), **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class PageServer:
    """``tests/interop/browser/`` over HTTP on 127.0.0.1 (a free port), in a thread."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def converse_url(self, settings: dict) -> str:
        """The Converse page, started with ``settings`` (Converse's option names)."""
        return f"{self.base_url}/index.html#{urllib.parse.quote(json.dumps(settings))}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------
# The browser process


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies (Linux)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# Runs the browser as its child and reaps every process below it, those orphaned when the
# browser exits before them included (it is their subreaper, Linux's
# PR_SET_CHILD_SUBREAPER); exits once none is left, with the browser's status. So when it
# has exited, no process of the browser is left, not even a zombie.
_REAPER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)
child = os.fork()
if child == 0:
    try:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
code = 0
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""

_LIVE_BROWSERS: set["Chromium"] = set()


@atexit.register
def _stop_leftover_browsers() -> None:
    for browser in list(_LIVE_BROWSERS):
        with contextlib.suppress(Exception):
            browser.stop(timeout=5)


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (from /proc), whatever their process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes_using(marker: str) -> set[int]:
    """The processes whose command line holds ``marker`` (this browser's profile path)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.add(int(entry))
    return pids


class Chromium:
    """A headless Chromium with a throwaway profile in ``workdir``, driven over DevTools."""

    def __init__(self, workdir: Path, binary: str = CHROMIUM_BIN, extra_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.profile = self.workdir / "chromium-profile"
        self.log_path = self.workdir / "chromium.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.ws_url = ""

    def command(self) -> list[str]:
        args = [
            self.binary,
            "--headless=new",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            # The servers under test have self-signed certificates.
            "--ignore-certificate-errors",
            # No host name resolves but loopback's, and no background traffic.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE *.localhost, EXCLUDE 127.0.0.1",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-breakpad",
            "--disable-features=Translate,MediaRouter,OptimizationHints,InterestFeedContentSuggestions",
            "--no-pings",
            "--no-first-run",
            "--no-default-browser-check",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            # Chromium refuses to start its sandbox as root.
            args.append("--no-sandbox")
        args.append("about:blank")
        return args

    def start(self, timeout: float = 30.0) -> "Chromium":
        if self.proc is not None:
            raise BrowserError("this Chromium was already started")
        shutil.rmtree(self.profile, ignore_errors=True)
        self.profile.mkdir(parents=True)
        active_port = self.profile / "DevToolsActivePort"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _REAPER, *self.command()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _LIVE_BROWSERS.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BrowserError(
                    f"chromium exited ({self.proc.returncode}) before opening DevTools:\n{self.log_tail()}"
                )
            try:
                lines = active_port.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 2 and lines[0].strip().isdigit():
                self.port = int(lines[0])
                self.ws_url = f"ws://127.0.0.1:{self.port}{lines[1].strip()}"
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BrowserError(f"chromium did not open DevTools within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:]

    def _browser_pids(self) -> set[int]:
        """The browser's processes: those below the reaper, and any naming its profile."""
        pids = processes_using(str(self.profile))
        if self.proc is not None:
            pids |= _descendants(self.proc.pid)
            pids.discard(self.proc.pid)
        pids.discard(os.getpid())
        return pids

    def running_pids(self) -> set[int]:
        """The browser's processes still alive (zombies included)."""
        pids = self._browser_pids()
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return {pid for pid in pids if Path(f"/proc/{pid}").exists()}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the browser and every process it started: closed over DevTools, then
        SIGTERM, then SIGKILL; returns once the reaper has reaped them all."""
        if self.proc is None:
            return
        if self.ws_url and self.proc.poll() is None:
            asked = False
            with contextlib.suppress(Exception):
                with websockets.sync.client.connect(self.ws_url, open_timeout=2, close_timeout=1) as ws:
                    ws.send(json.dumps({"id": 1, "method": "Browser.close"}))
                    ws.recv(timeout=2)
                    asked = True
            if asked:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=min(5.0, timeout))
        for sig, wait in ((signal.SIGTERM, min(3.0, timeout)), (signal.SIGKILL, timeout)):
            if self.proc.poll() is not None:
                break
            deadline = time.monotonic() + wait
            while self.proc.poll() is None and time.monotonic() < deadline:
                for pid in self._browser_pids():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.2)
        if self.proc.poll() is None:
            # The reaper is still there: the last resort, its whole process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None
        _LIVE_BROWSERS.discard(self)
        left = {pid for pid in processes_using(str(self.profile)) if pid != os.getpid()}
        if left:
            raise BrowserError(f"chromium processes left after stopping: {sorted(left)}")

    # -- without an event loop: screenshots for failure reports --------------

    def page_targets(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as resp:
            return [t for t in json.load(resp) if t.get("type") == "page"]

    def screenshot_pages_sync(
        self, directory: Path, prefix: str = "page", timeout: float = 10.0
    ) -> list[Path]:
        """Save a PNG of every open page into ``directory``; returns the paths written."""
        saved = []
        directory.mkdir(parents=True, exist_ok=True)
        for i, target in enumerate(self.page_targets()):
            url = target.get("webSocketDebuggerUrl")
            if not url or target.get("url") == "about:blank":
                continue
            with websockets.sync.client.connect(
                url, open_timeout=timeout, close_timeout=2, max_size=MAX_MESSAGE_BYTES
            ) as ws:
                ws.send(
                    json.dumps({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}})
                )
                deadline = time.monotonic() + timeout
                while True:
                    msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                    if msg.get("id") == 1:
                        break
            if "result" not in msg:
                continue
            path = directory / f"{prefix}-{i}.png"
            path.write_bytes(base64.b64decode(msg["result"]["data"]))
            saved.append(path)
        return saved


# --------------------------------------------------------------------------
# The DevTools protocol


class DevTools:
    """One DevTools WebSocket connection (flat sessions: one connection for all pages)."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.listeners: list[Callable[[dict], None]] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.closed_reason: str | None = None

    @classmethod
    async def connect(cls, ws_url: str, timeout: float = 10.0) -> "DevTools":
        ws = await asyncio.wait_for(
            ws_connect(ws_url, max_size=MAX_MESSAGE_BYTES, open_timeout=timeout), timeout
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self.pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    for listener in list(self.listeners):
                        listener(msg)
        except websockets.ConnectionClosed as e:
            self.closed_reason = f"DevTools connection closed: {e}"
        finally:
            reason = self.closed_reason or "DevTools connection closed"
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(BrowserError(reason))
            self.pending.clear()

    async def send(
        self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 10.0
    ) -> dict:
        if self.reader.done():
            raise BrowserError(self.closed_reason or "DevTools connection closed")
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        await self.ws.send(json.dumps(msg))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.pending.pop(msg_id, None)
            raise TimeoutError(f"no DevTools answer to {method} within {timeout}s") from None
        if "error" in reply:
            raise BrowserError(
                f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip()
            )
        return reply.get("result", {})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


class Page:
    """A page (tab) in its own browser context, attached over a flat DevTools session."""

    def __init__(self, devtools: DevTools, target_id: str, session_id: str, context_id: str, name: str):
        self.devtools = devtools
        self.target_id = target_id
        self.session_id = session_id
        self.context_id = context_id
        self.name = name
        # Console messages and uncaught exceptions of the page, as text lines.
        self.console: list[str] = []
        devtools.listeners.append(self._on_event)

    def _on_event(self, msg: dict) -> None:
        if msg.get("sessionId") != self.session_id:
            return
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_object_text(a) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.console.append(f"exception: {exc.get('description') or details.get('text')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(
                f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".rstrip()
            )

    async def send(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        return await self.devtools.send(method, params, session=self.session_id, timeout=timeout)

    async def navigate(self, url: str, timeout: float = 15.0) -> None:
        result = await self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str, *, timeout: float = 10.0, await_promise: bool = True) -> Any:
        """The value of a JavaScript expression (JSON-like values; promises awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "returnByValue": True,
                "awaitPromise": await_promise,
                "userGesture": True,
                "timeout": int(timeout * 1000),
            },
            timeout=timeout + 2,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exc = details.get("exception", {})
            raise JavaScriptError(
                f"{exc.get('description') or details.get('text')}\n  in: {expression[:300]}"
            )
        return result.get("result", {}).get("value")

    async def call(self, function: str, *args: Any, timeout: float = 10.0) -> Any:
        """``function(...args)`` in the page, the arguments passed as JSON."""
        return await self.evaluate(f"({function})(...{json.dumps(list(args))})", timeout=timeout)

    async def wait_for(
        self, expression: str, *, timeout: float = 10.0, what: str | None = None, interval: float = 0.1
    ) -> Any:
        """Evaluate ``expression`` until it is truthy; returns that value."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                value = await self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
                if value:
                    return value
            except JavaScriptError as e:
                last_error = e
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise TimeoutError(f"{self.name}: not {what or expression!r} within {timeout}s{detail}")
            await asyncio.sleep(interval)

    async def element(self, selector: str, timeout: float = 10.0) -> str:
        """The remote object id of the first element matching ``selector`` (waits for it)."""
        await self.wait_for(
            f"document.querySelector({json.dumps(selector)}) !== null",
            timeout=timeout,
            what=f"an element {selector!r}",
        )
        result = await self.send(
            "Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"}
        )
        return result["result"]["objectId"]

    async def type_text(self, selector: str, text: str, timeout: float = 10.0) -> None:
        """Focus the element and type ``text`` into it, as a keyboard would insert it."""
        await self.element(selector, timeout)
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def press_key(self, key: str = "Enter", code: str | None = None, key_code: int = 13) -> None:
        common = {
            "key": key,
            "code": code or key,
            "windowsVirtualKeyCode": key_code,
            "nativeVirtualKeyCode": key_code,
        }
        await self.send(
            "Input.dispatchKeyEvent", {"type": "keyDown", **common, "text": "\r" if key == "Enter" else ""}
        )
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **common})

    async def set_input_files(self, selector: str, paths: list[Path], timeout: float = 10.0) -> None:
        """Choose files in a file input, as its file dialog would (fires ``change``)."""
        object_id = await self.element(selector, timeout)
        await self.send(
            "DOM.setFileInputFiles", {"files": [str(Path(p).resolve()) for p in paths], "objectId": object_id}
        )

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", {"format": "png"}, timeout=20)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.devtools.listeners.remove(self._on_event)
        with contextlib.suppress(Exception):
            await self.devtools.send("Target.closeTarget", {"targetId": self.target_id}, timeout=5)
        with contextlib.suppress(Exception):
            await self.devtools.send(
                "Target.disposeBrowserContext", {"browserContextId": self.context_id}, timeout=5
            )


def _remote_object_text(obj: dict) -> str:
    if "value" in obj:
        return str(obj["value"])
    return str(obj.get("description") or obj.get("unserializableValue") or obj.get("type"))


# --------------------------------------------------------------------------
# Converse.js


class ConversePage:
    """Converse.js logged in (or logging in) as ``jid`` in a page of its own."""

    def __init__(self, page: Page, jid: str, settings: dict):
        self.page = page
        self.jid = jid
        self.settings = settings

    @property
    def console(self) -> list[str]:
        return self.page.console

    async def status(self) -> dict:
        """``{connected, authenticated, jid, connection_status, statuses, feedback, errors}`` as Converse sees
        them (``statuses``: every Strophe status so far, in order)."""
        return await self.page.evaluate(
            "window.interop && window.interop.ready ? window.interop.status() : null"
        )

    async def wait_logged_in(self, timeout: float = 20.0) -> str:
        """Wait until Converse is connected and bound as this account; returns the full JID."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = await self.status()
            bound = (status or {}).get("jid") or ""
            if (
                status
                and status["connected"]
                and status["authenticated"]
                and STROPHE_STATUS.get(status["connection_status"]) == "CONNECTED"
                and "/" in bound
                and bound.split("/")[0] == self.jid
            ):
                # The session is ready for chats once the roster and the open chats are loaded.
                await self.page.evaluate(
                    "window.interop.sessionReady()", timeout=max(1.0, deadline - time.monotonic())
                )
                return status["jid"]
            if status and 4 in status["statuses"]:  # Strophe.Status.AUTHFAIL
                raise LoginFailed(f"Converse's login as {self.jid} was refused: {status['feedback']}")
            await asyncio.sleep(0.1)
        if status:
            status["statuses"] = [STROPHE_STATUS.get(s, s) for s in status["statuses"]]
            status["connection_status"] = STROPHE_STATUS.get(
                status["connection_status"], status["connection_status"]
            )
        console = "\n".join(self.console[-30:])
        raise TimeoutError(
            f"Converse did not log in as {self.jid} within {timeout}s; last status: {status}\n"
            f"page console (tail):\n{console}"
        )

    async def open_chat(self, jid: str) -> None:
        await self.page.call("jid => window.interop.openChat(jid).then(() => true)", jid)

    async def send_message(self, to: str, body: str) -> str:
        """Send ``body`` to ``to`` through Converse's chat model; returns the message id."""
        return await self.page.call("(jid, body) => window.interop.send(jid, body)", to, body)

    async def type_message(self, to: str, body: str) -> None:
        """Open the chat with ``to``, type ``body`` into its message box and press Enter."""
        await self.open_chat(to)
        textarea = f'converse-chat[jid="{to}"] textarea.chat-textarea'
        await self.page.type_text(textarea, body)
        await self.page.press_key("Enter")
        await self._wait_message(
            to, lambda m: m["sender"] == "me" and m["body"] == body, 10.0, "the typed message"
        )

    async def messages(self, jid: str) -> list[dict]:
        """The chat with ``jid`` as Converse stores it: ``{sender: 'me'|'them', body, from, ...}``."""
        return await self.page.call("jid => window.interop.messages(jid)", jid)

    async def wait_for_message(
        self, from_jid: str, body: str, *, timeout: float = 10.0, shown: bool = True
    ) -> dict:
        """Wait for a message from ``from_jid`` with this body; with ``shown``, also for its
        text in the chat's view on screen. Returns the message."""
        deadline = time.monotonic() + timeout
        found = await self._wait_message(
            from_jid, lambda m: m["sender"] == "them" and m["body"] == body, timeout, f"a message {body!r}"
        )
        if shown:
            await self.open_chat(from_jid)
            await self.page.wait_for(
                f"window.interop.shownTexts({json.dumps(from_jid)}).includes({json.dumps(body)})",
                timeout=max(1.0, deadline - time.monotonic()),
                what=f"{body!r} on screen in the chat with {from_jid}",
            )
        return found

    async def _wait_message(
        self, jid: str, predicate: Callable[[dict], bool], timeout: float, what: str
    ) -> dict:
        """The first message of the chat with ``jid`` that matches, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = await self.messages(jid)
            found = next((m for m in msgs if predicate(m)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.jid}: {what} not in the chat with {jid} within {timeout}s; it holds {msgs}"
                )
            await asyncio.sleep(0.1)

    async def upload_supported(self, timeout: float = 10.0) -> bool:
        """Whether Converse found an HTTP upload service (XEP-0363) on the account's domain."""
        return await self.page.evaluate("window.interop.uploadSupported()", timeout=timeout)

    async def upload_file(self, to: str, path: Path, *, timeout: float = 20.0) -> str:
        """Send a file to ``to`` the way a person would: the chat toolbar's file input
        (XEP-0363: slot request, HTTP PUT, then a message with the URL). Returns the URL."""
        path = Path(path)
        await self.open_chat(to)
        await self.page.set_input_files(f'converse-chat[jid="{to}"] input.fileupload', [path])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = await self.messages(to)
            for m in msgs:
                if m["sender"] == "me" and m["is_error"]:
                    raise BrowserError(
                        f"upload of {path.name} failed in Converse: {m['body'] or m['error_text']}"
                    )
                # Converse sets the URL on its message once the PUT has succeeded.
                if m["sender"] == "me" and m["oob_url"]:
                    return m["oob_url"]
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"{self.jid}: upload of {path.name} to {to} not done within {timeout}s: {await self.messages(to)}"
        )

    async def screenshot(self, path: Path) -> Path:
        return await self.page.screenshot(path)

    async def close(self) -> None:
        await self.page.close()


class BrowserSession:
    """A DevTools connection to a running ``Chromium`` for one test, in its event loop."""

    def __init__(self, chromium: Chromium, page_server: PageServer, artifacts: Path):
        self.chromium = chromium
        self.page_server = page_server
        self.artifacts = Path(artifacts)
        self.devtools: DevTools | None = None
        self.pages: list[Page] = []
        self.conversations: list[ConversePage] = []

    async def __aenter__(self) -> "BrowserSession":
        self.devtools = await DevTools.connect(self.chromium.ws_url)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def new_page(self, name: str = "page") -> Page:
        """A blank page in a browser context of its own (own cookies and storage)."""
        assert self.devtools is not None, "use `async with BrowserSession(...)`"
        context = (await self.devtools.send("Target.createBrowserContext", {"disposeOnDetach": True}))[
            "browserContextId"
        ]
        target = (
            await self.devtools.send(
                "Target.createTarget",
                {"url": "about:blank", "browserContextId": context, "width": 1280, "height": 900},
            )
        )["targetId"]
        session = (await self.devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True}))[
            "sessionId"
        ]
        page = Page(self.devtools, target, session, context, name)
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page

    async def open_converse(
        self,
        jid: str,
        password: str,
        *,
        websocket_url: str | None = None,
        bosh_url: str | None = None,
        login_timeout: float = 20.0,
        **settings: Any,
    ) -> ConversePage:
        """Open Converse logged in as ``jid`` over WebSocket (``websocket_url``, a wss:// URL)
        or BOSH (``bosh_url``); other keyword arguments are Converse settings. Waits for the
        login; raises TimeoutError (with the page's console) if it does not happen."""
        if (websocket_url is None) == (bosh_url is None):
            raise ValueError("give exactly one of websocket_url and bosh_url")
        options = {"jid": jid, "password": password, **settings}
        if websocket_url:
            options["websocket_url"] = websocket_url
        else:
            options["bosh_service_url"] = bosh_url
        page = await self.new_page(name=f"converse-{jid}")
        converse = ConversePage(page, jid, options)
        self.conversations.append(converse)
        await page.navigate(self.page_server.converse_url(options))
        await page.wait_for("window.interop && window.interop.ready", timeout=15, what="Converse initialised")
        await converse.wait_logged_in(timeout=login_timeout)
        return converse

    async def close(self) -> None:
        for page in self.pages:
            await page.close()
        self.pages.clear()
        if self.devtools is not None:
            await self.devtools.close()
            self.devtools = None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]

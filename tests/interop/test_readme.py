"""The README's commands, run exactly as written, as a newcomer would type them.

Every line of every ``sh`` block in README.md is executed by bash in a fresh directory that
holds nothing but the workspace (``Cargo.toml``, ``Cargo.lock`` and ``crates/`` linked from
this checkout), so ``cargo run --release -- serve`` starts the embedded default there
(domain ``localhost`` on 127.0.0.1:5222, 5223 and 5443, data in ``./rookery-data``). The commands
that do not end by themselves are recognised by what they are:

* ``cargo run --release -- serve`` runs in the background until it accepts connections, and
  is stopped with SIGTERM at the end (it must exit 0);
* ``./test.sh`` is this test suite itself and is not run again;
* a command whose comment says it asks on a terminal runs under a pseudo-terminal and is
  answered there (the password must not be echoed);
* ``go-sendxmpp ... -l`` (print received messages) runs in the background and must print the
  messages the lines before it sent.

The Profanity recipe, written in the text rather than as commands, is typed into Profanity
in a tmux session: it must log in, and a message it sends must reach the listener.

Needs the Debian packages go-sendxmpp, profanity and tmux (test.sh installs them) and the
ports 5222, 5223 and 5443 free on loopback, since those are what the README's default uses.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
# The first `cargo run --release` builds the server in release mode.
BUILD_DEADLINE = 1500.0
ALICE_PASSWORD = "a strong secret"


def sh_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    return [[line for line in b.splitlines() if line.strip() and not line.lstrip().startswith("#")] for b in blocks]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 15) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def wait_for(predicate, deadline: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{tail}", pytrace=False)
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}", pytrace=False)


class Tmux:
    """A private tmux server (its own socket) running one program in a fixed-size window."""

    def __init__(self, socket_path: Path, env: dict[str, str]):
        self.base = ["tmux", "-S", str(socket_path)]
        self.env = env

    def run(self, *args: str) -> str:
        res = subprocess.run(self.base + list(args), env=self.env, capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "t", "-x", "220", "-y", "50", command)

    def type(self, text: str) -> None:
        # -l: the text literally (a leading '/' or spaces are not key names).
        self.run("send-keys", "-t", "t", "-l", text)
        self.run("send-keys", "-t", "t", "Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t", "-S", "-200")

    def wait_for(self, pattern: str, deadline: float = 30) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        pytest.fail(f"Profanity never showed {pattern!r}:\n{self.screen()}", pytrace=False)

    def kill(self) -> None:
        subprocess.run(self.base + ["kill-server"], env=self.env, capture_output=True, timeout=10)


@pytest.mark.timeout(BUILD_DEADLINE + 300)
def test_readme_commands_work_as_written(tmp_path):
    text = README.read_text()
    lines = [line for block in sh_blocks(text) for line in block]
    assert lines, "README has no sh blocks"
    for tool in ("go-sendxmpp", "profanity", "tmux"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, (
            f"{tool} is not installed (test.sh installs it with apt-get)"
        )
    for port in (5222, 5223, 5443):
        if not port_free(port):
            pytest.fail(
                f"port {port} is taken on 127.0.0.1: the README's default needs it for this test",
                pytrace=False,
            )

    # A directory with nothing but the workspace: no configuration, no data.
    work = tmp_path / "newcomer"
    work.mkdir()
    for name in ("Cargo.toml", "Cargo.lock", "crates"):
        (work / name).symlink_to(REPO_ROOT / name)
    home = tmp_path / "home"
    home.mkdir()
    # A fresh HOME keeps Profanity's settings and certificate decisions out of the user's;
    # cargo and rustup keep finding theirs.
    real_home = Path.home()
    env = dict(
        os.environ,
        CARGO_TARGET_DIR=str(TARGET_DIR),
        RUSTUP_HOME=os.environ.get("RUSTUP_HOME") or str(real_home / ".rustup"),
        CARGO_HOME=os.environ.get("CARGO_HOME") or str(real_home / ".cargo"),
        HOME=str(home),
        TERM="xterm-256color",
    )
    env.pop("RUST_LOG", None)

    serve = listener = None
    serve_log = tmp_path / "serve.log"
    listen_out = tmp_path / "listen.out"
    tmux = Tmux(tmp_path / "tmux.sock", env)
    kinds = set()
    sent_messages = 0
    try:
        for line in lines:
            if line.startswith("./test.sh"):
                kinds.add("test")
                assert (REPO_ROOT / "test.sh").exists()
                continue
            if line.startswith("cargo run --release -- serve"):
                kinds.add("serve")
                serve = subprocess.Popen(
                    ["bash", "-c", line], cwd=work, env=env, stdin=subprocess.DEVNULL,
                    stdout=serve_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                )
                wait_for(lambda: accepts(5222) and accepts(5223) and accepts(5443), BUILD_DEADLINE,
                         "the server to accept connections on 5222, 5223 and 5443", serve, serve_log)
                assert (work / "rookery-data" / "certs" / "localhost.pem").exists()
                # What the first run writes is the server user's alone.
                assert (work / "rookery-data").stat().st_mode & 0o777 == 0o700
                for private in ("rookery.db", "certs/localhost.key"):
                    assert (work / "rookery-data" / private).stat().st_mode & 0o777 == 0o600, private
                continue
            assert serve is not None, f"{line!r} comes before the serve command"
            if "on a terminal" in line:
                kinds.add("prompt")
                jid = re.search(r"user add (\S+)", line).group(1)
                secret = "typed at a prompt"
                child = pexpect.spawn("bash", ["-c", line], cwd=str(work), env=env, timeout=120, encoding="utf-8")
                child.expect(f"New password for {re.escape(jid)}: ")
                child.sendline(secret)
                child.expect("Repeat the password: ")
                child.sendline(secret)
                child.expect(pexpect.EOF)
                child.close()
                assert child.exitstatus == 0, child.before
                assert secret not in (child.before or ""), "the password was echoed"
                continue
            if line.startswith("go-sendxmpp") and shlex.split(line)[-1] == "-l":
                kinds.add("listen")
                listener = subprocess.Popen(
                    ["bash", "-c", line], cwd=work, env=env, stdin=subprocess.DEVNULL,
                    stdout=listen_out.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                )
                wait_for(lambda: listen_out.read_text(errors="replace").count("alice@localhost: hello") >= sent_messages,
                         30, f"{sent_messages} messages printed by {line!r}", listener, listen_out)
                continue
            res = subprocess.run(["bash", "-c", line], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{line!r} exited with {res.returncode}:\n{res.stdout}\n{res.stderr[-3000:]}"
            if line.startswith("echo hello | go-sendxmpp"):
                kinds.add("send")
                sent_messages += 1
        assert kinds >= {"test", "serve", "prompt", "listen", "send"}, kinds
        assert sent_messages >= 2

        # The accounts the README made exist and nothing else was created beside them.
        users = subprocess.run(["bash", "-c", "cargo run --release -- user list"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
        assert users.returncode == 0, users.stderr
        assert users.stdout.split() == ["alice@localhost", "bob@localhost", "carol@localhost"]

        # Profanity, as the README describes it.
        connect = re.search(r"`(/connect alice@localhost [^`]+)`", text)
        assert connect, "README has no Profanity /connect recipe"
        assert "`/tls allow`" in text
        tmux.start("profanity")
        tmux.wait_for(r"Type '/help'")
        tmux.type(connect.group(1))
        tmux.wait_for(r"Enter password")
        tmux.type(ALICE_PASSWORD)
        tmux.wait_for(r"/tls allow")
        tmux.type("/tls allow")
        tmux.wait_for(r"alice@localhost/\S+ logged in successfully")
        tmux.type("/msg bob@localhost hello from profanity")
        wait_for(lambda: "alice@localhost: hello from profanity" in listen_out.read_text(errors="replace"),
                 30, "the listener to print Profanity's message", listener, listen_out)
        tmux.type("/quit")
    finally:
        tmux.kill()
        stop_group(listener)
        rc = stop_group(serve)
    assert rc == 0, serve_log.read_text(errors="replace")[-4000:]
    assert "stopped" in serve_log.read_text(errors="replace")

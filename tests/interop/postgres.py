"""A real PostgreSQL server for the interop tests: Debian's ``postgresql`` package, run
from a temporary directory (``initdb`` + ``pg_ctl``) on a free loopback port, with its unix
socket in that directory, and stopped at the end (``pg_ctl stop -m immediate``).

PostgreSQL refuses to run as root: when the tests run as root, its commands run as the
``postgres`` system user (``runuser``), on a directory given to that user.

``postgres_server`` is a module-scoped fixture (import it into the test module);
``PostgresServer.stop()``/``start()`` take the database away and bring it back on the same
port and data, to test what a server does meanwhile.

``PostgresServer(bin_dir, tls=True)`` takes TLS only: ``ssl = on`` with a certificate for
``localhost`` and 127.0.0.1 signed by a CA made here (``ca_file``; ``wrong_ca_file`` signed
nothing), and ``hostssl`` lines only in ``pg_hba.conf``, so TCP without TLS is refused.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from harness import free_ports

_LIVE: set["PostgresServer"] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.close()


def server_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    root = Path("/usr/lib/postgresql")
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if re.fullmatch(r"\d+", d.name) and (d / "bin" / "initdb").exists() and (d / "bin" / "pg_ctl").exists():
                found.append((int(d.name), d / "bin"))
    return max(found)[1] if found else None


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    host = "127.0.0.1"

    def __init__(self, bin_dir: Path, tls: bool = False):
        self.bin = bin_dir
        self.tls = tls
        self.as_postgres = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="rookery-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_ports(1, self.host)[0]
        self.started = False
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D", str(self.data),
            "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
        )
        _LIVE.add(self)
        self.ca_file = self.dir / "ca.pem"
        self.wrong_ca_file = self.dir / "wrong-ca.pem"
        if tls:
            self._make_tls()

    def _make_tls(self) -> None:
        """A CA, a server certificate it signs, and a TLS-only pg_hba.conf. The openssl CLI
        comes with Debian's postgresql package (through ssl-cert), which these tests need."""
        pki = self.dir / "pki"
        pki.mkdir()

        def openssl(*args: str) -> None:
            res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60, cwd=pki)
            if res.returncode != 0:
                raise PostgresError(f"openssl {args[0]} failed: {res.stderr}")

        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", str(self.ca_file), "-days", "2",
                "-subj", "/CN=Rookery test CA", *ca_ext)
        openssl("req", "-x509", *ec, "-keyout", "wrong-ca.key", "-out", str(self.wrong_ca_file), "-days", "2",
                "-subj", "/CN=Rookery other CA", *ca_ext)
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        (pki / "ext.cnf").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", "server.csr", "-CA", str(self.ca_file), "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
        files = {
            "server.crt": (pki / "server.crt").read_text(),
            "server.key": (pki / "server.key").read_text(),
            # TCP only with TLS; the unix socket stays for local administration.
            "pg_hba.conf": "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        }
        for name, text in files.items():
            path = self.data / name
            path.write_text(text)
            # PostgreSQL refuses a key file that others can read.
            path.chmod(0o600)
            if self.as_postgres:
                shutil.chown(path, "postgres", "postgres")

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else cmd

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        res = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise PostgresError(f"{tool} failed ({res.returncode}):\n{res.stdout}{res.stderr}\n{self.log_tail()}")
        return res

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        # fsync off (-F): test data need not survive a machine crash.
        options = f"-F -h {self.host} -p {self.port} -k {self.dir} -c max_connections=200"
        if self.tls:
            options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self.started = True
        self._watch()

    def _watch(self) -> None:
        """A watcher that stops the server once this process is gone, however it ended (a
        SIGKILL runs no exit handler). Started once; it outlives this process on purpose."""
        if getattr(self, "_watcher", None) is not None:
            return
        stop = " ".join(shlex.quote(a) for a in self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"))
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
            f"{stop} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.dir))}"
        )
        self._watcher = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (``fast``: connections are closed at once, as when a database
        is shut down for maintenance)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.started = False

    def create_database(self, prefix: str = "rookery") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", "-T", "template0", name)
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def psql(self, dbname: str, sql: str) -> str:
        """Runs SQL; returns the unaligned, tuples-only output."""
        res = self._run(
            "psql", "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", dbname,
            "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", sql,
        )
        return res.stdout.strip()

    def close(self) -> None:
        if self.started:
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)


def storage_toml(url: str, pool_size: int = 8) -> str:
    """The ``[storage]`` table of a Rookery on this database."""
    return f'[storage]\nbackend = "postgresql"\nurl = "{url}"\npool_size = {pool_size}\n'


def _serve(tls: bool):
    """A PostgreSQL server for a module; fails (not skips) when PostgreSQL is missing."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (/usr/lib/postgresql/<version>/bin/initdb): install "
            "Debian's `postgresql` package (./test.sh does)",
            pytrace=False,
        )
    server = PostgresServer(bin_dir, tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def postgres_server():
    """A PostgreSQL server for the module."""
    yield from _serve(tls=False)


@pytest.fixture(scope="module")
def postgres_tls_server():
    """A PostgreSQL server for the module that takes TCP connections with TLS only."""
    yield from _serve(tls=True)

"""Rookery on a PostgreSQL server that takes TLS only (postgres.py, ``tls=True``): ``rookery
serve`` with ``sslmode=verify-full`` and the test's CA logs a slixmpp client in, its
connections to the database are TLS (``pg_stat_ssl``), ``rookery check`` reports TLS, and a
wrong CA, a missing CA file or ``sslmode=disable`` make ``check`` (and ``serve``) fail with
a message naming the setting."""

from __future__ import annotations

import subprocess
import time

import pytest

from harness import session
from conftest import start_rookery
from postgres import postgres_tls_server, storage_toml  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def database(postgres_tls_server):  # noqa: F811
    """A fresh database; its name."""
    return postgres_tls_server.create_database().rsplit("/", 1)[1]


def tls_url(pg, dbname: str, params: str) -> str:
    # "localhost": verify-full checks the certificate's DNS name.
    return f"postgresql://postgres@localhost:{pg.port}/{dbname}?{params}"


@pytest.fixture(scope="module")
def server(postgres_tls_server, database, tmp_path_factory):  # noqa: F811
    url = tls_url(postgres_tls_server, database, f"sslmode=verify-full&sslrootcert={postgres_tls_server.ca_file}")
    srv = start_rookery(tmp_path_factory.mktemp("rookery-pg-tls"), extra_toml=storage_toml(url))
    try:
        yield srv
    finally:
        srv.kill()


def wait_for_admin_socket(server) -> None:
    # The running server is recognised by its admin socket, made just after the listeners.
    deadline = time.monotonic() + 10
    while not (server.data_dir / "rookery.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def with_url(server, name: str, url: str):
    """A copy of the server's configuration (same directory, so the same data directory)
    with another ``storage.url``; its path."""
    text = server.config_path.read_text()
    start = text.index('url = "postgresql://')
    end = text.index('"', start + len('url = "'))
    path = server.config_path.with_name(name)
    path.write_text(f'{text[:start]}url = "{url}{text[end:]}')
    return path


def run_cli(server, config, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(server.binary), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=server.cwd, stdin=subprocess.DEVNULL,
    )


async def test_client_logs_in_through_a_verified_tls_database(server, postgres_tls_server, database, new_user):  # noqa: F811
    alice = new_user("alice")
    async with session(server, alice) as client:
        assert str(client.boundjid.bare) == alice.jid
    # The account is in the database, and every connection of Rookery to it is TLS.
    assert postgres_tls_server.psql(database, "SELECT username FROM accounts").split() == [alice.localpart]
    counts = postgres_tls_server.psql(
        database,
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) "
        "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'rookery'",
    )
    with_tls, without = (int(n) for n in counts.split("|"))
    assert with_tls >= 1 and without == 0, counts


def test_check_reports_tls(server):
    wait_for_admin_socket(server)
    res = server.cli("check")
    assert res.returncode == 0, res.stderr
    assert "database reachable: PostgreSQL 1" in res.stdout, res.stdout
    assert "TLS TLSv1.3 (sslmode=verify-full)" in res.stdout, res.stdout


def test_check_fails_with_a_certificate_from_another_ca(server, postgres_tls_server, database):  # noqa: F811
    wait_for_admin_socket(server)
    config = with_url(
        server,
        "wrong-ca.toml",
        tls_url(postgres_tls_server, database, f"sslmode=verify-full&sslrootcert={postgres_tls_server.wrong_ca_file}"),
    )
    res = run_cli(server, config, "check")
    assert res.returncode == 1, res.stdout
    assert "storage.url: cannot reach the PostgreSQL database" in res.stderr, res.stderr
    assert "certificate" in res.stderr, res.stderr


def test_a_missing_ca_file_fails_check_and_serve(server, postgres_tls_server, database, tmp_path):  # noqa: F811
    wait_for_admin_socket(server)
    missing = tmp_path / "no-such-ca.pem"
    config = with_url(
        server, "missing-ca.toml", tls_url(postgres_tls_server, database, f"sslmode=verify-full&sslrootcert={missing}")
    )
    res = run_cli(server, config, "check")
    assert res.returncode == 1, res.stdout
    assert f"sslrootcert {missing}" in res.stderr, res.stderr
    # serve stops at the same point, before it serves anything.
    res = run_cli(server, config, "serve")
    assert res.returncode != 0, res.stdout
    assert f"sslrootcert {missing}" in res.stderr, res.stderr


def test_disable_is_refused_by_a_tls_only_database(server, postgres_tls_server, database):  # noqa: F811
    wait_for_admin_socket(server)
    config = with_url(server, "plain.toml", tls_url(postgres_tls_server, database, "sslmode=disable"))
    res = run_cli(server, config, "check")
    assert res.returncode == 1, res.stdout
    assert "no encryption" in res.stderr, res.stderr

"""The `rookery user ...` and `rookery check` commands, used while the server runs."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness import LoginError, User, connect_client, free_ports, render_config, session, unique_localpart

# -- rookery user -------------------------------------------------------------


def _assert_failed_readably(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode != 0, f"expected failure, got 0; stdout={res.stdout!r}"
    message = (res.stderr + res.stdout).strip()
    assert message, "failed without any message"
    assert "panicked" not in message and "RUST_BACKTRACE" not in message, message
    low = message.lower()
    for word in words:
        assert word.lower() in low, f"{word!r} not in error message {message!r}"


async def test_added_user_can_log_in(server):
    user = User(unique_localpart("cli"), server.domain, "s3cret-pw")
    res = server.user("add", user.jid, "--password", user.password)
    assert res.returncode == 0, res.stderr
    async with session(server, user) as c:
        assert c.boundjid.bare == user.jid


async def test_user_add_reads_password_from_stdin(server):
    user = User(unique_localpart("stdin"), server.domain, "from-stdin-pw")
    res = server.user("add", user.jid, input=user.password + "\nsecond line is ignored\n")
    assert res.returncode == 0, res.stderr
    async with session(server, user, mech="PLAIN") as c:
        assert c.boundjid.bare == user.jid
    with pytest.raises(LoginError):
        await connect_client(server, user.jid, "second line is ignored", mech="PLAIN")


def test_user_add_existing_fails(server, new_user):
    user = new_user("dup")
    res = server.user("add", user.jid, "--password", "other")
    _assert_failed_readably(res, user.localpart)


def test_user_add_for_unserved_domain_fails(server):
    res = server.user("add", "someone@unserved.example", "--password", "pw")
    _assert_failed_readably(res, "unserved.example")


@pytest.mark.parametrize("bad_jid", ["@" + "localhost", "two@@localhost", "has space@localhost"])
def test_user_add_invalid_jid_fails(server, bad_jid):
    res = server.user("add", bad_jid.replace("localhost", server.domain), "--password", "pw")
    _assert_failed_readably(res)


def test_user_list_is_sorted_bare_jids(server, new_user):
    made = [new_user(prefix) for prefix in ("zeta", "alpha", "mid")]
    for args in ([], [server.domain]):
        res = server.user("list", *args)
        assert res.returncode == 0, res.stderr
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        assert lines == sorted(lines), lines
        for user in made:
            assert user.jid in lines
        for line in lines:
            assert "/" not in line and line.endswith("@" + server.domain), line


async def test_passwd_changes_password(server, new_user):
    user = new_user("pw")
    res = server.user("passwd", user.jid, "--password", "brand-new-pw")
    assert res.returncode == 0, res.stderr
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        with pytest.raises(LoginError) as err:
            await connect_client(server, user.jid, user.password, mech=mech)
        assert err.value.auth_failures == ["not-authorized"]
        async with session(server, User(user.localpart, user.domain, "brand-new-pw"), mech=mech) as c:
            assert c.boundjid.bare == user.jid


async def test_passwd_reads_password_from_stdin(server, new_user):
    user = new_user("pwstdin")
    res = server.user("passwd", user.jid, input="piped-pw\n")
    assert res.returncode == 0, res.stderr
    async with session(server, User(user.localpart, user.domain, "piped-pw")) as c:
        assert c.boundjid.bare == user.jid


def test_passwd_unknown_user_fails(server):
    res = server.user("passwd", f"ghost-{unique_localpart()}@{server.domain}", "--password", "x")
    _assert_failed_readably(res, "ghost-")


async def test_delete_user(server, new_user):
    user = new_user("del")
    async with session(server, user):
        pass
    res = server.user("delete", user.jid)
    assert res.returncode == 0, res.stderr
    with pytest.raises(LoginError) as err:
        await connect_client(server, user.jid, user.password, mech="SCRAM-SHA-256")
    assert err.value.auth_failures == ["not-authorized"]
    listed = server.user("list", server.domain).stdout.splitlines()
    assert user.jid not in listed


def test_delete_unknown_user_fails(server):
    res = server.user("delete", f"ghost-{unique_localpart()}@{server.domain}")
    _assert_failed_readably(res, "ghost-")


def test_config_option_after_subcommand(server, new_user):
    if server.external:
        pytest.skip("rookery CLI only")
    user = new_user("order")
    res = subprocess.run(
        [str(server.binary), "user", "list", server.domain, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert user.jid in res.stdout.splitlines()


# -- rookery check --------------------------------------------------------------


@pytest.fixture
def check(server, tmp_path):
    """``check(config_text)`` writes the config next to a copy of the running server's
    data dir and runs ``rookery check`` on it from another directory."""
    if server.external:
        pytest.skip("rookery CLI only")
    shutil.copytree(server.data_dir / "certs", tmp_path / "data" / "certs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(config_text: str, name: str = "rookery.toml") -> subprocess.CompletedProcess:
        path = tmp_path / name
        path.write_text(config_text)
        return subprocess.run(
            [str(server.binary), "check", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=elsewhere,
            stdin=subprocess.DEVNULL,
        )

    return run


def _base_config(**kw) -> str:
    c2s, tls = free_ports(2)
    return render_config(c2s_port=c2s, tls_port=tls, **kw)


def test_check_accepts_running_servers_config(server):
    if server.external:
        pytest.skip("rookery CLI only")
    res = server.cli("check")
    assert res.returncode == 0, res.stderr


def test_check_accepts_good_config(check):
    res = check(_base_config())
    assert res.returncode == 0, res.stderr


def test_check_accepts_explicit_certificate_relative_to_config(check):
    config = _base_config().replace(
        'domain = "localhost"\n',
        'domain = "localhost"\ncertificate = "data/certs/localhost.pem"\nkey = "data/certs/localhost.key"\n',
    )
    res = check(config)
    assert res.returncode == 0, res.stderr + "\n" + config


@pytest.mark.parametrize(
    "mutate, key",
    [
        pytest.param(lambda c: "bogus_top_level = 1\n" + c, "bogus_top_level", id="top-level"),
        pytest.param(lambda c: c.replace("[limits]\n", "[limits]\nmax_stanza_byts = 5\n"), "max_stanza_byts", id="limits"),
        pytest.param(lambda c: c.replace("[tls]\n", "[tls]\nrequire_startls = true\n"), "require_startls", id="tls"),
        pytest.param(lambda c: c.replace('kind = "c2s"\n', 'kind = "c2s"\nbacklog_size = 9\n'), "backlog_size", id="listener"),
        pytest.param(lambda c: c.replace('domain = "localhost"\n', 'domain = "localhost"\nmotd = "hi"\n'), "motd", id="host"),
    ],
)
def test_check_rejects_unknown_key(check, mutate, key):
    base = _base_config()
    assert mutate(base) != base
    res = check(mutate(base))
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert key in res.stderr, res.stderr


@pytest.mark.parametrize(
    "mutate, key",
    [
        pytest.param(
            lambda c: c.replace("max_stanza_bytes = 65536", 'max_stanza_bytes = "lots"'), "max_stanza_bytes", id="type"
        ),
        pytest.param(
            lambda c: c.replace("unauthenticated_timeout_secs = 5", "unauthenticated_timeout_secs = -3"),
            "unauthenticated_timeout_secs",
            id="negative",
        ),
        pytest.param(lambda c: c.replace('kind = "c2s"', 'kind = "carrier-pigeon"'), "kind", id="enum"),
        pytest.param(
            lambda c: c.replace("require_starttls = true", 'require_starttls = "maybe"'), "require_starttls", id="bool"
        ),
        pytest.param(
            lambda c: c.replace('address = "127.0.0.1:', 'address = "not-an-address:', 1), "address", id="address"
        ),
        pytest.param(
            lambda c: c.replace(
                'domain = "localhost"\n', 'domain = "localhost"\ncertificate = "no/such.pem"\nkey = "no/such.key"\n'
            ),
            ("certificate", "no/such.pem"),
            id="missing-certificate",
        ),
        pytest.param(
            lambda c: c.replace('domain = "localhost"\n', 'domain = "localhost"\nmodules = ["disco", "teleport"]\n'),
            ("teleport", "modules"),
            id="unknown-module",
        ),
    ],
)
def test_check_rejects_bad_value(check, mutate, key):
    base = _base_config()
    config = mutate(base)
    assert config != base
    res = check(config)
    assert res.returncode == 1, (res.returncode, res.stderr, config)
    keys = key if isinstance(key, tuple) else (key,)
    assert any(k in res.stderr for k in keys), f"none of {keys} named in: {res.stderr}"


def test_check_rejects_certificate_not_matching_key(check, tmp_path):
    from harness import write_self_signed_cert

    write_self_signed_cert(tmp_path / "other.pem", tmp_path / "other.key", "localhost")
    config = _base_config().replace(
        'domain = "localhost"\n', 'domain = "localhost"\ncertificate = "data/certs/localhost.pem"\nkey = "other.key"\n'
    )
    res = check(config)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip()


def test_check_rejects_unparsable_toml(check):
    res = check("this is = = not toml [\n")
    assert res.returncode == 1
    assert res.stderr.strip()


def test_serve_refuses_unknown_key(server, tmp_path):
    if server.external:
        pytest.skip("rookery CLI only")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("surprise_key = true\n" + _base_config())
    res = subprocess.run(
        [str(server.binary), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode != 0
    assert "surprise_key" in res.stderr

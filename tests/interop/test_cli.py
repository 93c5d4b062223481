"""The `rookery user ...` and `rookery check` commands, used while the server runs."""

from __future__ import annotations

import re
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
    res = server.user("add", user.jid, "--password", "other-password")
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


# -- first-run safety: prompts, password policy, where the database is ---------------------


def _rookery(server, *args, cwd, input=None):
    return subprocess.run(
        [str(server.binary), *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def _prompted(server, *args, answers):
    """Runs a rookery command on a pseudo-terminal, answering each prompt in turn."""
    import pexpect

    child = pexpect.spawn(str(server.binary), ["--config", str(server.config_path), *args], timeout=30, encoding="utf-8")
    transcript = ""
    for prompt, answer in answers:
        child.expect(prompt)
        transcript += child.before + child.after
        child.sendline(answer)
    child.expect(pexpect.EOF)
    transcript += child.before
    child.close()
    return child.exitstatus, transcript


async def test_user_add_prompts_twice_without_echo(server):
    if server.external:
        pytest.skip("rookery CLI only")
    user = User(unique_localpart("tty"), server.domain, "typed on a tty")
    status, transcript = _prompted(
        server, "user", "add", user.jid,
        answers=[(f"New password for {user.jid}: ", user.password), ("Repeat the password: ", user.password)],
    )
    assert status == 0, transcript
    assert user.password not in transcript, f"the password was echoed: {transcript!r}"
    async with session(server, user) as c:
        assert c.boundjid.bare == user.jid


def test_user_add_prompt_mismatch_creates_nothing(server):
    if server.external:
        pytest.skip("rookery CLI only")
    jid = f"{unique_localpart('mismatch')}@{server.domain}"
    status, transcript = _prompted(
        server, "user", "add", jid,
        answers=[("New password for", "first attempt"), ("Repeat the password: ", "second attempt")],
    )
    assert status == 1, transcript
    assert "differ" in transcript
    assert jid not in server.user("list").stdout.splitlines()


@pytest.mark.parametrize("how", ["flag", "stdin", "passwd"])
def test_short_password_is_refused(server, new_user, how):
    if server.external:
        pytest.skip("rookery CLI only")
    if how == "passwd":
        user = new_user("short")
        res = server.user("passwd", user.jid, "--password", "1234567")
    else:
        user = User(unique_localpart("short"), server.domain, "1234567")
        if how == "flag":
            res = server.user("add", user.jid, "--password", user.password)
        else:
            res = server.user("add", user.jid, input=user.password + "\n")
    _assert_failed_readably(res, "too short", "8", "min_password_length")
    if how != "passwd":
        assert user.jid not in server.user("list").stdout.splitlines()


@pytest.mark.parametrize("command", [["user", "list"], ["user", "delete", "a@localhost"],
                                     ["user", "passwd", "a@localhost", "--password", "long enough"]])
def test_commands_that_read_never_create_a_database(server, tmp_path, command):
    if server.external:
        pytest.skip("rookery CLI only")
    res = _rookery(server, *command, cwd=tmp_path)
    _assert_failed_readably(res, "no database", str(tmp_path / "rookery-data" / "rookery.db"), "--config")
    assert list(tmp_path.iterdir()) == [], "a command that only reads created files"


def test_user_add_on_a_new_database_warns_and_makes_it_private(server, tmp_path):
    if server.external:
        pytest.skip("rookery CLI only")
    res = _rookery(server, "user", "add", "first@localhost", "--password", "first password", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    db = tmp_path / "rookery-data" / "rookery.db"
    assert "warning" in res.stderr and "new, empty database" in res.stderr and str(db) in res.stderr, res.stderr
    assert (tmp_path / "rookery-data").stat().st_mode & 0o777 == 0o700
    for path in db.parent.rglob("*"):
        # Directories (the archive journal's) are the owner's alone too.
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    again = _rookery(server, "user", "list", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.split() == ["first@localhost"]
    assert "warning" not in again.stderr


def test_running_servers_files_are_private(server):
    if server.external:
        pytest.skip("rookery CLI only")
    db = server.data_dir / "rookery.db"
    names = [db, db.with_name("rookery.db-wal"), db.with_name("rookery.db-shm")]
    names += list((server.data_dir / "certs").glob("*.key"))
    journal = server.data_dir / "rookery.db.archive-journal"
    names += [journal, journal / "lock", *journal.glob("*.log")]
    for path in names:
        assert path.exists(), path
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode & 0o777)}"


def test_verbose_names_configuration_and_database(server):
    if server.external:
        pytest.skip("rookery CLI only")
    res = server.cli("-v", "user", "list")
    assert res.returncode == 0, res.stderr
    assert f"configuration: {server.config_path}" in res.stderr, res.stderr
    assert f"database: {server.data_dir / 'rookery.db'}" in res.stderr, res.stderr


def test_missing_config_file_is_said_once(server, tmp_path):
    if server.external:
        pytest.skip("rookery CLI only")
    res = _rookery(server, "check", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    _assert_failed_readably(res, "nope.toml")
    assert res.stderr.count("No such file or directory") == 1, res.stderr


def test_check_names_the_key_of_a_missing_certificate_before_any_output(check):
    config = _base_config().replace(
        'domain = "localhost"\n', 'domain = "localhost"\ncertificate = "no/such.pem"\nkey = "data/certs/localhost.key"\n'
    )
    res = check(config)
    assert res.returncode == 1
    assert "host[0].certificate" in res.stderr and "no/such.pem" in res.stderr, res.stderr
    assert res.stdout == "", f"partial output before the error: {res.stdout!r}"


def test_check_refuses_a_port_another_process_holds(check):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        config = re.sub(r'address = "127\.0\.0\.1:\d+"', f'address = "127.0.0.1:{port}"', _base_config(), count=1)
        res = check(config)
        assert res.returncode == 1, res.stdout
        assert "listener[0].address" in res.stderr and str(port) in res.stderr, res.stderr
        assert res.stdout == ""
    finally:
        holder.close()


def test_check_of_the_running_servers_config_notes_its_ports(server):
    if server.external:
        pytest.skip("rookery CLI only")
    res = server.cli("check")
    assert res.returncode == 0, res.stderr
    assert "in use by the Rookery running with this configuration" in res.stdout, res.stdout
    assert f"database: {server.data_dir / 'rookery.db'}" in res.stdout

"""Federation peers for interop tests: real Prosody and ejabberd on loopback, under their own
domains, found through a DNS server of the test's own and trusting a test CA.

- ``DnsServer``: a small authoritative DNS server (dnslib) on a free UDP and TCP port of
  127.0.0.1, answering A records (127.0.0.1) and the SRV records ``_xmpp-server._tcp.D``,
  ``_xmpps-server._tcp.D`` (and ``_xmpp-client``/``_xmpps-client``) of each registered
  domain D and its subdomains. The peers are pointed at it through their own settings
  (Prosody: libunbound forwarding to ``127.0.0.1@PORT``; ejabberd: an Erlang ``inetrc``
  file), so no file of the machine is read or changed for these names and no query leaves
  loopback.
- ``TestPKI``: a test CA issuing a certificate for each domain (dNSName ``D`` and ``*.D``,
  SRVName ``_xmpp-server.D`` and ``_xmpps-server.D``; XmppAddr ``D`` only on request, see
  ``TestPKI``), and a second CA that nobody trusts issuing the same names: the "untrusted"
  certificates.
- ``ProsodyPeer``, ``EjabberdPeer``: a private instance of the Debian package, run as the
  current user with config, data, logs and spool in its own directory, every port chosen
  free and set explicitly (never 5222/5223/5269/5280/5443), c2s with STARTTLS and direct TLS,
  s2s with STARTTLS and direct TLS (XEP-0368), dialback switchable (``secure_auth``), the
  presented certificate switchable (``trusted_cert``), accounts made with the server's CLI.
- ``Federation``: one DNS server, one PKI and the peers, with what a Rookery configuration
  needs (``rookery_hosts()``, ``dns_address``, ``register_rookery()``).

Peers keep their ports across ``restart()``, so the DNS records stay right.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from harness import User, _die_with_parent, free_ports, unique_localpart

PROSODY_DOMAIN = "prosody.test"
EJABBERD_DOMAIN = "ejabberd.test"
ROOKERY_DOMAIN = "rookery.test"
LOOPBACK = "127.0.0.1"

# Ports no test may hold: the CI's own services, and the servers' defaults.
RESERVED_PORTS = frozenset({5222, 5223, 5269, 5270, 5280, 5281, 5443})


class PeerStartError(RuntimeError):
    pass


def pick_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, none of the reserved ones."""
    while True:
        ports = free_ports(count, LOOPBACK)
        if not RESERVED_PORTS.intersection(ports) and len(set(ports)) == count:
            return ports


# --------------------------------------------------------------------------
# DNS


@dataclasses.dataclass
class XmppService:
    """Where one domain's XMPP services are: the SRV records the DNS server gives out."""

    s2s_port: int | None = None
    s2s_tls_port: int | None = None  # XEP-0368 direct TLS (_xmpps-server)
    c2s_port: int | None = None
    c2s_tls_port: int | None = None  # XEP-0368 direct TLS (_xmpps-client)
    host: str = LOOPBACK


class _Resolver:
    def __init__(self, dns: "DnsServer"):
        self.dns = dns

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.dns.queries.append((qname, qtype))
        found, records = self.dns.answer(qname, qtype)
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in records:
            reply.add_answer(rr)
        return reply


class DnsServer:
    """An authoritative DNS server for the test domains on ``127.0.0.1:port`` (UDP and TCP).

    Answers, with TTL 0 (nothing is cached across a change):
      - A ``127.0.0.1`` for each registered domain and any name under it, and for a name that
        is an IPv4 address literal (SRV targets are ``127.0.0.1.``, so that a peer that
        resolves SRV targets with the system's resolver, as ejabberd does with getaddrinfo,
        needs no DNS query for them); an empty answer for AAAA and other types;
      - SRV ``_xmpp-server._tcp.D`` → the domain's s2s port (priority 10),
        ``_xmpps-server._tcp.D`` → its direct TLS s2s port (priority 0, so preferred; only if
        it has one), likewise ``_xmpp-client``/``_xmpps-client``; a subdomain
        (``conference.D``) gets its parent's records;
      - for ``_xmpp-server._tcp.X`` of any other name X: an SRV record to a loopback port
        that refuses connections, so that a server sending to an unknown domain fails at
        once (remote-server-not-found) instead of falling back to the system's resolver;
      - A 127.0.0.1 for ``localhost``, NXDOMAIN for everything else.
    Every question is kept in ``queries`` as (name, type).
    """

    def __init__(self, host: str = LOOPBACK):
        self.host = host
        self.port = 0
        self.services: dict[str, XmppService] = {}
        self.queries: list[tuple[str, str]] = []
        self._servers: list[DNSServer] = []
        # Bound but never listening: connecting to it is refused at once.
        self._refuser = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._refuser.bind((host, 0))
        self.refusing_port = self._refuser.getsockname()[1]
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    def set_service(self, domain: str, service: XmppService | None = None, **ports) -> XmppService:
        """Register (or replace) a domain's records: ``set_service(D, s2s_port=..., s2s_tls_port=...)``."""
        service = service or XmppService(**ports)
        with self._lock:
            self.services[domain.lower()] = service
        return service

    def remove_service(self, domain: str) -> None:
        with self._lock:
            self.services.pop(domain.lower(), None)

    def _service_for(self, name: str) -> XmppService | None:
        with self._lock:
            while name:
                if name in self.services:
                    return self.services[name]
                if "." not in name:
                    return None
                name = name.split(".", 1)[1]
        return None

    def answer(self, qname: str, qtype: str) -> tuple[bool, list[RR]]:
        """(whether the name exists, the answer records) for one question."""
        m = re.fullmatch(r"_(xmpps?)-(server|client)\._tcp\.(.+)", qname)
        if m:
            tls, kind, domain = m.group(1) == "xmpps", m.group(2), m.group(3)
            service = self._service_for(domain)
            if service is None:
                if kind == "server" and not tls:
                    return True, [self._srv(qname, LOOPBACK, self.refusing_port)] if qtype in ("SRV", "ANY") else []
                return False, []
            port = {
                ("server", False): service.s2s_port,
                ("server", True): service.s2s_tls_port,
                ("client", False): service.c2s_port,
                ("client", True): service.c2s_tls_port,
            }[(kind, tls)]
            if not port:
                return False, []
            # Direct TLS first (XEP-0368 §3: the priorities order both record sets together).
            priority = 0 if tls else 10
            return True, [self._srv(qname, service.host, port, priority)] if qtype in ("SRV", "ANY") else []
        try:
            literal = ipaddress.ip_address(qname)
        except ValueError:
            literal = None
        if literal is not None:
            if qtype in ("A", "ANY") and literal.version == 4:
                return True, [RR(qname, QTYPE.A, rdata=A(str(literal)), ttl=0)]
            if qtype in ("AAAA", "ANY") and literal.version == 6:
                return True, [RR(qname, QTYPE.AAAA, rdata=AAAA(str(literal)), ttl=0)]
            return True, []
        if qname == "localhost":
            # Erlang's distribution (ejabberdctl) names the node's host "localhost".
            return True, [RR(qname, QTYPE.A, rdata=A(LOOPBACK), ttl=0)] if qtype in ("A", "ANY") else []
        service = self._service_for(qname)
        if service is None:
            return False, []
        if qtype in ("A", "ANY"):
            return True, [RR(qname, QTYPE.A, rdata=A(service.host), ttl=0)]
        return True, []

    @staticmethod
    def _srv(qname: str, host: str, port: int, priority: int = 0) -> RR:
        rdata = SRV(priority=priority, weight=0, port=port, target=DNSLabel(host + "."))
        return RR(qname, QTYPE.SRV, rdata=rdata, ttl=0)

    def start(self) -> "DnsServer":
        quiet = DNSLogger(logf=lambda _s: None)
        for _attempt in range(20):
            udp = DNSServer(_Resolver(self), address=self.host, port=0, logger=quiet)
            port = udp.server.server_address[1]
            if port in RESERVED_PORTS:
                udp.server.server_close()
                continue
            try:
                tcp = DNSServer(_Resolver(self), address=self.host, port=port, tcp=True, logger=quiet)
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for srv in self._servers:
                srv.start_thread()
            return self
        raise RuntimeError("no port free for both UDP and TCP for the DNS server")

    def stop(self) -> None:
        for srv in self._servers:
            srv.server.shutdown()
            srv.server.server_close()
        self._servers = []
        self._refuser.close()

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------
# Certificates

XMPP_ADDR_OID = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # id-on-xmppAddr (RFC 6120 §13.7.1.4)
SRV_NAME_OID = ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # id-on-dnsSRV (RFC 4985)


def _der_string(tag: int, text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) < 128:
        length = bytes([len(data)])
    else:
        raw = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + data


@dataclasses.dataclass(frozen=True)
class CertFiles:
    """A certificate (PEM: the leaf, then its issuer), its key (PEM), both in one file for
    servers that want that (ejabberd's ``certfiles``), and the issuing CA's certificate."""

    domain: str
    cert_path: Path
    key_path: Path
    combined_path: Path
    ca_path: Path
    trusted: bool


class CertificateAuthority:
    def __init__(self, name: str, directory: Path):
        self.name = name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.cert_path = self.directory / "ca.pem"
        self.cert_path.write_bytes(self.cert_pem)

    def issue(self, domain: str, trusted: bool, xmpp_addr: bool = False) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names: list[x509.GeneralName] = [
            x509.DNSName(domain),
            x509.DNSName(f"*.{domain}"),
            x509.OtherName(SRV_NAME_OID, _der_string(0x16, f"_xmpp-server.{domain}")),  # IA5String
            x509.OtherName(SRV_NAME_OID, _der_string(0x16, f"_xmpps-server.{domain}")),
        ]
        if xmpp_addr:
            names.append(x509.OtherName(XMPP_ADDR_OID, _der_string(0x0C, domain)))  # UTF8String
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            # Servers present the certificate as TLS servers and, on outgoing s2s
            # connections, as TLS clients (SASL EXTERNAL).
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        stem = self.directory / (domain + ("+xmppaddr" if xmpp_addr else ""))
        files = CertFiles(
            domain=domain,
            cert_path=stem.with_suffix(".crt"),
            key_path=stem.with_suffix(".key"),
            combined_path=stem.with_suffix(".pem"),
            ca_path=self.cert_path,
            trusted=trusted,
        )
        files.cert_path.write_bytes(cert_pem)
        files.key_path.write_bytes(key_pem)
        files.combined_path.write_bytes(cert_pem + key_pem)
        for path in (files.key_path, files.combined_path):
            path.chmod(0o600)
        return files


class TestPKI:
    """The test CA (``ca_path``: what every peer trusts) and a CA nobody trusts, each with a
    certificate for every domain: ``pki.cert("prosody.test")``, ``pki.cert(D, trusted=False)``.

    ``pki.cert(D, xmpp_addr=True)`` adds an XmppAddr (id-on-xmppAddr) name. Not by default:
    ejabberd 23.01 (p1_xmpp 1.6.1, xmpp_stream_pkix:get_domains_from_san) crashes the
    incoming s2s stream when it checks a peer certificate with an XmppAddr for SASL EXTERNAL
    (its SAN fold returns a binary where a list is due), so the link fails; dNSName and
    SRVName certificates work with both peers."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, domains=(PROSODY_DOMAIN, EJABBERD_DOMAIN, ROOKERY_DOMAIN)):
        self.directory = Path(directory)
        self.ca = CertificateAuthority("Rookery Interop Test CA", self.directory / "trusted")
        self.untrusted_ca = CertificateAuthority("Untrusted Interop Test CA", self.directory / "untrusted")
        self._certs: dict[tuple[str, bool, bool], CertFiles] = {}
        for domain in domains:
            self.cert(domain)
            self.cert(domain, trusted=False)

    @property
    def ca_path(self) -> Path:
        return self.ca.cert_path

    def cert(self, domain: str, trusted: bool = True, xmpp_addr: bool = False) -> CertFiles:
        key = (domain, trusted, xmpp_addr)
        if key not in self._certs:
            ca = self.ca if trusted else self.untrusted_ca
            self._certs[key] = ca.issue(domain, trusted, xmpp_addr)
        return self._certs[key]


# --------------------------------------------------------------------------
# Peers

_LIVE_PEERS: set["Peer"] = set()


def _stop_leftover_peers() -> None:
    for peer in list(_LIVE_PEERS):
        peer.kill()


atexit.register(_stop_leftover_peers)


class Peer:
    """A federation peer: one XMPP server process serving ``domain`` on loopback.

    Settings (keyword arguments, also of ``restart()`` and ``reconfigured()``):
      secure_auth   require authenticated certificates on s2s links both ways, no dialback
                    (Prosody: ``s2s_secure_auth = true``; ejabberd: without mod_s2s_dialback)
      trusted_cert  present the certificate from the test CA (True) or the one from the CA
                    nobody trusts (False), on c2s and s2s
      direct_tls    publish ``_xmpps-server._tcp`` (XEP-0368) for the domain in the DNS
                    server; the direct TLS port listens either way (``s2s_tls_port``)
    """

    kind = "peer"
    # Settings of this kind of peer beyond secure_auth, trusted_cert and direct_tls.
    extra_settings: tuple[str, ...] = ()
    host = LOOPBACK
    external = False
    startup_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        domain: str,
        dns: DnsServer,
        pki: TestPKI,
        *,
        secure_auth: bool = False,
        trusted_cert: bool = True,
        direct_tls: bool = True,
        **settings,
    ):
        unknown = set(settings) - set(self.extra_settings)
        if unknown:
            raise TypeError(f"unknown {self.kind} settings: {sorted(unknown)}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.dns = dns
        self.pki = pki
        self.settings = dict(secure_auth=secure_auth, trusted_cert=trusted_cert, direct_tls=direct_tls, **settings)
        self.c2s_port, self.tls_port, self.s2s_port, self.s2s_tls_port = pick_ports(4)
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.log_path = self.workdir / "server.log"
        self.starts = 0

    # -- settings ---------------------------------------------------------------

    @property
    def secure_auth(self) -> bool:
        return bool(self.settings["secure_auth"])

    @property
    def cert(self) -> CertFiles:
        """The certificate the peer presents (c2s and s2s)."""
        return self.pki.cert(self.domain, trusted=bool(self.settings["trusted_cert"]))

    @property
    def cert_path(self) -> Path:
        """What a client must trust to reach this peer (the CA of the presented certificate):
        what ``harness.connect_client`` reads."""
        return self.cert.ca_path

    @property
    def s2s_address(self) -> str:
        return f"{self.host}:{self.s2s_port}"

    @property
    def service(self) -> XmppService:
        return XmppService(
            s2s_port=self.s2s_port,
            s2s_tls_port=self.s2s_tls_port if self.settings["direct_tls"] else None,
            c2s_port=self.c2s_port,
            c2s_tls_port=self.tls_port,
        )

    def jid(self, localpart: str) -> str:
        return f"{localpart}@{self.domain}"

    # -- lifecycle ---------------------------------------------------------------

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> "Peer":
        if self.running:
            return self
        self.write_config()
        argv, env = self.command()
        self.starts += 1
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=env,
                # Its own process group, so that everything it starts is stopped with it.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _LIVE_PEERS.add(self)
        self.dns.set_service(self.domain, self.service)
        deadline = time.monotonic() + self.startup_timeout
        pending = {self.c2s_port, self.tls_port, self.s2s_port, self.s2s_tls_port}
        while pending:
            rc = self.proc.poll()
            if rc is not None:
                self.kill()
                raise PeerStartError(f"{self.kind} exited with {rc} before listening.\n{self.log_tail()}")
            for port in list(pending):
                with contextlib.suppress(OSError), socket.create_connection((self.host, port), timeout=0.5):
                    pending.discard(port)
            if not pending:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise PeerStartError(
                    f"{self.kind} not listening after {self.startup_timeout}s (ports still closed: "
                    f"{sorted(pending)}).\n{self.log_tail()}"
                )
            time.sleep(0.1)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """After the ports are open: anything else to wait for before the peer is usable."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the peer's process group, SIGKILL after ``timeout`` s; the exit code
        (None if it had to be killed)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    rc = None
            else:
                rc = self.proc.returncode
        self.kill()
        return rc

    def kill(self) -> None:
        """SIGKILL to whatever is left of the peer's process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        _LIVE_PEERS.discard(self)

    def restart(self, **changes) -> "Peer":
        """Stop, apply setting changes (see the class doc), start again on the same ports."""
        unknown = set(changes) - set(self.settings)
        if unknown:
            raise TypeError(f"unknown {self.kind} settings: {sorted(unknown)}")
        self.stop()
        self.settings.update(changes)
        return self.start()

    @contextlib.contextmanager
    def reconfigured(self, **changes):
        """``with peer.reconfigured(secure_auth=True):`` — restarted with the changes, and
        restarted with the previous settings afterwards (only if anything changed)."""
        before = {key: self.settings[key] for key in changes}
        if before == changes:
            yield self
            return
        self.restart(**changes)
        try:
            yield self
        finally:
            self.restart(**before)

    # -- accounts -----------------------------------------------------------------

    def register(self, localpart: str, password: str) -> None:
        raise NotImplementedError

    def add_user(self, prefix: str = "user", password: str | None = None) -> User:
        user = User(unique_localpart(prefix), self.domain, password or f"pw-{uuid.uuid4().hex[:12]}")
        self.register(user.localpart, user.password)
        return user

    # -- output ----------------------------------------------------------------------

    def log_size(self) -> int:
        """The current length of the server's log: an ``after`` mark for the log readers."""
        return len(self.log_path.read_text(errors="replace")) if self.log_path.exists() else 0

    def log_lines(self, pattern: str, after: int = 0, wait: float = 0.0) -> list[re.Match]:
        """The matches of ``pattern`` in the log's lines from offset ``after``; with ``wait``,
        polled for up to that many seconds until there is one (ejabberd's log is written
        with a delay of up to a few seconds)."""
        deadline = time.monotonic() + wait
        while True:
            text = self.log_path.read_text(errors="replace")[after:] if self.log_path.exists() else ""
            found = [m for m in (re.search(pattern, line) for line in text.splitlines()) if m]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    # (direction "in"/"out", mechanism) of each s2s authentication in a log line.
    _auth_pattern = ""

    def s2s_auth_methods(self, after: int = 0, direction: str | None = None, wait: float = 5.0) -> list[str]:
        """How s2s links were authenticated according to the log (from offset ``after``):
        ``"EXTERNAL"`` or ``"dialback"`` per link and domain; ``direction`` "in" or "out"
        for one side only. Waits up to ``wait`` seconds for a first one to be logged (0: look
        once, e.g. to check that there is none)."""
        deadline = time.monotonic() + wait
        while True:
            found = [
                m.group("mech")
                for m in self.log_lines(self._auth_pattern, after)
                if direction is None or m.group("dir") == direction
            ]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def log_text(self) -> str:
        parts = []
        for path in (self.log_path, self.stdout_path, self.stderr_path):
            if path.exists():
                text = path.read_text(errors="replace")
                if text.strip():
                    parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return (
            f"--- {self.kind} log ({self.log_path}) ---\n{text[-chars:]}\n"
            f"--- stdout ---\n{out[-2000:]}\n--- stderr ---\n{err[-2000:]}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} c2s={self.c2s_port} s2s={self.s2s_port}>"


def _lua_str(value: str | Path) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProsodyPeer(Peer):
    """Debian's Prosody 0.12 as ``prosody.test``.

    Name resolution: Prosody resolves through libunbound (lua-unbound, which Prosody loads
    when installed) with ``unbound = { forward = "127.0.0.1@PORT"; resolvconf = false;
    hoststxt = false }``: every query goes to the test's DNS server and nowhere else. Its
    built-in local zone for ``test.`` (RFC 6761 names get NXDOMAIN without a query) is made
    transparent with ``options = { ["local-zone:"] = "test. transparent" }``.

    Extra settings: ``bidi`` (load mod_s2s_bidi, XEP-0288; default True).
    Supported on s2s: STARTTLS, direct TLS in (``s2s_direct_tls_ports``) and out
    (``_xmpps-server`` SRV first), SASL EXTERNAL both ways (mod_s2s_auth_certs), dialback
    (mod_dialback, also used after a certificate failure unless ``s2s_secure_auth``), bidi.
    """

    kind = "prosody"
    extra_settings = ("bidi",)
    # Written by the plugin below (mod_harness_s2s_log).
    _auth_pattern = r"harness: s2s authenticated direction=(?P<dir>in|out)\w* .* mechanism=(?P<mech>\S+)"
    _plugin = """-- Logs how each s2s link is authenticated, for the tests (federation.py).
module:hook("s2s-authenticated", function (event)
	local session = event.session;
	module:log("info", "harness: s2s authenticated direction=%s from=%s to=%s host=%s mechanism=%s",
		tostring(session.direction), tostring(session.from_host), tostring(session.to_host),
		tostring(event.host), tostring(event.mechanism));
end, 1000);
"""

    def __init__(self, workdir: Path, dns: DnsServer, pki: TestPKI, domain: str = PROSODY_DOMAIN, **settings):
        settings.setdefault("bidi", True)
        super().__init__(workdir, domain, dns, pki, **settings)
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.log_path = self.workdir / "prosody.log"
        self.data_dir = self.workdir / "data"

    @staticmethod
    def missing_requirements() -> list[str]:
        missing = []
        if not shutil.which("prosody") or not shutil.which("prosodyctl"):
            missing.append("prosody (Debian package prosody)")
        lua = subprocess.run(
            ["lua5.4", "-e", 'require "lunbound"'], capture_output=True, text=True
        ) if shutil.which("lua5.4") else None
        if lua is None or lua.returncode != 0:
            # Without it Prosody would fall back to its own resolver, which reads the
            # machine's /etc/resolv.conf.
            missing.append("lua-unbound for Lua 5.4 (Debian package lua-unbound)")
        return missing

    def write_config(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        plugins = self.workdir / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "mod_harness_s2s_log.lua").write_text(self._plugin)
        cert = self.cert
        modules = [
            "roster", "saslauth", "tls", "dialback", "disco", "ping", "version", "time", "private", "vcard_legacy",
            "mam", "blocklist", "harness_s2s_log",
        ]
        if self.settings["bidi"]:
            modules.append("s2s_bidi")
        ssl = (
            f"{{ certificate = {_lua_str(cert.cert_path)}; key = {_lua_str(cert.key_path)}; "
            f"cafile = {_lua_str(self.pki.ca_path)}; }}"
        )
        self.config_path.write_text(
            f"""-- Prosody as a federation peer of the interop tests (tests/interop/federation.py).
run_as_root = true
admins = {{ }}
data_path = {_lua_str(self.data_dir)}
plugin_paths = {{ {_lua_str(plugins)} }}
modules_enabled = {{ {" ".join(_lua_str(m) + ";" for m in modules)} }}
-- Autoloaded and kept: presence, message, iq, offline, c2s, s2s, s2s_auth_certs.
modules_disabled = {{ "posix"; }}

interfaces = {{ "{LOOPBACK}" }}
local_interfaces = {{ "{LOOPBACK}" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_direct_tls_ports = {{ {self.tls_port} }}
s2s_ports = {{ {self.s2s_port} }}
s2s_direct_tls_ports = {{ {self.s2s_tls_port} }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
use_ipv6 = false

-- Every DNS query to the test's DNS server only.
unbound = {{
	resolvconf = false;
	hoststxt = false;
	forward = "{self.dns.host}@{self.dns.port}";
	-- libunbound answers NXDOMAIN for the special-use names (RFC 6761) itself, .test among
	-- them: ask the forwarder instead.
	options = {{ ["local-zone:"] = "test. transparent"; }};
}}

c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {"true" if self.secure_auth else "false"}
s2s_timeout = 10

authentication = "internal_hashed"
storage = "internal"
allow_registration = false

log = {{
	{{ levels = {{ min = "debug" }}, to = "file", filename = {_lua_str(self.log_path)} }};
}}

ssl = {ssl}

VirtualHost "{self.domain}"
	ssl = {ssl}

Component "conference.{self.domain}" "muc"
	ssl = {ssl}
	restrict_room_creation = false
"""
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, HOME=str(self.workdir))
        return ["prosody", "--config", str(self.config_path)], env

    def prosodyctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=dict(os.environ, HOME=str(self.workdir)),
        )

    def register(self, localpart: str, password: str) -> None:
        res = self.prosodyctl("register", localpart, self.domain, password)
        if res.returncode != 0:
            raise AssertionError(f"prosodyctl register {localpart} failed ({res.returncode}): {res.stderr}{res.stdout}")


class EjabberdPeer(Peer):
    """Debian's ejabberd 23.01 as ``ejabberd.test``.

    Started with a copy of Debian's ejabberdctl (``foreground``) that runs the VM as the
    current user, without epmd (Erlang distribution on a loopback port of its own, for
    ``ejabberdctl register``), HOME (the Erlang cookie), config, logs and Mnesia spool in the
    peer's directory.

    Name resolution: ejabberd looks SRV records up with Erlang's own DNS client, configured by
    the ``inetrc`` file in its config directory (ejabberdctl sets ``ERL_INETRC`` to it): the
    test's DNS server as the only nameserver, /etc/resolv.conf and /etc/hosts not read. The
    SRV targets are then resolved with getaddrinfo (the system's resolver): the DNS server
    gives ``127.0.0.1.`` as target, which getaddrinfo takes as an address without a query,
    and answers every ``_xmpp-server._tcp`` question, so that ejabberd never falls back to
    resolving a domain itself.

    Supported on s2s: STARTTLS, direct TLS in (an ``ejabberd_s2s_in`` listener with
    ``tls: true``) and out (``_xmpps-server`` SRV first), SASL EXTERNAL both ways, dialback
    (mod_s2s_dialback; ``secure_auth`` leaves it out, so that only authenticated certificates
    are accepted and required); no bidi (XEP-0288).
    """

    kind = "ejabberd"
    _auth_pattern = r"Accepted (?P<dir>in|out)\w+ s2s (?P<mech>\S+) authentication"
    startup_timeout = 60.0

    def __init__(self, workdir: Path, dns: DnsServer, pki: TestPKI, domain: str = EJABBERD_DOMAIN, **settings):
        super().__init__(workdir, domain, dns, pki, **settings)
        self.conf_dir = self.workdir / "conf"
        self.logs_dir = self.workdir / "logs"
        self.spool_dir = self.workdir / "spool"
        self.log_path = self.logs_dir / "ejabberd.log"
        self.config_path = self.conf_dir / "ejabberd.yml"
        self.ctl_config_path = self.conf_dir / "ejabberdctl.cfg"
        self.ctl_path = self.workdir / "ejabberdctl"
        (self.dist_port,) = pick_ports(1)
        self.node = f"fedpeer-{uuid.uuid4().hex[:8]}@localhost"

    @staticmethod
    def missing_requirements() -> list[str]:
        if not Path("/usr/sbin/ejabberdctl").is_file() or not shutil.which("erl"):
            return ["ejabberd (Debian package ejabberd)"]
        return []

    def _write_ctl(self) -> None:
        """Debian's ejabberdctl, changed to run as the current user and to exec the VM (so
        that the process started is the VM itself)."""
        script = Path("/usr/sbin/ejabberdctl").read_text()
        patched, n_user = re.subn(r"(?m)^INSTALLUSER=ejabberd$", "INSTALLUSER=", script)
        patched, n_exec = re.subn(r'as_current_user\) "\$@" ;;', 'as_current_user) exec "$@" ;;', patched)
        if n_user != 1 or n_exec != 1:
            raise PeerStartError(
                "/usr/sbin/ejabberdctl is not as expected (INSTALLUSER=ejabberd and "
                '`as_current_user) "$@" ;;`): federation.py needs updating for this ejabberd'
            )
        self.ctl_path.write_text(patched)
        self.ctl_path.chmod(0o755)

    def write_config(self) -> None:
        for d in (self.conf_dir, self.logs_dir, self.spool_dir):
            d.mkdir(exist_ok=True)
        self._write_ctl()
        cert = self.cert
        ca = self.pki.ca_path
        (self.conf_dir / "inetrc").write_text(
            "% Erlang's DNS client: the test's DNS server only (see federation.py).\n"
            '{resolv_conf, ""}.\n'
            '{hosts_file, ""}.\n'
            f"{{nameserver, {{{self.dns.host.replace('.', ',')}}}, {self.dns.port}}}.\n"
            "{lookup, [dns]}.\n"
        )
        self.ctl_config_path.write_text(
            f"""# ejabberdctl settings of a federation peer (tests/interop/federation.py).
ERLANG_NODE={self.node}
# Distribution on a loopback port of its own, without epmd.
ERL_DIST_PORT={self.dist_port}
ERL_EPMD_ADDRESS={LOOPBACK}
ERL_OPTIONS="-kernel inet_dist_use_interface {{127,0,0,1}}"
EJABBERD_BYPASS_WARNINGS=true
"""
        )
        dialback = "" if self.secure_auth else "  mod_s2s_dialback: {}\n"
        self.config_path.write_text(
            f"""# ejabberd as a federation peer of the interop tests (tests/interop/federation.py).
loglevel: debug
log_rotate_count: 0
hosts:
  - "{self.domain}"
certfiles:
  - "{cert.combined_path}"
ca_file: "{ca}"
s2s_cafile: "{ca}"
s2s_use_starttls: required
# Retry a failed s2s link after 1 s (default 300 s), quick DNS failures.
s2s_max_retry_delay: 1
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4

listen:
  -
    port: {self.c2s_port}
    ip: "{LOOPBACK}"
    module: ejabberd_c2s
    starttls_required: true
    access: c2s
  -
    port: {self.tls_port}
    ip: "{LOOPBACK}"
    module: ejabberd_c2s
    tls: true
    access: c2s
  -
    port: {self.s2s_port}
    ip: "{LOOPBACK}"
    module: ejabberd_s2s_in
  -
    port: {self.s2s_tls_port}
    ip: "{LOOPBACK}"
    module: ejabberd_s2s_in
    tls: true

auth_method: internal
auth_password_format: scram

acl:
  local:
    user_regexp: ""

access_rules:
  local:
    allow: local
  c2s:
    allow: all

shaper_rules:
  c2s_shaper: none

modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_version:
    show_os: false
  mod_time: {{}}
  mod_roster: {{}}
  mod_offline: {{}}
  mod_private: {{}}
  mod_vcard: {{}}
  mod_caps: {{}}
  mod_muc:
    host: "conference.{self.domain}"
    access_create: all
{dialback}"""
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [str(self.ctl_path), *self._ctl_options(), "foreground"], self._env()

    def _ctl_options(self) -> list[str]:
        return [
            "--config-dir", str(self.conf_dir),
            "--config", str(self.config_path),
            "--ctl-config", str(self.ctl_config_path),
            "--logs", str(self.logs_dir),
            "--spool", str(self.spool_dir),
        ]

    def _env(self) -> dict[str, str]:
        return dict(os.environ, HOME=str(self.workdir))

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.ctl_path), *self._ctl_options(), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=self._env(),
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            res = self.ctl("status", timeout=30)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline or not self.running:
                self.kill()
                raise PeerStartError(f"ejabberdctl status failed ({res.returncode}): {res.stdout}{res.stderr}\n{self.log_tail()}")
            time.sleep(0.5)

    def register(self, localpart: str, password: str) -> None:
        res = self.ctl("register", localpart, self.domain, password)
        if res.returncode != 0:
            raise AssertionError(f"ejabberdctl register {localpart} failed ({res.returncode}): {res.stderr}{res.stdout}")


# --------------------------------------------------------------------------
# The whole set


PEER_CLASSES = {"prosody": ProsodyPeer, "ejabberd": EjabberdPeer}


class Federation:
    """The DNS server, the PKI and the peers of one test module.

    ``federation.peer("prosody")`` / ``peer("ejabberd")`` starts a peer on first use (with the
    settings given for it in ``peer_settings``) and returns it. For Rookery:
    ``rookery_s2s_hosts()`` (domain → ``127.0.0.1:PORT`` of each running peer's s2s
    listener, for ``[s2s.hosts]``), ``dns_address`` (``127.0.0.1:PORT``, for a resolver
    setting), ``rookery_cert(trusted=True)`` and ``ca_path`` (the CA to trust), and
    ``register_rookery(...)`` (Rookery's SRV records, so that the peers find it).
    """

    def __init__(self, workdir: Path, peer_settings: dict[str, dict] | None = None):
        self.workdir = Path(workdir)
        self.peer_settings = {kind: dict(s) for kind, s in (peer_settings or {}).items()}
        unknown = set(self.peer_settings) - set(PEER_CLASSES)
        if unknown:
            raise ValueError(f"unknown peers {sorted(unknown)} (known: {sorted(PEER_CLASSES)})")
        self.pki = TestPKI(self.workdir / "pki")
        self.dns = DnsServer().start()
        self.peers: dict[str, Peer] = {}

    @property
    def dns_address(self) -> str:
        return self.dns.address

    @property
    def ca_path(self) -> Path:
        return self.pki.ca_path

    def missing_requirements(self, kind: str) -> list[str]:
        return PEER_CLASSES[kind].missing_requirements()

    def peer(self, kind: str) -> Peer:
        if kind not in self.peers:
            cls = PEER_CLASSES[kind]
            peer = cls(self.workdir / kind, self.dns, self.pki, **self.peer_settings.get(kind, {}))
            self.peers[kind] = peer
        peer = self.peers[kind]
        if not peer.running:
            peer.start()
        return peer

    @property
    def prosody(self) -> ProsodyPeer:
        return self.peer("prosody")  # type: ignore[return-value]

    @property
    def ejabberd(self) -> EjabberdPeer:
        return self.peer("ejabberd")  # type: ignore[return-value]

    def rookery_cert(self, trusted: bool = True, domain: str = ROOKERY_DOMAIN) -> CertFiles:
        return self.pki.cert(domain, trusted=trusted)

    def install_rookery_cert(self, cert_dir: Path, trusted: bool = True, domain: str = ROOKERY_DOMAIN) -> CertFiles:
        """Write Rookery's certificate where ``RookeryServer`` looks for it
        (``<data_dir>/certs``: ``<domain>.pem``, the leaf and the CA, and ``<domain>.key``),
        before the server starts, so that it serves the PKI's certificate instead of
        generating a self-signed one."""
        cert = self.rookery_cert(trusted=trusted, domain=domain)
        cert_dir = Path(cert_dir)
        cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert.cert_path, cert_dir / f"{domain}.pem")
        shutil.copyfile(cert.key_path, cert_dir / f"{domain}.key")
        (cert_dir / f"{domain}.key").chmod(0o600)
        return cert

    def rookery_s2s_hosts(self, direct_tls: bool = False) -> dict[str, str]:
        """Domain → ``127.0.0.1:PORT`` of each started peer's STARTTLS s2s listener (with
        ``direct_tls``: its XEP-0368 direct TLS listener), with its MUC service
        (``conference.D``, served on the same port)."""
        hosts = {}
        for peer in self.peers.values():
            address = f"{peer.host}:{peer.s2s_tls_port}" if direct_tls else peer.s2s_address
            hosts[peer.domain] = address
            hosts[f"conference.{peer.domain}"] = address
        return hosts

    def rookery_s2s_hosts_toml(self, direct_tls: bool = False) -> str:
        """``rookery_s2s_hosts()`` as a TOML ``[s2s.hosts]`` table."""
        lines = ["[s2s.hosts]"]
        lines += [f'"{domain}" = "{addr}"' for domain, addr in sorted(self.rookery_s2s_hosts(direct_tls).items())]
        return "\n".join(lines) + "\n"

    def register_rookery(
        self,
        s2s_port: int,
        s2s_tls_port: int | None = None,
        c2s_port: int | None = None,
        c2s_tls_port: int | None = None,
        domain: str = ROOKERY_DOMAIN,
    ) -> XmppService:
        """Publish Rookery's SRV records (``_xmpp-server._tcp.rookery.test`` → ``s2s_port``,
        ``_xmpps-server`` → ``s2s_tls_port`` if given) so that the peers can reach it."""
        return self.dns.set_service(
            domain,
            s2s_port=s2s_port,
            s2s_tls_port=s2s_tls_port,
            c2s_port=c2s_port,
            c2s_tls_port=c2s_tls_port,
        )

    def close(self) -> None:
        for peer in self.peers.values():
            peer.stop()
        self.dns.stop()

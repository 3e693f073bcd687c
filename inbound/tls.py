"""TLS for STARTTLS: a context from the user's certificate, or a self-signed one for development."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from inbound.core.errors import InputError, read_user_file
from inbound.datadir import create_file, make_dirs


def load_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The STARTTLS context; every problem is an `InputError` naming the file at fault."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Each file on its own first: OpenSSL's one error for the pair names neither file.
    _check_certificate(cert, _read("--tls-cert", cert))
    _check_key(key, _read("--tls-key", key))
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise InputError(f"--tls-key {key}: does not match the certificate in {cert}") from None
        raise InputError(f"--tls-cert {cert}, --tls-key {key}: {exc.reason or exc}") from None
    except OSError as exc:  # pragma: no cover - both files were just read
        raise InputError(f"{exc.filename or cert}: cannot read: {exc.strerror}") from None
    return context


def _read(flag: str, path: Path) -> bytes:
    return read_user_file(path, f"{flag} {path}")


def _check_certificate(path: Path, data: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        if b"PRIVATE KEY-----" in data:
            raise InputError(
                f"--tls-cert {path}: is a private key, not a certificate (swapped with --tls-key?)"
            ) from None
        raise InputError(f"--tls-cert {path}: no PEM certificate in it") from None


def _check_key(path: Path, data: bytes) -> None:
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(
            f"--tls-key {path}: the key is encrypted; inbound needs it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if b"CERTIFICATE-----" in data:
            raise InputError(
                f"--tls-key {path}: is a certificate, not a private key (swapped with --tls-cert?)"
            ) from None
        raise InputError(f"--tls-key {path}: no PEM private key in it") from None


def self_signed_context(directory: Path, hostname: str) -> ssl.SSLContext:
    """A certificate for `hostname`, made once and kept in `directory`."""
    cert, key = directory / "self-signed.crt", directory / "self-signed.key"
    if not (cert.exists() and key.exists()):
        make_dirs(directory)
        _make_self_signed(cert, key, hostname)
    return load_tls_context(cert, key)


def _make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    # In the data directory, so 0600 like everything there (SPEC section 7, Files).
    with create_file(key_path) as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    with create_file(cert_path) as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))

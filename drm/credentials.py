"""Credentials protection (contract §3): the service's RSA key pair and X.509 certificate.

A client encrypts the UTF-8 bytes of a secret with the certificate's public key (PKCS #1 v1.5)
and sends the base64 of the ciphertext; `ServiceKey.decrypt` turns it back into the secret.
The key pair and certificate are created once in the data folder (mode 0600) and reused.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
from pathlib import Path

from Crypto.Cipher import PKCS1_v1_5
from Crypto.PublicKey import RSA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

KEY_FILE = "credentials-key.pem"
CERTIFICATE_FILE = "credentials-certificate.pem"


class CredentialsError(ValueError):
    """A protected secret does not decrypt. The message names the field, never the value."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


class ServiceKey:
    """The RSA key pair that protects secrets in jobs."""

    def __init__(self, private_key: rsa.RSAPrivateKey, certificate: x509.Certificate):
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # pycryptodome for decryption: it reports a bad padding, where OpenSSL 3's implicit
        # rejection would hand back random bytes and let a corrupted secret pass unnoticed.
        self._cipher = PKCS1_v1_5.new(RSA.import_key(pem))
        self.certificate = certificate

    @classmethod
    def load_or_create(cls, folder: Path) -> ServiceKey:
        """Load the key pair from `folder`, creating it (2048-bit RSA, self-signed) on first use."""
        key_path, cert_path = folder / KEY_FILE, folder / CERTIFICATE_FILE
        if key_path.exists() and cert_path.exists():
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{key_path} does not hold an RSA private key")
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(loaded, certificate)
        folder.mkdir(parents=True, exist_ok=True)
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vipe credentials protection")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(private_key, hashes.SHA256())
        )
        _write_private(
            key_path,
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return cls(private_key, certificate)

    @property
    def certificate_base64(self) -> str:
        """What `GET /certificate` and `vipe certificate` serve: base64 of the DER certificate."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode()

    def decrypt(self, ciphertext_base64: str, field: str) -> str:
        """Decrypt a protected secret; CredentialsError names `field` when it cannot."""
        try:
            ciphertext = base64.b64decode(ciphertext_base64, validate=True)
        except (binascii.Error, ValueError):
            raise CredentialsError(field, "is not valid base64") from None
        try:
            return self.decrypt_bytes(ciphertext, field).decode("utf-8", "strict")
        except UnicodeDecodeError:
            raise CredentialsError(field, "does not decrypt to UTF-8 text") from None

    def decrypt_bytes(self, ciphertext: bytes, field: str) -> bytes:
        failed = object()  # what the cipher hands back for a wrong padding
        try:
            plaintext = self._cipher.decrypt(ciphertext, failed)
        except ValueError:  # wrong ciphertext length
            plaintext = failed
        if not isinstance(plaintext, bytes):  # `failed`: the plaintext is always bytes
            raise CredentialsError(
                field, "does not decrypt with the service key (wrong certificate or corrupted)"
            )
        return plaintext


def encrypt_for_certificate(plaintext: bytes | str, certificate_base64: str) -> str:
    """What a client does: encrypt with the service certificate, return base64 ciphertext."""
    if isinstance(plaintext, str):
        plaintext = plaintext.encode()
    certificate = x509.load_der_x509_certificate(base64.b64decode(certificate_base64))
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("the certificate does not hold an RSA public key")
    return base64.b64encode(public_key.encrypt(plaintext, padding.PKCS1v15())).decode()


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)

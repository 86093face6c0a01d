"""Authentication without a server: JWKS and PEM keys, claims, tenants and their keys."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from api_helpers import AUDIENCE, ISSUER, TokenIssuer, known_tenants
from cryptography.hazmat.primitives.asymmetric import ec

from engine.service.auth import Authenticator, AuthSettings, NotAuthorized
from engine.service.tenants import TenantError, TenantRegistry, key_hash


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture
def jwks_url(issuer):
    """A JWKS endpoint on 127.0.0.1 serving the issuer's public key."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
    jwk.update(kid=issuer.kid, use="sig", alg="RS256")
    body = json.dumps({"keys": [jwk]}).encode()
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", hits
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_keys_verify_tokens(issuer, jwks_url, tmp_path):
    url, hits = jwks_url
    auth = Authenticator(
        AuthSettings(jwks_url=url, issuer=ISSUER, audience=AUDIENCE),
        known_tenants(tmp_path, "tenant-j", "tenant-a"),
    )
    for _ in range(3):
        who = auth.authenticate(f"Bearer {issuer.token('tenant-j')}")
        assert who.tenant_id == "tenant-j" and who.scheme == "Bearer" and who.subject == "user-1"
    assert len(hits) == 1  # the key set is cached
    with pytest.raises(NotAuthorized):
        auth.authenticate(f"Bearer {TokenIssuer(tmp_path).token()}")  # not in the set


def test_pem_key_claims(issuer, tmp_path):
    auth = Authenticator(issuer.auth_settings(), known_tenants(tmp_path, "t", "tenant-a"))
    assert auth.authenticate(f"bearer {issuer.token('t')}").tenant_id == "t"
    refused = [
        issuer.token(expires_in=-61 - 5),
        issuer.token(audience=None),  # audience configured: required
        issuer.token(issuer=None),
        issuer.token(permissions=None),
        issuer.token(permissions="Videos: Encoder"),
        issuer.token(tenant=""),
        issuer.token(tenantId=42),
        issuer.token(exp=None),
    ]
    for token in refused:
        with pytest.raises(NotAuthorized):
            auth.authenticate(f"Bearer {token}")
    # an EC token against an RSA key, and a token whose alg the key does not allow
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(NotAuthorized):
        auth.authenticate(f"Bearer {jwt.encode({'tenantId': 't'}, ec_key, algorithm='ES256')}")
    with pytest.raises(NotAuthorized):
        auth.authenticate("Bearer")


def test_custom_claims(issuer, tmp_path):
    settings = AuthSettings(
        jwt_public_key=issuer.public_pem,
        permission_claim="scope_list",
        permission="encode",
        tenant_claim="org",
    )
    auth = Authenticator(settings, known_tenants(tmp_path, "o-1"))
    token = issuer.token(None, audience=None, issuer=None, scope_list=["encode"], org="o-1")
    assert auth.authenticate(f"Bearer {token}").tenant_id == "o-1"


def test_bearer_without_configured_keys_is_refused(issuer, tmp_path):
    auth = Authenticator(AuthSettings(), TenantRegistry(tmp_path))
    with pytest.raises(NotAuthorized):
        auth.authenticate(f"Bearer {issuer.token()}")


def test_tenants_keep_only_key_hashes(tmp_path):
    registry = TenantRegistry(tmp_path)
    key = registry.add("acme")
    other = registry.add("globex")
    stored = (tmp_path / "tenants.json").read_text()
    assert key not in stored and other not in stored and key_hash(key) in stored
    assert (tmp_path / "tenants.json").stat().st_mode & 0o777 == 0o600
    assert registry.verify(key) == "acme" and registry.verify(other) == "globex"
    assert registry.verify(key.upper()) is None and registry.verify("") is None
    assert [t.name for t in registry.list()] == ["acme", "globex"]
    with pytest.raises(TenantError):
        registry.add("acme")
    with pytest.raises(TenantError):
        registry.add("../evil")
    TenantRegistry(tmp_path).remove("acme")  # another process: the file changes
    assert registry.verify(key) is None
    with pytest.raises(TenantError):
        registry.remove("acme")
    auth = Authenticator(AuthSettings(), registry)
    assert auth.authenticate(f"Tenant-Auth {other}").tenant_id == "globex"
    with pytest.raises(NotAuthorized):
        auth.authenticate(f"Tenant-Auth {key}")


def test_cli_tenant_commands(tmp_path, capsys):
    from engine.cli import main

    assert main(["tenant", "--data-dir", str(tmp_path), "add", "acme"]) == 0
    key = capsys.readouterr().out.strip()
    assert TenantRegistry(tmp_path).verify(key) == "acme"
    assert main(["tenant", "--data-dir", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().out.startswith("acme\t")
    assert main(["tenant", "--data-dir", str(tmp_path), "add", "acme"]) == 1
    assert main(["tenant", "--data-dir", str(tmp_path), "remove", "acme"]) == 0
    assert TenantRegistry(tmp_path).list() == []

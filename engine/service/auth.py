"""Authentication of API requests (contract §1): Bearer JWTs and Tenant-Auth management keys.

`Authorization: Bearer <JWT>`: the token's signature is verified with the keys of a JWKS URL
(`--jwks-url`, cached, refreshed when an unknown key id shows up) or of a PEM public key file
(`--jwt-public-key`). Only asymmetric algorithms are accepted (RS*, PS*, ES*, EdDSA), never
`none` or HS* (with a public key as HMAC secret anyone could sign). Required and checked: `exp`
(and `nbf`/`iat` when present) with a bounded clock skew (`leeway`, 60 s), the issuer and the
audience when configured (`--jwt-issuer`, `--jwt-audience`), the permission (default: the
`permissions` claim contains `Videos: Encode`; the claim may be a list, a comma-separated
string, or an object whose values are lists, as some identity providers group
permissions per service), and the tenant claim (default `tenantId`, a non-empty string).

One tenant namespace for both schemes: a JWT's tenant claim must name a tenant the server
knows (`vipe tenant add NAME`, engine.service.tenants), else 401. The identity provider's
`tenantId` and the Tenant-Auth tenant name are the same thing: a token for tenant `acme` sees
exactly the jobs that the management key of tenant `acme` sees, and a token cannot invent a
tenant (and its empty namespace) the operator never added.

`Authorization: Tenant-Auth <KEY>`: a management key from `engine.service.tenants` (hash compared in
constant time); the tenant is the tenant's name.

Anything else is `NotAuthorized`, answered with 401 and one fixed message, so a client cannot
tell which check failed; the reason goes to the log (never the token or key).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from engine.service.tenants import TenantRegistry

log = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "User is not authorized to access this resource"
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
ASYMMETRIC_ALGORITHMS = (*RSA_ALGORITHMS, *EC_ALGORITHMS, "EdDSA")


class NotAuthorized(Exception):
    """The request has no valid credentials; `reason` is for the log only."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AuthSettings:
    """How tokens are checked. With neither `jwks_url` nor `jwt_public_key`, Bearer tokens
    are refused and only Tenant-Auth keys work."""

    jwks_url: str | None = None
    jwt_public_key: Path | None = None
    issuer: str | None = None
    audience: str | None = None
    permission_claim: str = "permissions"
    permission: str = "Videos: Encode"
    tenant_claim: str = "tenantId"
    leeway_seconds: float = 60.0
    algorithms: tuple[str, ...] = field(default=ASYMMETRIC_ALGORITHMS)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the tenant, the scheme, and the token subject (when any)."""

    tenant_id: str
    scheme: str
    subject: str | None = None


class Authenticator:
    """Turns an `Authorization` header into a `Principal` or raises `NotAuthorized`."""

    def __init__(self, settings: AuthSettings, tenants: TenantRegistry):
        self.settings = settings
        self.tenants = tenants
        self._jwks: jwt.PyJWKClient | None = None
        self._public_key: Any = None
        self._key_algorithms: tuple[str, ...] = settings.algorithms
        if settings.jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_jwk_set=True, lifespan=300)
        elif settings.jwt_public_key:
            self._public_key = serialization.load_pem_public_key(
                Path(settings.jwt_public_key).read_bytes()
            )
            self._key_algorithms = _algorithms_for(self._public_key, settings.algorithms)
        else:
            log.warning("no JWKS URL or JWT public key configured: Bearer tokens are refused")
        if not settings.audience:
            log.warning("no JWT audience configured: tokens for any audience are accepted")

    @property
    def fetches_keys(self) -> bool:
        """Whether authenticating may download keys (a JWKS URL): then not on the event loop."""
        return self._jwks is not None

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise NotAuthorized("no Authorization header")
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if not credentials:
            raise NotAuthorized(f"{scheme or 'empty'} Authorization without credentials")
        if scheme.lower() == "bearer":
            return self._bearer(credentials)
        if scheme.lower() == "tenant-auth":
            tenant = self.tenants.verify(credentials)
            if tenant is None:
                raise NotAuthorized("unknown Tenant-Auth management key")
            return Principal(tenant, "Tenant-Auth")
        raise NotAuthorized("unsupported Authorization scheme")

    # -- JWT --------------------------------------------------------------------------------

    def _bearer(self, token: str) -> Principal:
        settings = self.settings
        try:
            key, algorithms = self._signing_key(token)
            required = ["exp"]
            if settings.issuer:
                required.append("iss")
            if settings.audience:
                required.append("aud")
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": required, "verify_aud": bool(settings.audience)},
            )
        except jwt.PyJWTError as error:
            raise NotAuthorized(f"JWT refused: {type(error).__name__}") from None
        if not _has_permission(claims.get(settings.permission_claim), settings.permission):
            raise NotAuthorized(f"JWT lacks the permission {settings.permission!r}")
        tenant = claims.get(settings.tenant_claim)
        if not isinstance(tenant, str) or not tenant.strip():
            raise NotAuthorized(f"JWT has no tenant claim {settings.tenant_claim!r}")
        if not self.tenants.known(tenant.strip()):
            raise NotAuthorized("JWT names a tenant this server does not know")
        subject = claims.get("sub")
        return Principal(tenant.strip(), "Bearer", str(subject) if subject else None)

    def _signing_key(self, token: str) -> tuple[Any, tuple[str, ...]]:
        if self._jwks is not None:
            try:
                signing_key = self._jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as error:
                log.error("JWKS at %s cannot be fetched: %s", self.settings.jwks_url, error)
                raise
            return signing_key.key, _algorithms_for(signing_key.key, self.settings.algorithms)
        if self._public_key is not None:
            return self._public_key, self._key_algorithms
        raise jwt.InvalidKeyError("no key configured for Bearer tokens")


def _algorithms_for(key: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The algorithms that fit the key type (an RSA key never verifies an ES256 token)."""
    if isinstance(key, rsa.RSAPublicKey):
        family: tuple[str, ...] = RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        family = EC_ALGORITHMS
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        family = ("EdDSA",)
    else:
        raise ValueError(f"unsupported JWT public key type {type(key).__name__}")
    return tuple(a for a in allowed if a in family)


def _has_permission(claim: Any, wanted: str) -> bool:
    """Whether a permissions claim holds `wanted` (a list, a string, or per-service lists)."""
    if isinstance(claim, str):
        # Comma-separated, not space-separated: permission names hold spaces themselves.
        return wanted in (part.strip() for part in claim.split(","))
    if isinstance(claim, list):
        return any(isinstance(item, str) and item == wanted for item in claim)
    if isinstance(claim, dict):
        return any(_has_permission(value, wanted) for value in claim.values())
    return False

"""A CPIX client for `DrmProtection: Managed` (contract §5.2).

vipe picks the key ids and asks a Key Service for their keys with a CPIX 2.3 document that
follows the SPEKE v2 encryption contract to the letter:

- `ContentKeyList`: one `ContentKey` per key id, with its `commonEncryptionScheme`.
- `DRMSystemList`: a `DRMSystem` per key and per DRM system the job asks for (only those),
  requesting its PSSH, DASH `ContentProtectionData` and HLS signalling (FairPlay: HLS only,
  and only with cbcs). Omitted when the job asks the Key Service for no system at all.
- `ContentKeyUsageRuleList`: one rule per key, `intendedTrackType` unique in the request.
  One key for every track is the single rule `intendedTrackType="ALL"` with an empty
  `AudioFilter` and an empty `VideoFilter` (the contract allows no other filters with ALL);
  one key per quality group is a rule per group: `AUDIO` with an empty `AudioFilter`, `SD`,
  `HD`, `UHD1`, `UHD2` with a `VideoFilter` of the pixel range vipe gives that group.

It POSTs the document with the header `X-Speke-Version: 2.0` (spelled as the SPEKE v2
specification spells it; HTTP header names are case-insensitive, and under SigV4 the header is
signed by its lower-case name, so a gateway that lower-cases names changes nothing), over
verified TLS, authenticated as the job says (`Authentication`: HTTP Basic `TenantId:
ManagementKey`, a Bearer token, a custom header, or AWS SigV4 signed by botocore). It reads
the keys (`pskc:PlainValue`), explicit IVs and per-system signalling out of the answer
(SPEKE v1 / CPIX 2.0 answers too) and refuses a weak answer: a key of the wrong length, an
empty key, an IV that is not 16 bytes or equals a content key (the IV is published in the
`tenc` box), the same key for two quality groups, a key id not asked for, or a key id missing.

Errors name the Key Service (its URL without credentials) and keep its own words: the HTTP
status and the first 300 characters of its answer, with every secret of the request masked.

XML is parsed with the standard library's ElementTree, which never resolves external
entities; a document with a DOCTYPE is refused outright (no entity tricks at all).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from drm import signalling, systems
from drm.keys import KEY_SIZE, ContentKey, DrmKeyError, SystemSignalling

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger(__name__)

CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
SPEKE_NS = "urn:aws:amazon:com:speke"
CA_FILE_ENV = "VIPE_CPIX_CA_FILE"
SPEKE_VERSION_HEADER = "X-Speke-Version"  # as the SPEKE v2 specification spells it
SPEKE_VERSION = "2.0"
CPIX_VERSION = "2.3"
IV_SIZE = 16  # SPEKE's explicitIV is 128 bits
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a CPIX answer is a few kB; refuse to buffer a flood
MAX_ERROR_BODY = 64 * 1024  # of an error answer, read this much at most
EXCERPT_CHARS = 300  # of an error answer, keep this much in the message

ET.register_namespace("cpix", CPIX_NS)
ET.register_namespace("pskc", PSKC_NS)

ALL_TRACKS = "ALL"  # the contract's intendedTrackType for one key protecting every track
# Pixel bounds per video quality group for the CPIX VideoFilter. vipe assigns groups by line
# count (SD < 720 lines, HD 720–1080, UHD1 1440–2160, UHD2 above); the filters carry the
# same split in pixels of the 16:9 sizes (1280×720, 1920×1080, 4096×2160), so that the
# ranges are disjoint and every video track matches exactly one rule.
VIDEO_FILTERS: dict[str, tuple[int | None, int | None]] = {
    "SD": (None, 1280 * 720 - 1),
    "HD": (1280 * 720, 1920 * 1080),
    "UHD1": (1920 * 1080 + 1, 4096 * 2160),
    "UHD2": (4096 * 2160 + 1, None),
}
AUDIO_GROUP = "AUDIO"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class KeyServiceError(DrmKeyError):
    """The Key Service failed, refused, or answered something unusable.

    `status` is the HTTP status when there was one. `transient` (down, overloaded, timing
    out) tells the API to answer 503 rather than 4xx. Never holds a secret or a key.
    """

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, transient: bool = False
    ):
        super().__init__(f"Key Service {url}", reason, transient=transient)
        self.url = url
        self.status = status


@dataclass(frozen=True)
class KeyRequest:
    """One key vipe asks for: its key id and quality group (None: one key for every track)."""

    key_id: uuid.UUID
    quality_group: str | None = None


def _q(tag: str, namespace: str = CPIX_NS) -> str:
    return f"{{{namespace}}}{tag}"


# ---------------------------------------------------------------------------- authentication


class AuthenticationError(Exception):
    """The request cannot be authenticated (no AWS credentials found, say). No secret in it."""


class Authentication:
    """How a CPIX request proves who sends it. Subclasses add their header(s) to a request;
    `secrets` lists every value to mask in messages; `repr` shows no secret."""

    type: ClassVar[str] = ""

    def apply(self, request: urllib.request.Request, body: bytes) -> None:
        """Add the authentication to `request` (unredirected: never sent anywhere else)."""
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Every secret value this authentication sends, in each form it is sent."""
        return []

    def refused(self) -> str:
        """What the Key Service refused, for a 401/403 message ("the Bearer token")."""
        return f"the {self.type} authentication"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BasicAuthentication(Authentication):
    """HTTP Basic with `TenantId:ManagementKey` (the contract's default)."""

    type = "Basic"

    def __init__(self, tenant_id: str, management_key: str):
        self.tenant_id = tenant_id
        self._management_key = management_key

    def _credentials(self) -> str:
        return f"{self.tenant_id}:{self._management_key}"

    def apply(self, request: urllib.request.Request, body: bytes) -> None:
        token = base64.b64encode(self._credentials().encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")

    def secrets(self) -> list[str]:
        token = base64.b64encode(self._credentials().encode()).decode()
        return [self._management_key, self._credentials(), token]

    def refused(self) -> str:
        return f"the credentials of tenant {self.tenant_id}"

    def __repr__(self) -> str:
        return f"BasicAuthentication(tenant_id={self.tenant_id!r})"


class BearerAuthentication(Authentication):
    """`Authorization: Bearer <token>`."""

    type = "Bearer"

    def __init__(self, token: str):
        self._token = token

    def apply(self, request: urllib.request.Request, body: bytes) -> None:
        request.add_unredirected_header("Authorization", f"Bearer {self._token}")

    def secrets(self) -> list[str]:
        return [self._token]

    def refused(self) -> str:
        return "the Bearer token"


# An HTTP field name (RFC 9110 token), and the names that would break or fake the request.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept",
        "accept-encoding",
        SPEKE_VERSION_HEADER.lower(),
        "x-amz-date",
        "x-amz-security-token",
    }
)


class HeaderAuthentication(Authentication):
    """A custom header carrying a secret (`X-Api-Key: <value>`, as API gateways take it)."""

    type = "Header"

    def __init__(self, name: str, value: str):
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name!r} cannot be an authentication header")
        self.name = name
        self._value = value

    def apply(self, request: urllib.request.Request, body: bytes) -> None:
        request.add_unredirected_header(self.name, self._value)

    def secrets(self) -> list[str]:
        return [self._value]

    def refused(self) -> str:
        return f"the {self.name} header"

    def __repr__(self) -> str:
        return f"HeaderAuthentication(name={self.name!r})"


class AwsSigV4Authentication(Authentication):
    """AWS Signature Version 4, signed with botocore's own signer (`botocore.auth.SigV4Auth`),
    as API Gateway in front of a SPEKE key provider checks it.

    Without `access_key_id`/`secret_access_key`, botocore's standard credential chain gives
    the credentials (environment, shared files, container or instance role), resolved once
    per client. The host, content type, `X-Speke-Version` and `X-Amz-Date` (and
    `X-Amz-Security-Token` with a session token) are signed, with the body's SHA-256.
    """

    type = "AwsSigV4"

    def __init__(
        self,
        region: str,
        service: str = "execute-api",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
    ):
        if bool(access_key_id) != bool(secret_access_key):
            raise ValueError("AccessKeyId and SecretAccessKey go together")
        self.region = region
        self.service = service
        self.access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token
        self._resolved: Any = None  # botocore ReadOnlyCredentials, once resolved

    def _credentials(self) -> Any:
        if self._resolved is None:
            if self.access_key_id and self._secret_access_key:
                from botocore.credentials import ReadOnlyCredentials

                self._resolved = ReadOnlyCredentials(
                    self.access_key_id, self._secret_access_key, self._session_token
                )
            else:
                import botocore.session

                found = botocore.session.get_session().get_credentials()
                if found is None:
                    raise AuthenticationError(
                        "no AWS credentials: the job gives none and the node's AWS credential "
                        "chain (environment, shared files, container or instance role) found none"
                    )
                self._resolved = found.get_frozen_credentials()
        return self._resolved

    def apply(self, request: urllib.request.Request, body: bytes) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        frozen = self._credentials()
        host = _host_header(request.full_url)
        headers = dict(request.header_items())
        headers["Host"] = host
        signed = AWSRequest(
            method=request.get_method(), url=request.full_url, data=body, headers=headers
        )
        credentials = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        SigV4Auth(credentials, self.service, self.region).add_auth(signed)
        # urllib sends exactly this Host (it would send the same, said here to be sure)
        request.add_unredirected_header("Host", host)
        for name in ("X-Amz-Date", "X-Amz-Security-Token", "Authorization"):
            value = signed.headers.get(name)
            if value is not None:
                request.add_unredirected_header(name, value)

    def secrets(self) -> list[str]:
        found = [self._secret_access_key, self._session_token]
        if self._resolved is not None:
            found += [self._resolved.secret_key, self._resolved.token]
        return [value for value in found if value]

    def refused(self) -> str:
        return f"the AWS SigV4 signature (region {self.region}, service {self.service})"

    def __repr__(self) -> str:
        return f"AwsSigV4Authentication(region={self.region!r}, service={self.service!r})"


class _NoSigningDumps(logging.Filter):
    """botocore.auth logs the canonical request and string to sign at DEBUG; the canonical
    request holds every signed header, the session token included: those records go."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not text.startswith(("CanonicalRequest", "StringToSign", "Signature"))


logging.getLogger("botocore.auth").addFilter(_NoSigningDumps())


def _host_header(url: str) -> str:
    """The Host header urllib sends for `url`: host, and the port when the URL gives one."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


# ------------------------------------------------------------------------------ the request


def _check_contract(requests: Sequence[KeyRequest]) -> None:
    """The key requests form a valid SPEKE v2 encryption contract (a programming error if not)."""
    if not requests:
        raise ValueError("a CPIX request needs at least one key")
    groups = [r.quality_group for r in requests]
    if None in groups and len(requests) != 1:
        raise ValueError("one key for every track (ALL) excludes other keys")
    if len(set(groups)) != len(groups):
        raise ValueError(f"intendedTrackType must be unique: {groups}")
    for group in groups:
        if group is not None and group != AUDIO_GROUP and group not in VIDEO_FILTERS:
            raise ValueError(f"unknown quality group {group!r}")
    if len({r.key_id for r in requests}) != len(requests):
        raise ValueError("a key id is asked for twice")


def _usage_rule(parent: ET.Element, request: KeyRequest) -> None:
    group = request.quality_group
    rule = ET.SubElement(
        parent,
        _q("ContentKeyUsageRule"),
        {"kid": str(request.key_id), "intendedTrackType": group or ALL_TRACKS},
    )
    if group is None:  # ALL: both filters, without attributes (the contract's only form)
        ET.SubElement(rule, _q("AudioFilter"))
        ET.SubElement(rule, _q("VideoFilter"))
    elif group == AUDIO_GROUP:
        ET.SubElement(rule, _q("AudioFilter"))
    else:
        low, high = VIDEO_FILTERS[group]
        bounds = {}
        if low is not None:
            bounds["minPixels"] = str(low)
        if high is not None:
            bounds["maxPixels"] = str(high)
        ET.SubElement(rule, _q("VideoFilter"), bounds)


def build_request(
    content_id: str,
    requests: Sequence[KeyRequest],
    scheme: str,
    system_ids: Sequence[uuid.UUID] = systems.KEY_SERVICE_SYSTEMS,
) -> bytes:
    """The CPIX 2.3 request document (UTF-8 bytes) for `requests`.

    One request without a quality group: the single rule `ALL`. Requests with quality
    groups: one rule per group. `system_ids`: the DRM systems asked for (ClearKey is never
    asked, FairPlay only with `cbcs`, the one scheme it supports).
    """
    _check_contract(requests)
    scheme = str(scheme)
    asked = systems.key_service_systems(system_ids, scheme)
    root = ET.Element(_q("CPIX"), {"contentId": content_id, "version": CPIX_VERSION})
    key_list = ET.SubElement(root, _q("ContentKeyList"))
    for request in requests:
        ET.SubElement(
            key_list,
            _q("ContentKey"),
            {"kid": str(request.key_id), "commonEncryptionScheme": scheme},
        )
    if asked:  # CPIX wants at least one DRMSystem in a DRMSystemList
        drm_list = ET.SubElement(root, _q("DRMSystemList"))
        for request in requests:
            for system_id in asked:
                drm = ET.SubElement(
                    drm_list,
                    _q("DRMSystem"),
                    {"kid": str(request.key_id), "systemId": str(system_id)},
                )
                if system_id != systems.FAIRPLAY:
                    ET.SubElement(drm, _q("PSSH"))
                    ET.SubElement(drm, _q("ContentProtectionData"))
                ET.SubElement(drm, _q("HLSSignalingData"), {"playlist": "media"})
                ET.SubElement(drm, _q("HLSSignalingData"), {"playlist": "master"})
    rules = ET.SubElement(root, _q("ContentKeyUsageRuleList"))
    for request in requests:
        _usage_rule(rules, request)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ----------------------------------------------------------------------------- the response


def parse_response(
    document: bytes, requests: Sequence[KeyRequest], source: str = "Key Service"
) -> list[ContentKey]:
    """The keys for `requests` (in their order) out of a CPIX answer (2.3 or SPEKE v1 2.0).

    Raises KeyServiceError (named by `source`) for a malformed document, an encrypted key
    (vipe asks for none), and every weak answer: a key id not asked for or given twice, a
    requested key missing or empty, a key that is not 16 bytes, an IV that is not 16 bytes
    or equals a content key, the same key for two quality groups.
    """
    root = _parse_xml(document, source)
    if root.tag != _q("CPIX"):
        raise KeyServiceError(source, "answered a document that is not a cpix:CPIX")
    key_list = root.find(_q("ContentKeyList"))
    if key_list is None:
        raise KeyServiceError(source, "answered a CPIX document without a ContentKeyList")

    asked = {request.key_id for request in requests}
    found: dict[uuid.UUID, tuple[bytes | None, bytes | None]] = {}
    for element in key_list.findall(_q("ContentKey")):
        kid = _uuid_attribute(element, "kid", source)
        if kid not in asked:
            raise KeyServiceError(source, f"returned key id {kid}, which was not asked for")
        if kid in found:
            raise KeyServiceError(source, f"returned key id {kid} twice")
        found[kid] = (_plain_key(element, kid, source), _explicit_iv(element, kid, source))

    signalling: dict[uuid.UUID, dict[uuid.UUID, SystemSignalling]] = {}
    drm_list = root.find(_q("DRMSystemList"))
    for element in drm_list.findall(_q("DRMSystem")) if drm_list is not None else []:
        kid = _uuid_attribute(element, "kid", source)
        system_id = _uuid_attribute(element, "systemId", source)
        if kid not in asked:
            raise KeyServiceError(
                source, f"returned DRMSystem data for key id {kid}, which was not asked for"
            )
        data = _system_signalling(element, kid, system_id, source)
        if data:
            signalling.setdefault(kid, {})[system_id] = data

    keys = []
    for request in requests:
        if request.key_id not in found:
            raise KeyServiceError(
                source, f"did not return the content key for key id {request.key_id}"
            )
        key, iv = found[request.key_id]
        if key is None:
            raise KeyServiceError(
                source,
                f"did not return the content key for key id {request.key_id} (no pskc:PlainValue)",
            )
        if not key:
            raise KeyServiceError(
                source, f"returned an empty content key (PlainValue) for key id {request.key_id}"
            )
        if len(key) != KEY_SIZE:
            raise KeyServiceError(
                source,
                f"returned a content key of {len(key)} bytes for key id {request.key_id}; "
                f"AES-128 needs {KEY_SIZE}",
            )
        keys.append(
            ContentKey(
                request.key_id,
                key,
                iv=iv,
                quality_group=request.quality_group,
                signalling=signalling.get(request.key_id, {}),
            )
        )
    _refuse_weak_keys(keys, source)
    return keys


def _refuse_weak_keys(keys: Sequence[ContentKey], source: str) -> None:
    """An IV equal to a content key (the IV is public: `tenc`, playlists) or one key value for
    two quality groups (one group's licence would open the other's tracks)."""
    for key in keys:
        for other in keys:
            if key.iv is not None and key.iv == other.key:
                which = (
                    "its own content key" if other is key else f"the content key of {other.key_id}"
                )
                raise KeyServiceError(
                    source,
                    f"returned an explicitIV for key id {key.key_id} equal to {which}; the IV "
                    "is published in the files, so it would publish the key",
                )
    for index, key in enumerate(keys):
        for other in keys[index + 1 :]:
            if key.key == other.key and key.quality_group != other.quality_group:
                raise KeyServiceError(
                    source,
                    f"returned the same content key for quality groups {key.quality_group} and "
                    f"{other.quality_group} (key ids {key.key_id}, {other.key_id}); each group "
                    "needs a key of its own",
                )


def _parse_xml(document: bytes, source: str) -> ET.Element:
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise KeyServiceError(source, "answered an XML document with a DOCTYPE; refused")
    try:
        return ET.fromstring(document)
    except ET.ParseError as error:
        line, column = error.position
        raise KeyServiceError(
            source,
            f"answered a malformed CPIX document (XML error at line {line}, column {column})",
        ) from None


def _uuid_attribute(element: ET.Element, name: str, source: str) -> uuid.UUID:
    value = element.get(name)
    local = element.tag.rsplit("}", 1)[-1]
    if not value:
        raise KeyServiceError(source, f"answered a {local} without a {name}")
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise KeyServiceError(source, f"answered a {local} whose {name} is not a GUID") from None


def _b64(text: str | None, what: str, source: str) -> bytes | None:
    if text is None or not text.strip():
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyServiceError(source, f"answered {what} that is not valid base64") from None


def _plain_key(element: ET.Element, kid: uuid.UUID, source: str) -> bytes | None:
    secret = element.find(f"{_q('Data')}/{_q('Secret', PSKC_NS)}")
    if secret is None:
        return None
    plain = secret.find(_q("PlainValue", PSKC_NS))
    if plain is None:
        if secret.find(_q("EncryptedValue", PSKC_NS)) is not None:
            raise KeyServiceError(
                source,
                f"answered an encrypted content key for key id {kid}; vipe asks for plain keys "
                "over TLS (no DeliveryDataList)",
            )
        return None
    if plain.text is None or not plain.text.strip():
        return b""  # present but empty: said so, not "missing"
    return _b64(plain.text, f"a content key for key id {kid}", source)


def _explicit_iv(element: ET.Element, kid: uuid.UUID, source: str) -> bytes | None:
    iv = _b64(element.get("explicitIV"), f"an explicitIV for key id {kid}", source)
    if iv is not None and len(iv) != IV_SIZE:
        raise KeyServiceError(
            source, f"answered an explicitIV of {len(iv)} bytes for key id {kid}; needs {IV_SIZE}"
        )
    return iv


def _text(element: ET.Element | None, what: str, source: str) -> str | None:
    if element is None:
        return None
    raw = _b64(element.text, what, source)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise KeyServiceError(source, f"answered {what} that is not UTF-8 text") from None


def _system_signalling(
    element: ET.Element, kid: uuid.UUID, system_id: uuid.UUID, source: str
) -> SystemSignalling:
    name = systems.system_name(system_id)
    what = f"{name} data for key id {kid}"
    pssh = _b64(_child_text(element, _q("PSSH")), f"a {name} PSSH for key id {kid}", source)
    if pssh is not None and (len(pssh) < 32 or pssh[4:8] != b"pssh"):
        raise KeyServiceError(source, f"answered a {name} PSSH for key id {kid} that is no box")
    media = master = None
    for hls in element.findall(_q("HLSSignalingData")):
        text = _text(hls, f"HLS {what}", source)
        if (hls.get("playlist") or "media").lower() == "master":
            master = text
        else:
            media = text
    protection_data = _text(element.find(_q("ContentProtectionData")), f"DASH {what}", source)
    if protection_data is not None:
        try:  # checked now, so that a bad fragment fails POST /Job and not the packaging
            signalling.parse_content_protection_data(protection_data, source)
        except DrmKeyError as error:
            raise KeyServiceError(source, f"answered {error.reason} ({what})") from None
    return SystemSignalling(
        pssh=pssh,
        content_protection_data=protection_data,
        hls_media=media,
        hls_master=master,
        uri_ext_x_key=_text(element.find(_q("URIExtXKey")), f"URIExtXKey {what}", source),
        key_format=_text(element.find(_q("KeyFormat", SPEKE_NS)), f"KeyFormat {what}", source),
        key_format_versions=_text(
            element.find(_q("KeyFormatVersions", SPEKE_NS)), f"KeyFormatVersions {what}", source
        ),
    )


def _child_text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None else child.text


# -------------------------------------------------------------------------------- the client


# The HTTP modules (http.client, ssl, urllib.request) are imported by the client's functions:
# a job whose keys come from anywhere but a Key Service does not load them.


def build_opener(
    ca_file: str | None = None, *handlers: urllib.request.BaseHandler
) -> urllib.request.OpenerDirector:
    """The opener a CpixClient uses by default: verified TLS (plus `ca_file`), redirects
    refused, then `handlers` (an egress policy's, say). An engine that passes its own opener
    to CpixClient should build it here so that it keeps those two properties."""
    import ssl
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        """A redirect would carry the credentials elsewhere (or drop the POST body)."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=context), *handlers
    )


def safe_url(url: str) -> str:
    """The URL for messages: scheme, host, port and path; no user info, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def mask(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret (longest first, so a secret inside another goes too) as ***."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def excerpt(body: bytes, secrets: Sequence[str], limit: int = EXCERPT_CHARS) -> str:
    """The start of an error answer for a message: one line, printable, secrets masked, at
    most `limit` characters (then `…`)."""
    text = mask(body.decode("utf-8", "replace"), secrets)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = mask(text, secrets)  # a secret that spanned whitespace
    return text if len(text) <= limit else text[:limit] + "…"


class CpixClient:
    """Asks one Key Service for keys. `repr` never shows a secret.

    `authentication`: how requests are authenticated (default: HTTP Basic with `tenant_id`
    and `management_key`). `opener`: the urllib opener that sends the requests (default:
    `build_opener(ca_file)`; an engine passes one that enforces its egress policy).
    `timeout`: seconds per attempt; `attempts`: tries in all on a 5xx/429 answer, a timeout
    or a connection error, waiting `backoff`, 2×`backoff`, … between them; a 401/403 or any
    other answer is final. `ca_file` (or env `VIPE_CPIX_CA_FILE`) adds a CA bundle for the
    Key Service's TLS certificate (default opener only); verification is never switched off.
    `system_ids`: the DRM systems asked for.
    """

    def __init__(
        self,
        url: str,
        tenant_id: str | None = None,
        management_key: str | None = None,
        *,
        authentication: Authentication | None = None,
        opener: urllib.request.OpenerDirector | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
        system_ids: Sequence[uuid.UUID] = systems.KEY_SERVICE_SYSTEMS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if authentication is None:
            if not tenant_id or not management_key:
                raise ValueError("Basic authentication needs a tenant id and a management key")
            authentication = BasicAuthentication(tenant_id, management_key)
        self.url = url
        self.tenant_id = tenant_id
        self.authentication = authentication
        self.ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
        self._given_opener = opener
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.system_ids = tuple(system_ids)
        self._sleep = sleep
        self.source = safe_url(url)

    def __repr__(self) -> str:
        return f"CpixClient(url={self.source!r}, authentication={self.authentication!r})"

    def request_keys(
        self, content_id: str, requests: Sequence[KeyRequest], scheme: str
    ) -> list[ContentKey]:
        """Ask for the keys of `requests` under `content_id`; the keys in request order."""
        document = build_request(content_id, requests, scheme, self.system_ids)
        asked = systems.key_service_systems(self.system_ids, str(scheme))
        log.info(
            "requesting %d content key(s) (%s; %s) from the Key Service at %s (%s)",
            len(requests),
            scheme,
            ", ".join(systems.system_name(s) for s in asked) or "no DRM system data",
            self.source,
            self.authentication.type,
        )
        answer = self._post(document)
        keys = parse_response(answer, requests, self.source)
        log.info(
            "the Key Service at %s returned key id(s) %s",
            self.source,
            ", ".join(str(key.key_id) for key in keys),
        )
        return keys

    def _opener(self) -> urllib.request.OpenerDirector:
        return self._given_opener or build_opener(self.ca_file)

    def _said(self, body: bytes) -> str:
        text = excerpt(body, self.authentication.secrets())
        return f"; it said: {text}" if text else ""

    def _request(self, document: bytes) -> urllib.request.Request:
        import urllib.request

        request = urllib.request.Request(self.url, data=document, method="POST")
        request.add_header("Content-Type", "application/xml")
        request.add_header("Accept", "application/xml")
        request.add_header(SPEKE_VERSION_HEADER, SPEKE_VERSION)
        try:  # per attempt: a SigV4 signature holds the time it was made
            self.authentication.apply(request, document)
        except AuthenticationError as error:
            raise KeyServiceError(self.source, str(error)) from None
        return request

    def _post(self, document: bytes) -> bytes:
        import http.client
        import ssl
        import urllib.error

        if urllib.parse.urlsplit(self.url).scheme.lower() == "http":
            log.warning("the Key Service at %s is plain HTTP: credentials go in clear", self.source)
        opener = self._opener()
        last_reason, last_status, last_said = "no attempt made", None, ""
        for attempt in range(1, self.attempts + 1):
            request = self._request(document)
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    body = response.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise KeyServiceError(self.source, "answered more than 8 MiB; refused")
                return body
            except urllib.error.HTTPError as error:
                status = error.code
                try:
                    said = self._said(error.read(MAX_ERROR_BODY))
                except (OSError, http.client.HTTPException):
                    said = ""
                finally:
                    error.close()
                if status in (401, 403):
                    raise KeyServiceError(
                        self.source,
                        f"the Key Service refused {self.authentication.refused()} "
                        f"(HTTP {status}){said}",
                        status=status,
                    ) from None
                if status not in RETRY_STATUSES:
                    raise KeyServiceError(
                        self.source, f"answered HTTP {status}{said}", status=status
                    ) from None
                last_reason, last_status = f"answered HTTP {status}", status
                last_said = said
            except urllib.error.URLError as error:
                reason = error.reason
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise KeyServiceError(
                        self.source,
                        f"its TLS certificate does not verify ({reason.verify_message})",
                    ) from None
                if isinstance(reason, TimeoutError):
                    last_reason = f"did not answer within {self.timeout:g} s"
                else:
                    last_reason = f"cannot be reached ({_describe(reason)})"
                last_status, last_said = None, ""
            except TimeoutError:
                last_reason = f"did not answer within {self.timeout:g} s"
                last_status, last_said = None, ""
            except (ConnectionError, http.client.HTTPException, ssl.SSLError) as error:
                last_reason = f"cannot be reached ({_describe(error)})"
                last_status, last_said = None, ""
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "the Key Service at %s %s%s (attempt %d of %d); retrying in %.2g s",
                    self.source,
                    last_reason,
                    last_said,
                    attempt,
                    self.attempts,
                    delay,
                )
                self._sleep(delay)
        raise KeyServiceError(
            self.source,
            f"{last_reason}, {self.attempts} attempt(s){last_said}",
            status=last_status,
            transient=True,
        )


def _describe(reason: object) -> str:
    """A short cause for a network failure: its class and errno/strerror, nothing more."""
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)[:200]

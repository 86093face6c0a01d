"""A CPIX client for `DrmProtection: Managed` (contract §5.2).

vipe picks the key ids, asks a Key Service for their keys with a CPIX 2.3 document in the
SPEKE v2 style (one `ContentKey` per key id, a `DRMSystem` per key and DRM system asking for
its PSSH, DASH `ContentProtectionData` and HLS signalling, a `ContentKeyUsageRule` per quality
group with its filter), POSTs it with HTTP Basic credentials `TenantId:ManagementKey` over
verified TLS, and reads the keys (`pskc:PlainValue`), explicit IVs and per-system signalling
out of the answer. Answers in the SPEKE v1 (CPIX 2.0) shape are read too.

XML is parsed with the standard library's ElementTree, which never resolves external
entities; a document with a DOCTYPE is refused outright (no entity tricks at all).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drm import signalling, systems
from drm.keys import KEY_SIZE, QUALITY_GROUPS, ContentKey, DrmKeyError, SystemSignalling

log = logging.getLogger(__name__)

CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
SPEKE_NS = "urn:aws:amazon:com:speke"
CA_FILE_ENV = "VIPE_CPIX_CA_FILE"
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a CPIX answer is a few kB; refuse to buffer a flood

ET.register_namespace("cpix", CPIX_NS)
ET.register_namespace("pskc", PSKC_NS)

# Pixel bounds per video quality group for the CPIX VideoFilter. vipe assigns groups by line
# count (SD < 720 lines, HD 720–1080, UHD1 1440–2160, UHD2 above); the filters carry the
# same split in pixels of the 16:9 sizes (1280×720, 1920×1080, 4096×2160).
VIDEO_FILTERS: dict[str, tuple[int | None, int | None]] = {
    "SD": (None, 1280 * 720 - 1),
    "HD": (1280 * 720, 1920 * 1080),
    "UHD1": (1920 * 1080 + 1, 4096 * 2160),
    "UHD2": (4096 * 2160 + 1, None),
}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class KeyServiceError(DrmKeyError):
    """The Key Service failed, refused, or answered something unusable.

    `status` is the HTTP status when there was one. `transient` (down, overloaded, timing
    out) tells the API to answer 503 rather than 4xx. Never holds the management key.
    """

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, transient: bool = False
    ):
        super().__init__(f"Key Service {url}", reason, transient=transient)
        self.url = url
        self.status = status


@dataclass(frozen=True)
class KeyRequest:
    """One key vipe asks for: its key id and quality group (None: one key for all groups)."""

    key_id: uuid.UUID
    quality_group: str | None = None


def _q(tag: str, namespace: str = CPIX_NS) -> str:
    return f"{{{namespace}}}{tag}"


# ------------------------------------------------------------------------------ the request


def build_request(
    content_id: str,
    requests: Sequence[KeyRequest],
    scheme: str,
    quality_groups: Sequence[str],
    system_ids: Sequence[uuid.UUID] = systems.KEY_SERVICE_SYSTEMS,
) -> bytes:
    """The CPIX 2.3 request document (UTF-8 bytes) for `requests`.

    A key with a quality group gets one usage rule for that group; a key without one (single
    key mode) gets a rule for each of `quality_groups`. FairPlay is asked for only with
    `cbcs`, the one scheme it supports.
    """
    scheme = str(scheme)
    root = ET.Element(_q("CPIX"), {"contentId": content_id, "version": "2.3"})
    key_list = ET.SubElement(root, _q("ContentKeyList"))
    for request in requests:
        ET.SubElement(
            key_list,
            _q("ContentKey"),
            {"kid": str(request.key_id), "commonEncryptionScheme": scheme},
        )
    drm_list = ET.SubElement(root, _q("DRMSystemList"))
    for request in requests:
        for system_id in system_ids:
            if system_id == systems.FAIRPLAY and scheme != "cbcs":
                continue
            drm = ET.SubElement(
                drm_list, _q("DRMSystem"), {"kid": str(request.key_id), "systemId": str(system_id)}
            )
            if system_id != systems.FAIRPLAY:
                ET.SubElement(drm, _q("PSSH"))
                ET.SubElement(drm, _q("ContentProtectionData"))
            ET.SubElement(drm, _q("HLSSignalingData"), {"playlist": "media"})
            ET.SubElement(drm, _q("HLSSignalingData"), {"playlist": "master"})
    rules = ET.SubElement(root, _q("ContentKeyUsageRuleList"))
    for request in requests:
        groups = [request.quality_group] if request.quality_group else list(quality_groups)
        for group in groups or QUALITY_GROUPS:
            rule = ET.SubElement(
                rules,
                _q("ContentKeyUsageRule"),
                {"kid": str(request.key_id), "intendedTrackType": group},
            )
            if group == "AUDIO":
                ET.SubElement(rule, _q("AudioFilter"))
            else:
                low, high = VIDEO_FILTERS[group]
                bounds = {}
                if low is not None:
                    bounds["minPixels"] = str(low)
                if high is not None:
                    bounds["maxPixels"] = str(high)
                ET.SubElement(rule, _q("VideoFilter"), bounds)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ----------------------------------------------------------------------------- the response


def parse_response(
    document: bytes, requests: Sequence[KeyRequest], source: str = "Key Service"
) -> list[ContentKey]:
    """The keys for `requests` (in their order) out of a CPIX answer (2.3 or SPEKE v1 2.0).

    Raises KeyServiceError (named by `source`) for a malformed document, a requested key
    that is missing, a key that is not 16 bytes, or an encrypted key (vipe asks for none).
    """
    root = _parse_xml(document, source)
    if root.tag != _q("CPIX"):
        raise KeyServiceError(source, "answered a document that is not a cpix:CPIX")
    key_list = root.find(_q("ContentKeyList"))
    if key_list is None:
        raise KeyServiceError(source, "answered a CPIX document without a ContentKeyList")

    found: dict[uuid.UUID, tuple[bytes | None, bytes | None]] = {}
    for element in key_list.findall(_q("ContentKey")):
        kid = _uuid_attribute(element, "kid", source)
        found[kid] = (_plain_key(element, kid, source), _explicit_iv(element, kid, source))

    signalling: dict[uuid.UUID, dict[uuid.UUID, SystemSignalling]] = {}
    drm_list = root.find(_q("DRMSystemList"))
    for element in drm_list.findall(_q("DRMSystem")) if drm_list is not None else []:
        kid = _uuid_attribute(element, "kid", source)
        system_id = _uuid_attribute(element, "systemId", source)
        data = _system_signalling(element, kid, system_id, source)
        if data:
            signalling.setdefault(kid, {})[system_id] = data

    keys = []
    for request in requests:
        key, iv = found.get(request.key_id, (None, None))
        if key is None:
            raise KeyServiceError(
                source, f"did not return the content key for key id {request.key_id}"
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
    return keys


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
    return _b64(plain.text, f"a content key for key id {kid}", source)


def _explicit_iv(element: ET.Element, kid: uuid.UUID, source: str) -> bytes | None:
    iv = _b64(element.get("explicitIV"), f"an explicitIV for key id {kid}", source)
    if iv is not None and len(iv) not in (8, 16):
        raise KeyServiceError(
            source, f"answered an explicitIV of {len(iv)} bytes for key id {kid}; needs 16"
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the credentials elsewhere (or drop the POST body): refuse it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def safe_url(url: str) -> str:
    """The URL for messages: scheme, host, port and path; no user info, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class CpixClient:
    """Asks one Key Service for keys. `repr` never shows the management key.

    `timeout`: seconds per attempt; `attempts`: tries in all on a 5xx/429 answer, a timeout
    or a connection error, waiting `backoff`, 2×`backoff`, … between them; a 401/403 or any
    other answer is final. `ca_file` (or env `VIPE_CPIX_CA_FILE`) adds a CA bundle for the
    Key Service's TLS certificate; verification is never switched off.
    """

    def __init__(
        self,
        url: str,
        tenant_id: str,
        management_key: str,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
        system_ids: Sequence[uuid.UUID] = systems.KEY_SERVICE_SYSTEMS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url
        self.tenant_id = tenant_id
        self._management_key = management_key
        self.ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.system_ids = tuple(system_ids)
        self._sleep = sleep
        self.source = safe_url(url)

    def __repr__(self) -> str:
        return f"CpixClient(url={self.source!r}, tenant_id={self.tenant_id!r})"

    def request_keys(
        self,
        content_id: str,
        requests: Sequence[KeyRequest],
        scheme: str,
        quality_groups: Sequence[str] = QUALITY_GROUPS,
    ) -> list[ContentKey]:
        """Ask for the keys of `requests` under `content_id`; the keys in request order."""
        document = build_request(content_id, requests, scheme, quality_groups, self.system_ids)
        log.info(
            "requesting %d content key(s) (%s) from the Key Service at %s",
            len(requests),
            scheme,
            self.source,
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
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )

    def _post(self, document: bytes) -> bytes:
        if urllib.parse.urlsplit(self.url).scheme.lower() == "http":
            log.warning("the Key Service at %s is plain HTTP: credentials go in clear", self.source)
        credentials = f"{self.tenant_id}:{self._management_key}".encode()
        opener = self._opener()
        last_reason, last_status = "no attempt made", None
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=document, method="POST")
            request.add_header("Content-Type", "application/xml")
            request.add_header("Accept", "application/xml")
            request.add_header("X-Speke-Version", "2.0")
            # Unredirected: the credentials never follow a redirect (which is refused anyway).
            request.add_unredirected_header(
                "Authorization", "Basic " + base64.b64encode(credentials).decode()
            )
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    body = response.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise KeyServiceError(self.source, "answered more than 8 MiB; refused")
                return body
            except urllib.error.HTTPError as error:
                status = error.code
                error.close()
                if status in (401, 403):
                    raise KeyServiceError(
                        self.source,
                        f"the Key Service refused the credentials of tenant {self.tenant_id} "
                        f"(HTTP {status})",
                        status=status,
                    ) from None
                if status not in RETRY_STATUSES:
                    raise KeyServiceError(
                        self.source, f"answered HTTP {status}", status=status
                    ) from None
                last_reason, last_status = f"answered HTTP {status}", status
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
                last_status = None
            except TimeoutError:
                last_reason = f"did not answer within {self.timeout:g} s"
                last_status = None
            except (ConnectionError, http.client.HTTPException, ssl.SSLError) as error:
                last_reason = f"cannot be reached ({_describe(error)})"
                last_status = None
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "the Key Service at %s %s (attempt %d of %d); retrying in %.2g s",
                    self.source,
                    last_reason,
                    attempt,
                    self.attempts,
                    delay,
                )
                self._sleep(delay)
        raise KeyServiceError(
            self.source,
            f"{last_reason}, {self.attempts} attempt(s)",
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

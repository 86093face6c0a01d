"""A strict CPIX key server for the tests, on 127.0.0.1 (threaded `http.server`, optional TLS).

It checks requests against the SPEKE v2 specification, not against vipe's idea of it
(`check_request`, AWS "SPEKE API v2" and its "Encryption contract" pages):

- the `X-Speke-Version: 2.0` header, read as a handler reading a dict reads it
  (`header_lookup` "exact": the spelling received; "lower": behind a gateway that lower-cases
  every name, looked up as `x-speke-version`), `CPIX@version="2.3"`, `CPIX@contentId`;
- `ContentKey`s with unique GUID `kid`s, one `commonEncryptionScheme`, no key data;
- `DRMSystem`s only for listed keys, each (kid, system) once, the same systems for every key,
  FairPlay only with cbcs, no SPEKE v1 elements, and only systems the server is configured
  for (`systems`; another one is refused as a real provider would refuse it);
- the encryption contract: one `ContentKeyUsageRule` per key, `intendedTrackType` unique;
  `ALL` only as the one rule of a one-key request, with exactly one empty `AudioFilter` and
  one empty `VideoFilter`; otherwise one filter per `+` component, only `AudioFilter`
  (minChannels, maxChannels) and `VideoFilter` (minPixels, maxPixels, hdr, wcg, minFps,
  maxFps), AUDIO with an `AudioFilter` and SD/HD/UHD… with a `VideoFilter`, and video pixel
  ranges that do not overlap (a track must match one key).

A request that breaks a rule gets HTTP 400 naming the rule (and `violations` records it).

Authentication (`auth`): HTTP Basic `tenant:management_key` (default), `BearerCheck`,
`HeaderCheck`, or `SigV4Check`, which recomputes the AWS SigV4 signature of the request with
botocore's signer from the server's own copy of the secret key, as API Gateway does.

It fills every requested key with a key derived from (contentId, key id) (`key_for`, so tests
can assert), an explicit IV (`iv_for`), and for each requested DRM system its own PSSH, DASH
ContentProtectionData and HLS signalling (marked as the server's, so tests can tell them from
vipe's). `fixed_playready_seed`: when PlayReady is asked for, every key gets the same value
(a provider deriving PlayReady keys from one seed). `mode` makes it misbehave:
`unauthorized` (401), `fail` (500 for `failures` requests, then OK), `echo_500` (a 500 whose
long body echoes the request's secrets), `slow` (answers after `delay` s), `malformed`
(broken XML), `missing_key` (leaves the last requested key out), `short_key` (8-byte keys),
`long_key` (32-byte keys), `empty_key` (an empty PlainValue), `short_iv` (8-byte IVs),
`iv_is_key` (each key's IV is the key), `iv_is_other_key` (a key's IV is the next key),
`same_key` (one value for every key), `unasked_kid` (an extra key nobody asked for),
`speke_v1` (a SPEKE v1 / CPIX 2.0 shaped answer), `doctype` (a DOCTYPE with an entity),
`redirect` (307 elsewhere).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import struct
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CPIX = "urn:dashif:org:cpix"
PSKC = "urn:ietf:params:xml:ns:keyprov:pskc"
SPEKE = "urn:aws:amazon:com:speke"
WIDEVINE = uuid.UUID("edef8ba9-79d6-4ace-a3c8-27dcd51d21ed")
PLAYREADY = uuid.UUID("9a04f079-9840-4286-ab92-e65be0885f95")
FAIRPLAY = uuid.UUID("94ce86fb-07ff-4f43-adb8-93d2fa968ca2")
CLEARKEY = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")
KEY_SERVICE_SYSTEMS = (WIDEVINE, PLAYREADY, FAIRPLAY)
Headers = list[tuple[str, str]]


def server_pssh(system_id: uuid.UUID, kid: uuid.UUID) -> bytes:
    """The server's own pssh box for a key: version 0, data names the server and the key."""
    data = b"cpix-test-server:" + str(kid).encode()
    payload = struct.pack(">I", 0) + system_id.bytes + struct.pack(">I", len(data)) + data
    return struct.pack(">I4s", 8 + len(payload), b"pssh") + payload


def fairplay_uri(kid: uuid.UUID) -> str:
    return f"skd://cpix-test-server/{kid.hex}"


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _q(tag: str, ns: str = CPIX) -> str:
    return f"{{{ns}}}{tag}"


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def header(headers: Headers, name: str, lookup: str = "insensitive") -> str | None:
    """A request header's value: "insensitive" (HTTP's rule) or "exact" (a handler reading a
    dict keyed by the spelling it received)."""
    for sent, value in headers:
        if sent == name or (lookup == "insensitive" and sent.lower() == name.lower()):
            return value
    return None


# ------------------------------------------------------------------ the SPEKE v2 request rules

VIDEO_FILTER_ATTRIBUTES = {"minPixels", "maxPixels", "hdr", "wcg", "minFps", "maxFps"}
AUDIO_FILTER_ATTRIBUTES = {"minChannels", "maxChannels"}
VIDEO_TRACK_TYPES = {"VIDEO", "SD", "HD", "UHD", "UHD1", "UHD2"}
AUDIO_TRACK_TYPES = {"AUDIO"}
SCHEMES = {"cenc", "cbcs", "cens", "cbc1"}
DRM_SYSTEM_CHILDREN = {
    "PSSH",
    "ContentProtectionData",
    "HLSSignalingData",
    "SmoothStreamingProtectionHeaderData",
    "HDSSignalingData",
}


def _int_attributes(element: ET.Element, allowed: set[str], violations: list[str]) -> dict:
    name = _local(element.tag)
    values: dict[str, int | str] = {}
    for attribute, value in element.attrib.items():
        if attribute not in allowed:
            violations.append(f"{name}@{attribute} is not supported by SPEKE v2")
        elif attribute in ("hdr", "wcg"):
            values[attribute] = value
        else:
            try:
                values[attribute] = int(value)
            except ValueError:
                violations.append(f"{name}@{attribute} must be an integer")
    return values


def _overlap(ranges: list[tuple[int, float, str]], what: str, violations: list[str]) -> None:
    for index, (low, high, name) in enumerate(ranges):
        for other_low, other_high, other in ranges[index + 1 :]:
            if other_low <= high and low <= other_high:
                violations.append(f"{what} of {name} and {other} overlap: a track matches both")


def check_request(root: ET.Element, version_header: str | None = "2.0") -> list[str]:
    """Every SPEKE v2 rule the CPIX request `root` breaks (empty: a valid request).
    `version_header`: the X-Speke-Version the server read (None: not found)."""
    violations: list[str] = []
    if version_header != "2.0":
        violations.append(f"X-Speke-Version must be 2.0, read {version_header!r}")
    if root.tag != _q("CPIX"):
        return [*violations, "the document is not a cpix:CPIX"]
    if root.get("version") != "2.3":
        violations.append("CPIX@version must be 2.3")
    if not root.get("contentId"):
        violations.append("CPIX@contentId is required")
    for child in root.iter():
        if str(child.tag).startswith(f"{{{SPEKE}}}"):
            violations.append(f"speke:{_local(child.tag)} is deprecated in SPEKE v2")

    kids: list[str] = []
    schemes: set[str] = set()
    for key in root.iterfind(f"{_q('ContentKeyList')}/{_q('ContentKey')}"):
        kid = key.get("kid") or ""
        try:
            kid = str(uuid.UUID(kid))
        except ValueError:
            violations.append(f"ContentKey@kid {kid!r} is not a GUID")
        if kid in kids:
            violations.append(f"ContentKey {kid} is listed twice")
        kids.append(kid)
        scheme = key.get("commonEncryptionScheme")
        if scheme not in SCHEMES:
            violations.append(f"ContentKey@commonEncryptionScheme {scheme!r} is not valid")
        schemes.add(str(scheme))
        if len(key):
            violations.append(f"ContentKey {kid} of a request carries key data")
    if not kids:
        violations.append("a request needs at least one ContentKey")
    if len(schemes) > 1:
        violations.append("the ContentKeys of one request use different schemes")

    per_kid: dict[str, set[uuid.UUID]] = {kid: set() for kid in kids}
    for drm in root.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}"):
        kid = drm.get("kid") or ""
        try:
            system = uuid.UUID(drm.get("systemId") or "")
        except ValueError:
            violations.append(f"DRMSystem@systemId {drm.get('systemId')!r} is not a GUID")
            continue
        if kid not in per_kid:
            violations.append(f"DRMSystem for key id {kid}, which is not in the ContentKeyList")
            continue
        if system in per_kid[kid]:
            violations.append(f"DRMSystem {system} is listed twice for key id {kid}")
        per_kid[kid].add(system)
        if system == FAIRPLAY and schemes != {"cbcs"}:
            violations.append("FairPlay is only possible with cbcs")
        for child in drm:
            name = _local(child.tag)
            if name not in DRM_SYSTEM_CHILDREN:
                violations.append(f"DRMSystem child {name} is not a SPEKE v2 element")
            if name == "HLSSignalingData" and child.get("playlist") not in ("media", "master"):
                violations.append("HLSSignalingData@playlist must be media or master")
    if len({frozenset(found) for found in per_kid.values()}) > 1:
        violations.append("every key must be asked for the same DRM systems")

    rules = list(root.iterfind(f"{_q('ContentKeyUsageRuleList')}/{_q('ContentKeyUsageRule')}"))
    if not rules:
        violations.append("the ContentKeyUsageRuleList (the encryption contract) is required")
    types: list[str] = []
    ruled: list[str] = []
    pixels: list[tuple[int, float, str]] = []
    channels: list[tuple[int, float, str]] = []
    for rule in rules:
        kid, track_type = rule.get("kid") or "", rule.get("intendedTrackType") or ""
        if kid not in per_kid:
            violations.append(f"a ContentKeyUsageRule names key id {kid}, not in ContentKeyList")
        if kid in ruled:
            violations.append(f"key id {kid} has more than one ContentKeyUsageRule")
        ruled.append(kid)
        if not track_type:
            violations.append("ContentKeyUsageRule@intendedTrackType is required")
        elif track_type in types:
            violations.append(f"intendedTrackType {track_type} is not unique in the request")
        types.append(track_type)
        filters = list(rule)
        tags = [_local(f.tag) for f in filters]
        for tag in tags:
            if tag not in ("AudioFilter", "VideoFilter"):
                violations.append(f"{tag} is not supported by SPEKE v2")
        if track_type == "ALL":
            if len(kids) != 1:
                violations.append("intendedTrackType ALL is one key for every track: one key only")
            if sorted(tags) != ["AudioFilter", "VideoFilter"] or any(f.attrib for f in filters):
                violations.append(
                    "intendedTrackType ALL takes one empty AudioFilter and one empty VideoFilter"
                )
            continue
        parts = track_type.split("+")
        if len(filters) != len(parts):
            violations.append(f"{track_type}: one filter per '+' component")
        for part, element, tag in zip(parts, filters, tags, strict=False):
            if part in AUDIO_TRACK_TYPES and tag != "AudioFilter":
                violations.append(f"{part} needs an AudioFilter")
            if part in VIDEO_TRACK_TYPES and tag != "VideoFilter":
                violations.append(f"{part} needs a VideoFilter")
            if tag == "VideoFilter":
                bounds = _int_attributes(element, VIDEO_FILTER_ATTRIBUTES, violations)
                low, high = bounds.get("minPixels", 0), bounds.get("maxPixels", float("inf"))
                if low > high:  # type: ignore[operator]
                    violations.append(f"{part}: minPixels above maxPixels")
                if not set(bounds) - {"minPixels", "maxPixels"}:
                    pixels.append((low, high, part))  # type: ignore[arg-type]
            elif tag == "AudioFilter":
                bounds = _int_attributes(element, AUDIO_FILTER_ATTRIBUTES, violations)
                low, high = bounds.get("minChannels", 0), bounds.get("maxChannels", float("inf"))
                channels.append((low, high, part))  # type: ignore[arg-type]
    for kid in kids:
        if kid not in ruled:
            violations.append(f"key id {kid} has no ContentKeyUsageRule")
    _overlap(pixels, "the VideoFilters", violations)
    _overlap(channels, "the AudioFilters", violations)
    return list(dict.fromkeys(violations))


# ---------------------------------------------------------------------------- authentication


def _json(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


class BearerCheck:
    """`Authorization: Bearer <token>`; else 401 as an API gateway answers it."""

    def __init__(self, token: str):
        self.token = token

    def verify(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
        if header(headers, "Authorization") == f"Bearer {self.token}":
            return 200, b""
        return 401, _json("Unauthorized: the bearer token is not valid for this key provider")


class HeaderCheck:
    """A custom header holding a secret (`X-Api-Key`); else 403."""

    def __init__(self, name: str, value: str):
        self.name, self.value = name, value

    def verify(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
        if header(headers, self.name) == self.value:
            return 200, b""
        return 403, _json(f"Forbidden: invalid {self.name}")


AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class SigV4Check:
    """AWS SigV4, verified as API Gateway verifies it: the signature of the request as
    received is recomputed with botocore's signer (`SigV4Auth.canonical_request`,
    `string_to_sign`, `signature`) from the server's copy of the secret key and compared."""

    MISMATCH = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method."
    )

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        service: str = "execute-api",
        session_token: str | None = None,
        max_skew: float = 300,
    ):
        self.access_key, self.secret_key = access_key, secret_key
        self.region, self.service = region, service
        self.session_token = session_token
        self.max_skew = max_skew
        self.verified = 0

    def expected_signature(
        self, method: str, url: str, headers: Headers, body: bytes, signed: Sequence[str]
    ) -> str:
        """The signature botocore computes for this request and these signed headers."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        chosen = {name: header(headers, name) or "" for name in signed}
        request = AWSRequest(method=method, url=url, data=body, headers=chosen)
        request.context["timestamp"] = header(headers, "x-amz-date") or ""
        signer = SigV4Auth(
            Credentials(self.access_key, self.secret_key, self.session_token),
            self.service,
            self.region,
        )
        canonical = signer.canonical_request(request)
        return signer.signature(signer.string_to_sign(request, canonical), request)

    def verify(self, method: str, url: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
        found = AUTHORIZATION.match(header(headers, "Authorization") or "")
        if found is None:
            return 403, _json("Missing Authentication Token")
        if found["key"] != self.access_key:
            return 403, _json("The security token included in the request is invalid.")
        if (found["region"], found["service"]) != (self.region, self.service):
            return 403, _json(
                f"Credential should be scoped to a valid region and service "
                f"({self.region}/{self.service})"
            )
        stamp = header(headers, "x-amz-date") or ""
        try:
            when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return 403, _json("X-Amz-Date is missing or malformed")
        now = datetime.datetime.now(datetime.UTC)
        if abs((now - when).total_seconds()) > self.max_skew or stamp[:8] != found["date"]:
            return 403, _json("Signature expired or not yet current")
        signed = found["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return 403, _json("host and x-amz-date must be signed")
        if self.session_token is not None and (
            header(headers, "x-amz-security-token") != self.session_token
            or "x-amz-security-token" not in signed
        ):
            return 403, _json("The security token included in the request is invalid.")
        expected = self.expected_signature(method, url, headers, body, signed)
        if not hmac.compare_digest(expected, found["signature"]):
            return 403, _json(self.MISMATCH)
        self.verified += 1
        return 200, b""


# ------------------------------------------------------------------------------- the server


class CpixServer:
    """Start with `with CpixServer(...) as server:`; `server.url` is the CPIX endpoint."""

    def __init__(
        self,
        tenant: str = "tenant-1",
        management_key: str = "management-secret-1",
        *,
        certificate: tuple[Path, Path] | None = None,
        auth: BearerCheck | HeaderCheck | SigV4Check | None = None,
        systems: Sequence[uuid.UUID] = KEY_SERVICE_SYSTEMS,
        strict: bool = True,
        header_lookup: str = "exact",
    ):
        self.tenant = tenant
        self.management_key = management_key
        self.certificate = certificate
        self.auth = auth
        self.systems = set(systems)
        self.strict = strict
        self.header_lookup = header_lookup
        self.fixed_playready_seed = False
        self.mode = "ok"
        self.failures = 0
        self.delay = 0.0
        self.requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.raw_headers: list[Headers] = []
        self.violations: list[list[str]] = []  # per checked request
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- deterministic key material ---------------------------------------------------------

    @staticmethod
    def key_for(content_id: str, kid: uuid.UUID) -> bytes:
        return hashlib.sha256(f"key:{content_id}:{kid}".encode()).digest()[:16]

    @staticmethod
    def iv_for(kid: uuid.UUID) -> bytes:
        return hashlib.sha256(f"iv:{kid}".encode()).digest()[:16]

    # -- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.certificate else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/cpix/v2"

    def __enter__(self) -> CpixServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- answering --------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) for one request as received: authentication, the SPEKE v2
        rules, then `answer`."""
        if self.header_lookup == "lower":  # a gateway in front lower-cases every name
            headers = [(name.lower(), value) for name, value in headers]
        if self.auth is not None:
            url = f"http://{header(headers, 'host')}{path}"
            status, refusal = self.auth.verify(method, url, headers, body)
            if status != 200:
                return status, refusal
        if self.strict and self.mode not in ("malformed", "doctype", "unauthorized"):
            # a handler reading a dict: the sent spelling, or the lower-cased one
            name = "x-speke-version" if self.header_lookup == "lower" else "X-Speke-Version"
            version = header(headers, name, "exact")
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                return 400, _json("the request is not well-formed XML")
            violations = check_request(root, version)
            self.violations.append(violations)
            if violations:
                return 400, _json("SPEKE v2 rule violated: " + "; ".join(violations))
            asked = {
                uuid.UUID(drm.get("systemId"))
                for drm in root.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}")
            }
            for system in sorted(asked - self.systems):
                return 400, _json(f"DRM system {system} is not configured for this key provider")
        if self.mode == "echo_500":
            echoed = "; ".join(f"{name}: {value}" for name, value in headers)
            return 500, ("internal error while handling " + echoed + " " + "x" * 600).encode()
        authorization = header(headers, "Authorization") if self.auth is None else "checked"
        return self.answer(body, authorization)

    def answer(self, body: bytes, authorization: str | None) -> tuple[int, bytes]:
        """(HTTP status, body) for one request (Basic credentials when no other `auth`)."""
        expected = "Basic " + _b64(f"{self.tenant}:{self.management_key}")
        if self.mode == "unauthorized" or (self.auth is None and authorization != expected):
            return 401, b"<error>unauthorized</error>"
        with self._lock:
            if self.mode == "fail" and self.failures > 0:
                self.failures -= 1
                return 500, b"<error>try again: the key store is being rebuilt</error>"
        if self.mode == "slow":
            time.sleep(self.delay)
        if self.mode == "malformed":
            return 200, b'<?xml version="1.0"?><cpix:CPIX xmlns:cpix="urn:dashif:org:cpix"><oops'
        if self.mode == "doctype":
            return 200, (
                b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix">&e;</cpix:CPIX>'
            )
        request = ET.fromstring(body)
        if self.mode == "speke_v1":
            return 200, self._speke_v1(request)
        return 200, self._cpix_23(request)

    def _requested(self, request: ET.Element) -> tuple[str, list[ET.Element]]:
        content_id = request.get("contentId") or request.get("id") or ""
        keys = request.findall(f"{_q('ContentKeyList')}/{_q('ContentKey')}")
        if self.mode == "missing_key":
            keys = keys[:-1]
        if self.mode == "unasked_kid":
            extra = ET.Element(_q("ContentKey"), {"kid": str(uuid.uuid4())})
            keys = [*keys, extra]
        return content_id, keys

    def _key_bytes(self, request: ET.Element, content_id: str, kid: uuid.UUID) -> bytes:
        asked = {drm.get("systemId") for drm in request.iter(_q("DRMSystem"))}
        if self.mode == "same_key" or (self.fixed_playready_seed and str(PLAYREADY) in asked):
            return self.key_for(content_id, uuid.UUID(int=0))  # one seed, one key for all
        key = self.key_for(content_id, kid)
        if self.mode == "short_key":
            return key[:8]
        if self.mode == "long_key":
            return key + key
        if self.mode == "empty_key":
            return b""
        return key

    def _fill_key(
        self, request: ET.Element, element: ET.Element, content_id: str, next_kid: uuid.UUID
    ) -> None:
        kid = uuid.UUID(element.get("kid"))
        key = self._key_bytes(request, content_id, kid)
        iv = self.iv_for(kid)
        if self.mode == "short_iv":
            iv = iv[:8]
        elif self.mode == "iv_is_key":
            iv = key
        elif self.mode == "iv_is_other_key":
            iv = self._key_bytes(request, content_id, next_kid)
        element.set("explicitIV", _b64(iv))
        data = ET.SubElement(element, _q("Data"))
        secret = ET.SubElement(data, _q("Secret", PSKC))
        ET.SubElement(secret, _q("PlainValue", PSKC)).text = _b64(key)

    def _fill_keys(self, request: ET.Element, key_list: ET.Element, content_id: str) -> None:
        elements = list(key_list)
        kids = [uuid.UUID(e.get("kid")) for e in elements]
        for index, element in enumerate(elements):
            self._fill_key(request, element, content_id, kids[(index + 1) % len(kids)])

    def _cpix_23(self, request: ET.Element) -> bytes:
        content_id, keys = self._requested(request)
        root = ET.Element(_q("CPIX"), {"contentId": content_id, "version": "2.3"})
        key_list = ET.SubElement(root, _q("ContentKeyList"))
        for requested in keys:
            ET.SubElement(key_list, _q("ContentKey"), dict(requested.attrib))
        self._fill_keys(request, key_list, content_id)
        drm_list = ET.SubElement(root, _q("DRMSystemList"))
        for requested in request.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}"):
            kid, system = uuid.UUID(requested.get("kid")), uuid.UUID(requested.get("systemId"))
            element = ET.SubElement(drm_list, _q("DRMSystem"), dict(requested.attrib))
            box = server_pssh(system, kid)
            for child in requested:
                if child.tag == _q("PSSH"):
                    ET.SubElement(element, _q("PSSH")).text = _b64(box)
                elif child.tag == _q("ContentProtectionData"):
                    fragment = f"<cenc:pssh>{_b64(box)}</cenc:pssh>"
                    if system == PLAYREADY:
                        fragment += "<mspr:pro>c2VydmVyLXBybw==</mspr:pro>"
                    ET.SubElement(element, _q("ContentProtectionData")).text = _b64(fragment)
                elif child.tag == _q("HLSSignalingData"):
                    playlist = child.get("playlist", "media")
                    tag = "#EXT-X-SESSION-KEY" if playlist == "master" else "#EXT-X-KEY"
                    if system == FAIRPLAY:
                        line = (
                            f'{tag}:METHOD=SAMPLE-AES,URI="{fairplay_uri(kid)}",'
                            'KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"'
                        )
                    else:
                        line = (
                            f'{tag}:METHOD=SAMPLE-AES,URI="data:text/plain;base64,{_b64(box)}",'
                            f'KEYFORMAT="urn:uuid:{system}",KEYFORMATVERSIONS="1"'
                        )
                    ET.SubElement(
                        element, _q("HLSSignalingData"), {"playlist": playlist}
                    ).text = _b64(line)
        rules = request.find(_q("ContentKeyUsageRuleList"))
        if rules is not None:
            root.append(rules)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def _speke_v1(self, request: ET.Element) -> bytes:
        """The SPEKE v1 shape: CPIX 2.0 with `id`, PSSH/ContentProtectionData, FairPlay as
        `URIExtXKey` plus `speke:KeyFormat`/`KeyFormatVersions`."""
        content_id, keys = self._requested(request)
        ET.register_namespace("speke", SPEKE)
        root = ET.Element(_q("CPIX"), {"id": content_id})
        key_list = ET.SubElement(root, _q("ContentKeyList"))
        for requested in keys:
            ET.SubElement(key_list, _q("ContentKey"), {"kid": requested.get("kid")})
        self._fill_keys(request, key_list, content_id)
        drm_list = ET.SubElement(root, _q("DRMSystemList"))
        for requested in request.iterfind(f"{_q('DRMSystemList')}/{_q('DRMSystem')}"):
            kid, system = uuid.UUID(requested.get("kid")), uuid.UUID(requested.get("systemId"))
            element = ET.SubElement(
                drm_list, _q("DRMSystem"), {"kid": str(kid), "systemId": str(system)}
            )
            if system == FAIRPLAY:
                ET.SubElement(element, _q("URIExtXKey")).text = _b64(fairplay_uri(kid))
                ET.SubElement(element, _q("KeyFormat", SPEKE)).text = _b64(
                    "com.apple.streamingkeydelivery"
                )
                ET.SubElement(element, _q("KeyFormatVersions", SPEKE)).text = _b64("1")
            else:
                box = server_pssh(system, kid)
                ET.SubElement(element, _q("PSSH")).text = _b64(box)
                ET.SubElement(element, _q("ContentProtectionData")).text = _b64(
                    f"<cenc:pssh>{_b64(box)}</cenc:pssh>"
                )
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _handler(server: CpixServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            raw = list(self.headers.items())  # the names as sent, in order
            server.requests.append(body)
            server.headers.append(dict(raw))
            server.raw_headers.append(raw)
            status, answer = server.handle("POST", self.path, raw, body)
            try:
                if server.mode == "redirect" and status == 200:
                    self.send_response(307)
                    self.send_header("Location", server.url + "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem): it is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpix-test-server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path

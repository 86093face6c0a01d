"""DRM signalling for manifests: DASH `ContentProtection` elements and HLS key tags.

DASH (per AdaptationSet, one key): the `urn:mpeg:dash:mp4protection:2011` element with
`value="cenc"|"cbcs"` and `cenc:default_KID`, then one element per DRM system
(`urn:uuid:<system id>`) with `cenc:pssh` (base64 of the whole `pssh` box), PlayReady also
`mspr:pro`. FairPlay has no DASH signalling.

HLS: `#EXT-X-KEY` lines for media playlists and `#EXT-X-SESSION-KEY` lines for the master:
`METHOD=SAMPLE-AES` (cbcs) or `SAMPLE-AES-CTR` (cenc); FairPlay (`skd://` URI, cbcs only),
Widevine (the `pssh` as a data URI, `KEYID`), PlayReady (the PRO as a UTF-16 data URI).
ClearKey has no HLS signalling.

What the Key Service returned for a key and a system (ContentProtectionData, HLS signalling
data, PSSH) replaces what vipe would generate. Only the systems the job chose for a key
(`ContentKey.systems`; None: all) are signalled. Results are `xml.etree` elements (or strings)
and plain lines, for the packager's manifest writers to insert.
"""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from drm import pssh, systems
from drm.keys import ContentKey, DrmKeyError

DASH_NS = "urn:mpeg:dash:schema:mpd:2011"
CENC_NS = "urn:mpeg:cenc:2013"
MSPR_NS = "urn:microsoft:playready"
MP4_PROTECTION_SCHEME = "urn:mpeg:dash:mp4protection:2011"
DASH_VALUES = {
    systems.WIDEVINE: "Widevine",
    systems.PLAYREADY: "MSPR 2.0",
    systems.CLEARKEY: "ClearKey1.0",
}
# Prefixes a Key Service's ContentProtectionData fragment may use without declaring them.
FRAGMENT_NAMESPACES = {
    "cenc": CENC_NS,
    "mspr": MSPR_NS,
    "dashif": "https://dashif.org/CPS",
    "clearkey": "http://dashif.org/guidelines/clearKey",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}

ET.register_namespace("cenc", CENC_NS)
ET.register_namespace("mspr", MSPR_NS)

FAIRPLAY_KEYFORMAT = "com.apple.streamingkeydelivery"
PLAYREADY_KEYFORMAT = "com.microsoft.playready"


def hls_method(scheme: str) -> str:
    """The HLS METHOD of a CENC scheme."""
    return "SAMPLE-AES" if str(scheme) == "cbcs" else "SAMPLE-AES-CTR"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------------ DASH


def parse_content_protection_data(fragment: str, source: str = "Key Service") -> list[ET.Element]:
    """The elements of a ContentProtectionData XML fragment (common prefixes predeclared,
    the DASH namespace as default). DrmKeyError when it is not well-formed or has a DOCTYPE."""
    if "<!DOCTYPE" in fragment or "<!ENTITY" in fragment:
        raise DrmKeyError(source, "ContentProtectionData with a DOCTYPE (refused)")
    declarations = " ".join(f'xmlns:{p}="{uri}"' for p, uri in FRAGMENT_NAMESPACES.items())
    wrapped = f'<vipe-fragment xmlns="{DASH_NS}" {declarations}>{fragment}</vipe-fragment>'
    try:
        root = ET.fromstring(wrapped)
    except ET.ParseError:
        raise DrmKeyError(
            source, "ContentProtectionData is not a well-formed XML fragment"
        ) from None
    return list(root)


def _retag(element: ET.Element, namespace: str) -> ET.Element:
    """Move elements of the DASH namespace (or none) to `namespace` ("" = unqualified)."""
    for node in element.iter():
        if not isinstance(node.tag, str):
            continue
        local = node.tag.rsplit("}", 1)[-1]
        if node.tag.startswith(f"{{{DASH_NS}}}") or "}" not in node.tag:
            node.tag = f"{{{namespace}}}{local}" if namespace else local
    return element


def _content_protection(system_id: uuid.UUID, tag: str) -> ET.Element:
    attributes = {"schemeIdUri": f"urn:uuid:{system_id}"}
    if system_id in DASH_VALUES:
        attributes["value"] = DASH_VALUES[system_id]
    return ET.Element(tag, attributes)


def dash_content_protection(
    key: ContentKey,
    scheme: str,
    *,
    system_ids: Sequence[uuid.UUID] = systems.ALL_SYSTEMS,
    playready_la_url: str | None = None,
    namespace: str = "",
) -> list[ET.Element]:
    """The `ContentProtection` elements of one AdaptationSet protected with `key`.

    `namespace`: the namespace of the MPD's own elements in the caller's tree (`DASH_NS`
    for a namespaced ElementTree MPD, "" for unqualified tags). Attributes and children use
    the `cenc:`/`mspr:` namespaces (registered with ElementTree under those prefixes).
    """
    tag = f"{{{namespace}}}ContentProtection" if namespace else "ContentProtection"
    elements = [
        ET.Element(
            tag,
            {
                "schemeIdUri": MP4_PROTECTION_SCHEME,
                "value": str(scheme),
                f"{{{CENC_NS}}}default_KID": str(key.key_id),
            },
        )
    ]
    for system_id in system_ids:
        if system_id == systems.FAIRPLAY or not key.signals(system_id):
            continue
        given = key.for_system(system_id)
        if given.content_protection_data:
            nodes = parse_content_protection_data(given.content_protection_data)
            if len(nodes) == 1 and nodes[0].tag.endswith("ContentProtection"):
                elements.append(_retag(nodes[0], namespace))  # a whole element: as given
                continue
            element = _content_protection(system_id, tag)
            element.extend(_retag(node, namespace) for node in nodes)
            elements.append(element)
            continue
        boxes = pssh.pssh_for_system(key, scheme, system_id, playready_la_url=playready_la_url)
        if not boxes:
            continue
        element = _content_protection(system_id, tag)
        ET.SubElement(element, f"{{{CENC_NS}}}pssh").text = _b64(boxes[0])
        if system_id == systems.PLAYREADY:
            ET.SubElement(element, f"{{{MSPR_NS}}}pro").text = _b64(pssh.pro_from_pssh(boxes[0]))
        elements.append(element)
    return elements


def to_xml(elements: Sequence[ET.Element]) -> str:
    """Elements as an XML string (namespaces declared on each element, as ElementTree does)."""
    return "".join(ET.tostring(element, encoding="unicode") for element in elements)


# ------------------------------------------------------------------------------------- HLS


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _attributes(tag: str, method: str, uri: str, extra: str = "") -> str:
    return f'{tag}:METHOD={method},URI="{uri}"{extra}'


def _hls_generated(
    key: ContentKey, scheme: str, system_id: uuid.UUID, tag: str, la_url: str | None
) -> list[str]:
    method = hls_method(scheme)
    versions = ',KEYFORMATVERSIONS="1"'
    given = key.for_system(system_id)
    if system_id == systems.FAIRPLAY:
        if str(scheme) != "cbcs":
            return []  # FairPlay decrypts cbcs only
        uri = given.uri_ext_x_key or f"skd://{key.key_id_hex}"
        key_format = given.key_format or FAIRPLAY_KEYFORMAT
        key_versions = given.key_format_versions or "1"
        return [
            _attributes(
                tag, method, uri, f',KEYFORMAT="{key_format}",KEYFORMATVERSIONS="{key_versions}"'
            )
        ]
    if system_id == systems.WIDEVINE:
        box = pssh.pssh_for_system(key, scheme, system_id)[0]
        uri = f"data:text/plain;base64,{_b64(box)}"
        extra = f',KEYID=0x{key.key_id_hex.upper()},KEYFORMAT="urn:uuid:{system_id}"{versions}'
        return [_attributes(tag, method, uri, extra)]
    if system_id == systems.PLAYREADY:
        box = pssh.pssh_for_system(key, scheme, system_id, playready_la_url=la_url)[0]
        uri = f"data:text/plain;charset=UTF-16;base64,{_b64(pssh.pro_from_pssh(box))}"
        return [_attributes(tag, method, uri, f',KEYFORMAT="{PLAYREADY_KEYFORMAT}"{versions}')]
    return []  # ClearKey and unknown systems: nothing in HLS


def hls_key_tags(
    key: ContentKey,
    scheme: str,
    *,
    system_ids: Sequence[uuid.UUID] = systems.ALL_SYSTEMS,
    playready_la_url: str | None = None,
) -> list[str]:
    """The `#EXT-X-KEY` lines of a media playlist protected with `key` (before the first
    segment / `#EXT-X-MAP`)."""
    lines: list[str] = []
    for system_id in system_ids:
        if not key.signals(system_id):
            continue
        given = key.for_system(system_id).hls_media
        if given:
            lines += _lines(given)
        else:
            lines += _hls_generated(key, scheme, system_id, "#EXT-X-KEY", playready_la_url)
    return lines


def hls_session_key_tags(
    keys: ContentKey | Sequence[ContentKey],
    scheme: str,
    *,
    system_ids: Sequence[uuid.UUID] = systems.ALL_SYSTEMS,
    playready_la_url: str | None = None,
) -> list[str]:
    """The master playlist's `#EXT-X-SESSION-KEY` lines for every key of the presentation.
    A Key Service's master data is used as given; with only media data, its lines are
    turned into session keys; else vipe's own."""
    keys = [keys] if isinstance(keys, ContentKey) else list(keys)
    lines: list[str] = []
    for key in keys:
        for system_id in system_ids:
            if not key.signals(system_id):
                continue
            given = key.for_system(system_id)
            if given.hls_master:
                found = _lines(given.hls_master)
            elif given.hls_media:
                found = [
                    line.replace("#EXT-X-KEY:", "#EXT-X-SESSION-KEY:", 1)
                    for line in _lines(given.hls_media)
                ]
            else:
                found = _hls_generated(
                    key, scheme, system_id, "#EXT-X-SESSION-KEY", playready_la_url
                )
            lines += [line for line in found if line not in lines]
    return lines

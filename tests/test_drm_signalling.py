"""DASH ContentProtection elements and HLS key tags; Key Service data used as given."""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET

from drm import pssh, signalling, systems
from drm.keys import ContentKey, SystemSignalling

KEY = ContentKey(uuid.UUID("1c6f2b9e-0d3a-4c52-9a3e-5f0e8e6d7a21"), bytes(range(16)))
CENC = "{urn:mpeg:cenc:2013}"
MSPR = "{urn:microsoft:playready}"


def attributes(line: str) -> dict[str, str]:
    """The attribute list of an HLS tag (values with commas inside quotes kept whole)."""
    _, _, rest = line.partition(":")
    out, name, value, quoted = {}, "", "", False
    key_part = True
    for char in rest + ",":
        if key_part:
            if char == "=":
                key_part = False
            else:
                name += char
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out[name], name, value, key_part = value, "", "", True
        else:
            value += char
    return out


def test_dash_elements_generated():
    elements = signalling.dash_content_protection(KEY, "cenc")
    assert [e.tag for e in elements] == ["ContentProtection"] * 4
    mp4, widevine, playready, clearkey = elements
    assert mp4.get("schemeIdUri") == "urn:mpeg:dash:mp4protection:2011"
    assert mp4.get("value") == "cenc"
    assert mp4.get(f"{CENC}default_KID") == str(KEY.key_id)
    assert widevine.get("schemeIdUri") == f"urn:uuid:{systems.WIDEVINE}"
    box = base64.b64decode(widevine.find(f"{CENC}pssh").text)
    assert box == pssh.widevine_pssh([KEY.key_id], "cenc")
    assert playready.get("schemeIdUri") == f"urn:uuid:{systems.PLAYREADY}"
    assert playready.get("value") == "MSPR 2.0"
    pro = base64.b64decode(playready.find(f"{MSPR}pro").text)
    assert pssh.parse_pssh(base64.b64decode(playready.find(f"{CENC}pssh").text)).data == pro
    assert clearkey.get("schemeIdUri") == f"urn:uuid:{systems.CLEARKEY}"
    # no FairPlay in DASH; serialises with the cenc/mspr prefixes
    text = signalling.to_xml(elements)
    assert (
        "cenc:default_KID=" in text and "<mspr:pro>" in text and str(systems.FAIRPLAY) not in text
    )
    namespaced = signalling.dash_content_protection(KEY, "cbcs", namespace=signalling.DASH_NS)
    assert namespaced[0].tag == f"{{{signalling.DASH_NS}}}ContentProtection"
    assert namespaced[0].get("value") == "cbcs"


def test_dash_uses_the_key_service_data_as_given():
    fragment = "<cenc:pssh>S0VZLVNFUlZJQ0U=</cenc:pssh><dashif:laurl>https://lic/</dashif:laurl>"
    whole = (
        f'<ContentProtection xmlns:cenc="urn:mpeg:cenc:2013" schemeIdUri="urn:uuid:'
        f'{systems.PLAYREADY}" value="MSPR 2.0"><cenc:pssh>UFI=</cenc:pssh></ContentProtection>'
    )
    served_box = pssh.common_pssh([KEY.key_id])  # any valid box will do
    key = ContentKey(
        KEY.key_id,
        KEY.key,
        signalling={
            systems.WIDEVINE: SystemSignalling(content_protection_data=fragment),
            systems.PLAYREADY: SystemSignalling(content_protection_data=whole),
            systems.CLEARKEY: SystemSignalling(pssh=served_box),
        },
    )
    _, widevine, playready, clearkey = signalling.dash_content_protection(key, "cbcs")
    assert widevine.get("schemeIdUri") == f"urn:uuid:{systems.WIDEVINE}"
    assert widevine.find(f"{CENC}pssh").text == "S0VZLVNFUlZJQ0U="
    assert widevine.find("{https://dashif.org/CPS}laurl").text == "https://lic/"
    assert playready.tag == "ContentProtection"  # a whole element: taken, re-tagged only
    assert playready.find(f"{CENC}pssh").text == "UFI="
    assert base64.b64decode(clearkey.find(f"{CENC}pssh").text) == served_box


def test_hls_media_keys_cbcs():
    lines = signalling.hls_key_tags(KEY, "cbcs")
    widevine, playready, fairplay = lines  # no ClearKey in HLS
    assert all(line.startswith("#EXT-X-KEY:METHOD=SAMPLE-AES,") for line in lines)
    wv = attributes(widevine)
    assert wv["KEYFORMAT"] == f"urn:uuid:{systems.WIDEVINE}"
    assert wv["KEYID"] == "0x" + KEY.key_id.hex.upper()
    assert wv["URI"].startswith("data:text/plain;base64,")
    assert base64.b64decode(wv["URI"].split(",", 1)[1]) == pssh.widevine_pssh([KEY.key_id], "cbcs")
    pr = attributes(playready)
    assert pr["KEYFORMAT"] == "com.microsoft.playready" and pr["KEYFORMATVERSIONS"] == "1"
    assert pr["URI"].startswith("data:text/plain;charset=UTF-16;base64,")
    pro = base64.b64decode(pr["URI"].split(",", 1)[1])
    assert "AESCBC" in pro[10:].decode("utf-16-le")
    fp = attributes(fairplay)
    assert fp == {
        "METHOD": "SAMPLE-AES",
        "URI": f"skd://{KEY.key_id.hex}",
        "KEYFORMAT": "com.apple.streamingkeydelivery",
        "KEYFORMATVERSIONS": "1",
    }


def test_hls_cenc_is_sample_aes_ctr_without_fairplay():
    lines = signalling.hls_key_tags(KEY, "cenc")
    assert len(lines) == 2
    assert all(line.startswith("#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,") for line in lines)
    assert not any("streamingkeydelivery" in line for line in lines)


def test_hls_session_keys_and_key_service_lines():
    media = '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://ks/abc",KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"'
    master = media.replace("#EXT-X-KEY", "#EXT-X-SESSION-KEY").replace("abc", "master")
    only_media = ContentKey(
        uuid.uuid4(),
        bytes(16),
        signalling={systems.FAIRPLAY: SystemSignalling(hls_media=media)},
    )
    both = ContentKey(
        uuid.uuid4(),
        bytes(16),
        signalling={systems.FAIRPLAY: SystemSignalling(hls_media=media, hls_master=master)},
    )
    assert signalling.hls_key_tags(only_media, "cbcs", system_ids=[systems.FAIRPLAY]) == [media]
    sessions = signalling.hls_session_key_tags(
        [only_media, both, KEY], "cbcs", system_ids=[systems.FAIRPLAY]
    )
    assert sessions == [
        media.replace("#EXT-X-KEY:", "#EXT-X-SESSION-KEY:"),  # derived from the media line
        master,  # as given
        f'#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="skd://{KEY.key_id.hex}",'
        'KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"',
    ]
    all_systems = signalling.hls_session_key_tags(KEY, "cbcs")
    assert len(all_systems) == 3 and all(s.startswith("#EXT-X-SESSION-KEY:") for s in all_systems)


def test_playready_la_url_reaches_pssh_dash_and_hls():
    url = "https://license.example.com/pr?x=1&y=2"
    _, _, playready, _ = signalling.dash_content_protection(KEY, "cenc", playready_la_url=url)
    pro = base64.b64decode(playready.find(f"{MSPR}pro").text)
    header = ET.fromstring(pro[10:].decode("utf-16-le"))
    ns = "{http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader}"
    assert header.find(f"{ns}DATA/{ns}LA_URL").text == url
    (line,) = signalling.hls_key_tags(
        KEY, "cenc", system_ids=[systems.PLAYREADY], playready_la_url=url
    )
    pro_hls = base64.b64decode(attributes(line)["URI"].split(",", 1)[1])
    assert pro_hls == pro

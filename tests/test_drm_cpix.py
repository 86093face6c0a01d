"""The CPIX client against the test key server (tests/cpix_server.py) on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import uuid
import xml.etree.ElementTree as ET

import pytest
from cpix_server import (
    FAIRPLAY,
    PLAYREADY,
    WIDEVINE,
    CpixServer,
    check_request,
    fairplay_uri,
    server_pssh,
)
from cpix_server import self_signed_certificate as make_certificate

from drm import cpix, signalling, systems
from drm.cpix import CpixClient, KeyRequest, KeyServiceError

TENANT, SECRET = "tenant-1", "management-secret-1"
CONTENT_ID = "seed-5f0e8e6d"
NS = {"cpix": cpix.CPIX_NS}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("cpix-tls"))


@pytest.fixture
def server(certificate):
    with CpixServer(TENANT, SECRET, certificate=certificate) as running:
        yield running


def client(server: CpixServer, certificate, **options) -> CpixClient:
    options.setdefault("ca_file", str(certificate[0]))
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 5)
    return CpixClient(server.url, TENANT, options.pop("secret", SECRET), **options)


def requests(*groups: str | None) -> list[KeyRequest]:
    return [KeyRequest(uuid.uuid4(), group) for group in groups]


def assert_no_secret(text: str) -> None:
    assert SECRET not in text
    assert base64.b64encode(f"{TENANT}:{SECRET}".encode()).decode() not in text


# ------------------------------------------------------------------------------ request


def test_request_document_follows_cpix_2_3_speke_v2():
    wanted = requests("SD", "HD", "AUDIO")
    root = ET.fromstring(cpix.build_request(CONTENT_ID, wanted, "cbcs"))
    assert check_request(root) == []  # the strict server's SPEKE v2 rules
    assert root.tag == f"{{{cpix.CPIX_NS}}}CPIX"
    assert root.get("contentId") == CONTENT_ID and root.get("version") == "2.3"
    keys = root.findall("cpix:ContentKeyList/cpix:ContentKey", NS)
    assert [k.get("kid") for k in keys] == [str(r.key_id) for r in wanted]
    assert {k.get("commonEncryptionScheme") for k in keys} == {"cbcs"}
    drm = root.findall("cpix:DRMSystemList/cpix:DRMSystem", NS)
    assert len(drm) == 3 * 3  # Widevine, PlayReady, FairPlay per key
    for element in drm:
        children = [child.tag.split("}")[1] for child in element]
        if element.get("systemId") == str(FAIRPLAY):
            assert children == ["HLSSignalingData", "HLSSignalingData"]
        else:
            assert children[:2] == ["PSSH", "ContentProtectionData"]
        playlists = [c.get("playlist") for c in element.findall("cpix:HLSSignalingData", NS)]
        assert playlists == ["media", "master"]
    rules = root.findall("cpix:ContentKeyUsageRuleList/cpix:ContentKeyUsageRule", NS)
    by_type = {rule.get("intendedTrackType"): rule for rule in rules}
    assert set(by_type) == {"SD", "HD", "AUDIO"} and len(rules) == 3  # unique track types
    assert [c.tag.split("}")[1] for c in by_type["AUDIO"]] == ["AudioFilter"]
    assert by_type["AUDIO"].find("cpix:AudioFilter", NS).attrib == {}
    assert by_type["SD"].find("cpix:VideoFilter", NS).attrib == {"maxPixels": str(1280 * 720 - 1)}
    hd = by_type["HD"].find("cpix:VideoFilter", NS)
    assert (hd.get("minPixels"), hd.get("maxPixels")) == (str(1280 * 720), str(1920 * 1080))
    assert by_type["HD"].get("kid") == str(wanted[1].key_id)


def test_request_for_cenc_skips_fairplay_and_single_key_is_one_all_rule():
    """SPEKE v2: one key for every track is the single rule intendedTrackType="ALL" with an
    empty AudioFilter and an empty VideoFilter."""
    (single,) = requests(None)
    root = ET.fromstring(cpix.build_request(CONTENT_ID, [single], "cenc"))
    assert check_request(root) == []
    systems_asked = {e.get("systemId") for e in root.iterfind(".//cpix:DRMSystem", NS)}
    assert systems_asked == {str(WIDEVINE), str(PLAYREADY)}
    (rule,) = root.findall(".//cpix:ContentKeyUsageRule", NS)
    assert (rule.get("kid"), rule.get("intendedTrackType")) == (str(single.key_id), "ALL")
    assert [(c.tag.split("}")[1], c.attrib) for c in rule] == [
        ("AudioFilter", {}),
        ("VideoFilter", {}),
    ]


def _old_single_key_request(kid: uuid.UUID, groups: list[str]) -> bytes:
    """The single-key request vipe sent before: one rule per quality group for one key."""
    document = ET.fromstring(cpix.build_request(CONTENT_ID, [KeyRequest(kid)], "cbcs"))
    rules = document.find("cpix:ContentKeyUsageRuleList", NS)
    for rule in list(rules):
        rules.remove(rule)
    for group in groups:
        rule = ET.SubElement(
            rules, f"{{{cpix.CPIX_NS}}}ContentKeyUsageRule", kid=str(kid), intendedTrackType=group
        )
        if group == "AUDIO":
            ET.SubElement(rule, f"{{{cpix.CPIX_NS}}}AudioFilter")
        else:
            low, high = cpix.VIDEO_FILTERS[group]
            bounds = {"minPixels": str(low)} if low else {}
            ET.SubElement(rule, f"{{{cpix.CPIX_NS}}}VideoFilter", bounds | {"maxPixels": str(high)})
    return ET.tostring(document)


def test_the_strict_server_rejects_the_old_single_key_shape(server, certificate):
    """The old single-key request (one key, a rule per group) breaks the encryption contract:
    the strict server answers 400 naming the rule; the new shape (ALL) passes."""
    kid = uuid.uuid4()
    old = _old_single_key_request(kid, ["AUDIO", "SD", "HD"])
    violations = check_request(ET.fromstring(old))
    assert f"key id {kid} has more than one ContentKeyUsageRule" in violations
    status, answer = server.handle("POST", "/cpix/v2", _basic_headers(), old)
    assert status == 400 and b"more than one ContentKeyUsageRule" in answer
    new = cpix.build_request(CONTENT_ID, [KeyRequest(kid)], "cbcs")
    assert check_request(ET.fromstring(new)) == []
    assert server.handle("POST", "/cpix/v2", _basic_headers(), new)[0] == 200


def _basic_headers() -> list[tuple[str, str]]:
    token = base64.b64encode(f"{TENANT}:{SECRET}".encode()).decode()
    return [("Authorization", f"Basic {token}"), ("X-Speke-Version", "2.0")]


@pytest.mark.parametrize(
    ("damage", "rule"),
    [
        ("duplicate type", "intendedTrackType SD is not unique"),
        ("ALL with attributes", "ALL takes one empty AudioFilter and one empty VideoFilter"),
        ("ALL with two keys", "ALL is one key for every track"),
        ("overlapping filters", "overlap"),
        ("bitrate filter", "BitrateFilter is not supported"),
        ("audio with video filter", "AUDIO needs an AudioFilter"),
        ("no rule", "has no ContentKeyUsageRule"),
        ("fairplay with cenc", "FairPlay is only possible with cbcs"),
        ("systems differ per key", "the same DRM systems"),
        ("version", "CPIX@version must be 2.3"),
    ],
)
def test_the_strict_server_checks_each_speke_v2_rule(damage, rule):
    """Each rule of the check bites: a valid request, damaged one way, breaks that rule."""
    wanted = requests("SD", "HD")
    scheme = "cenc" if damage == "fairplay with cenc" else "cbcs"
    root = ET.fromstring(cpix.build_request(CONTENT_ID, wanted, scheme))
    rules = root.findall(".//cpix:ContentKeyUsageRule", NS)
    drm_list = root.find("cpix:DRMSystemList", NS)
    if damage == "duplicate type":
        rules[1].set("intendedTrackType", "SD")
    elif damage == "ALL with attributes":
        (single,) = requests(None)
        root = ET.fromstring(cpix.build_request(CONTENT_ID, [single], scheme))
        root.find(".//cpix:VideoFilter", NS).set("maxPixels", "100")
    elif damage == "ALL with two keys":
        rules[0].set("intendedTrackType", "ALL")
    elif damage == "overlapping filters":
        rules[0].find("cpix:VideoFilter", NS).set("maxPixels", str(1920 * 1080))
    elif damage == "bitrate filter":
        ET.SubElement(rules[0], f"{{{cpix.CPIX_NS}}}BitrateFilter", minBitrate="1")
    elif damage == "audio with video filter":
        rules[0].set("intendedTrackType", "AUDIO")
    elif damage == "no rule":
        root.find("cpix:ContentKeyUsageRuleList", NS).remove(rules[1])
    elif damage == "fairplay with cenc":
        ET.SubElement(
            drm_list,
            f"{{{cpix.CPIX_NS}}}DRMSystem",
            kid=str(wanted[0].key_id),
            systemId=str(FAIRPLAY),
        )
        ET.SubElement(
            drm_list,
            f"{{{cpix.CPIX_NS}}}DRMSystem",
            kid=str(wanted[1].key_id),
            systemId=str(FAIRPLAY),
        )
    elif damage == "systems differ per key":
        drm_list.remove(drm_list[0])
    elif damage == "version":
        root.set("version", "2.0")
    assert any(rule in violation for violation in check_request(root)), check_request(root)


def test_the_request_asks_only_for_the_chosen_systems():
    """DRMSystemList holds the job's systems only; ClearKey alone asks for none (no list)."""
    wanted = requests("AUDIO", "SD")
    root = ET.fromstring(cpix.build_request(CONTENT_ID, wanted, "cbcs", [systems.FAIRPLAY]))
    assert check_request(root) == []
    asked = {(e.get("kid"), e.get("systemId")) for e in root.iterfind(".//cpix:DRMSystem", NS)}
    assert asked == {(str(r.key_id), str(FAIRPLAY)) for r in wanted}
    root = ET.fromstring(cpix.build_request(CONTENT_ID, wanted, "cenc", [systems.CLEARKEY]))
    assert root.find("cpix:DRMSystemList", NS) is None and check_request(root) == []


# ------------------------------------------------------------------------- good answers


def test_single_key_over_verified_tls(server, certificate):
    (wanted,) = requests(None)
    (key,) = client(server, certificate).request_keys(CONTENT_ID, [wanted], "cbcs")
    assert key.key_id == wanted.key_id
    assert key.key == CpixServer.key_for(CONTENT_ID, wanted.key_id)
    assert key.iv == CpixServer.iv_for(wanted.key_id)
    assert key.quality_group is None
    # Basic credentials and the SPEKE v2 header were sent
    sent = server.headers[0]
    assert (
        sent["Authorization"]
        == "Basic " + base64.b64encode(b"%s:%s" % (TENANT.encode(), SECRET.encode())).decode()
    )
    assert sent["X-Speke-Version"] == "2.0"
    # per-system data from the Key Service, as given
    assert key.for_system(WIDEVINE).pssh == server_pssh(WIDEVINE, wanted.key_id)
    assert key.for_system(PLAYREADY).pssh == server_pssh(PLAYREADY, wanted.key_id)
    assert "<cenc:pssh>" in key.for_system(WIDEVINE).content_protection_data
    fairplay = key.for_system(FAIRPLAY)
    assert fairplay.hls_media.startswith("#EXT-X-KEY:") and fairplay_uri(wanted.key_id) in (
        fairplay.hls_media
    )
    assert fairplay.hls_master.startswith("#EXT-X-SESSION-KEY:")
    assert "<hidden>" in repr(key) and key.key.hex() not in repr(key)


def test_multi_key_one_key_per_quality_group(server, certificate):
    wanted = requests("AUDIO", "SD", "HD")
    keys = client(server, certificate).request_keys(CONTENT_ID, wanted, "cenc")
    assert [k.quality_group for k in keys] == ["AUDIO", "SD", "HD"]
    assert [k.key_id for k in keys] == [r.key_id for r in wanted]
    assert len({k.key for k in keys}) == 3
    for key in keys:
        assert key.key == CpixServer.key_for(CONTENT_ID, key.key_id)
        assert key.for_system(FAIRPLAY).hls_media is None  # not asked for with cenc


def test_speke_v1_answer_is_accepted(server, certificate):
    server.mode = "speke_v1"
    wanted = requests("SD", "HD")
    keys = client(server, certificate).request_keys(CONTENT_ID, wanted, "cbcs")
    for key, request in zip(keys, wanted, strict=True):
        assert key.key == CpixServer.key_for(CONTENT_ID, request.key_id)
        assert key.for_system(WIDEVINE).pssh == server_pssh(WIDEVINE, request.key_id)
        fairplay = key.for_system(FAIRPLAY)
        assert fairplay.uri_ext_x_key == fairplay_uri(request.key_id)
        assert fairplay.key_format == "com.apple.streamingkeydelivery"
        assert fairplay.key_format_versions == "1"
        # SPEKE v1's URIExtXKey becomes the FairPlay key tag
        (line,) = signalling.hls_key_tags(key, "cbcs", system_ids=[systems.FAIRPLAY])
        assert f'URI="{fairplay_uri(request.key_id)}"' in line


def test_500_twice_then_ok_is_retried(server, certificate, caplog):
    server.mode, server.failures = "fail", 2
    with caplog.at_level(logging.WARNING, logger="drm.cpix"):
        (key,) = client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert len(server.requests) == 3
    assert key.key == CpixServer.key_for(CONTENT_ID, key.key_id)
    assert sum("HTTP 500" in r.getMessage() for r in caplog.records) == 2
    assert_no_secret(caplog.text)


# -------------------------------------------------------------------------- bad answers


def test_401_names_the_tenant_not_the_secret(server, certificate):
    server.mode = "unauthorized"
    with pytest.raises(KeyServiceError) as raised:
        client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")
    message = str(raised.value)
    assert "refused the credentials of tenant tenant-1" in message and "401" in message
    assert raised.value.status == 401 and not raised.value.transient
    assert len(server.requests) == 1  # not retried
    assert_no_secret(message)


def test_wrong_management_key_is_refused(server, certificate):
    with pytest.raises(KeyServiceError, match="refused the credentials") as raised:
        client(server, certificate, secret="wrong-secret-2").request_keys(
            CONTENT_ID, requests(None), "cbcs"
        )
    assert "wrong-secret-2" not in str(raised.value)


def test_timeout_is_retried_then_reported_as_transient(server, certificate):
    server.mode, server.delay = "slow", 1.0
    with pytest.raises(KeyServiceError) as raised:
        client(server, certificate, timeout=0.2, attempts=2).request_keys(
            CONTENT_ID, requests(None), "cbcs"
        )
    assert "did not answer within 0.2 s" in str(raised.value)
    assert "2 attempt" in str(raised.value)
    assert raised.value.transient
    assert len(server.requests) == 2


def test_500_beyond_the_retry_bound_is_transient(server, certificate):
    server.mode, server.failures = "fail", 10
    with pytest.raises(KeyServiceError, match="HTTP 500, 3 attempt") as raised:
        client(server, certificate, attempts=3).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert raised.value.transient and raised.value.status == 500
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("malformed", "malformed CPIX document"),
        ("missing_key", "did not return the content key for key id"),
        ("short_key", "content key of 8 bytes"),
        ("doctype", "DOCTYPE"),
    ],
)
def test_unusable_answers_fail_clearly(server, certificate, mode, expected):
    server.mode = mode
    wanted = requests("SD", "HD")
    with pytest.raises(KeyServiceError, match=expected) as raised:
        client(server, certificate).request_keys(CONTENT_ID, wanted, "cbcs")
    message = str(raised.value)
    assert server.url.split("//")[1].split("/")[0] in message  # names the Key Service
    assert not raised.value.transient
    assert_no_secret(message)
    for kid in wanted:  # no key material in the text
        assert CpixServer.key_for(CONTENT_ID, kid.key_id).hex() not in message
    if mode == "missing_key":
        assert str(wanted[-1].key_id) in message


def test_redirects_are_not_followed(server, certificate):
    server.mode = "redirect"
    with pytest.raises(KeyServiceError, match="answered HTTP 307") as raised:
        client(server, certificate).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert len(server.requests) == 1  # the credentials went nowhere else
    assert raised.value.status == 307


def test_tls_is_verified(server):
    with pytest.raises(KeyServiceError, match="TLS certificate does not verify"):
        CpixClient(server.url, TENANT, SECRET, backoff=0.01).request_keys(
            CONTENT_ID, requests(None), "cbcs"
        )
    assert server.requests == []  # nothing was sent to an unverified server


def test_ca_file_from_the_environment(server, certificate, monkeypatch):
    monkeypatch.setenv(cpix.CA_FILE_ENV, str(certificate[0]))
    (key,) = CpixClient(server.url, TENANT, SECRET).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert key.key == CpixServer.key_for(CONTENT_ID, key.key_id)


def test_unreachable_key_service_is_transient():
    with pytest.raises(KeyServiceError, match="cannot be reached") as raised:
        CpixClient(
            "https://127.0.0.1:9/cpix", TENANT, SECRET, attempts=2, backoff=0.01
        ).request_keys(CONTENT_ID, requests(None), "cbcs")
    assert raised.value.transient


def test_client_repr_and_urls_hide_secrets():
    url = "https://user:pw@keys.example.com:8443/cpix/v2?token=abc#x"
    cpix_client = CpixClient(url, TENANT, SECRET)
    assert SECRET not in repr(cpix_client)
    assert cpix.safe_url(url) == "https://keys.example.com:8443/cpix/v2"
    assert "pw" not in cpix_client.source and "abc" not in cpix_client.source


def test_parse_rejects_encrypted_keys_and_bad_signalling():
    kid = uuid.uuid4()
    encrypted = (
        f'<cpix:CPIX xmlns:cpix="{cpix.CPIX_NS}" xmlns:pskc="{cpix.PSKC_NS}">'
        f'<cpix:ContentKeyList><cpix:ContentKey kid="{kid}"><cpix:Data><pskc:Secret>'
        "<pskc:EncryptedValue/></pskc:Secret></cpix:Data></cpix:ContentKey>"
        "</cpix:ContentKeyList></cpix:CPIX>"
    ).encode()
    with pytest.raises(KeyServiceError, match="encrypted content key"):
        cpix.parse_response(encrypted, [KeyRequest(kid)])
    key = base64.b64encode(bytes(16)).decode()
    bad_fragment = base64.b64encode(b"<cenc:pssh>unclosed").decode()
    document = (
        f'<cpix:CPIX xmlns:cpix="{cpix.CPIX_NS}" xmlns:pskc="{cpix.PSKC_NS}">'
        f'<cpix:ContentKeyList><cpix:ContentKey kid="{kid}"><cpix:Data><pskc:Secret>'
        f"<pskc:PlainValue>{key}</pskc:PlainValue></pskc:Secret></cpix:Data></cpix:ContentKey>"
        f'</cpix:ContentKeyList><cpix:DRMSystemList><cpix:DRMSystem kid="{kid}" '
        f'systemId="{WIDEVINE}"><cpix:ContentProtectionData>{bad_fragment}'
        "</cpix:ContentProtectionData></cpix:DRMSystem></cpix:DRMSystemList></cpix:CPIX>"
    ).encode()
    with pytest.raises(KeyServiceError, match="not a well-formed XML fragment"):
        cpix.parse_response(document, [KeyRequest(kid)])

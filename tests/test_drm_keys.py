"""Content keys and their sources: Base64Key, Encrypted (service certificate), Managed (CPIX)."""

from __future__ import annotations

import base64
import logging
import pickle
import uuid

import pytest
from cpix_server import CpixServer, self_signed_certificate

from drm.credentials import ServiceKey, encrypt_for_certificate
from drm.keys import ContentKey, DrmKeyError, KeySet
from engine.job import ContentProcessing, DrmManaged
from engine.keys import keys_from_job

KEY_ID = "1c6f2b9e-0d3a-4c52-9a3e-5f0e8e6d7a21"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture(scope="module")
def service_key(tmp_path_factory) -> ServiceKey:
    return ServiceKey.load_or_create(tmp_path_factory.mktemp("service-key"))


def processing(**fields) -> ContentProcessing:
    fields.setdefault("output_format", ["Dash"])
    return ContentProcessing(**fields)


# ------------------------------------------------------------------------- key objects


def test_content_key_hides_its_key_everywhere():
    key = ContentKey(uuid.UUID(KEY_ID), KEY, iv=bytes(8), quality_group="HD")
    for text in (repr(key), str(key), f"{key}", repr(KeySet.single(key)), str([key])):
        assert KEY.hex() not in text and KEY.hex().upper() not in text
        assert base64.b64encode(KEY).decode() not in text
        assert "<hidden>" in text and KEY_ID in text
    assert pickle.loads(pickle.dumps(key)) == key  # travels to a worker process intact


def test_content_key_validates_sizes_without_echoing_them():
    with pytest.raises(DrmKeyError, match="must be 16 bytes") as raised:
        ContentKey(uuid.UUID(KEY_ID), KEY[:8])
    assert KEY[:8].hex() not in str(raised.value)
    with pytest.raises(DrmKeyError, match="IV must be 8 or 16 bytes"):
        ContentKey(uuid.UUID(KEY_ID), KEY, iv=bytes(4))


def test_key_set_single_and_per_group():
    one = ContentKey(uuid.uuid4(), KEY)
    single = KeySet.single(one)
    assert single.key_for("UHD1") is one and single.key_ids == [one.key_id]
    sd = ContentKey(uuid.uuid4(), bytes(16), quality_group="SD")
    audio = ContentKey(uuid.uuid4(), bytes(range(16)), quality_group="AUDIO")
    groups = KeySet.per_group([sd, audio])
    assert groups.key_ids == [audio.key_id, sd.key_id]  # AUDIO, SD, HD, UHD1, UHD2 order
    assert groups.key_for("sd") is sd and groups.key_for("AUDIO") is audio
    with pytest.raises(DrmKeyError, match="no content key for quality group HD"):
        groups.key_for("HD")
    with pytest.raises(DrmKeyError):
        KeySet.per_group([sd, ContentKey(uuid.uuid4(), KEY, quality_group="SD")])


# ------------------------------------------------------------------------- job sources


def test_no_drm_gives_no_keys(service_key):
    assert keys_from_job(processing(), service_key, {"SD"}, "job-1") is None


def test_base64_key(service_key):
    job = processing(
        drm_protection="Base64Key", key_id=KEY_ID, content_key=base64.b64encode(KEY).decode()
    )
    keys = keys_from_job(job, service_key, {"SD", "AUDIO"}, "job-1")
    assert not keys.multi_key and keys.key_ids == [uuid.UUID(KEY_ID)]
    assert keys.key_for("AUDIO").key == KEY and keys.key_for("AUDIO").iv is None


def test_encrypted_key_round_trip_with_the_service_certificate(service_key):
    protected = encrypt_for_certificate(KEY, service_key.certificate_base64)
    job = processing(drm_protection="Encrypted", key_id=KEY_ID, content_key=protected)
    keys = keys_from_job(job, service_key, {"HD"}, "job-1")
    assert keys.key_for("HD").key == KEY
    assert keys.key_for("HD").key_id == uuid.UUID(KEY_ID)


def test_tampered_encrypted_key_names_the_field(service_key):
    ciphertext = bytearray(
        base64.b64decode(encrypt_for_certificate(KEY, service_key.certificate_base64))
    )
    ciphertext[10] ^= 0x55
    job = processing(
        drm_protection="Encrypted",
        key_id=KEY_ID,
        content_key=base64.b64encode(bytes(ciphertext)).decode(),
    )
    with pytest.raises(DrmKeyError) as raised:
        keys_from_job(job, service_key, {"HD"}, "job-1")
    assert str(raised.value).startswith("ContentProcessing.ContentKey: ")
    assert raised.value.source == "ContentProcessing.ContentKey"
    assert KEY.hex() not in str(raised.value)


def test_encrypted_key_of_the_wrong_length(service_key):
    job = processing(
        drm_protection="Encrypted",
        key_id=KEY_ID,
        content_key=encrypt_for_certificate(KEY[:10], service_key.certificate_base64),
    )
    with pytest.raises(DrmKeyError, match=r"ContentProcessing.ContentKey: must decrypt to 16"):
        keys_from_job(job, service_key, {"HD"}, "job-1")


def test_encrypted_key_needs_the_service_key():
    job = processing(drm_protection="Encrypted", key_id=KEY_ID, content_key="AAAA")
    with pytest.raises(DrmKeyError, match="no service key"):
        keys_from_job(job, None, {"HD"}, "job-1")


# ------------------------------------------------------------------------------ Managed


@pytest.fixture(scope="module")
def key_service(tmp_path_factory):
    certificate = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    with CpixServer("tenant-7", "mgmt-key-7", certificate=certificate) as server:
        server.ca_file = str(certificate[0])
        yield server


def managed_job(server: CpixServer, service_key: ServiceKey | None = None, **managed):
    secrets = {"management_key": "mgmt-key-7", "key_seed_id": "seed-1234"}
    if service_key is not None:  # KeysProtection: Encrypted
        secrets = {
            name: encrypt_for_certificate(value, service_key.certificate_base64)
            for name, value in secrets.items()
        }
        managed["keys_protection"] = "Encrypted"
    settings = DrmManaged(api_url=server.url, tenant_id="tenant-7", **secrets, **managed)
    return processing(output_format=["Hls"], drm_protection="Managed", drm_managed=settings)


def test_managed_single_key(key_service, service_key, caplog):
    key_service.mode = "ok"
    with caplog.at_level(logging.DEBUG):
        keys = keys_from_job(
            managed_job(key_service),
            service_key,
            {"SD", "HD"},
            "job-9",
            ca_file=key_service.ca_file,
        )
    assert not keys.multi_key and len(keys) == 1
    key = keys.key_for("HD")
    # the KeySeedId is the contentId; the job's scheme (Hls → cbcs) is asked for
    assert key.key == CpixServer.key_for("seed-1234", key.key_id)
    assert b'commonEncryptionScheme="cbcs"' in key_service.requests[-1]
    assert "mgmt-key-7" not in caplog.text and "seed-1234" not in caplog.text


def test_managed_multi_key_with_protected_secrets(key_service, service_key):
    key_service.mode = "ok"
    job = managed_job(key_service, service_key, multi_key=True)
    keys = keys_from_job(
        job, service_key, {"HD", "AUDIO", "SD"}, "job-9", ca_file=key_service.ca_file
    )
    assert keys.multi_key
    assert [k.quality_group for k in keys] == ["AUDIO", "SD", "HD"]
    for group in ("AUDIO", "SD", "HD"):
        key = keys.key_for(group)
        assert key.key == CpixServer.key_for("seed-1234", key.key_id)
    assert len(set(keys.key_ids)) == 3


def test_managed_without_key_seed_uses_the_content_id(key_service, service_key):
    key_service.mode = "ok"
    settings = DrmManaged(
        api_url=key_service.url, tenant_id="tenant-7", management_key="mgmt-key-7"
    )
    job = processing(output_format=["Dash"], drm_protection="Managed", drm_managed=settings)
    keys = keys_from_job(job, service_key, set(), "job-42", ca_file=key_service.ca_file)
    key = keys.key_for("SD")
    assert key.key == CpixServer.key_for("job-42", key.key_id)
    assert b'commonEncryptionScheme="cenc"' in key_service.requests[-1]


def test_managed_key_service_refusal_is_a_drm_key_error(key_service, service_key):
    key_service.mode = "unauthorized"
    try:
        with pytest.raises(DrmKeyError, match="refused the credentials of tenant tenant-7") as e:
            keys_from_job(
                managed_job(key_service),
                service_key,
                {"SD"},
                "job-9",
                ca_file=key_service.ca_file,
            )
        assert "mgmt-key-7" not in str(e.value)
    finally:
        key_service.mode = "ok"


def test_managed_protected_secret_that_does_not_decrypt(key_service, service_key):
    settings = DrmManaged(
        api_url=key_service.url,
        tenant_id="tenant-7",
        management_key=base64.b64encode(b"x" * 256).decode(),
        keys_protection="Encrypted",
    )
    job = processing(drm_protection="Managed", drm_managed=settings)
    with pytest.raises(DrmKeyError, match=r"^ContentProcessing.DrmManaged.ManagementKey: "):
        keys_from_job(job, service_key, {"SD"}, "job-9", ca_file=key_service.ca_file)


def test_unknown_quality_group_is_refused(key_service, service_key):
    with pytest.raises(DrmKeyError, match="unknown"):
        keys_from_job(managed_job(key_service), service_key, {"HDR"}, "job-9")


# ----------------------------------------------- DrmManaged extensions: systems, authentication


def _managed_json(server: CpixServer, **extra) -> dict:
    return {
        "ContentAcquisition": {"Provider": "Local", "UriPath": "file:///in"},
        "MediaMappings": {"FailOnNoVideoTracks": False},
        "ContentProcessing": {
            "OutputFormat": extra.pop("formats", ["Cmaf"]),
            "DrmProtection": "Managed",
            "DrmManaged": {"ApiUrl": server.url, **extra},
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": "file:///out"},
    }


def _errors(document: dict) -> dict[str, str]:
    from engine.validation import check_job

    found: dict[str, str] = {}
    for error in check_job(document).errors:
        found[error.field] = "; ".join(filter(None, [found.get(error.field), error.message]))
    return found


def test_drm_systems_and_authentication_validate(key_service):
    base = "ContentProcessing.DrmManaged"
    ok = _managed_json(
        key_service,
        DrmSystems=["widevine", "FairPlay"],
        Authentication={"Type": "Bearer", "Token": "t-1"},
    )
    assert _errors(ok) == {}
    bearer = {"Type": "Bearer", "Token": "t-1"}
    twice = _managed_json(key_service, DrmSystems=["Widevine", "Widevine"], Authentication=bearer)
    assert _errors(twice) == {f"{base}.DrmSystems": "lists a system twice"}
    errors = _errors(_managed_json(key_service, formats=["Dash"], DrmSystems=["FairPlay"]))
    assert "FairPlay needs EncryptionScheme cbcs" in errors[f"{base}.DrmSystems"]
    errors = _errors(
        _managed_json(key_service, formats=["Hls"], DrmSystems=["ClearKey"], TenantId="t")
    )
    assert "Hls output needs one of Widevine, PlayReady, FairPlay" in errors[f"{base}.DrmSystems"]
    assert f"{base}.DrmSystems[0]" in _errors(_managed_json(key_service, DrmSystems=["Nagra"]))
    # Basic (the default) needs TenantId and ManagementKey; the others do not
    assert set(_errors(_managed_json(key_service))) == {f"{base}.TenantId", f"{base}.ManagementKey"}
    auth = f"{base}.Authentication"
    assert _errors(_managed_json(key_service, Authentication={"Type": "Bearer"})) == {
        f"{auth}.Token": "required when Type is Bearer"
    }
    errors = _errors(
        _managed_json(key_service, Authentication={"Type": "Header", "Name": "Host", "Value": "v"})
    )
    assert errors == {f"{auth}.Name": "Host is set by vipe itself"}
    errors = _errors(
        _managed_json(
            key_service,
            Authentication={"Type": "AwsSigV4", "Region": "us-east-1", "AccessKeyId": "AK"},
        )
    )
    assert errors == {f"{auth}.SecretAccessKey": "AccessKeyId and SecretAccessKey go together"}
    errors = _errors(
        _managed_json(key_service, Authentication={"Type": "Bearer", "Token": "t", "Region": "x"})
    )
    assert errors == {f"{auth}.Region": "not used when Type is Bearer"}
    errors = _errors(
        _managed_json(
            key_service,
            KeysProtection="Encrypted",
            Authentication={"Type": "Bearer", "Token": "not base64!"},
        )
    )
    assert errors == {f"{auth}.Token": "an Encrypted secret must be base64"}


def test_authentication_secrets_are_masked_in_the_model(key_service):
    from engine.validation import validate_job

    document = _managed_json(
        key_service,
        Authentication={
            "Type": "AwsSigV4",
            "Region": "us-east-1",
            "AccessKeyId": "AKIDEXAMPLE",
            "SecretAccessKey": "sigv4-secret-in-job",
            "SessionToken": "session-in-job",
        },
    )
    job = validate_job(document).job
    managed = job.content_processing.drm_managed
    dumped = managed.model_dump_json(by_alias=True) + repr(managed) + str(managed)
    assert "sigv4-secret-in-job" not in dumped and "session-in-job" not in dumped
    assert {"sigv4-secret-in-job", "session-in-job"} <= set(job.secrets)


@pytest.mark.parametrize(
    ("systems_chosen", "formats", "expected"),
    [
        (None, ["Cmaf"], {"Widevine", "PlayReady", "FairPlay", "ClearKey"}),
        (None, ["Dash"], {"Widevine", "PlayReady", "ClearKey"}),
        (["PlayReady"], ["Dash"], {"PlayReady"}),
        (["FairPlay", "ClearKey"], ["Cmaf"], {"FairPlay", "ClearKey"}),
    ],
)
def test_managed_keys_carry_the_chosen_systems(
    key_service, service_key, systems_chosen, formats, expected
):
    """The keys carry the job's systems (default: all the formats can signal), the Key Service
    is asked for those it serves, and the init segment's pssh boxes follow."""
    from drm import pssh, systems

    key_service.mode = "ok"
    settings = DrmManaged(
        api_url=key_service.url,
        tenant_id="tenant-7",
        management_key="mgmt-key-7",
        multi_key=True,
        drm_systems=systems_chosen,
    )
    job = processing(output_format=formats, drm_protection="Managed", drm_managed=settings)
    keys = keys_from_job(job, service_key, {"AUDIO", "SD"}, "job-5", ca_file=key_service.ca_file)
    wanted = {systems.system_id(name) for name in expected}
    for key in keys:
        assert set(key.systems) == wanted
        boxes = pssh.pssh_boxes(key, str(job.scheme))
        assert {uuid.UUID(bytes=box[12:28]) for box in boxes} == wanted - {systems.FAIRPLAY}
    asked = {e.get("systemId") for e in _drm_systems(key_service.requests[-1])}
    assert asked == {str(s) for s in systems.key_service_systems(wanted, str(job.scheme))}


def _drm_systems(document: bytes):
    import xml.etree.ElementTree as ET

    return ET.fromstring(document).iter("{urn:dashif:org:cpix}DRMSystem")


@pytest.mark.parametrize("kind", ["Bearer", "Header", "AwsSigV4"])
def test_protected_authentication_secrets_are_decrypted_for_the_request(
    tmp_path, service_key, kind
):
    """KeysProtection Encrypted: the Token / Value / SecretAccessKey and SessionToken are
    decrypted with the service key and the strict server accepts the request."""
    from cpix_server import BearerCheck, HeaderCheck, SigV4Check

    from engine.job import DrmAuthentication

    def protect(value: str) -> str:
        return encrypt_for_certificate(value.encode(), service_key.certificate_base64)

    checks = {
        "Bearer": BearerCheck("tok-3"),
        "Header": HeaderCheck("X-Api-Key", "api-3"),
        "AwsSigV4": SigV4Check("AKID3", "secret-3", session_token="token-3"),
    }
    fields = {
        "Bearer": {"token": protect("tok-3")},
        "Header": {"name": "X-Api-Key", "value": protect("api-3")},
        "AwsSigV4": {
            "region": "us-east-1",
            "access_key_id": "AKID3",
            "secret_access_key": protect("secret-3"),
            "session_token": protect("token-3"),
        },
    }
    certificate = self_signed_certificate(tmp_path)
    with CpixServer(certificate=certificate, auth=checks[kind]) as server:
        settings = DrmManaged(
            api_url=server.url,
            keys_protection="Encrypted",
            authentication=DrmAuthentication(type=kind, **fields[kind]),
        )
        job = processing(drm_protection="Managed", drm_managed=settings)
        keys = keys_from_job(job, service_key, {"SD"}, "job-3", ca_file=str(certificate[0]))
        key = keys.key_for("SD")
        assert key.key == CpixServer.key_for("job-3", key.key_id)
        assert server.violations == [[]]


def test_a_protected_token_that_does_not_decrypt_names_the_field(key_service, service_key):
    from engine.job import DrmAuthentication

    settings = DrmManaged(
        api_url=key_service.url,
        keys_protection="Encrypted",
        authentication=DrmAuthentication(type="Bearer", token=base64.b64encode(b"x" * 256)),
    )
    job = processing(drm_protection="Managed", drm_managed=settings)
    with pytest.raises(DrmKeyError) as raised:
        keys_from_job(job, service_key, {"SD"}, "job-9", ca_file=key_service.ca_file)
    assert raised.value.source == "ContentProcessing.DrmManaged.Authentication.Token"

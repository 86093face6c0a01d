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

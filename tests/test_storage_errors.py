"""Storage failures get the right kind and FinalError code, and never show a secret.

Wrong credentials, an encrypted secret that does not decrypt, a missing bucket/container/folder,
an unreachable host, untrusted TLS certificates and path-traversal names, against real servers;
plus URI parsing, AWS roles and the default credential chain, cancellation mid-transfer, and the
registry's message for a missing SDK.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from servers import (
    LOCALHOST,
    azure_target,
    fast_storage_settings,
    free_port,
    ftp_target,
    local_target,
    s3_target,
    start_http,
)

import storage
from drm.credentials import ServiceKey, encrypt_for_certificate
from engine.errors import AcquisitionError, Cancelled, JobValidationError, PublishError
from engine.job import StorageSpec
from engine.locations import location_from_spec, storage_error_to_engine
from storage import StorageError, StorageLocation, open_storage, provider_class
from storage.azure import AzureBlobStorage
from storage.ftps import FtpsStorage
from storage.http import HttpStorage
from storage.s3 import S3CompatibleStorage, S3Storage

WRONG_SECRET = "Wrong-Secret-7f3a9c"  # must never show up in a message


@pytest.fixture(autouse=True)
def _fast(monkeypatch, tls_files):
    fast_storage_settings(monkeypatch)
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))
    for name in ("VIPE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def s3_bucket(moto_server) -> str:
    return moto_server.create_bucket()


@pytest.fixture(scope="module")
def azure_container(azurite_server) -> str:
    return azurite_server.create_container()


@pytest.fixture(scope="module")
def service_key(tmp_path_factory) -> ServiceKey:
    return ServiceKey.load_or_create(tmp_path_factory.mktemp("service-key"))


def _fails(action, kind: str, *secrets: str) -> StorageError:
    with pytest.raises(StorageError) as caught:
        action()
    error = caught.value
    assert error.kind == kind, str(error)
    for secret in secrets:
        assert secret not in str(error)
        assert secret not in repr(error)
    return error


def _source(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "seg_1.m4s").write_bytes(b"x" * 1000)
    (folder / "manifest.mpd").write_bytes(b"<MPD/>")
    return folder


# ---------------------------------------------------------------------------- wrong credentials


def test_s3_wrong_secret_is_denied(moto_server, s3_bucket, tmp_path):
    target = s3_target(moto_server, s3_bucket, secret=WRONG_SECRET)
    target_ok = s3_target(moto_server, s3_bucket, folder=target.location.uri.split("/")[-2])
    target_ok.put("movie.mp4", b"data")
    provider = open_storage(target.location)

    error = _fails(lambda: provider.download_folder(tmp_path / "in"), "denied", WRONG_SECRET)
    assert "S3Compatible" in str(error) and s3_bucket in str(error)
    acquisition = storage_error_to_engine(error, publishing=False)
    assert isinstance(acquisition, AcquisitionError) and acquisition.code == 2002
    assert WRONG_SECRET not in acquisition.message

    error = _fails(lambda: provider.upload_folder(_source(tmp_path)), "denied", WRONG_SECRET)
    publishing = storage_error_to_engine(error, publishing=True)
    assert isinstance(publishing, PublishError) and publishing.code == 4302


def test_amazon_s3_unknown_access_key_is_denied(moto_server, s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("VIPE_S3_ENDPOINT_URL", moto_server.endpoint)
    target = s3_target(moto_server, s3_bucket, provider="AmazonS3", secret=WRONG_SECRET)
    location = StorageLocation("AmazonS3", target.location.uri, "AKIAUNKNOWN0000", WRONG_SECRET)
    error = _fails(lambda: open_storage(location).list_files(), "denied", WRONG_SECRET)
    assert "AmazonS3" in str(error)


def test_azure_wrong_key_is_denied(azurite_server, azure_container, tmp_path):
    wrong_key = base64.b64encode(os.urandom(64)).decode()
    target = azure_target(azurite_server, azure_container, key=wrong_key)
    provider = open_storage(target.location)
    error = _fails(lambda: provider.list_files(), "denied", wrong_key)
    assert "AzureBlob" in str(error) and azure_container in str(error)
    _fails(lambda: provider.upload_folder(_source(tmp_path)), "denied", wrong_key)

    not_base64 = "not base64 at all!"
    target = azure_target(azurite_server, azure_container, key=not_base64)
    _fails(lambda: open_storage(target.location).list_files(), "denied", not_base64)


@pytest.mark.parametrize("server", ["ftp_plain", "ftp_explicit", "ftp_implicit"])
def test_ftp_wrong_password_is_denied(server, request):
    ftp = request.getfixturevalue(server)
    target = ftp_target(ftp, password=WRONG_SECRET)
    error = _fails(lambda: open_storage(target.location).list_files(), "denied", WRONG_SECRET)
    assert "530" in str(error) and ftp.mode in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2002


def test_http_wrong_or_no_password_is_denied(http_server, tmp_path):
    (http_server.root / "denied.mp4").write_bytes(b"data")
    url = http_server.url("denied.mp4")
    wrong = StorageLocation("Http", url, http_server.user, WRONG_SECRET)
    error = _fails(lambda: open_storage(wrong).download_folder(tmp_path), "denied", WRONG_SECRET)
    assert "401" in str(error)
    _fails(lambda: open_storage(StorageLocation("Http", url)).list_files(), "denied")


# ---------------------------------------------------------------------------- encrypted secrets


def _spec(moto_server, bucket: str, secret: str, protection: str = "Encrypted") -> StorageSpec:
    return StorageSpec.model_validate(
        {
            "Provider": "S3Compatible",
            "UriPath": f"{moto_server.endpoint}/{bucket}/in/",
            "CredentialsName": moto_server.access_key,
            "CredentialsSecret": secret,
            "CredentialsProtection": protection,
        }
    )


def test_encrypted_secret_is_decrypted(moto_server, s3_bucket, service_key):
    ciphertext = encrypt_for_certificate(moto_server.secret_key, service_key.certificate_base64)
    location = location_from_spec(
        _spec(moto_server, s3_bucket, ciphertext), service_key, "ContentAcquisition"
    )
    assert location.credentials_secret == moto_server.secret_key
    assert moto_server.secret_key not in repr(location)
    assert open_storage(location).list_files() == []  # signed with the decrypted secret


def test_unencrypted_secret_is_passed_through(moto_server, s3_bucket):
    spec = _spec(moto_server, s3_bucket, moto_server.secret_key, protection="Unencrypted")
    location = location_from_spec(spec, None, "ContentPublishing")
    assert location.credentials_secret == moto_server.secret_key
    assert location.provider == "S3Compatible"


@pytest.mark.parametrize("how", ["garbage", "other-key", "not-base64", "no-service-key"])
def test_secret_that_does_not_decrypt_is_a_job_error(
    how, moto_server, s3_bucket, service_key, tmp_path
):
    key: ServiceKey | None = service_key
    if how == "garbage":
        secret = base64.b64encode(os.urandom(256)).decode()
    elif how == "other-key":
        other = ServiceKey.load_or_create(tmp_path / "other")
        secret = encrypt_for_certificate(moto_server.secret_key, other.certificate_base64)
    elif how == "not-base64":
        secret = "%%%not-base64%%%"
    else:
        secret = encrypt_for_certificate(moto_server.secret_key, service_key.certificate_base64)
        key = None
    spec = _spec(moto_server, s3_bucket, secret)

    with pytest.raises(JobValidationError) as caught:
        location_from_spec(spec, key, "ContentAcquisition")

    error = caught.value
    assert error.code == 1001
    assert [e.field for e in error.errors] == ["ContentAcquisition.CredentialsSecret"]
    assert secret not in str(error) and moto_server.secret_key not in str(error)


# ---------------------------------------------------------------------------- missing things


def test_s3_missing_bucket(moto_server, tmp_path):
    target = s3_target(moto_server, "no-such-bucket-4711")
    provider = open_storage(target.location)
    error = _fails(lambda: provider.download_folder(tmp_path / "in"), "missing")
    assert "no-such-bucket-4711" in str(error) and "NoSuchBucket" in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2003
    error = _fails(lambda: provider.upload_folder(_source(tmp_path)), "missing")
    assert storage_error_to_engine(error, publishing=True).code == 4301


def test_azure_missing_container(azurite_server, tmp_path):
    target = azure_target(azurite_server, "no-such-container")
    provider = open_storage(target.location)
    error = _fails(lambda: provider.download_folder(tmp_path / "in"), "missing")
    assert "no-such-container" in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2003
    _fails(lambda: provider.upload_folder(_source(tmp_path)), "missing")


def test_ftp_missing_folder(ftp_explicit, tmp_path):
    target = ftp_target(ftp_explicit)  # never created
    error = _fails(lambda: open_storage(target.location).download_folder(tmp_path), "missing")
    assert storage_error_to_engine(error, publishing=False).code == 2003


def test_ftp_upload_creates_the_folder(ftp_plain, tmp_path):
    target = ftp_target(ftp_plain)
    open_storage(target.location).upload_folder(_source(tmp_path))
    assert target.names() == {"seg_1.m4s", "manifest.mpd"}


def test_http_missing_file(http_server, tmp_path):
    location = StorageLocation(
        "Http", http_server.url("nothing-here.mp4"), http_server.user, http_server.password
    )
    error = _fails(lambda: open_storage(location).download_folder(tmp_path), "missing")
    assert "404" in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2003


# ---------------------------------------------------------------------------- unreachable


@pytest.mark.parametrize("provider", ["S3Compatible", "AzureBlob", "Ftps", "Http"])
def test_unreachable_host(provider, tmp_path):
    port = free_port()  # nothing listens there
    uri = {
        "S3Compatible": f"http://{LOCALHOST}:{port}/bucket/in/",
        "AzureBlob": f"http://{LOCALHOST}:{port}/devstoreaccount1/container/in/",
        "Ftps": f"ftp://{LOCALHOST}:{port}/in/",
        "Http": f"http://{LOCALHOST}:{port}/movie.mp4",
    }[provider]
    secret = base64.b64encode(b"secret-" * 8).decode()
    location = StorageLocation(provider, uri, "user", secret)
    error = _fails(lambda: open_storage(location).download_folder(tmp_path), "unreachable", secret)
    assert error.retryable and provider in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2001
    if provider != "Http":
        error = _fails(
            lambda: open_storage(location).upload_folder(_source(tmp_path)), "unreachable"
        )
        engine_error = storage_error_to_engine(error, publishing=True)
        assert engine_error.code == 4301 and engine_error.retryable


@pytest.mark.parametrize("server", ["ftp_explicit", "ftp_implicit"])
def test_ftps_certificate_is_verified(server, request, monkeypatch):
    monkeypatch.delenv("VIPE_FTPS_CA_FILE")
    target = ftp_target(request.getfixturevalue(server))
    error = _fails(lambda: open_storage(target.location).list_files(), "unreachable")
    assert not error.retryable and "VIPE_FTPS_CA_FILE" in str(error)


def test_https_certificate_is_verified(tls_files, tmp_path, monkeypatch):
    server = start_http(tmp_path / "www", tls=tls_files)
    try:
        (server.root / "movie.mp4").write_bytes(b"movie")
        location = StorageLocation("Http", server.url("movie.mp4"), server.user, server.password)
        error = _fails(lambda: open_storage(location).list_files(), "unreachable")
        assert not error.retryable and "certificate" in str(error)
        monkeypatch.setenv("VIPE_HTTP_CA_FILE", str(tls_files.ca_file))
        paths = open_storage(location).download_folder(tmp_path / "in")
        assert paths[0].read_bytes() == b"movie"
    finally:
        server.stop()


# ---------------------------------------------------------------------------- unsafe names


def _provider_for(case: str, request, tmp_path: Path):
    if case == "Local":
        location = local_target(tmp_path / "local").location
    elif case == "S3Compatible":
        moto = request.getfixturevalue("moto_server")
        location = s3_target(moto, request.getfixturevalue("s3_bucket")).location
    elif case == "AzureBlob":
        azurite = request.getfixturevalue("azurite_server")
        location = azure_target(azurite, request.getfixturevalue("azure_container")).location
    elif case == "Ftps":
        location = ftp_target(request.getfixturevalue("ftp_plain")).location
    else:
        server = request.getfixturevalue("http_server")
        location = StorageLocation("Http", server.url("x.mp4"))
    return open_storage(location)


@pytest.mark.parametrize("case", ["Local", "S3Compatible", "AzureBlob", "Ftps", "Http"])
def test_path_traversal_names_are_refused_on_download(case, request, tmp_path):
    provider = _provider_for(case, request, tmp_path)
    work = tmp_path / "work" / "in"
    work.mkdir(parents=True)
    for name in ("../../x", "..", "/etc/passwd", "a/b"):
        error = _fails(lambda n=name: provider.download_file(n, work / "x"), "invalid")
        assert storage_error_to_engine(error, publishing=False).code == 2003
    assert not (tmp_path / "x").exists() and not (tmp_path / "work" / "x").exists()


@pytest.mark.parametrize(
    "case",
    [
        "Local",
        "S3Compatible",
        "AzureBlob",
        "Ftps",
        "Http",
    ],
)
def test_path_traversal_names_are_refused_on_upload_and_delete(case, request, tmp_path):
    provider = _provider_for(case, request, tmp_path)
    source = tmp_path / "file.bin"
    source.write_bytes(b"x")
    for name in ("../../x", "/abs", "a/../../b", "a//b"):
        _fails(lambda n=name: provider.upload_file(source, n), "invalid")
        _fails(lambda n=name: provider.delete_file(n), "invalid")


def test_s3_object_named_dot_dot_is_refused(moto_server, s3_bucket, tmp_path):
    """A bucket can hold a key `<folder>/..`; acquiring it must not write outside the folder."""
    target = s3_target(moto_server, s3_bucket)
    target.put("movie.mp4", b"movie")
    target.put("..", b"evil")
    work = tmp_path / "work" / "in"
    error = _fails(lambda: open_storage(target.location).download_folder(work), "invalid")
    assert "'..'" in str(error)
    assert storage_error_to_engine(error, publishing=False).code == 2003
    assert not (tmp_path / "work" / "..").is_file()
    assert {p.name for p in tmp_path.rglob("*") if p.is_file()} <= {"movie.mp4"}


def test_http_url_naming_dot_dot_is_refused(http_server):
    location = StorageLocation("Http", f"http://{LOCALHOST}:{http_server.port}/a/%2E%2E")
    _fails(lambda: open_storage(location), "invalid")


@pytest.mark.parametrize(
    ("provider", "uri"),
    [
        ("S3Compatible", "http://127.0.0.1:9/bucket/a/../../b/"),
        ("AmazonS3", "https://bucket.s3.eu-west-1.amazonaws.com/../x/"),
        ("AzureBlob", "http://127.0.0.1:9/devstoreaccount1/container/../x/"),
        ("Ftps", "ftp://127.0.0.1:9/a/../../x/"),
        ("Ftps", "ftp://127.0.0.1:9/a%0D%0ADELE%20x/"),
    ],
)
def test_folders_with_dot_dot_or_line_breaks_are_refused(provider, uri):
    _fails(lambda: open_storage(StorageLocation(provider, uri)), "invalid")


# ---------------------------------------------------------------------------- AWS credentials


def test_assume_role(moto_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("VIPE_S3_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("VIPE_STS_ENDPOINT_URL", moto_server.endpoint)
    target = s3_target(moto_server, s3_bucket, provider="AmazonS3")
    target.put("movie.mp4", b"movie")
    location = StorageLocation(
        "AmazonS3",
        target.location.uri,
        moto_server.access_key,
        moto_server.secret_key,
        role_arn=moto_server.role_arn,
        role_session_seconds=900,
    )
    provider = open_storage(location)
    assert [f.name for f in provider.list_files()] == ["movie.mp4"]
    # the S3 client signs with the role's temporary credentials, not with the user's keys
    credentials = provider.client()._request_signer._credentials
    assert credentials.token and credentials.access_key != moto_server.access_key

    wrong = StorageLocation(
        "AmazonS3",
        target.location.uri,
        moto_server.access_key,
        WRONG_SECRET,
        role_arn=moto_server.role_arn,
    )
    _fails(lambda: open_storage(wrong).list_files(), "denied", WRONG_SECRET)


def test_default_credential_chain(moto_server, s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("VIPE_S3_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    target = s3_target(moto_server, s3_bucket, provider="AmazonS3")
    target.put("movie.mp4", b"movie")
    location = StorageLocation("AmazonS3", target.location.uri)  # no keys, no role

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    error = _fails(lambda: open_storage(location).list_files(), "denied")
    assert "credentials" in str(error)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
    assert [f.name for f in open_storage(location).list_files()] == ["movie.mp4"]


# ---------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("case", ["S3Compatible", "AzureBlob", "Ftps", "Http"])
def test_cancel_mid_transfer(case, request, tmp_path):
    data = os.urandom(3 << 20)
    if case == "S3Compatible":
        moto = request.getfixturevalue("moto_server")
        target = s3_target(moto, request.getfixturevalue("s3_bucket"))
    elif case == "AzureBlob":
        azurite = request.getfixturevalue("azurite_server")
        target = azure_target(azurite, request.getfixturevalue("azure_container"))
    elif case == "Ftps":
        target = ftp_target(request.getfixturevalue("ftp_explicit"))
    else:
        server = request.getfixturevalue("http_server")
        (server.root / "cancel.mp4").write_bytes(data)
        target = None
    if target is not None:
        target.put("movie.mp4", data)
        location = target.location
    else:
        location = StorageLocation("Http", server.url("cancel.mp4"), server.user, server.password)

    def cancel_midway(done: int, total: int) -> None:
        if 0 < done < total:
            raise Cancelled()

    work = tmp_path / "in"
    with pytest.raises(Cancelled):
        open_storage(location).download_folder(work, progress=cancel_midway)
    assert not [p for p in work.rglob("*") if p.is_file()]  # no partial file left

    if target is not None:
        source = tmp_path / "out"
        source.mkdir()
        (source / "seg_1.m4s").write_bytes(b"small")
        (source / "video.mp4").write_bytes(data)
        before = target.names()
        with pytest.raises(Cancelled):
            open_storage(location).upload_folder(source, progress=cancel_midway)
        assert target.names() == before  # rolled back


# ---------------------------------------------------------------------------- URIs, registry


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "region"),
    [
        ("https://media.s3.eu-west-1.amazonaws.com/in/movie/", "media", "in/movie/", "eu-west-1"),
        ("https://my.media.s3.us-east-2.amazonaws.com/a%20b/c", "my.media", "a b/c/", "us-east-2"),
        ("https://media.s3.amazonaws.com/x/", "media", "x/", "us-east-1"),
        ("https://media.s3-eu-west-1.amazonaws.com/x", "media", "x/", "eu-west-1"),
        ("https://media.s3.dualstack.ap-southeast-2.amazonaws.com/x/", "media", "x/", None),
        ("https://s3.eu-central-1.amazonaws.com/media/x/y/", "media", "x/y/", "eu-central-1"),
        ("https://media.s3.eu-west-1.amazonaws.com/", "media", "", "eu-west-1"),
        ("s3://media/in/", "media", "in/", None),
    ],
)
def test_amazon_s3_uris(uri, bucket, prefix, region, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    provider = S3Storage(StorageLocation("AmazonS3", uri))
    assert (provider.bucket, provider.prefix, provider.endpoint) == (bucket, prefix, None)
    assert provider.region == (region or ("ap-southeast-2" if "dualstack" in uri else None))


def test_s3_endpoint_override(monkeypatch):
    monkeypatch.setenv("VIPE_S3_ENDPOINT_URL", "http://127.0.0.1:5000")
    provider = S3Storage(StorageLocation("AmazonS3", "https://b1.s3.eu-west-1.amazonaws.com/x/"))
    assert (provider.endpoint, provider.bucket, provider.region) == (
        "http://127.0.0.1:5000",
        "b1",
        "eu-west-1",
    )


def test_s3_compatible_and_azure_and_ftp_uris():
    s3 = S3CompatibleStorage(StorageLocation("S3Compatible", "https://minio.lan:9000/b1/in/x/"))
    assert (s3.endpoint, s3.bucket, s3.prefix) == ("https://minio.lan:9000", "b1", "in/x/")
    azure = AzureBlobStorage(
        StorageLocation("AzureBlob", "https://acct1.blob.core.windows.net/media/in/")
    )
    assert (azure.account_url, azure.container, azure.prefix) == (
        "https://acct1.blob.core.windows.net",
        "media",
        "in/",
    )
    emulator = AzureBlobStorage(
        StorageLocation("AzureBlob", "http://127.0.0.1:10000/devstoreaccount1/media/a%20b/")
    )
    assert (emulator.account_url, emulator.account, emulator.container, emulator.prefix) == (
        "http://127.0.0.1:10000/devstoreaccount1",
        "devstoreaccount1",
        "media",
        "a b/",
    )
    assert (FtpsStorage(StorageLocation("Ftps", "ftp://h/a/b/")).folder, 21) == ("a/b", 21)
    implicit = FtpsStorage(StorageLocation("Ftps", "ftps://h/%2Fsrv/media/"))
    assert (implicit.folder, implicit.port) == ("/srv/media", 990)
    http = HttpStorage(StorageLocation("Http", "https://cdn.lan/v/movie%201.mp4?sig=abc#x"))
    assert http.name == "movie 1.mp4" and "sig=abc" not in http.describe()


@pytest.mark.parametrize("provider", ["AmazonS3", "S3Compatible", "AzureBlob", "Ftps", "Http"])
def test_credentials_in_the_uri_are_refused_without_echoing_them(provider):
    uri = {
        "AmazonS3": "https://user:Pa55word@b1.s3.eu-west-1.amazonaws.com/x/",
        "S3Compatible": "https://user:Pa55word@minio.lan/b1/x/",
        "AzureBlob": "https://user:Pa55word@acct1.blob.core.windows.net/c/x/",
        "Ftps": "ftp://user:Pa55word@ftp.lan/x/",
        "Http": "https://user:Pa55word@cdn.lan/movie.mp4",
    }[provider]
    _fails(lambda: open_storage(StorageLocation(provider, uri)), "invalid", "Pa55word")


def test_registry_resolves_every_provider():
    for name in storage.REGISTRY:
        assert provider_class(name).provider == name


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(
        storage.REGISTRY, "AzureBlob", ("storage.no_such_module", "AzureBlobStorage", "azure")
    )
    with pytest.raises(StorageError, match=r"AzureBlob needs `pip install vipe\[azure\]`"):
        provider_class("AzureBlob")


@pytest.mark.parametrize(
    ("kind", "acquisition", "publishing"),
    [
        ("unreachable", 2001, 4301),
        ("denied", 2002, 4302),
        ("missing", 2003, 4301),
        ("invalid", 2003, 4301),
    ],
)
def test_storage_error_codes(kind, acquisition, publishing):
    error = StorageError(f"S3Compatible http://h/b/in/: {kind}", kind, retryable=True)
    on_input = storage_error_to_engine(error, publishing=False)
    on_output = storage_error_to_engine(error, publishing=True)
    assert (type(on_input), on_input.code, on_input.phase) == (
        AcquisitionError,
        acquisition,
        "Acquisition",
    )
    assert (type(on_output), on_output.code, on_output.phase) == (
        PublishError,
        publishing,
        "Publishing",
    )
    assert on_input.retryable and on_output.retryable
    assert on_input.message == str(error)

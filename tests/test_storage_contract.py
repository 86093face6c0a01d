"""The storage contract, walked over the provider registry against real local servers.

Every provider that can be written (all but Http) round-trips a folder of files: a file above the
multipart/block threshold, names with spaces and non-ASCII letters, an empty file, a sub-folder,
manifests (uploaded last); lists many files (S3: more than one 1,000-object page); reports
progress in bytes; and deletes what it wrote.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import (
    Target,
    azure_target,
    fast_storage_settings,
    file_md5,
    ftp_target,
    local_target,
    s3_target,
)

from storage import REGISTRY, StorageError, content_type, is_manifest, open_storage
from storage.http import HttpStorage

MiB = 1 << 20

# name -> size; contents are random bytes (seeded per name).
FILES = {
    "video 1.mp4": 5 * MiB + 512 * 1024,  # above every provider's multipart/block threshold
    "naïve-ü subtitles.vtt": 2000,
    "empty.m4s": 0,
    "poster.jpg": 3000,
    "manifest.mpd": 1500,
    "manifest.m3u8": 800,
    "dash/seg 1.m4s": 200 * 1024,
    "dash/manifest.mpd": 600,
}
TOP_LEVEL = {name for name in FILES if "/" not in name}


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    fast_storage_settings(monkeypatch)


@pytest.fixture(autouse=True)
def _trust_test_ca(monkeypatch, tls_files):
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("publish")
    for name, size in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return folder


@pytest.fixture(scope="module")
def s3_bucket(moto_server) -> str:
    return moto_server.create_bucket()


@pytest.fixture(scope="module")
def azure_container(azurite_server) -> str:
    return azurite_server.create_container()


# Provider case -> factory of a fresh empty folder. Ftps has three cases, one per scheme.
CASES = ["Local", "AmazonS3", "S3Compatible", "AzureBlob", "Ftps-ftp", "Ftps-ftpes", "Ftps-ftps"]
WRITABLE = [p for p in REGISTRY if p != "Http"]


@pytest.fixture
def make_target(request, tmp_path, monkeypatch) -> Callable[[str], Target]:
    def make(case: str) -> Target:
        if case == "Local":
            return local_target(tmp_path)
        if case in ("AmazonS3", "S3Compatible"):
            moto = request.getfixturevalue("moto_server")
            bucket = request.getfixturevalue("s3_bucket")
            if case == "AmazonS3":  # the documented endpoint override points AWS URIs at moto
                monkeypatch.setenv("VIPE_S3_ENDPOINT_URL", moto.endpoint)
            return s3_target(moto, bucket, provider=case)
        if case == "AzureBlob":
            azurite = request.getfixturevalue("azurite_server")
            return azure_target(azurite, request.getfixturevalue("azure_container"))
        if case.startswith("Ftps-"):
            fixture = {"ftp": "ftp_plain", "ftpes": "ftp_explicit", "ftps": "ftp_implicit"}
            return ftp_target(request.getfixturevalue(fixture[case.split("-")[1]]))
        raise AssertionError(f"no contract case for {case}")

    return make


def test_every_writable_provider_has_a_contract_case():
    covered = {case.split("-")[0] for case in CASES}
    assert covered == set(WRITABLE), "add a contract case for each new storage provider"


@pytest.mark.parametrize("case", CASES)
def test_round_trip(case, make_target, source_folder, tmp_path):
    target = make_target(case)
    storage = open_storage(target.location)
    order: list[str] = []
    upload = storage.upload_file

    def recording_upload(source, name, progress=None, cancel=None):
        order.append(name)
        return upload(source, name, progress, cancel)

    storage.upload_file = recording_upload  # type: ignore[method-assign]
    reports: list[tuple[int, int]] = []
    total = sum(FILES.values())

    uploaded = storage.upload_folder(source_folder, progress=lambda d, t: reports.append((d, t)))

    assert set(uploaded) == set(FILES)
    # manifests last, so a reader never sees a manifest pointing at a missing file
    first_manifest = min(i for i, name in enumerate(order) if is_manifest(name))
    assert all(is_manifest(name) for name in order[first_manifest:])
    # progress in bytes: monotonic, ends at the total, and moves inside the big file
    assert reports[-1] == (total, total)
    done = [d for d, _ in reports]
    assert done == sorted(done)
    assert len(reports) > len(FILES) + 2
    assert target.names() == set(FILES)
    for name in FILES:
        assert target.get(name) == (source_folder / name).read_bytes(), name
    if target.content_type:
        for name in ("video 1.mp4", "manifest.mpd", "manifest.m3u8", "dash/seg 1.m4s"):
            assert target.content_type(name) == content_type(name)
        assert target.content_type("naïve-ü subtitles.vtt") == "text/vtt"
    if target.parts:
        assert target.parts("video 1.mp4") > 1, "the big file went up in one piece"

    # download the folder: top-level files only, same bytes
    reports.clear()
    out = tmp_path / "acquired"
    paths = open_storage(target.location).download_folder(
        out, progress=lambda d, t: reports.append((d, t))
    )
    assert {p.name for p in paths} == TOP_LEVEL
    assert {p.name for p in out.iterdir()} == TOP_LEVEL  # no temporary files left behind
    for path in paths:
        assert file_md5(path) == file_md5(source_folder / path.name), path.name
    top_total = sum(FILES[name] for name in TOP_LEVEL)
    assert reports[-1] == (top_total, top_total)
    assert len(reports) > len(TOP_LEVEL) + 2

    # the sub-folder is a folder of its own
    sub = open_storage(target.sub("dash"))
    assert {f.name: f.size for f in sub.list_files()} == {
        "seg 1.m4s": FILES["dash/seg 1.m4s"],
        "manifest.mpd": FILES["dash/manifest.mpd"],
    }

    # delete what was written; deleting a missing file is no error
    for name in FILES:
        storage.delete_file(name)
    storage.delete_file("never-there.m4s")
    assert target.names() == set()
    storage.close()


@pytest.mark.parametrize("case", CASES)
def test_empty_folder_is_missing_input(case, make_target, tmp_path):
    target = make_target(case)
    if case == "Local":
        Path(target.location.uri.removeprefix("file://").replace("%20", " ")).mkdir()
    with pytest.raises(StorageError) as caught:
        open_storage(target.location).download_folder(tmp_path / "in")
    assert caught.value.kind == "missing"


@pytest.mark.slow  # S3: 1,001 signed PUTs into moto (about 5 s on 2 cores); runs in CI
@pytest.mark.parametrize("case", ["S3Compatible", "AzureBlob", "Ftps-ftpes"])
def test_lists_many_files(case, make_target, request, monkeypatch):
    target = make_target(case)
    if case == "S3Compatible":
        count = 1001  # more than one page of ListObjectsV2 (1,000 keys)
    else:
        count = 25
        from storage.azure import AzureBlobStorage

        monkeypatch.setattr(AzureBlobStorage, "list_page_size", 10)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: target.put(f"seg_{i:04d}.m4s", b"x" * (i % 7)), range(count)))
    target.put("sub/ignored.m4s", b"not directly in the folder")

    files = open_storage(target.location).list_files()

    assert len(files) == count
    assert {f.name for f in files} == {f"seg_{i:04d}.m4s" for i in range(count)}
    assert all(f.size == int(f.name[4:8]) % 7 for f in files)


def test_http_lists_and_downloads_its_one_file(http_server, tmp_path):
    data = os.urandom(3 * MiB + 17)
    (http_server.root / "in put").mkdir(exist_ok=True)
    (http_server.root / "in put" / "movie é.mp4").write_bytes(data)
    location = _http_location(http_server, "in put/movie é.mp4")
    storage = open_storage(location)
    assert isinstance(storage, HttpStorage)
    assert [(f.name, f.size) for f in storage.list_files()] == [("movie é.mp4", len(data))]
    reports: list[tuple[int, int]] = []
    paths = storage.download_folder(tmp_path, progress=lambda d, t: reports.append((d, t)))
    assert [p.name for p in paths] == ["movie é.mp4"]
    assert paths[0].read_bytes() == data
    assert reports[-1] == (len(data), len(data)) and len(reports) > 2
    with pytest.raises(StorageError, match="input only") as caught:
        storage.upload_file(paths[0], "x.mp4")
    assert caught.value.kind == "invalid"
    with pytest.raises(StorageError, match="input only"):
        storage.delete_file("x.mp4")


def _http_location(server, relative: str, **changes):
    from storage import StorageLocation

    fields = {"credentials_name": server.user, "credentials_secret": server.password}
    fields.update(changes)
    return StorageLocation("Http", server.url(relative), **fields)

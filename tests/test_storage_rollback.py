"""A failed or cancelled publish rolls back only what it created: objects that were in the folder
before it started (another job's files) stay; one it overwrote keeps the new content."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import Target, fast_storage_settings, s3_target

from engine.cancel import CancelToken
from engine.errors import Cancelled
from storage import Storage, StorageError, open_storage
from storage.base import StorageLocation

pytest_plugins = ["servers"]

OURS = {"seg_1.m4s": b"ours 1", "dash/seg_2.m4s": b"ours 2", "shared.m4s": b"ours shared"}
THEIRS = {"theirs.m4s": b"theirs", "dash/theirs_2.m4s": b"theirs 2", "shared.m4s": b"theirs"}


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    fast_storage_settings(monkeypatch)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    folder = tmp_path / "package"
    for name, data in {**OURS, "manifest.mpd": b"<MPD/>"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _local_target(folder: Path) -> Target:
    folder.mkdir(parents=True, exist_ok=True)

    def put(name: str, data: bytes) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    return Target(
        StorageLocation("Local", f"file://{folder}/"),
        put,
        lambda name: (folder / name).read_bytes(),
        lambda: {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()},
    )


@pytest.fixture(params=["Local", "S3Compatible"])
def target(request, tmp_path) -> Target:
    if request.param == "Local":
        return _local_target(tmp_path / "out")
    moto = request.getfixturevalue("moto_server")
    return s3_target(moto, moto.create_bucket())


def _fail_at_the_manifest(storage: Storage) -> None:
    upload = storage.upload_file

    def failing(source, name, progress=None, cancel=None):
        if name == "manifest.mpd":
            raise StorageError("injected: the manifest cannot be written", "denied")
        return upload(source, name, progress, cancel)

    storage.upload_file = failing  # type: ignore[method-assign]


def test_a_failed_publish_spares_what_was_there_before(target, package):
    for name, data in THEIRS.items():
        target.put(name, data)
    storage = open_storage(target.location)
    _fail_at_the_manifest(storage)
    try:
        with pytest.raises(StorageError, match="injected"):
            storage.upload_folder(package)
    finally:
        storage.close()
    # Another job's files stay; ours are gone; the one we overwrote keeps our content (it cannot
    # be restored, and deleting it would destroy the other job's object).
    assert target.names() == set(THEIRS)
    assert target.get("theirs.m4s") == b"theirs"
    assert target.get("dash/theirs_2.m4s") == b"theirs 2"
    assert target.get("shared.m4s") == b"ours shared"
    assert storage.created == []


def test_a_cancelled_publish_spares_what_was_there_before(target, package):
    for name, data in THEIRS.items():
        target.put(name, data)
    storage = open_storage(target.location)
    token = CancelToken()
    upload = storage.upload_file

    def cancelling(source, name, progress=None, cancel=None):
        upload(source, name, progress, cancel)
        if name == "shared.m4s":  # the last segment: cancel before the manifest goes up
            token.cancel()

    storage.upload_file = cancelling  # type: ignore[method-assign]
    try:
        with pytest.raises(Cancelled):
            storage.upload_folder(package, cancel=token.check)
    finally:
        storage.close()
    assert target.names() == set(THEIRS)
    assert target.get("theirs.m4s") == b"theirs"


def test_a_successful_publish_records_only_what_it_created(target, package):
    target.put("shared.m4s", b"theirs")
    storage = open_storage(target.location)
    try:
        uploaded = storage.upload_folder(package)
    finally:
        storage.close()
    assert set(uploaded) == {*OURS, "manifest.mpd"}
    assert sorted(storage.created) == sorted({*OURS, "manifest.mpd"} - {"shared.m4s"})

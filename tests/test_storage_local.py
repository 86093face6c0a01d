"""Local storage specifics: a rolled-back publish leaves neither files nor the folders it made."""

from __future__ import annotations

import pytest

from storage.base import StorageError, StorageLocation
from storage.local import LocalStorage


class Stop(Exception):
    pass


def test_rolled_back_publish_leaves_no_empty_folders(tmp_path):
    package = tmp_path / "package"
    for name in ("dash/video_1.m4s", "dash/video_2.m4s", "hls/video_1.m4s", "manifest.mpd"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(b"x" * 10)
    root = tmp_path / "out"
    root.mkdir()
    (root / "kept").mkdir()  # something that was there before stays
    storage = LocalStorage(StorageLocation("Local", f"file://{root}/"))
    uploads = []

    def cancel() -> None:
        uploads.append(1)
        if len(uploads) == 3:  # after two uploads, in two folders
            raise Stop

    with pytest.raises(Stop):
        storage.upload_folder(package, cancel=cancel)
    assert sorted(p.name for p in root.iterdir()) == ["kept"]


def test_unsafe_names_are_refused_on_delete(tmp_path):
    storage = LocalStorage(StorageLocation("Local", f"file://{tmp_path}/"))
    victim = tmp_path.parent / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(Exception, match="refusing"):
        storage.delete_file("../victim.txt")
    assert victim.exists()


def test_upload_under_a_regular_file_is_a_storage_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    storage = LocalStorage(StorageLocation("Local", f"file://{blocker}/"))
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    with pytest.raises(StorageError) as caught:
        storage.upload_file(source, "image_1.jpg")
    assert "cannot write image_1.jpg" in str(caught.value)

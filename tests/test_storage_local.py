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


# -- shared files (issue 18): a job's input and package are hard links, never written through


def _confined(folder, root):
    return LocalStorage(StorageLocation("Local", f"file://{folder}/", local_roots=(root,)))


def test_shared_download_links_the_checked_file_and_never_writes_through(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "movie.mp4").write_bytes(b"source bytes")
    target = tmp_path / "work"
    target.mkdir()
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(b"victim bytes")
    # an earlier attempt left a link of another file under the name
    (target / "movie.mp4").hardlink_to(victim)
    storage = _confined(source, tmp_path)
    files = storage.download_folder(target, shared=True)
    assert files == [target / "movie.mp4"]
    assert (target / "movie.mp4").stat().st_ino == (source / "movie.mp4").stat().st_ino
    assert victim.read_bytes() == b"victim bytes"
    # not shared: a copy, as before
    other = tmp_path / "copy"
    storage.download_folder(other)
    assert (other / "movie.mp4").stat().st_ino != (source / "movie.mp4").stat().st_ino
    assert (other / "movie.mp4").read_bytes() == b"source bytes"


def test_shared_download_is_still_confined(tmp_path):
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"outside")
    (root / "in" / "movie.mp4").symlink_to(secret)
    target = tmp_path / "work"
    with pytest.raises(StorageError) as refused:
        _confined(root / "in", root).download_folder(target, shared=True)
    assert refused.value.kind == "denied"
    assert not (target / "movie.mp4").exists()


def test_shared_upload_links_and_never_writes_through_planted_links(tmp_path):
    package = tmp_path / "package"
    (package / "dash").mkdir(parents=True)
    (package / "dash" / "video_1.m4s").write_bytes(b"segment")
    out = tmp_path / "out"
    (out / "dash").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim bytes")
    (out / "dash" / ".video_1.m4s.partial").symlink_to(victim)  # planted at the partial name
    (out / "dash" / "video_1.m4s").symlink_to(victim)  # and at the name
    storage = _confined(out, tmp_path)
    assert storage.upload_folder(package, shared=True) == ["dash/video_1.m4s"]
    published = out / "dash" / "video_1.m4s"
    assert not published.is_symlink()
    assert published.stat().st_ino == (package / "dash" / "video_1.m4s").stat().st_ino
    assert victim.read_bytes() == b"victim bytes"
    assert sorted(p.name for p in (out / "dash").iterdir()) == ["video_1.m4s"]
    # not shared: a copy of its own
    storage.upload_folder(package)
    assert published.stat().st_ino != (package / "dash" / "video_1.m4s").stat().st_ino
    assert published.read_bytes() == b"segment"

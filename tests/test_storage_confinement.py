"""`Local` confined to the server's roots (StorageLocation.local_roots): a location outside them,
a `..` escape and a symlink that leads outside are refused (kind denied) when opened and at every
file; output writes never follow a symlink; no refusal names anything outside the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.base import StorageError, StorageLocation
from storage.local import LocalStorage


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A root the server allows, and beside it an outside folder with secrets in it."""
    base = tmp_path.resolve()
    root = base / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "movie.mp4").write_bytes(b"movie")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret-sibling.txt").write_text("top secret")
    (outside / "victim.txt").write_text("keep me")
    return {"root": root, "outside": outside, "base": base}


def _local(path: Path | str, roots: tuple[Path, ...] | None) -> LocalStorage:
    return LocalStorage(StorageLocation("Local", f"file://{path}/", local_roots=roots))


def _refused(action, outside: Path) -> StorageError:
    """The StorageError `action` raises: kind denied, naming nothing that lies outside."""
    with pytest.raises(StorageError) as caught:
        action()
    message = str(caught.value)
    assert caught.value.kind == "denied", message
    for leak in ("secret-sibling", "top secret", "victim", str(outside)):
        assert leak not in message, message
    return caught.value


def test_a_location_outside_the_roots_is_refused_at_open(tree):
    roots = (tree["root"],)
    _refused(lambda: _local(tree["outside"], roots), tree["outside"])
    _refused(lambda: _local(tree["base"], roots), tree["outside"])  # a parent of the root
    assert _local(tree["root"] / "in", roots).list_files()[0].name == "movie.mp4"


def test_no_root_configured_refuses_every_local_location(tree):
    _refused(lambda: _local(tree["root"] / "in", ()), tree["outside"])


def test_a_dot_dot_escape_is_refused(tree):
    escape = f"{tree['root']}/in/../../outside"
    _refused(lambda: _local(escape, (tree["root"],)), tree["outside"])
    # A `..` that stays inside is fine.
    inside = _local(f"{tree['root']}/in/../in", (tree["root"],))
    assert [f.name for f in inside.list_files()] == ["movie.mp4"]


def test_a_symlinked_location_leading_outside_is_refused(tree):
    (tree["root"] / "door").symlink_to(tree["outside"], target_is_directory=True)
    _refused(lambda: _local(tree["root"] / "door", (tree["root"],)), tree["outside"])


def test_a_symlink_planted_after_open_is_refused_at_the_next_file(tree, tmp_path):
    roots = (tree["root"],)
    folder = tree["root"] / "in"
    storage = _local(folder, roots)  # allowed now
    (folder / "movie.mp4").unlink()
    folder.rmdir()
    folder.symlink_to(tree["outside"], target_is_directory=True)  # planted later
    _refused(storage.list_files, tree["outside"])
    _refused(lambda: storage.download_file("victim.txt", tmp_path / "got"), tree["outside"])
    assert not (tmp_path / "got").exists()
    source = tmp_path / "seg.m4s"
    source.write_bytes(b"payload")
    _refused(lambda: storage.upload_file(source, "victim.txt"), tree["outside"])
    _refused(lambda: storage.delete_file("victim.txt"), tree["outside"])
    assert (tree["outside"] / "victim.txt").read_text() == "keep me"
    assert sorted(p.name for p in tree["outside"].iterdir()) == [
        "secret-sibling.txt",
        "victim.txt",
    ]


def test_a_file_symlink_leading_outside_is_refused_on_read(tree, tmp_path):
    folder = tree["root"] / "in"
    (folder / "secret.mp4").symlink_to(tree["outside"] / "secret-sibling.txt")
    (folder / "alias.mp4").symlink_to(folder / "movie.mp4")  # inside: allowed
    storage = _local(folder, (tree["root"],))
    listed = {f.name: f.size for f in storage.list_files()}
    # Listed (so that reading it is refused, not silently skipped), its size not looked at.
    assert listed == {"movie.mp4": 5, "alias.mp4": 5, "secret.mp4": 0}
    _refused(lambda: storage.download_file("secret.mp4", tmp_path / "got"), tree["outside"])
    assert not (tmp_path / "got").exists()
    storage.download_file("alias.mp4", tmp_path / "alias")
    assert (tmp_path / "alias").read_bytes() == b"movie"
    # The folder as a whole: the download is refused, nothing of the secret arrives.
    _refused(lambda: storage.download_folder(tmp_path / "work"), tree["outside"])
    assert b"top secret" not in b"".join(
        p.read_bytes() for p in (tmp_path / "work").glob("*") if p.is_file()
    )


def test_a_symlinked_sub_folder_is_not_written_through(tree, tmp_path):
    out = tree["root"] / "out"
    out.mkdir()
    (out / "dash").symlink_to(tree["outside"], target_is_directory=True)
    storage = _local(out, (tree["root"],))
    source = tmp_path / "seg.m4s"
    source.write_bytes(b"payload")
    _refused(lambda: storage.upload_file(source, "dash/seg.m4s"), tree["outside"])
    _refused(lambda: storage.upload_file(source, "dash/new/seg.m4s"), tree["outside"])
    with pytest.raises(StorageError) as caught:  # the message echoes the job's own name only
        storage.delete_file("dash/victim.txt")
    assert caught.value.kind == "denied" and str(tree["outside"]) not in str(caught.value)
    assert (tree["outside"] / "victim.txt").read_text() == "keep me"
    assert sorted(p.name for p in tree["outside"].iterdir()) == [
        "secret-sibling.txt",
        "victim.txt",
    ]


@pytest.mark.parametrize("confined", [True, False])
def test_planted_symlinks_at_the_partial_and_target_names_are_not_followed(
    tree, tmp_path, confined
):
    out = tree["root"] / "out"
    (out / "dash").mkdir(parents=True)
    victim = tree["outside"] / "victim.txt"
    (out / "dash" / ".seg.m4s.partial").symlink_to(victim)
    (out / "manifest.mpd").symlink_to(victim)
    storage = _local(out, (tree["root"],) if confined else None)
    source = tmp_path / "seg.m4s"
    source.write_bytes(b"new segment")
    manifest = tmp_path / "manifest.mpd"
    manifest.write_bytes(b"<MPD/>")

    storage.upload_file(source, "dash/seg.m4s")
    storage.upload_file(manifest, "manifest.mpd")

    assert victim.read_text() == "keep me"  # neither link was written through
    for written, data in (
        (out / "dash" / "seg.m4s", b"new segment"),
        (out / "manifest.mpd", b"<MPD/>"),
    ):
        assert not written.is_symlink() and written.read_bytes() == data
    assert not os.path.lexists(out / "dash" / ".seg.m4s.partial")


def test_a_missing_folder_names_no_sibling(tree):
    (tree["root"] / "acme-private-folder").mkdir()
    (tree["root"] / "acme-private-folder" / "contract.pdf").write_text("x")
    storage = _local(tree["root"] / "missing", (tree["root"],))
    with pytest.raises(StorageError) as caught:
        storage.list_files()
    assert caught.value.kind == "missing"
    assert "acme" not in str(caught.value) and "contract" not in str(caught.value)


def test_a_fifo_is_refused_without_hanging(tree, tmp_path):
    os.mkfifo(tree["root"] / "in" / "pipe.mp4")
    storage = _local(tree["root"] / "in", (tree["root"],))
    with pytest.raises(StorageError) as caught:
        storage.download_file("pipe.mp4", tmp_path / "got")
    assert "not a file" in str(caught.value)


def test_unconfined_local_still_reads_anywhere(tree, tmp_path):
    """No roots (`vipe run`, the operator's own trust): as before."""
    storage = _local(tree["outside"], None)
    assert {f.name for f in storage.list_files()} == {"secret-sibling.txt", "victim.txt"}
    storage.download_file("victim.txt", tmp_path / "got")
    assert (tmp_path / "got").read_text() == "keep me"

"""Tracks packaged in worker processes (`packagers.packager.write_tracks`, taken above
PARALLEL_MIN_BYTES of media): the same bytes as in one process, errors and cancellation."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from drm.keys import ContentKey
from drm.track import TrackEncryption
from packagers import PackageSpec, PackagingError, TrackInput, TrackProtection, package
from packagers import packager as packager_module

KEY = ContentKey(uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), bytes(range(16)))


def _tracks(inputs, scheme: str | None) -> list[TrackInput]:
    def protection(number: int) -> TrackEncryption | None:
        if scheme is None:
            return None
        iv = bytes([number]) * (16 if scheme == "cbcs" else 8)  # fixed: runs comparable
        return TrackEncryption(KEY, scheme, iv=iv)

    return [
        TrackInput(inputs.video_high, "video", "video-high", protection=protection(1)),
        TrackInput(inputs.video_low, "video", "video-low", protection=protection(2)),
        TrackInput(inputs.audio_en, "audio", "audio-en", language="en", protection=protection(3)),
    ]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def _in_processes_only(monkeypatch) -> None:
    """Take the worker processes for any size, and fail if this process writes a track: the
    spawned workers import the module afresh, without this patch."""

    def written_here(*args, **kwargs):
        raise AssertionError("a track was written in the calling process")

    monkeypatch.setattr(packager_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(packager_module, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(packager_module, "_write_track", written_here)


@pytest.mark.parametrize(
    ("formats", "scheme"),
    [(["Cmaf"], "cbcs"), (["Dash", "Hls"], "cenc"), (["Dash", "HlsTs"], None)],
)
def test_workers_write_the_bytes_one_process_writes(
    packager_inputs, tmp_path, monkeypatch, formats, scheme
):
    spec = PackageSpec(formats, segment_seconds=2)
    alone = package(_tracks(packager_inputs, scheme), [], spec, tmp_path / "alone")
    _in_processes_only(monkeypatch)
    shared = package(_tracks(packager_inputs, scheme), [], spec, tmp_path / "workers")
    assert shared == alone  # files, manifests, streams (bandwidths, key ids, IVs)
    one, workers = _files(tmp_path / "alone"), _files(tmp_path / "workers")
    assert len(one) > 10 and one.keys() == workers.keys()
    assert [name for name in one if one[name] != workers[name]] == []
    assert multiprocessing.active_children() == []  # the pool is gone


class _Refusing(TrackProtection):
    """Fails on the first sample, in whichever process writes the track."""

    def protect_sample(self, data, entry):
        raise PackagingError("this track refuses to be written")


def test_a_track_that_fails_in_a_worker_fails_the_packaging(packager_inputs, tmp_path,
                                                            monkeypatch):  # fmt: skip
    tracks = _tracks(packager_inputs, None)
    tracks[1] = TrackInput(packager_inputs.video_low, "video", "video-low", protection=_Refusing())
    _in_processes_only(monkeypatch)
    with pytest.raises(PackagingError, match="refuses to be written"):
        package(tracks, [], PackageSpec(["Dash"], segment_seconds=2), tmp_path / "out")
    assert multiprocessing.active_children() == []


class _Cancelled(Exception):
    pass


def test_cancel_stops_the_workers(packager_inputs, tmp_path, monkeypatch):
    calls = []

    def cancel() -> None:  # called while the workers run: on the first poll
        calls.append(1)
        raise _Cancelled

    _in_processes_only(monkeypatch)
    tracks = _tracks(packager_inputs, "cenc")
    with pytest.raises(_Cancelled):
        package(tracks, [], PackageSpec(["Dash"], segment_seconds=2), tmp_path / "out",
                cancel=cancel)  # fmt: skip
    assert len(calls) == 1 and multiprocessing.active_children() == []
    assert not (tmp_path / "out" / "manifest.mpd").exists()


class _Dying(TrackProtection):
    """Ends its worker process abruptly on the first sample (as the kernel's OOM killer
    would)."""

    def protect_sample(self, data, entry):
        os._exit(9)


def test_a_worker_that_dies_fails_the_packaging_with_a_clear_error(packager_inputs, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    tracks = _tracks(packager_inputs, None)
    tracks[0] = TrackInput(packager_inputs.video_high, "video", "video-high", protection=_Dying())
    _in_processes_only(monkeypatch)
    with pytest.raises(PackagingError, match="a packaging worker process died"):
        package(tracks, [], PackageSpec(["Dash"], segment_seconds=2), tmp_path / "out")
    assert multiprocessing.active_children() == []

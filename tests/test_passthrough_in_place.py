"""Packaging-only renditions read in place (engine/pipeline/passthrough.py): an MP4 rendition's
video track is packaged straight from the file (picked out by its track id), with what the
stream copy would have measured and written, so the package is the stream copy's byte for
byte; files the in-place reading does not cover keep the stream copy."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import cast

import pytest
from mediagen import make_media

from drm.keys import ContentKey
from drm.track import TrackEncryption
from engine.pipeline.passthrough import _copy_audio, _copy_video, _in_place_audio, _in_place_video
from packagers import PackageSpec, TrackInput, TrackProtection, mp4, package
from packagers.errors import PackagingError

KEY = ContentKey(uuid.UUID("6f0c9c53-3b0d-4f0e-9b6a-5f2b7a1c9d10"), bytes(range(16)), bytes(16))


@pytest.fixture(scope="module")
def rendition(tmp_path_factory) -> Path:
    """Video (B-frames: an edit list skips their delay) and AAC audio in one MP4."""
    return make_media(
        tmp_path_factory.mktemp("in-place") / "rendition.mp4",
        duration=4.0,
        width=192,
        height=108,
        video_options={"preset": "veryfast", "x264-params": "keyint=25:min-keyint=25:scenecut=0"},
    )


def test_sample_table_measures_what_the_copy_measures(rendition, tmp_path):
    copied = _copy_video(rendition, tmp_path / "copy.mp4")
    in_place = _in_place_video(rendition, tmp_path / "entry.mp4")
    assert in_place is not None
    track_id, *measured = in_place
    assert tuple(measured) == copied
    assert copied[1] == 100 and len(copied[0]) == 4  # 100 frames, a key frame every second
    assert mp4.read_track(rendition, track_id).handler == "vide"
    assert track_id == mp4.read_track(rendition, handler="vide").track_id


@pytest.mark.parametrize("protected", [False, True])
def test_package_is_the_stream_copys_byte_for_byte(rendition, tmp_path, protected):
    copy = tmp_path / "copy.mp4"
    _copy_video(rendition, copy)
    entry = tmp_path / "entry.mp4"
    in_place = _in_place_video(rendition, entry)
    assert in_place is not None

    # cbcs with the key's IV: no random IV, so two runs can be compared byte for byte
    def protection() -> TrackProtection | None:
        return cast("TrackProtection", TrackEncryption(KEY, "cbcs")) if protected else None

    spec = PackageSpec(["Cmaf"], segment_seconds=2)
    package([TrackInput(copy, "video", "video", protection=protection())], [], spec,
            tmp_path / "old")  # fmt: skip
    read = TrackInput(rendition, "video", "video", track_id=in_place[0], sample_entry_from=entry,
                      protection=protection())  # fmt: skip
    package([read], [], spec, tmp_path / "new")
    old = {p.name: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    new = {p.name: p.read_bytes() for p in (tmp_path / "new").rglob("*") if p.is_file()}
    assert len(old) > 3
    assert old.keys() == new.keys()
    assert [n for n in old if old[n] != new[n]] == []


def test_audio_in_place_is_the_stream_copy(rendition, tmp_path):
    """AAC audio (an edit list skips its priming) measured and packaged as its copy."""
    copy = tmp_path / "audio.mp4"
    counted = _copy_audio(rendition, 1, copy)
    in_place = _in_place_audio(rendition, 1, tmp_path / "entry.mp4")
    assert in_place is not None
    track_id, *measured = in_place
    assert tuple(measured) == counted
    assert mp4.read_track(rendition, track_id).edits[-1][1] > 0  # priming skipped by the edit
    spec = PackageSpec(["Dash", "Hls"], segment_seconds=2)
    old = TrackInput(copy, "audio", "audio", language="en", priming_samples=0)
    new = TrackInput(rendition, "audio", "audio", language="en", priming_samples=0,
                     track_id=track_id, sample_entry_from=tmp_path / "entry.mp4")  # fmt: skip
    package([old], [], spec, tmp_path / "old")
    package([new], [], spec, tmp_path / "new")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    after = {p.name: p.read_bytes() for p in (tmp_path / "new").rglob("*") if p.is_file()}
    assert len(before) > 3 and before.keys() == after.keys()
    assert [n for n in before if before[n] != after[n]] == []


def test_files_it_does_not_cover_keep_the_stream_copy(rendition, tmp_path):
    fragmented = tmp_path / "fragmented.mp4"
    _copy_video(rendition, fragmented)
    assert _in_place_video(fragmented, tmp_path / "a.mp4") is None
    quicktime = make_media(tmp_path / "movie.mov", duration=2.0, width=128, height=72, audio=[])
    assert _in_place_video(quicktime, tmp_path / "b.mp4") is None
    not_mp4 = tmp_path / "video.mkv"
    make_media(not_mp4, duration=2.0, width=128, height=72, audio=[])
    assert _in_place_video(not_mp4, tmp_path / "c.mp4") is None


def test_read_track_picks_one_track(rendition):
    audio = mp4.read_track(rendition, handler="soun")
    assert audio.handler == "soun"
    assert mp4.read_track(rendition, audio.track_id).samples.size.sum() == audio.samples.size.sum()
    with pytest.raises(PackagingError, match="exactly one track"):
        mp4.read_track(rendition)
    with pytest.raises(PackagingError, match="no track with id 99"):
        mp4.read_track(rendition, 99)


@pytest.mark.parametrize(
    "options",
    [
        {"video_options": {"preset": "veryfast"}},  # B-frames: timestamps out of decode order
        {"frame_durations": [1, 2, 1, 3]},  # variable frame rate
    ],
)
def test_frame_timing_from_the_sample_table(tmp_path, monkeypatch, options):
    """Media Mapping's whole-stream timing read from an MP4's table equals the packets'."""
    import engine.pipeline.media_mapping as media_mapping
    from engine.probe import probe

    path = make_media(tmp_path / "v.mp4", duration=4.0, width=128, height=72, audio=[], **options)
    video = probe(path).main_video
    assert video is not None
    from_table = media_mapping.frame_timing(path, video)
    assert from_table is not None and from_table.frames == 100
    monkeypatch.setattr(media_mapping, "_table_timing", lambda *_: None)
    assert media_mapping.frame_timing(path, video) == from_table
    # and the table is what was read: with packets unreadable it still answers
    monkeypatch.undo()
    monkeypatch.setattr(media_mapping.av, "open", lambda *_, **__: (_ for _ in ()).throw(OSError))
    assert media_mapping.frame_timing(path, video) == from_table

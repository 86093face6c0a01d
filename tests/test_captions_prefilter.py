"""CEA-608 detection decodes only videos that may carry A/53 captions (issue 18: every job's
Media Mapping decoded the first 10 s of the main video, seconds and hundreds of MB at 1080p,
to find none): H.264 without the A/53 identifier in any packet is answered from the packets."""

from __future__ import annotations

from pathlib import Path

import pytest
from caption_media import make_cea608_video
from mediagen import make_media

from packagers import captions


def test_video_without_captions_is_not_decoded(tmp_path: Path, monkeypatch) -> None:
    plain = make_media(tmp_path / "plain.mp4", duration=2.0, audio=[])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a video whose packets carry no A/53 data")

    monkeypatch.setattr(captions, "_pairs", no_decoding)
    assert captions._may_carry_a53(plain, 0, 10.0) is False
    assert captions.has_cea608(plain, 0) is False


def test_video_with_captions_is_still_found(tmp_path: Path) -> None:
    captioned = make_cea608_video(tmp_path / "cc.mp4", [(0.4, 0.8, "HI")], duration=1.0)
    assert captions._may_carry_a53(captioned, 0, 10.0) is True
    assert captions.has_cea608(captioned, 0) is True


def test_a_missing_track_falls_back_to_the_scan(tmp_path: Path) -> None:
    plain = make_media(tmp_path / "plain.mp4", duration=1.0, audio=[])
    assert captions._may_carry_a53(plain, 5, 10.0) is True  # the scan reports it
    with pytest.raises(captions.CaptionError):
        captions.cea608_pairs(plain, 5)

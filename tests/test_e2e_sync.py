"""End to end: audio/video sync when the source's tracks start and end at different times.

The sources (`e2e_helpers.make_offset_media`) carry 50 ms audio bursts at 1.2 s and 3.2 s on
the file's timeline; their video shows its frame number. In the output, whose timeline starts
at the first video frame, each burst must sound when the frame shown at its source time is
presented, and the audio must end with the video (padded or trimmed).
"""

from __future__ import annotations

import pytest
from e2e_helpers import (
    CLICKS,
    check_events,
    check_package,
    onsets,
    read_dash,
    read_hls,
    run_simple,
)

pytestmark = pytest.mark.e2e

CASES = {
    # video from 0.2 s; audio from 0 to 4.7 s: 0.2 s dropped at the start, trimmed at the end
    "audio-early-and-long": (0.2, 0.0, 4.7),
    # video from 0; audio from 0.3 s to 3.6 s: silence leads it, silence pads it to 4 s
    "audio-late-and-short": (0.0, 0.3, 3.6),
    # the same as the first, through EBU R128 loudness normalisation (a filter with delay)
    "normalized": (0.2, 0.0, 4.7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bursts_with_their_frames(e2e_media, tmp_path, case):
    video_start, audio_start, audio_end = CASES[case]
    source = e2e_media.offset(video_start, audio_start, audio_end)
    options = {"NormalizeAudio": True} if case == "normalized" else {}
    job_run = run_simple(tmp_path, source, formats=["Dash", "HlsTs"], **options)
    check = check_package(job_run, source_frames=100)
    check_events(job_run)
    for audio in check.audio.values():
        assert float(audio.duration) == pytest.approx(4.0, abs=0.03)
    expected = [click - video_start for click in CLICKS]
    _, dash_tracks = read_dash(job_run.output_dir / "dash" / "manifest.mpd")
    dash_audio = next(t for t in dash_tracks if t.kind == "audio")
    assert onsets(dash_audio.data()) == pytest.approx(expected, abs=0.012)
    # HLS TS: the same, on the TS timeline (10 s offset) against the first video frame's time
    _, hls_tracks = read_hls(job_run.output_dir / "hlsts" / "manifest.m3u8")
    ts_audio = next(t for t in hls_tracks if t.kind == "audio")
    ts_video = next(t for t in hls_tracks if t.kind == "video")
    origin = _first_video_time(ts_video.data())
    ts_onsets = [t - origin for t in onsets(ts_audio.data())]
    assert ts_onsets == pytest.approx(expected, abs=0.012)


def _first_video_time(data: bytes) -> float:
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return min(float(p.pts * stream.time_base) for p in container.demux(stream) if p.size)

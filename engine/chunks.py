"""Chunks on segment boundaries: how a node splits a job's video (pure planning).

A chunk is a range of output frames [first, end) that starts on a segment boundary (an IDR in
every rung, the arithmetic of `engine.transcode.boundary_frames`). `plan_chunks` makes them from
the video's duration, the segment length and the chunk length; `ChunkSettings` is how a node
chunks (`vipe run --parallel N --chunk-seconds S`). Encoding and stitching the chunks:
`engine.stitch`; running them: `engine.pipeline.chunked`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

DEFAULT_CHUNK_SECONDS = 60.0


@dataclass(frozen=True)
class ChunkSettings:
    """How a node chunks jobs: `workers` processes (1: chunks one after another in this
    process), chunks of `seconds` rounded to whole segments. `runner`: who encodes the chunks
    instead of this node's processes (the farm's, `engine.service.cluster.chunks`): called
    as `runner(tasks, cancel, progress)` with the `engine.stitch.ChunkTask`s, the job's
    cancel token and a callback taking the fraction of the video encoded; it returns the
    `engine.stitch.ChunkResult`s in the tasks' order, their files at the tasks' paths."""

    workers: int = 1
    seconds: float = DEFAULT_CHUNK_SECONDS
    runner: Any = None


@dataclass(frozen=True)
class Chunk:
    """Output frames [first, end) of the job; `end` None: to the end of the source."""

    index: int
    first: int
    end: int | None

    def start_seconds(self, frame_rate: Fraction) -> float:
        return float(self.first / frame_rate)


def segment_start(n: int, frame_rate: Fraction, segment_seconds: float) -> int:
    """The frame that starts segment `n` (the same arithmetic as `boundary_frames`)."""
    step = Fraction(segment_seconds).limit_denominator(1000)
    return math.floor(n * step * frame_rate + Fraction(1, 2))


def chunk_segments(segment_seconds: float, chunk_seconds: float) -> int:
    """Whole segments per chunk: `chunk_seconds` rounded to segments, at least one."""
    return max(1, round(chunk_seconds / segment_seconds))


def plan_chunks(
    duration: float, frame_rate: Fraction, segment_seconds: float, chunk_seconds: float
) -> tuple[Chunk, ...]:
    """The chunks of a video of `duration` seconds (pure). Every chunk but the last is
    `chunk_seconds` rounded to whole segments; the last also takes the remainder (shorter
    than a chunk). A video shorter than two chunks is one chunk (encoded as today)."""
    per = chunk_segments(segment_seconds, chunk_seconds)
    length = per * segment_seconds
    count = max(1, math.floor(duration / length + 1e-9))
    if count < 2:
        return (Chunk(0, 0, None),)
    starts = [segment_start(i * per, frame_rate, segment_seconds) for i in range(count)]
    ends: list[int | None] = [*starts[1:], None]
    return tuple(Chunk(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True)))

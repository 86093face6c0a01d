"""Encoding in chunks on one node: the video's chunks in N processes, stitched per rung.

`encode_chunked` is the encoding phase's alternative to the one-pass transcode when the node
chunks (`ChunkSettings`, `vipe run --parallel N`) and the job can be chunked (`why_unchunked`):
every chunk runs all rungs of its range (`engine.stitch.encode_chunk`), in this process when
N is 1 and in a pool of N processes otherwise; then each rung's chunks are stitched into the
rendition file the one-pass transcode would have written, and the audio renditions are
encoded as their own pass. A chunk that cannot be stitched seamlessly (`ChunkMismatch`) makes
the job fall back to the one-pass transcode, with a `ChunkingFallback` warning.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.chunks import Chunk, ChunkSettings, plan_chunks
from engine.errors import Cancelled
from engine.events import EventType
from engine.stitch import (
    ChunkMismatch,
    ChunkResult,
    ChunkTask,
    encode_audio,
    encode_chunk,
    stitch,
    video_start,
)
from engine.transcode import EncodedTrack, TranscodePlan

if TYPE_CHECKING:
    from engine.pipeline.scope import JobScope

# Share of the progress bar the chunks' video takes (the audio pass and the stitch the rest).
VIDEO_SHARE = 0.9
POLL_SECONDS = 0.1  # how often the pool's caller looks at the cancel token


def why_unchunked(plan: TranscodePlan, settings: ChunkSettings | None) -> str | None:
    """Why this transcode runs in one pass rather than in chunks (None: it may be chunked)."""
    if settings is None:
        return "the node does not chunk"
    if plan.video_file is None or not plan.video:
        return "no video to encode"
    if plan.video_track is not None and not plan.video_track.constant_frame_rate:
        return "variable frame rate source"
    if plan.quality is not None:
        return "QualityMetrics measure the whole rendition in one pass"
    if plan.hw_decode or any(o.encoder.hardware for o in plan.video):
        return "GPU encoders and decoders encode in one pass"
    return None


def plan_job_chunks(plan: TranscodePlan, settings: ChunkSettings) -> tuple[Chunk, ...]:
    """The chunks of this transcode (one: not chunked)."""
    return plan_chunks(plan.duration, plan.frame_rate, plan.segment_seconds, settings.seconds)


def encode_chunked(
    scope: JobScope, plan: TranscodePlan
) -> tuple[list[EncodedTrack], tuple[dict[str, Any], ...]] | None:
    """Encode `plan` in chunks and stitch them; None when the job is not chunked (then the
    caller transcodes in one pass). Returns the tracks (video, then audio) and the report's
    details of every chunk."""
    settings = scope.chunking
    if why_unchunked(plan, settings) is not None:
        return None
    assert settings is not None and plan.video_file is not None
    chunks = plan_job_chunks(plan, settings)
    if len(chunks) < 2:
        return None
    progress = _Progress(scope)
    folder = scope.workdir / "chunks"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = video_start(plan.video_file, plan.video_track)
        tasks = [
            ChunkTask(
                chunk=chunk,
                video_file=plan.video_file,
                video_track=plan.video_track,
                frame_rate=plan.frame_rate,
                video_start=start,
                outputs=tuple(
                    replace(o, path=folder / f"{o.rendition.name}.{chunk.index:04d}.mp4")
                    for o in plan.video
                ),
                segment_seconds=plan.segment_seconds,
                watermarks=plan.watermarks,
                job_id=scope.job_id,
            )
            for chunk in chunks
        ]
        try:
            results = _run_chunks(scope, tasks, settings.workers, progress)
            video = _stitch_all(plan, tasks, results)
        except ChunkMismatch as mismatch:
            scope.events.warning(
                "ChunkingFallback", f"{mismatch}; encoding the video in one pass instead"
            )
            return None
        frames = video[0].frames
        audio = encode_audio(
            plan,
            start,
            frames,
            progress=lambda f: progress.update(VIDEO_SHARE + (1 - VIDEO_SHARE) * f),
            cancel=scope.cancel.check,
        )
        progress.update(1.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    details = tuple(
        {
            "Chunk": r.chunk.index,
            "FirstFrame": r.chunk.first,
            "Frames": r.frames,
            "StartInSeconds": round(r.chunk.start_seconds(plan.frame_rate), 3),
            "Worker": r.worker,
            "Seconds": r.seconds,
        }
        for r in results
    )
    return video + audio, details


class _Progress:
    """One monotonic EncodingProgress stream from the chunks' frames."""

    def __init__(self, scope: JobScope):
        self.scope = scope
        self.reported = 0.0
        self.lock = threading.Lock()

    def update(self, fraction: float) -> None:
        with self.lock:
            if fraction <= self.reported:
                return
            self.reported = min(fraction, 1.0)
            self.scope.events.progress(EventType.ENCODING_PROGRESS, 100 * self.reported)


def _run_chunks(
    scope: JobScope, tasks: list[ChunkTask], workers: int, progress: _Progress
) -> list[ChunkResult]:
    """Every chunk, in this process (one worker), in a pool of processes, or by the node's
    own runner (the farm's, `ChunkSettings.runner`); in chunk order."""
    runner = scope.chunking.runner if scope.chunking is not None else None
    if runner is not None:
        return list(
            runner(tasks, scope.cancel, lambda fraction: progress.update(VIDEO_SHARE * fraction))
        )
    total = max(1, round(_estimated_frames(tasks)))
    done = 0

    def share(frames: float) -> float:
        return VIDEO_SHARE * min(frames / total, 1.0)

    if workers <= 1:
        results = []
        for task in tasks:
            size, before = _task_frames(task, total), done

            def chunk_progress(fraction: float, size: float = size, before: int = before) -> None:
                progress.update(share(before + fraction * size))

            result = encode_chunk(task, cancel=scope.cancel.check, progress=chunk_progress)
            done += result.frames
            results.append(result)
        return results
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    stop = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(stop,),
    )
    try:
        futures = {pool.submit(_worker_encode, task): task for task in tasks}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=POLL_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if scope.cancel.cancelled:
                stop.set()  # the workers stop at their next frame
                scope.cancel.check()
            for future in finished:
                done += future.result().frames  # a chunk's error fails the job here
            progress.update(share(done))
        by_index = {futures[f].chunk.index: f.result() for f in futures}
        return [by_index[t.chunk.index] for t in tasks]
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _estimated_frames(tasks: list[ChunkTask]) -> float:
    """The job's output frames, the open-ended last chunk counted as one chunk's length."""
    last = tasks[-1].chunk.first
    sized = [t.chunk.end - t.chunk.first for t in tasks if t.chunk.end is not None]
    return last + (sum(sized) / len(sized) if sized else 1.0)


def _task_frames(task: ChunkTask, total: int) -> float:
    if task.chunk.end is not None:
        return task.chunk.end - task.chunk.first
    return max(total - task.chunk.first, 1)  # `share` caps what the estimate misses


_STOP: Any = None  # the pool's stop event, in a worker process


def _init_worker(stop: Any) -> None:
    global _STOP
    _STOP = stop


def _worker_check() -> None:
    if _STOP is not None and _STOP.is_set():
        raise Cancelled("the job was cancelled")


def _worker_encode(task: ChunkTask) -> ChunkResult:
    """A chunk in a pool process (module level: it is pickled by name)."""
    return encode_chunk(task, cancel=_worker_check)


def _stitch_all(
    plan: TranscodePlan, tasks: list[ChunkTask], results: list[ChunkResult]
) -> list[EncodedTrack]:
    """Each rung's chunks joined into the rendition file the one-pass transcode writes."""
    tracks = []
    for rung, output in enumerate(plan.video):
        pieces = [(r.chunk, r.tracks[rung].path) for r in results]
        frames = stitch(pieces, plan.frame_rate, output.path)
        expected = sum(r.frames for r in results)
        if frames != expected:
            raise ChunkMismatch(f"{output.rendition.name}: {frames} of {expected} frames stitched")
        for _, path in pieces:
            Path(path).unlink(missing_ok=True)
        tracks.append(
            EncodedTrack(
                output.path,
                "video",
                output.rendition.name,
                results[0].tracks[rung].encoder,
                frames,
                float(frames / plan.frame_rate),
            )
        )
    return tracks

"""Checkpoints: a job run again in the same work folder skips the phases it finished before.

A `vipe worker` keeps a stable work folder per job id (`<data dir>/work/<job id>`). When its
process dies (kill -9, OOM, a node reboot) and the job comes back to the same worker, the
phases whose checkpoints are complete are not done again:

- **Acquisition**: the downloaded input files;
- **Encoding**: every encoded rendition (video and audio tracks; they are written together by
  one decode, so they are complete together or not at all);
- **DRM + Packaging**: the packaged output folder, manifests included.

Media Mapping (a probe), Image Extraction and Publishing always run again: they are cheap or,
for publishing, idempotent (the same names are uploaded again and overwrite, manifests last).

A checkpoint is written after its phase has finished, atomically (temporary file, fsync,
rename), as `checkpoints/<n>-<phase>.pickle` in the work folder. It holds what the next phase
needs (the phase's typed result: acquired files, encoded tracks, the package), the report facts
and the phase's own summary events (`ContentAcquired`, `EncodingFinished`, replayed when the
phase is skipped), and the list of every file in the work folder with its size and mtime.

At the start of a run, `prepare()` keeps the longest chain of checkpoints (in phase order)
whose job digest matches and whose listed files are all there, unchanged; everything else in the
work folder (later checkpoints, half-written files of the interrupted phase) is removed, so the
first phase that runs starts clean. Without any valid checkpoint the folder is emptied.

Pickle is used because the results are frozen dataclasses of the engine; the work folder is
private to the worker (its data folder), the same trust as the code itself.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
VERSION = 1
# The phases that leave a checkpoint, in order.
PHASES = ("Acquisition", "Encoding", "DRM + Packaging")
# Events a skipped phase emits again, so that the attempt's events are complete.
REPLAYED = frozenset({"ContentAcquired", "EncodingFinished"})
# Report facts that belong to the run, not to a phase.
RUN_FACTS = frozenset({"start_time", "finished_time", "state", "error_code"})


def job_digest(job: Any) -> str:
    """What identifies the job a checkpoint belongs to (secrets are masked in the dump)."""
    text = job.model_dump_json() if hasattr(job, "model_dump_json") else repr(job)
    return hashlib.sha256(f"v{VERSION}:{text}".encode()).hexdigest()


class Checkpoints:
    """The checkpoints of one job's work folder."""

    def __init__(self, workdir: Path, digest: str, job_id: str = ""):
        self.workdir = workdir
        self.folder = workdir / FOLDER
        self.digest = digest
        self.job_id = job_id
        self.valid: dict[str, dict[str, Any]] = {}  # phase -> loaded checkpoint

    def _path(self, phase: str) -> Path:
        index = PHASES.index(phase)
        slug = phase.lower().replace(" + ", "-").replace(" ", "-")
        return self.folder / f"{index + 1}-{slug}.pickle"

    # -- start of a run ---------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Keep the valid chain of checkpoints and exactly the files it lists; the phases
        that will be skipped, in order."""
        self.valid = {}
        for phase in PHASES:
            saved = self._load(phase)
            if saved is None or not self._files_match(saved["files"]):
                break
            self.valid[phase] = saved
        last = self.valid[list(self.valid)[-1]] if self.valid else None
        keep = set(last["files"]) if last else set()
        keep |= {self._path(p).relative_to(self.workdir).as_posix() for p in self.valid}
        removed = self._remove_except(keep)
        if self.valid or removed:
            log.info(
                "job %s: checkpoints: %s complete; %d leftover file(s) removed",
                self.job_id,
                ", ".join(self.valid) or "none",
                removed,
            )
        return list(self.valid)

    def _load(self, phase: str) -> dict[str, Any] | None:
        path = self._path(phase)
        if not path.exists():
            return None
        try:
            with open(path, "rb") as file:
                saved = pickle.load(file)
        except Exception as error:  # a torn or foreign file: that phase runs again
            log.warning("job %s: checkpoint %s unreadable: %s", self.job_id, path.name, error)
            return None
        if (
            not isinstance(saved, dict)
            or saved.get("version") != VERSION
            or saved.get("digest") != self.digest
            or saved.get("phase") != phase
        ):
            log.warning("job %s: checkpoint %s is of another job or version", self.job_id, phase)
            return None
        return saved

    def _files_match(self, files: dict[str, tuple[int, int]]) -> bool:
        for name, (size, mtime) in files.items():
            try:
                stat = (self.workdir / name).stat()
            except OSError:
                return False
            if stat.st_size != size or stat.st_mtime_ns != mtime:
                return False
        return True

    def _listing(self) -> dict[str, tuple[int, int]]:
        files: dict[str, tuple[int, int]] = {}
        if not self.workdir.exists():
            return files
        for path in self.workdir.rglob("*"):
            relative = path.relative_to(self.workdir).as_posix()
            if relative == FOLDER or relative.startswith(f"{FOLDER}/") or not path.is_file():
                continue
            stat = path.stat()
            files[relative] = (stat.st_size, stat.st_mtime_ns)
        return files

    def _remove_except(self, keep: set[str]) -> int:
        """Remove every file of the work folder not in `keep`, then empty folders."""
        if not self.workdir.exists():
            return 0
        removed = 0
        for path in sorted(self.workdir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            relative = path.relative_to(self.workdir).as_posix()
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
                continue
            if relative not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- during a run -----------------------------------------------------------------------

    def run(self, phase: str, runner: Any, do: Callable[[], Any]) -> Any:
        """Run a phase through `do` (the runner's timed call) and checkpoint its result, or
        skip it when its checkpoint is valid. `runner` is the `JobRunner` (its events and
        context)."""
        saved = self.valid.get(phase)
        if saved is not None:
            return self._resume(phase, runner, saved)
        self._drop_from(phase)
        start = len(runner.events.history)
        result = do()
        events = [
            {k: v for k, v in event.items() if k not in runner.events.base and k != "Timestamp"}
            for event in runner.events.history[start:]
            if event.get("MessageType") in REPLAYED
        ]
        self._save(phase, result, runner.context, events)
        return result

    def _resume(self, phase: str, runner: Any, saved: dict[str, Any]) -> Any:
        context = runner.context
        for name, value in saved["facts"].items():
            if name not in RUN_FACTS:
                setattr(context.facts, name, value)
        if saved.get("seconds") is not None:
            context.phase_seconds[phase] = saved["seconds"]
        runner.events.warning(
            "PhaseResumed",
            f"{phase}: complete in a checkpoint of an earlier attempt on this worker; "
            "not done again",
        )
        for event in saved["events"]:
            fields = dict(event)
            runner.events.emit(fields.pop("MessageType"), **fields)
        log.info("job %s: %s skipped (checkpoint)", self.job_id, phase)
        return saved["result"]

    def _drop_from(self, phase: str) -> None:
        """This phase runs: its checkpoint and those of later phases no longer hold."""
        for later in PHASES[PHASES.index(phase) :]:
            self._path(later).unlink(missing_ok=True)
            self.valid.pop(later, None)

    def _save(self, phase: str, result: Any, context: Any, events: list[dict[str, Any]]) -> None:
        facts = {
            f.name: copy.deepcopy(getattr(context.facts, f.name))
            for f in dataclasses.fields(context.facts)
        }
        saved = {
            "version": VERSION,
            "digest": self.digest,
            "phase": phase,
            "result": result,
            "facts": facts,
            "seconds": context.phase_seconds.get(phase),
            "events": events,
            "files": self._listing(),
        }
        try:
            data = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # not fatal: the phase simply runs again after a crash
            log.warning("job %s: no checkpoint for %s: %s", self.job_id, phase, error)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(phase)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        log.info("job %s: checkpoint written after %s", self.job_id, phase)


def remove_workdir(workdir: Path) -> None:
    """Remove a job's work folder (the job ended: its checkpoints are of no further use)."""
    shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["PHASES", "Checkpoints", "job_digest", "remove_workdir"]

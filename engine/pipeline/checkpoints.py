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
rename), as `checkpoints/<n>-<phase>.pickle` in the work folder. It holds the phase's result
(`engine.pipeline.results`: acquired files, encoded tracks, the package; everything later
phases, the report and the phase's summary event are made from), the phase's duration, and
the list of every file in the work folder with its size and mtime.

At the start of a run, `prepare()` keeps the longest chain of checkpoints (in phase order)
whose job digest matches and whose listed files are all there, unchanged; everything else in the
work folder (later checkpoints, half-written files of the interrupted phase) is removed, so the
first phase that runs starts clean. Without any valid checkpoint the folder is emptied.

Pickle is used because the results are frozen dataclasses of the engine; the work folder is
private to the worker (its data folder), the same trust as the code itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.events import Phase

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
VERSION = 3  # 3: Encoded.chunks
# The phases that leave a checkpoint, in order.
PHASES = (Phase.ACQUISITION, Phase.ENCODING, Phase.PACKAGING)


@dataclass(frozen=True)
class Saved:
    """A phase's checkpoint: its result and how long it took."""

    result: Any
    seconds: float | None


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
        self.valid: dict[Phase, dict[str, Any]] = {}  # phase -> loaded checkpoint

    def _path(self, phase: Phase) -> Path:
        index = PHASES.index(phase)
        slug = phase.lower().replace(" + ", "-").replace(" ", "-")
        return self.folder / f"{index + 1}-{slug}.pickle"

    # -- start of a run ---------------------------------------------------------------------

    def prepare(self) -> list[Phase]:
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

    def _load(self, phase: Phase) -> dict[str, Any] | None:
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

    def resume(self, phase: Phase) -> Saved | None:
        """The phase's saved result when its checkpoint is valid (the phase is then skipped),
        else None: the phase runs, and its checkpoint and later ones no longer hold."""
        saved = self.valid.get(phase)
        if saved is not None:
            log.info("job %s: %s skipped (checkpoint)", self.job_id, phase)
            return Saved(saved["result"], saved.get("seconds"))
        for later in PHASES[PHASES.index(phase) :]:
            self._path(later).unlink(missing_ok=True)
            self.valid.pop(later, None)
        return None

    def save(self, phase: Phase, result: Any, seconds: float | None) -> None:
        """Checkpoint a finished phase's result (not fatal when it cannot be written: the
        phase simply runs again after a crash)."""
        saved = {
            "version": VERSION,
            "digest": self.digest,
            "phase": str(phase),
            "result": result,
            "seconds": seconds,
            "files": self._listing(),
        }
        try:
            data = pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
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


__all__ = ["PHASES", "Checkpoints", "Saved", "job_digest", "remove_workdir"]

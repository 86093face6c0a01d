"""Acquisition: the input folder into the work folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.events import EventType
from engine.locations import storage_error_to_engine
from engine.pipeline.results import Acquired, Prepared
from storage import StorageError

if TYPE_CHECKING:
    from engine.pipeline.scope import JobScope


def acquire(scope: JobScope, prepared: Prepared) -> Acquired:
    """Download every file of the input folder (not sub-folders), with progress events.

    The job only reads its input files (and removes them with the work folder), so a storage
    may share them instead of copying (Local: hard links where it can)."""

    def progress(done: int, total: int) -> None:
        percent = 100 * done / total if total else 100
        scope.events.progress(
            EventType.ACQUISITION_PROGRESS, percent, BytesDone=done, BytesTotal=total
        )

    folder = scope.workdir / "input"
    try:
        files = prepared.input_storage.download_folder(
            folder, progress, scope.cancel.check, shared=True
        )
    except StorageError as error:
        raise storage_error_to_engine(error, publishing=False) from None
    return Acquired(tuple(files), sum(p.stat().st_size for p in files))

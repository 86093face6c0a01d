"""Publishing: the package (or its tar archives) to ContentPublishing, manifests last."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from engine.events import EventType
from engine.job import Archiving
from engine.locations import storage_error_to_engine
from engine.pipeline.results import Mapped, Packaged, Prepared, Published
from storage import StorageError

if TYPE_CHECKING:
    from engine.pipeline.scope import JobScope


def publish(scope: JobScope, prepared: Prepared, mapped: Mapped, packaged: Packaged) -> Published:
    """Upload every file, manifests last (the storage does the order and the rollback on
    failure), emit ContentPublished, then delete the used sources when the job asks for it."""
    folder = _archived(scope, packaged)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def progress(done: int, total: int) -> None:
        percent = 100 * done / total if total else 100
        scope.events.progress(EventType.PUBLISHING_PROGRESS, percent)

    try:
        # Shared (Local: hard links where it can): nothing writes into the package's files in
        # place afterwards; Packaging writes a fresh folder and _tar a new archive each attempt.
        uploaded = prepared.output_storage.upload_folder(
            folder, progress, scope.cancel.check, plan=scope.on_publish_plan, shared=True
        )
    except StorageError as error:
        raise storage_error_to_engine(error, publishing=True) from None
    manifests = tuple(n for n in uploaded if n.lower().endswith((".mpd", ".m3u8")))
    scope.events.emit(
        EventType.CONTENT_PUBLISHED,
        Location=scope.job.content_publishing.uri_path,
        FilesCount=len(uploaded),
        BytesCount=size,
        Manifests=list(manifests),
    )
    if scope.processing.delete_files_from_source_when_done:
        _delete_sources(scope, prepared, mapped)
    return Published(tuple(uploaded), size, manifests)


def _archived(scope: JobScope, packaged: Packaged) -> Path:
    """The folder to publish: the package itself, or tar archives of it."""
    mode = scope.processing.archiving
    if mode == Archiving.Off:
        return packaged.folder
    archive_folder = scope.workdir / "archive"
    archive_folder.mkdir(parents=True, exist_ok=True)
    source = packaged.folder
    folders = [p for p in sorted(source.iterdir()) if p.is_dir()]
    if mode == Archiving.Tar and folders and all(p.is_dir() for p in source.iterdir()):
        for sub in folders:  # one archive per output format folder
            _tar(sub, archive_folder / f"{sub.name}.tar")
    else:
        _tar(source, archive_folder / "output.tar")
    return archive_folder


def _tar(folder: Path, target: Path) -> None:
    # An archive of an earlier attempt may be a published file itself (shared): a new file
    # replaces it, never written through.
    target.unlink(missing_ok=True)
    with tarfile.open(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=path.relative_to(folder).as_posix())


def _delete_sources(scope: JobScope, prepared: Prepared, mapped: Mapped) -> None:
    """DeleteFilesFromSourceWhenDone: only the files this job mapped and used; files it
    ignored stay where they are."""
    for path in mapped.media.used_files:
        try:
            prepared.input_storage.delete_file(path.name)
        except StorageError as error:
            scope.events.warning(
                "SourceNotDeleted", f"could not delete {path.name} from the input: {error}"
            )

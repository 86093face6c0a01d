"""Image Extraction: still images (`ImageExtraction`) to their own storage.

Thumbnails are not made here but while packaging (the manifests list them). Any failure here is
FinalError 4201, before anything is published."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import ImageExtractionError
from engine.events import EventType
from engine.pipeline.results import Mapped, Packaged, Prepared
from storage import StorageError, open_storage

if TYPE_CHECKING:
    from engine.pipeline.scope import JobScope


def extract_stills(scope: JobScope, prepared: Prepared, mapped: Mapped, packaged: Packaged) -> None:
    """Grab the stills at their percent positions, upload them, emit ImagesExtracted."""
    spec = scope.job.image_extraction
    if spec is None:
        return
    source = mapped.image_source()
    if source is None:
        raise ImageExtractionError("ImageExtraction needs a video track; this job has none")
    path, track = source
    from engine.images import extract_images  # only jobs with ImageExtraction

    folder = scope.workdir / "images"
    video_seconds = packaged.video_seconds
    images = extract_images(
        path,
        track,
        spec.intervals,
        video_seconds if video_seconds is not None else mapped.duration,
        quality=spec.quality,
        pattern=spec.pattern,
        folder=folder,
        cancel=scope.cancel.check,
    )
    field = "ImageExtraction.Location"
    try:
        storage = open_storage(scope.location(spec.location, prepared.service_key, field))
    except StorageError as error:
        raise ImageExtractionError(f"{field}: {error}") from None
    try:
        storage.upload_folder(folder, None, scope.cancel.check)
    except StorageError as error:
        raise ImageExtractionError(f"{field}: {error}", retryable=error.retryable) from None
    except OSError as error:  # a provider that let one through is still this phase's fault
        raise ImageExtractionError(f"{field}: cannot write: {error.strerror}") from None
    finally:
        storage.close()
    scope.events.emit(
        EventType.IMAGES_EXTRACTED,
        Path=spec.location.uri_path,
        Images=[p.name for p in images],
    )

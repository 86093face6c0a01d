"""The orchestrator: one job, its phases in order (contract §10).

Pre-Validation → Acquisition → Media Mapping → Encoding → DRM + Packaging → Image Extraction →
Publishing. Each phase is a method with typed input and output (frozen dataclasses); the
runner owns the order, the phase events, the cancellation token and the turning of exceptions
into `FinalError`. `run_job` is the documented entry point for programs that embed vipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from drm.credentials import ServiceKey
from engine import ladder
from engine.cancel import CancelToken
from engine.capabilities import NVENC_SESSIONS, node_capabilities
from engine.config import data_dir as default_data_dir
from engine.encoders import NodeCapabilities, assign_encoders
from engine.errors import (
    Cancelled,
    DrmError,
    EngineError,
    JobValidationError,
    MappingError,
    PackagingError,
)
from engine.events import EventEmitter, EventSink, utc_now
from engine.job import (
    Archiving,
    DrmProtection,
    EncodingMode,
    HardwareAcceleration,
    Job,
    Protection,
)
from engine.keys import possible_quality_groups
from engine.languages import english_name, native_name
from engine.locations import location_from_spec, storage_error_to_engine
from engine.mapping import map_media
from engine.media import (
    AudioRendition,
    MediaMap,
    TextSource,
    VideoRendition,
    VideoTrackInfo,
)
from engine.quality import QualitySettings, quality_settings, vmaf_support
from engine.report import ReportFacts, reporting_entry
from engine.transcode import (
    AudioOutput,
    EncodedTrack,
    TranscodePlan,
    VideoOutput,
    transcode,
)
from engine.validation import CheckedJob, FieldError, load_job_json, validate_job
from engine.watermark import Watermarker, WatermarkSpec
from packagers.errors import PackagingError as PackagerError
from packagers.hooks import ImageInput
from packagers.model import PackageResult, PackageSpec, TextInput, TrackInput
from packagers.packager import package
from packagers.subtitles import SubtitleError, convert_to_webvtt
from storage import StorageError, open_storage
from storage.base import Storage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- phase results


@dataclass(frozen=True)
class Prepared:
    """Pre-Validation: the job, its storages and its keys."""

    job: Job
    warnings: tuple[FieldError, ...]
    input_storage: Storage
    output_storage: Storage
    keys: Any  # drm.keys.KeySet | None


@dataclass(frozen=True)
class Acquired:
    files: tuple[Path, ...]
    bytes: int


@dataclass(frozen=True)
class Encoded:
    tracks: tuple[EncodedTrack, ...]
    video: tuple[VideoRendition, ...]
    audio: tuple[AudioRendition, ...]
    boundaries: tuple[float, ...] | None  # packaging-only: the renditions' keyframe times
    duration: float


@dataclass(frozen=True)
class Packaged:
    folder: Path
    result: PackageResult


@dataclass
class JobContext:
    job_id: str
    tenant_id: str
    workdir: Path
    events: EventEmitter
    cancel: CancelToken
    capabilities: NodeCapabilities
    data_dir: Path
    facts: ReportFacts = field(default_factory=ReportFacts)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    checkpoints: Any = None  # engine.pipeline.checkpoints.Checkpoints: skip phases finished before


# -------------------------------------------------------------------------------- the runner


class JobRunner:
    """Runs one validated job through every phase."""

    def __init__(self, checked: CheckedJob, context: JobContext, keys: Any = None):
        self.checked = checked
        self.job = checked.job
        self.context = context
        self.events = context.events
        self.cancel = context.cancel
        self.given_keys = keys
        self.processing = self.job.content_processing
        self.workdir = context.workdir
        self._service_key: ServiceKey | None = None
        self.hub = None  # the job's message publishers (contract §8), opened in Pre-Validation
        self._average_rate: Fraction | None = None  # a VFR source's measured average

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        facts = self.context.facts
        facts.start_time = facts.start_time or utc_now()
        facts.state = "Running"
        phase = "Pre-Validation"
        prepared: Prepared | None = None
        try:
            prepared = self._timed(phase, self.pre_validation)
            phase = "Acquisition"
            acquired = self._resumable(phase, self.acquisition, prepared)
            phase = "Media Mapping"
            media = self._timed(phase, self.media_mapping, acquired)
            phase = "Encoding"
            encoded = self._resumable(phase, self.encoding, media)
            phase = "DRM + Packaging"
            packaged = self._resumable(phase, self.packaging, prepared, media, encoded)
            phase = "Image Extraction"
            self._timed(phase, self.image_extraction, media, packaged)
            phase = "Publishing"
            self._timed(phase, self.publishing, prepared, acquired, packaged)
            facts.state = "Succeeded"
            # After the publishing phase's own timing, so that it is among the durations.
            self.events.emit("JobSuccess", PhaseDurationsInSeconds=dict(self.context.phase_seconds))
        except Cancelled as cancelled:
            facts.state, facts.error_code = "Cancelled", Cancelled.code
            self._final_error(Cancelled.code, cancelled.message, phase)
        except EngineError as error:
            facts.state, facts.error_code = "Failed", error.code
            # The phase it happened in (contract §10 names): a SourceError may come from
            # Encoding, a PackagingError from a packaging-only job's Encoding.
            self._final_error(error.code, error.message, phase)
        except Exception as error:
            log.exception("job %s: internal error in %s", self.context.job_id, phase)
            facts.state, facts.error_code = "Failed", 5000
            self._final_error(5000, f"internal error in {phase}: {type(error).__name__}", phase)
        finally:
            if prepared is not None:
                prepared.input_storage.close()
                prepared.output_storage.close()
            if self.hub is not None:  # deliver what is queued (JobSuccess/FinalError included)
                self.hub.close(timeout=30)
        facts.finished_time = utc_now()
        return reporting_entry(self.context.job_id, self.context.tenant_id, self.job, facts)

    def _resumable(self, phase: str, method: Callable, *args):
        """`_timed`, or the result of an earlier attempt when the phase's checkpoint in the
        work folder is complete (`checkpoints`; only with `run_job(checkpoints=True)`)."""
        checkpoints = self.context.checkpoints
        if checkpoints is None:
            return self._timed(phase, method, *args)
        return checkpoints.run(phase, self, lambda: self._timed(phase, method, *args))

    def _timed(self, phase: str, method: Callable, *args):
        self.cancel.check()
        log.info("job %s: %s", self.context.job_id, phase)
        started = time.monotonic()
        result = method(*args)
        self.context.phase_seconds[phase] = round(time.monotonic() - started, 3)
        # No cancellation check here: the next phase checks first, and a job whose publishing
        # has finished is done (cancelling it then would report a failure for a full output).
        return result

    def _final_error(self, code: int, message: str, phase: str) -> None:
        log.error("job %s failed (%d) in %s: %s", self.context.job_id, code, phase, message)
        self.events.emit("FinalError", ErrorCode=code, ErrorMessage=message, Phase=phase)

    # -- Pre-Validation ---------------------------------------------------------------------

    @property
    def service_key(self) -> ServiceKey | None:
        """The service key pair, loaded only when the job holds protected secrets."""
        if self._service_key is None and _needs_service_key(self.job):
            self._service_key = ServiceKey.load_or_create(self.context.data_dir)
        return self._service_key

    def pre_validation(self) -> Prepared:
        from engine.publishers import open_hub

        # First, so that a bad publisher secret fails before any work and JobCreated reaches
        # the publishers too.
        self.hub = open_hub(self.job, self.service_key, job_id=self.context.job_id)
        self.events.sinks.append(self.hub)
        job = self.job
        with contextlib.ExitStack() as opened:  # closed here if this phase fails
            source = self._storage(job.content_acquisition, "ContentAcquisition")
            opened.callback(source.close)
            target = self._storage(job.content_publishing, "ContentPublishing")
            opened.callback(target.close)
            _check_output_access(target)
            if job.image_extraction is not None:
                self._check_image_location(job.image_extraction.location)
            keys = self.given_keys if self.given_keys is not None else self.resolve_keys()
            opened.pop_all()  # from here on the run closes them
        created = job_created_fields(job, self.checked.warnings)
        if keys is not None:  # the key ids, as `POST /Job` answers them (contract §1)
            ids = [str(kid) for kid in keys.key_ids]
            if len(ids) == 1:
                created["KeyId"] = ids[0]
            else:
                created["KeyIds"] = ids
        self.events.emit("JobCreated", **created)
        for warning in self.checked.warnings:
            self.events.warning("UnknownProperty", f"{warning.field}: {warning.message}")
        if self.processing.encoding_mode == EncodingMode.PerScene:
            self.events.warning(
                "PerSceneNotAvailable",
                "EncodingMode PerScene is not available yet: the default ladder is used",
            )
        return Prepared(job, tuple(self.checked.warnings), source, target, keys)

    def _storage(self, spec, field: str) -> Storage:
        try:
            return open_storage(location_from_spec(spec, self.service_key, field))
        except StorageError as error:
            raise JobValidationError([FieldError(f"{field}.UriPath", str(error))]) from None

    def _check_image_location(self, spec) -> None:
        """The stills' own storage, checked before the encode as ContentPublishing is."""
        from engine.errors import ImageExtractionError

        storage = self._storage(spec, "ImageExtraction.Location")
        try:
            _check_output_access(storage)
        except EngineError as error:
            raise ImageExtractionError(f"ImageExtraction.Location: {error.message}") from None
        finally:
            storage.close()

    def resolve_keys(self):
        """Content keys for an encrypted job (None in clear)."""
        if self.processing.drm_protection == DrmProtection.Off:
            return None
        from drm.cpix import KeyServiceError
        from drm.keys import DrmKeyError
        from engine.keys import keys_from_job

        try:
            return keys_from_job(
                self.processing,
                self.service_key,
                possible_quality_groups(self.job),
                content_id=self.context.job_id,
            )
        except KeyServiceError as error:  # down, refused or nonsense: a DRM failure (4001)
            raise DrmError(str(error), retryable=error.transient) from None
        except DrmKeyError as error:
            if error.source.startswith("ContentProcessing."):
                # Key material of the job itself (a ContentKey that does not decrypt): an
                # invalid job naming the field (1001), as `POST /Job` answers 400.
                raise JobValidationError([FieldError(error.source, error.reason)]) from None
            raise DrmError(str(error)) from None

    # -- Acquisition ------------------------------------------------------------------------

    def acquisition(self, prepared: Prepared) -> Acquired:
        folder = self.workdir / "input"

        def progress(done: int, total: int) -> None:
            percent = 100 * done / total if total else 100
            self.events.progress("AcquisitionProgress", percent, BytesDone=done, BytesTotal=total)

        try:
            files = prepared.input_storage.download_folder(folder, progress, self.cancel.check)
        except StorageError as error:
            raise storage_error_to_engine(error, publishing=False) from None
        size = sum(p.stat().st_size for p in files)
        self.context.facts.acquired_bytes = size
        self.events.emit("ContentAcquired", FilesCount=len(files), BytesCount=size)
        return Acquired(tuple(files), size)

    # -- Media Mapping ----------------------------------------------------------------------

    def media_mapping(self, acquired: Acquired) -> MediaMap:
        media = map_media(list(acquired.files), self.job.media_mappings, self.processing)
        for path in media.ignored_files:
            self.events.warning("IgnoredFile", f"{path.name} is not used by this job")
        for track in media.ignored_tracks:
            self.events.warning("IgnoredTrack", f"track {track} is not used by this job")
        self.events.emit("ContentMapped", **content_mapped_fields(media))
        video = _main_video(media)
        source = media.sources.get(media.video) if media.video else None
        duration = source.duration if source else _audio_duration(media)
        self.context.facts.source_duration = duration
        if video is not None and media.video and not video.constant_frame_rate:
            self._average_rate = measured_frame_rate(media.video, video, self.cancel.check)
        self.events.emit(
            "ContentPreProcessed",
            AudioLanguages=media.audio_languages,
            SubtitleLanguages=media.subtitle_languages,
            CaptionLanguages=media.caption_languages,
            DurationInSeconds=round(duration, 3),
            Width=video.display_width if video else None,
            Height=video.display_height if video else None,
            FrameRate=_rate_text(self._average_rate or video.frame_rate) if video else None,
        )
        return media

    # -- Encoding ---------------------------------------------------------------------------

    def encoding(self, media: MediaMap) -> Encoded:
        if self.processing.packaging_only:
            from engine.pipeline.passthrough import prepare_renditions

            if self.processing.quality_metrics:
                self.events.warning(
                    "QualityMetricsSkipped", "QualityMetrics: packaging-only mode encodes nothing"
                )
            return prepare_renditions(self, media)
        folder = self.workdir / "encode"
        folder.mkdir(parents=True, exist_ok=True)
        video = _main_video(media)
        renditions = ladder.plan_video(video, self.processing) if video else []
        audio = ladder.plan_audio(list(media.audio), self.processing)
        if not renditions and not audio:
            raise MappingError("nothing to encode: no video and no audio rendition planned")
        frame_rate = output_frame_rate(video, self._average_rate) if video else Fraction(25)
        hdr = self._hdr_metadata(video)
        watermarks = self._watermarker(media, video)
        capabilities = self.context.capabilities
        hardware = self.processing.hardware_acceleration
        # This job's share of the node's NVENC sessions (the largest rungs get them, see
        # engine.encoders); what it does not use goes back now, the rest after the transcode.
        sessions = NVENC_SESSIONS.acquire(capabilities.nvenc_sessions, len(renditions))
        try:
            assignment = assign_encoders(
                renditions,
                self.processing.optimize_for,
                hardware,
                capabilities,
                frame_rate=float(frame_rate),
                segment_seconds=self.processing.segment_length_in_seconds,
                hdr=hdr,
                sessions=sessions,
            )
        except BaseException:
            NVENC_SESSIONS.release(sessions)
            raise
        NVENC_SESSIONS.release(sessions - assignment.nvenc_sessions)
        sessions = assignment.nvenc_sessions
        for message in assignment.warnings:
            self.events.warning("HardwareFallback", message)
        outputs = [
            VideoOutput(rendition, choice, folder / f"{rendition.name}.mp4", fallback)
            for rendition, choice, fallback in zip(
                renditions, assignment.choices, assignment.fallbacks, strict=True
            )
        ]
        hw_decode = (
            hardware != HardwareAcceleration.Off
            and video is not None
            and video.codec in capabilities.nvdec_codecs
        )
        audio_outputs = tuple(AudioOutput(r, folder / f"{r.name}.mp4") for r in audio)
        source = media.sources.get(media.video) if media.video else None
        duration = (
            _expected_duration(source.duration, frame_rate) if source else _audio_duration(media)
        )
        plan = TranscodePlan(
            video_file=media.video if renditions else None,
            video_track=video,
            frame_rate=frame_rate,
            video=tuple(outputs),
            audio=audio_outputs,
            segment_seconds=self.processing.segment_length_in_seconds,
            duration=duration,
            watermarks=watermarks,
            normalize_audio=self.processing.normalize_audio,
            hw_decode=hw_decode,
            quality=self._quality_settings(renditions, duration * frame_rate),
        )
        encoders = list(dict.fromkeys(o.encoder.name for o in outputs)) or ["aac"]
        self.events.emit(
            "VideoEncodingStarted",
            Renditions=[
                video_rendition_fields(r, Encoder=o.encoder.name)
                for r, o in zip(renditions, outputs, strict=True)
            ]
            + [
                {
                    "Name": r.name,
                    "Language": r.source.language,
                    "Channels": r.channels,
                    "BitrateInKbps": r.bitrate_kbps,
                    "Codec": r.codec,
                }
                for r in audio
            ],
            Encoder=",".join(encoders),
            HardwareDecoding=hw_decode,
        )
        self.context.facts.encoders = encoders
        try:
            tracks = transcode(
                plan,
                progress=lambda f: self.events.progress("EncodingProgress", 100 * f),
                cancel=self.cancel.check,
                warn=self.events.warning,
            )
        finally:
            NVENC_SESSIONS.release(sessions)
        self.context.facts.bitrates_kbps = [r.bitrate_kbps for r in renditions]
        self._report_quality(renditions, tracks)
        video_tracks = [t for t in tracks if t.kind == "video"]
        if video_tracks:  # the encoders that wrote the outputs, CPU fallbacks included
            self.context.facts.encoders = list(dict.fromkeys(t.encoder for t in video_tracks))
        self.context.facts.encoded_duration = video_tracks[0].duration if video_tracks else duration
        return Encoded(tuple(tracks), tuple(renditions), tuple(audio), None, duration)

    def _quality_settings(self, renditions, frames: float) -> QualitySettings | None:
        """QualityMetrics: how the transcoder measures (engine.quality); a Warning when VMAF
        cannot be computed on this node (the streams then carry `"Vmaf": null`)."""
        if not self.processing.quality_metrics or not renditions:
            return None
        ffmpeg, reason = vmaf_support()
        if ffmpeg is None:
            self.events.warning("VmafUnavailable", f"VMAF unavailable: {reason}")
        return quality_settings(round(frames), ffmpeg)

    def _report_quality(self, renditions, tracks: list[EncodedTrack]) -> None:
        """The measured renditions into the report's `QualityMetrics`, in ladder order."""
        measured = {t.name: t.quality for t in tracks if t.quality is not None}
        entries = []
        for rendition in renditions:
            metrics = measured.get(rendition.name)
            if metrics is None:
                continue
            if metrics.vmaf_error:
                self.events.warning(
                    "VmafUnavailable", f"VMAF unavailable: {rendition.name}: {metrics.vmaf_error}"
                )
            entries.append(
                metrics.report_entry(
                    rendition.name, rendition.bitrate_kbps, rendition.width, rendition.height
                )
            )
        self.context.facts.quality = entries

    def _hdr_metadata(self, video: VideoTrackInfo | None):
        if not self.processing.extract_and_apply_hdr or video is None:
            return None
        if video.hdr is None or not video.hdr.is_hdr:
            self.events.warning(
                "NotHdr", "ExtractAndApplyHDR is set but the source carries no HDR signalling"
            )
            return None
        return video.hdr

    def _watermarker(self, media: MediaMap, video: VideoTrackInfo | None) -> Watermarker | None:
        marks = self.processing.visible_video_watermarks or []
        if not marks or video is None:
            return None
        files = {p.name: p for p in media.watermarks}
        specs = [
            WatermarkSpec(
                image=files[m.watermark_file_name],
                x_percent=m.position_x_percentage,
                y_percent=m.position_y_percentage,
                size_percent=m.size_percentage,
                opacity=m.opacity_percentage / 100,
                start=m.start_seconds,
                end=m.end_seconds,
                fade_in=m.fade_in_duration_in_ms / 1000,
                fade_out=m.fade_out_duration_in_ms / 1000,
            )
            for m in marks
        ]
        width, height = video.width, video.height
        if video.rotation in (90, 270):
            width, height = height, width
        try:
            return Watermarker(specs, width, height)
        except ValueError as error:
            raise MappingError(f"watermark: {error}") from None

    # -- DRM + Packaging --------------------------------------------------------------------

    def packaging(self, prepared: Prepared, media: MediaMap, encoded: Encoded) -> Packaged:
        folder = self.workdir / "output"
        texts = self._text_tracks(media, encoded.duration)
        tracks = self._track_inputs(prepared, encoded)
        names = ladder.manifest_names(self.processing.naming)
        spec = PackageSpec(
            formats=[f.value for f in self.processing.formats],
            byte_range=self.processing.segment_format.value == "ByteRange",
            segment_seconds=self.processing.segment_length_in_seconds,
            dash_manifest=names[0],
            hls_manifest=names[1],
            boundaries=encoded.boundaries,
        )
        images = self._thumbnail_images(media, encoded)
        try:
            result = package(tracks, texts, spec, folder, images=images, cancel=self.cancel.check)
        except PackagerError as error:
            raise PackagingError(str(error)) from None
        encoders = {t.name: t.encoder for t in encoded.tracks}
        metrics = {t.name: t.quality for t in encoded.tracks if t.quality is not None}
        self.events.emit(
            "EncodingFinished",
            Streams=[
                _stream_json(s, encoders.get(s.name), metrics.get(s.name)) for s in result.streams
            ],
        )
        return Packaged(folder, result)

    def _track_inputs(self, prepared: Prepared, encoded: Encoded) -> list[TrackInput]:
        by_name = {t.name: t for t in encoded.tracks}
        native = self.processing.use_native_language_names
        scheme = self.processing.scheme.value
        keys = prepared.keys
        inputs = []
        for rendition in encoded.video:
            inputs.append(
                TrackInput(
                    path=by_name[rendition.name].path,
                    kind="video",
                    name=rendition.name,
                    quality_group=rendition.quality_group,
                    target_kbps=rendition.bitrate_kbps,
                    protection=_protection(keys, rendition.quality_group, scheme),
                )
            )
        for rendition in encoded.audio:
            language = rendition.source.language
            label = native_name(language) if native else english_name(language)
            if rendition.source.descriptive:
                label += " (audio description)"
            inputs.append(
                TrackInput(
                    path=by_name[rendition.name].path,
                    kind="audio",
                    name=rendition.name,
                    language=language,
                    label=label,
                    role="description" if rendition.source.descriptive else "main",
                    quality_group="AUDIO",
                    target_kbps=rendition.bitrate_kbps,
                    priming_samples=by_name[rendition.name].priming,
                    protection=_protection(keys, "AUDIO", scheme),
                )
            )
        return inputs

    def _text_tracks(self, media: MediaMap, duration: float) -> list[TextInput]:
        folder = self.workdir / "text"
        folder.mkdir(parents=True, exist_ok=True)
        native = self.processing.use_native_language_names
        mappings = self.job.media_mappings
        texts = []
        for source in (*media.subtitles, *media.captions):
            name = ladder.subtitle_name(source.language, self.processing.naming, source.kind)
            target = folder / f"{name}.vtt"
            try:
                convert_to_webvtt(
                    source.path, target, track_index=source.track_index, duration=duration
                )
            except SubtitleError as error:
                demanded = (
                    mappings.fail_on_no_caption_tracks
                    if source.kind == "caption"
                    else mappings.fail_on_no_subtitle_tracks
                )
                if demanded:
                    raise MappingError(f"{source.kind} {_text_origin(source)}: {error}") from None
                self.events.warning(
                    "SubtitleSkipped", f"{source.kind} {_text_origin(source)} left out: {error}"
                )
                continue
            label = native_name(source.language) if native else english_name(source.language)
            if source.kind == "caption":
                label += " (CC)"
            texts.append(TextInput(target, name, source.language, label, source.kind))
        return texts

    # -- Image Extraction -------------------------------------------------------------------

    def image_extraction(self, media: MediaMap, packaged: Packaged) -> None:
        """Still images (`ImageExtraction`) to their own storage, then `ImagesExtracted`.

        Thumbnails are not made here but while packaging (`_thumbnail_images`): the manifests
        list them. Any failure here is FinalError 4201, before anything is published."""
        spec = self.job.image_extraction
        if spec is None:
            return
        from engine.errors import ImageExtractionError
        from engine.images import extract_images

        source = self._image_source(media)
        if source is None:
            raise ImageExtractionError("ImageExtraction needs a video track; this job has none")
        path, track = source
        folder = self.workdir / "images"
        images = extract_images(
            path,
            track,
            spec.intervals,
            _video_seconds(packaged, media),
            quality=spec.quality,
            pattern=spec.pattern,
            folder=folder,
            cancel=self.cancel.check,
        )
        field = "ImageExtraction.Location"
        try:
            storage = open_storage(location_from_spec(spec.location, self.service_key, field))
        except StorageError as error:
            raise ImageExtractionError(f"{field}: {error}") from None
        try:
            storage.upload_folder(folder, None, self.cancel.check)
        except StorageError as error:
            raise ImageExtractionError(f"{field}: {error}", retryable=error.retryable) from None
        except OSError as error:  # a provider that let one through is still this phase's fault
            raise ImageExtractionError(f"{field}: cannot write: {error.strerror}") from None
        finally:
            storage.close()
        self.events.emit(
            "ImagesExtracted", Path=spec.location.uri_path, Images=[p.name for p in images]
        )

    def _thumbnail_images(self, media: MediaMap, encoded: Encoded) -> list[ImageInput]:
        """The thumbnail tiles of `Thumbnails` (Generate), made before packaging so that the
        DASH and HLS manifests can list them; failures are FinalError 4201."""
        spec = self.job.thumbnails
        if spec is None or not spec.generate:
            return []
        from engine.images import make_thumbnails, plan_thumbnails

        source = self._image_source(media)
        if source is None:
            self.events.warning("ThumbnailsSkipped", "Thumbnails need a video track: none here")
            return []
        path, track = source
        plan = plan_thumbnails(
            encoded.duration,
            track.display_aspect_ratio,
            width=spec.width,
            height=spec.height,
            interval=spec.duration_in_seconds,
            columns=spec.tile_columns,
            rows=spec.tile_rows,
        )
        folder = self.workdir / "thumbnails"
        image = make_thumbnails(path, track, plan, folder, self.cancel.check)
        if spec.bandwidth_in_kbps:
            image = dataclasses.replace(image, bandwidth=spec.bandwidth_in_kbps * 1000)
        return [image]

    @staticmethod
    def _image_source(media: MediaMap) -> tuple[Path, VideoTrackInfo] | None:
        """The video that stills and thumbnails come from: the source in the work folder, or
        in packaging-only mode the rendition with the most pixels."""
        best: tuple[Path, VideoTrackInfo] | None = None
        for path in list(media.renditions) or ([media.video] if media.video else []):
            source = media.sources.get(path)
            track = source.main_video if source else None
            if track is None:
                continue
            if best is None or track.width * track.height > best[1].width * best[1].height:
                best = (path, track)
        return best

    # -- Publishing -------------------------------------------------------------------------

    def publishing(self, prepared: Prepared, acquired: Acquired, packaged: Packaged) -> None:
        folder = self._archived(packaged)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)

        def progress(done: int, total: int) -> None:
            self.events.progress("PublishingProgress", 100 * done / total if total else 100)

        try:
            uploaded = prepared.output_storage.upload_folder(folder, progress, self.cancel.check)
        except StorageError as error:
            raise storage_error_to_engine(error, publishing=True) from None
        self.context.facts.published_bytes = size
        manifests = [n for n in uploaded if n.lower().endswith((".mpd", ".m3u8"))]
        self.events.emit(
            "ContentPublished",
            Location=self.job.content_publishing.uri_path,
            FilesCount=len(uploaded),
            BytesCount=size,
            Manifests=manifests,
        )
        if self.processing.delete_files_from_source_when_done:
            self._delete_sources(prepared, acquired)

    def _archived(self, packaged: Packaged) -> Path:
        """The folder to publish: the package itself, or tar archives of it."""
        mode = self.processing.archiving
        if mode == Archiving.Off:
            return packaged.folder
        archive_folder = self.workdir / "archive"
        archive_folder.mkdir(parents=True, exist_ok=True)
        source = packaged.folder
        folders = [p for p in sorted(source.iterdir()) if p.is_dir()]
        if mode == Archiving.Tar and folders and all(p.is_dir() for p in source.iterdir()):
            for sub in folders:  # one archive per output format folder
                _tar(sub, archive_folder / f"{sub.name}.tar")
        else:
            _tar(source, archive_folder / "output.tar")
        return archive_folder

    def _delete_sources(self, prepared: Prepared, acquired: Acquired) -> None:
        for path in acquired.files:
            try:
                prepared.input_storage.delete_file(path.name)
            except StorageError as error:
                self.events.warning(
                    "SourceNotDeleted", f"could not delete {path.name} from the input: {error}"
                )


# ------------------------------------------------------------------------------- helpers


def _video_seconds(packaged: Packaged, media: MediaMap) -> float:
    """The video's duration as packaged (what percent positions refer to)."""
    videos = [s.duration for s in packaged.result.streams if s.type == "video"]
    if videos:
        return max(videos)
    source = media.sources.get(media.video) if media.video else None
    return source.duration if source else 0.0


def _check_output_access(storage: Storage) -> None:
    """Fail before the encode, not after it, when the output storage refuses or cannot be
    reached; a folder that does not exist yet is fine (publishing creates it)."""
    try:
        storage.check_access()
    except StorageError as error:
        if error.kind in ("denied", "unreachable"):
            raise storage_error_to_engine(error, publishing=True) from None


def _tar(folder: Path, target: Path) -> None:
    with tarfile.open(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=path.relative_to(folder).as_posix())


def _protection(keys, quality_group: str, scheme: str):
    if keys is None:
        return None
    from drm.track import TrackEncryption

    return TrackEncryption(keys.key_for(quality_group), scheme, presentation_keys=list(keys))


def _needs_service_key(job: Job) -> bool:
    storages = [job.content_acquisition, job.content_publishing]
    if job.image_extraction:
        storages.append(job.image_extraction.location)
    if any(s.credentials_protection == Protection.Encrypted for s in storages):
        return True
    if any(p.credentials_protection == Protection.Encrypted for p in job.message_publishers or []):
        return True
    processing = job.content_processing
    if processing.drm_protection == DrmProtection.Encrypted:
        return True
    managed = processing.drm_managed
    return bool(managed and managed.keys_protection == Protection.Encrypted)


def output_frame_rate(video: VideoTrackInfo, average: Fraction | None = None) -> Fraction:
    """The constant output rate: the source's, or for VFR sources their average (`average`,
    measured, else the probe's), snapped to a common rate when within 1%."""
    rate = Fraction(video.frame_rate) if video.frame_rate else Fraction(25)
    if average and not video.constant_frame_rate:
        rate = average
    if video.constant_frame_rate:
        return rate
    for common in (
        Fraction(24000, 1001),
        24,
        25,
        Fraction(30000, 1001),
        30,
        50,
        Fraction(60000, 1001),
        60,
    ):
        if abs(rate - common) / common < Fraction(1, 100):
            return Fraction(common)
    return rate.limit_denominator(1001)


def measured_frame_rate(
    path: Path, video: VideoTrackInfo, cancel: Callable[[], None] | None = None
) -> Fraction | None:
    """A track's true average rate: its frames counted over its time span (demuxing only, no
    decoding). For VFR sources: containers such as Matroska state a nominal rate (the default
    frame duration) that variable-rate content does not keep."""
    import av

    count, first, end, last_duration = 0, None, None, 0
    try:
        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.index == video.index)
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                if cancel and count % 1000 == 0:
                    cancel()
                count += 1
                first = packet.pts if first is None else min(first, packet.pts)
                if end is None or packet.pts >= end:
                    end, last_duration = packet.pts, packet.duration or 0
            time_base = stream.time_base
    except (av.FFmpegError, StopIteration):
        return None  # the transcoder reports what is wrong with the file
    if count < 2 or first is None or end is None or end <= first:
        return None
    span = Fraction(end - first) * time_base
    # The last frame lasts its own duration, else an average interval.
    span += Fraction(last_duration) * time_base if last_duration else span / (count - 1)
    return (count / span).limit_denominator(1001)


def _expected_duration(source_duration: float, frame_rate: Fraction) -> float:
    frames = max(1, round(source_duration * frame_rate))
    return float(frames / frame_rate)


def _main_video(media: MediaMap) -> VideoTrackInfo | None:
    source = media.sources.get(media.video) if media.video else None
    return source.main_video if source else None


def _audio_duration(media: MediaMap) -> float:
    durations = [media.sources[a.path].duration for a in media.audio if a.path in media.sources]
    return max(durations, default=0.0)


def _rate_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{float(rate):.3f}"


def _text_origin(source: TextSource) -> str:
    if source.track_index is None:
        return source.path.name
    return f"{source.path.name}#{source.track_index}"


def _stream_json(stream, encoder: str | None = None, metrics=None) -> dict[str, Any]:
    fields = {
        "Type": stream.type.capitalize(),
        "Label": stream.quality_group or stream.type.upper(),
        "Name": stream.name,
        "Codecs": stream.codecs,
        "Width": stream.width,
        "Height": stream.height,
        "FrameRate": _rate_text(stream.frame_rate) if stream.frame_rate else None,
        "BitrateInKbps": round(stream.average_bandwidth / 1000),
        "PeakBitrateInKbps": round(stream.bandwidth / 1000),
        "Language": stream.language,
        "KeyId": stream.key_id,
        "Iv": stream.iv,
        "InitFile": stream.init_file,
        "FileTemplate": stream.file_template,
    }
    if encoder:  # the encoder that wrote this rendition (a CPU fallback shows here)
        fields["Encoder"] = encoder
    if metrics is not None:  # QualityMetrics: Psnr, PsnrY, Ssim, Vmaf (engine.quality)
        fields.update(metrics.stream_fields())
    return fields


def video_rendition_fields(rendition: VideoRendition, **extra: Any) -> dict[str, Any]:
    """A planned video rendition as `VideoEncodingStarted` lists it."""
    return {
        "Name": rendition.name,
        "Width": rendition.width,
        "Height": rendition.height,
        "BitrateInKbps": rendition.bitrate_kbps,
        "Codec": rendition.codec,
        **extra,
    }


def job_created_fields(job: Job, warnings) -> dict[str, Any]:
    """The JobCreated event's own fields: the job without any secret."""
    processing = job.content_processing.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude={"content_key", "drm_managed"},
    )
    if job.content_processing.drm_managed is not None:
        processing["DrmManaged"] = job.content_processing.drm_managed.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude={"management_key", "key_seed_id", "thumbprints"},
        )
    return {
        "ContentAcquisitionProvider": job.content_acquisition.provider.value,
        "ContentAcquisitionUriPath": job.content_acquisition.uri_path,
        "MessagePublisherTypes": [p.type.value for p in job.message_publishers or []],
        "ContentPreProcessing": job.media_mappings.model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
        "ContentProcessing": processing,
        "Warnings": [w.as_json() for w in warnings],
    }


def content_mapped_fields(media: MediaMap) -> dict[str, Any]:
    return {
        "VideoFile": media.video.name if media.video else None,
        "VideoRenditionFiles": [p.name for p in media.renditions],
        "AudioFiles": [
            {
                "File": a.path.name,
                "Language": a.language,
                "Tracks": list(a.track_indices),
                "Descriptive": a.descriptive,
            }
            for a in media.audio
        ],
        "SubtitleFiles": [
            {"File": s.path.name, "Language": s.language, "Track": s.track_index}
            for s in media.subtitles
        ],
        "CaptionFiles": [
            {"File": c.path.name, "Language": c.language, "Track": c.track_index}
            for c in media.captions
        ],
        "WatermarkFiles": [p.name for p in media.watermarks],
        "IgnoredFiles": [p.name for p in media.ignored_files],
        "IgnoredTracks": list(media.ignored_tracks),
    }


# ----------------------------------------------------------------------------- entry point


def run_job(
    job: dict | str | bytes | Path,
    *,
    on_event: EventSink | None = None,
    cancel: CancelToken | None = None,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    data_dir: Path | None = None,
    job_id: str | None = None,
    tenant_id: str = "local",
    capabilities: NodeCapabilities | None = None,
    strict: bool = False,
    keys: Any = None,
    checkpoints: bool = False,
) -> dict[str, Any]:
    """Run one job in this process and return its reporting entry (contract §9).

    `job` is a dict, a JSON string/bytes, or a path to a JSON file. Events go to `on_event`
    (each a dict, in order). `cancel` stops the job between frames and file transfers
    (FinalError 5001). An invalid job raises JobValidationError before anything runs; every
    other failure ends the job with a FinalError event and a report with `Success: false`.
    `checkpoints`: phases finished by an earlier attempt in the same `workdir` are skipped
    (`engine.pipeline.checkpoints`); give a stable `workdir` and `keep_workdir=True` with it.
    """
    checked = validate_job(
        load_job_json(Path(job) if isinstance(job, Path) else job), strict=strict
    )
    job_id = job_id or str(uuid.uuid4())
    events = EventEmitter(
        job_id,
        tenant_id,
        (checked.job.external_id, checked.job.external_type, checked.job.external_provider),
        [on_event] if on_event else [],
    )
    own_workdir = workdir is None
    folder = Path(tempfile.mkdtemp(prefix=f"vipe-{job_id[:8]}-")) if own_workdir else workdir
    folder.mkdir(parents=True, exist_ok=True)
    context = JobContext(
        job_id=job_id,
        tenant_id=tenant_id,
        workdir=folder,
        events=events,
        cancel=cancel or CancelToken(),
        # Probed once per process; a job with HardwareAcceleration None probes no GPU.
        capabilities=capabilities
        or node_capabilities(checked.job.content_processing.hardware_acceleration),
        data_dir=default_data_dir(data_dir),
    )
    try:
        if checkpoints:  # resume in a stable work folder (a worker's, per job id)
            from engine.pipeline.checkpoints import Checkpoints, job_digest

            context.checkpoints = Checkpoints(folder, job_digest(checked.job), job_id)
            context.checkpoints.prepare()
        return JobRunner(checked, context, keys).run()
    finally:
        if not keep_workdir:
            shutil.rmtree(folder, ignore_errors=True)


__all__ = ["JobRunner", "run_job"]

"""DRM + Packaging: the encoded renditions, text tracks and thumbnail tiles into the package
(DASH, HLS, CMAF), encrypted under the job's keys."""

from __future__ import annotations

import dataclasses
import shutil
from typing import TYPE_CHECKING, Literal, cast

from engine import ladder
from engine.errors import MappingError, PackagingError
from engine.languages import english_name, native_name
from engine.pipeline.payloads import stream_fields
from engine.pipeline.results import Encoded, Mapped, Packaged, Prepared
from packagers.errors import PackagingError as PackagerError
from packagers.hooks import ImageInput, TrackProtection
from packagers.model import PackageSpec, TextInput, TrackInput
from packagers.packager import package

if TYPE_CHECKING:
    from drm.keys import KeySet
    from engine.media import TextSource
    from engine.pipeline.scope import JobScope


def package_output(
    scope: JobScope, prepared: Prepared, mapped: Mapped, encoded: Encoded
) -> Packaged:
    """Write the package into `output/` of the work folder."""
    processing = scope.processing
    names = ladder.manifest_names(processing.naming)
    spec = PackageSpec(
        formats=[f.value for f in processing.formats],
        byte_range=processing.segment_format.value == "ByteRange",
        segment_seconds=processing.segment_length_in_seconds,
        dash_manifest=names[0],
        hls_manifest=names[1],
        boundaries=encoded.boundaries,
    )
    texts = _text_tracks(scope, mapped, encoded.duration)
    tracks = _track_inputs(scope, prepared.keys, encoded)
    images = _thumbnail_images(scope, mapped, encoded)
    folder = scope.workdir / "output"
    # A fresh folder: the files of an earlier attempt (a resumed job) may have been published
    # as hard links (Publishing shares them); writing into them would change the published
    # package. Removing them and writing new files leaves that untouched.
    shutil.rmtree(folder, ignore_errors=True)
    try:
        result = package(tracks, texts, spec, folder, images=images, cancel=scope.cancel.check)
    except PackagerError as error:
        raise PackagingError(str(error)) from None
    encoders = {t.name: t.encoder for t in encoded.tracks}
    metrics = {t.name: t.quality for t in encoded.tracks if t.quality is not None}
    streams = tuple(
        stream_fields(s, encoders.get(s.name), metrics.get(s.name)) for s in result.streams
    )
    return Packaged(folder, result, streams)


def _protection(keys: KeySet | None, quality_group: str, scheme: str) -> TrackProtection | None:
    if keys is None:
        return None
    from drm.track import TrackEncryption

    encryption = TrackEncryption(keys.key_for(quality_group), scheme, presentation_keys=list(keys))
    # TrackEncryption implements the packager's hooks without subclassing them (drm does not
    # import packagers).
    return cast("TrackProtection", encryption)


def _track_inputs(scope: JobScope, keys: KeySet | None, encoded: Encoded) -> list[TrackInput]:
    by_name = {t.name: t for t in encoded.tracks}
    native = scope.processing.use_native_language_names
    scheme = scope.processing.scheme.value
    inputs = []
    for rendition in encoded.video:
        inputs.append(
            TrackInput(
                path=by_name[rendition.name].path,
                kind="video",
                name=rendition.name,
                quality_group=rendition.quality_group,
                target_kbps=rendition.bitrate_kbps,
                track_id=by_name[rendition.name].track_id,
                sample_entry_from=by_name[rendition.name].sample_entry_from,
                protection=_protection(keys, rendition.quality_group, scheme),
            )
        )
    for audio in encoded.audio:
        language = audio.source.language
        label = native_name(language) if native else english_name(language)
        if audio.source.descriptive:
            label += " (audio description)"
        inputs.append(
            TrackInput(
                path=by_name[audio.name].path,
                kind="audio",
                name=audio.name,
                language=language,
                label=label,
                role="description" if audio.source.descriptive else "main",
                quality_group="AUDIO",
                target_kbps=audio.bitrate_kbps,
                priming_samples=by_name[audio.name].priming,
                track_id=by_name[audio.name].track_id,
                sample_entry_from=by_name[audio.name].sample_entry_from,
                protection=_protection(keys, "AUDIO", scheme),
            )
        )
    return inputs


def _text_tracks(scope: JobScope, mapped: Mapped, duration: float) -> list[TextInput]:
    """Subtitles and captions converted to WebVTT; one that cannot be converted is left out
    with a Warning, unless the job's FailOnNo…Tracks demands it."""
    folder = scope.workdir / "text"
    folder.mkdir(parents=True, exist_ok=True)
    processing = scope.processing
    mappings = scope.job.media_mappings
    texts: list[TextInput] = []
    sources = (*mapped.media.subtitles, *mapped.media.captions)
    if not sources:
        return texts
    from packagers.subtitles import SubtitleError, convert_to_webvtt  # only jobs with text

    for source in sources:
        name = ladder.subtitle_name(source.language, processing.naming, source.kind)
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
            scope.events.warning(
                "SubtitleSkipped", f"{source.kind} {_text_origin(source)} left out: {error}"
            )
            continue
        language = source.language
        label = (
            native_name(language)
            if processing.use_native_language_names
            else english_name(language)
        )
        kind: Literal["subtitle", "caption"] = "subtitle"
        if source.kind == "caption":
            kind, label = "caption", label + " (CC)"
        texts.append(TextInput(target, name, language, label, kind))
    return texts


def _text_origin(source: TextSource) -> str:
    if source.track_index is None:
        return source.path.name
    return f"{source.path.name}#{source.track_index}"


def _thumbnail_images(scope: JobScope, mapped: Mapped, encoded: Encoded) -> list[ImageInput]:
    """The thumbnail tiles of `Thumbnails` (Generate), made before packaging so that the
    DASH and HLS manifests can list them; failures are FinalError 4201."""
    spec = scope.job.thumbnails
    if spec is None or not spec.generate:
        return []
    source = mapped.image_source()
    if source is None:
        scope.events.warning("ThumbnailsSkipped", "Thumbnails need a video track: none here")
        return []
    path, track = source
    from engine.images import make_thumbnails, plan_thumbnails  # only jobs with thumbnails

    plan = plan_thumbnails(
        encoded.duration,
        track.display_aspect_ratio,
        width=spec.width,
        height=spec.height,
        interval=spec.duration_in_seconds,
        columns=spec.tile_columns,
        rows=spec.tile_rows,
    )
    image = make_thumbnails(path, track, plan, scope.workdir / "thumbnails", scope.cancel.check)
    if spec.bandwidth_in_kbps:
        image = dataclasses.replace(image, bandwidth=spec.bandwidth_in_kbps * 1000)
    return [image]

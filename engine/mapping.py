"""Media mapping (contract §4): which acquired files and tracks are the video, the audio, the
subtitles and the captions of a job, and in which language.

Decisions where the contract leaves room, all **(vipe)**:

- Audio is the union of the video file's audio tracks and every mapped separate audio file
  (main and descriptive): platforms deliver dubs as separate files beside a master that carries
  the original language, and dropping the original is never what they want. Which in-file tracks
  count: all of them, or exactly those `AudioMappings.VideoStreamAudioTracks` names. A separate
  *main* audio file replaces an in-file track of the same language (a separate descriptive file
  never does: in-file tracks are not descriptive); the replaced track is neither used nor an
  ignored track: it is listed in `MediaMap.replaced_tracks` (an `AudioTrackReplaced` warning
  event, vipe's info event). `AudioLanguages` filters the union afterwards.
- `AudioMappings.VideoStreamAudioTracks[].TrackIndices` are 1-based positions among the audio
  tracks of the video file: `[1, 2]` is its first two audio tracks (for the common file with
  the video as stream 0 these equal the container stream numbers). Two or six tracks are
  grouped into one stereo or 5.1 source and must each be mono; one track is used as it is.
- A file matched by several roles' expressions takes one: a subtitle extension (vtt, srt, ttml,
  dfxp, xml, scc, stl) decides between text and media roles, captions win over subtitles,
  descriptive audio over audio, an explicit `*Streams` entry over the role's expression, and
  between video and audio the probe decides (a file with a video track is the video).
- Separate audio files in Regex mode use their first audio track, with the language from the
  expression (capture group 1), else the track metadata, else `FallbackLanguageCode`. In
  Convention mode every audio track of a separate audio file is used, with the language from the
  track metadata, else the file name, else the fallback.
- A language that the job gives (a `Language`, a capture group) and that is not a language code
  is a `MappingError`; a missing or undetermined one ("und") takes the fallback.
- Empty `AudioLanguages`/`SubtitleLanguages`/`CaptionLanguages` lists filter nothing, like
  absent ones.
- Only audio, video and subtitle tracks count as tracks (not timecode, data or attachments).
  Bitmap subtitle tracks (DVD, PGS, DVB) cannot become WebVTT and are ignored tracks. Subtitle
  tracks of files other than the video file are ignored tracks.
- In Convention mode, files with a subtitle extension are text, image files are watermarks when
  named so (else ignored), files with a known audio/video extension are probed; anything else
  is an ignored file. The Regex expressions are not used in Convention mode.
- CEA-608 captions carried in the video file's stream (A/53 `cc_data` in H.264/H.265 SEI or
  MPEG-2 user data: found by decoding the first 10 seconds) are a caption track, channel CC1,
  read from the video track (`TextSource.track_index` is the video's stream index). CEA-608 says
  nothing of the language: it is `FallbackLanguageCode` (left out, and logged, when that is
  empty). They count for `FailOnNoCaptionTracks` and are filtered by `CaptionLanguages` like
  caption files.
- Subtitle files are not probed (TTML and DFXP are not media to FFmpeg); the subtitle converter
  reads them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import MappingError
from engine.job import ContentProcessing, MediaDetection, MediaMappings
from engine.languages import is_known_language, normalize_language
from engine.media import (
    AudioSource,
    AudioTrackInfo,
    MediaMap,
    SourceInfo,
    SubtitleTrackInfo,
    TextSource,
    VideoTrackInfo,
)
from engine.probe import probe
from engine.regex import compile_expression
from packagers.captions import has_cea608

log = logging.getLogger(__name__)

_Track = VideoTrackInfo | AudioTrackInfo | SubtitleTrackInfo

TEXT_EXTENSIONS = frozenset({".vtt", ".webvtt", ".srt", ".ttml", ".dfxp", ".xml", ".scc", ".stl"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
MEDIA_EXTENSIONS = frozenset(
    {
        # video containers
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mxf", ".ts", ".m2ts", ".mts",
        ".mpg", ".mpeg", ".m2v", ".vob", ".wmv", ".asf", ".flv", ".3gp", ".3g2", ".ogv",
        ".y4m", ".ismv", ".264", ".h264", ".265", ".h265", ".hevc", ".ivf", ".dv",
        # audio
        ".m4a", ".mka", ".wav", ".mp3", ".aac", ".ac3", ".eac3", ".ec3", ".flac", ".ogg",
        ".oga", ".opus", ".wma", ".aif", ".aiff", ".caf", ".mp2", ".dts", ".w64", ".isma",
    }
)  # fmt: skip
BITMAP_SUBTITLE_CODECS = frozenset({"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "xsub"})

_MARKER = re.compile(r"[-_.](cc|ad)(?=$|[-_.])", re.IGNORECASE)  # fixed pattern, not from a job
_NAME_PARTS = re.compile(r"[-_.]")
_MAX_NAMES = 20  # files/tracks listed in one error message

VIDEO, AUDIO, DESCRIPTIVE, SUBTITLE, CAPTION = (
    "video",
    "audio",
    "descriptive",
    "subtitle",
    "caption",
)
_TEXT_ROLES = (SUBTITLE, CAPTION)
_AUDIO_ROLES = (AUDIO, DESCRIPTIVE)


@dataclass(frozen=True)
class _Role:
    """What an expression (or the convention) made of one file."""

    role: str
    language: str | None  # raw language text (capture group, explicit Language, file name)
    origin: str  # what assigned it, for messages: "AudioFileLanguageExpression", ...
    explicit: bool  # the language comes from the job: an invalid one is an error


def map_media(
    files: list[Path], mappings: MediaMappings, processing: ContentProcessing
) -> MediaMap:
    """Decide what the acquired `files` are: the video file (or the renditions in packaging-only
    mode), the audio sources, subtitles, captions and watermark images, every language
    normalised (`engine.languages.normalize_language`), and what is left unused.

    Every media file that is used is probed once; the results are `MediaMap.sources`. Raises
    `MappingError` (3001) when the mapping cannot be made or a `FailOn…` rule is broken, and
    `SourceError` (3002) when a media file is unreadable. See the module docstring for the
    choices the contract leaves open.
    """
    return _Mapper(files, mappings, processing).run()


class _Mapper:
    def __init__(
        self, files: list[Path], mappings: MediaMappings, processing: ContentProcessing
    ) -> None:
        unique = {Path(f): None for f in files if not Path(f).is_dir()}
        self.files = sorted(unique, key=lambda p: (p.name, str(p)))
        self.mappings = mappings
        self.processing = processing
        self.sources: dict[Path, SourceInfo] = {}
        self.video_tracks: set[tuple[Path, int]] = set()  # (file, stream index) of used video
        self.filtered: dict[str, list[str]] = {}  # kind -> what a language filter removed
        self.file_reasons: dict[Path, str] = {}
        self.track_reasons: dict[tuple[Path, int], str] = {}
        self.main: Path | None = None  # the file whose tracks are "in-file": the video file
        self.video: Path | None = None
        self.renditions: tuple[Path, ...] = ()
        self.watermarks: tuple[Path, ...] = ()
        self.audio: list[AudioSource] = []
        self.subtitles: list[TextSource] = []
        self.captions: list[TextSource] = []
        # in-file audio replaced by a separate file of its language: (file, tracks) -> text
        self.replaced: dict[tuple[Path, tuple[int, ...]], str] = {}

    # ------------------------------------------------------------------------------ main flow

    def run(self) -> MediaMap:
        self._map_watermarks()
        remaining = [f for f in self.files if f not in self.watermarks]
        if self.mappings.media_detection == MediaDetection.Convention:
            roles = self._convention_roles(remaining)
        else:
            roles = self._regex_roles(remaining)
        by_role: dict[str, list[tuple[Path, _Role]]] = {}
        for path, role in roles.items():
            by_role.setdefault(role.role, []).append((path, role))
        self._map_video([p for p, _ in by_role.get(VIDEO, [])])
        self._map_audio(by_role.get(AUDIO, []), by_role.get(DESCRIPTIVE, []))
        self._map_text(by_role.get(SUBTITLE, []), by_role.get(CAPTION, []))
        self._filter_languages()
        self._check_fail_rules()
        used_files, _ = self._usage()
        ignored_files = tuple(f for f in self.files if f not in used_files)
        ignored_tracks = self._ignored_tracks()
        for path in ignored_files:
            log.info("ignored file %s: %s", path.name, self.file_reasons.get(path, "not mapped"))
        for key, text in ignored_tracks:
            log.info("ignored track %s: %s", text, self.track_reasons.get(key, "not mapped"))
        return MediaMap(
            video=self.video,
            renditions=self.renditions,
            audio=tuple(self.audio),
            subtitles=tuple(self.subtitles),
            captions=tuple(self.captions),
            watermarks=self.watermarks,
            ignored_files=ignored_files,
            ignored_tracks=tuple(text for _, text in ignored_tracks),
            replaced_tracks=tuple(self.replaced.values()),
            sources=dict(self.sources),
        )

    def _probe(self, path: Path) -> SourceInfo:
        if path not in self.sources:
            self.sources[path] = probe(path)  # SourceError (3002) for unreadable files
        return self.sources[path]

    # ----------------------------------------------------------------------------- watermarks

    def _map_watermarks(self) -> None:
        found: list[Path] = []
        by_name = {f.name: f for f in self.files}
        by_lower = {f.name.lower(): f for f in self.files}
        for i, mark in enumerate(self.processing.visible_video_watermarks or []):
            name = mark.watermark_file_name
            path = by_name.get(name) or by_lower.get(name.lower())
            if path is None:
                raise MappingError(
                    f"VisibleVideoWatermarks[{i}]: the watermark file {name!r} is not among the "
                    f"acquired files ({_names(self.files)})"
                )
            if path not in found:
                found.append(path)
        self.watermarks = tuple(found)

    # --------------------------------------------------------------------------- classifying

    def _regex_roles(self, files: list[Path]) -> dict[Path, _Role]:
        m = self.mappings
        expressions = [
            (VIDEO, "VideoStreamExpression", m.video_stream_expression),
            (AUDIO, "AudioFileLanguageExpression", m.audio_file_language_expression),
            (
                DESCRIPTIVE,
                "DescriptiveAudioFileLanguageExpression",
                m.descriptive_audio_file_language_expression,
            ),
            (SUBTITLE, "SubtitleFileLanguageExpression", m.subtitle_file_language_expression),
            (CAPTION, "CaptionFileLanguageExpression", m.caption_file_language_expression),
        ]
        lists = [
            (AUDIO, "AudioStreams", m.audio_streams),
            (SUBTITLE, "SubtitleStreams", m.subtitle_streams),
            (CAPTION, "CaptionStreams", m.caption_streams),
        ]
        compiled = [
            (role, alias, _compile(alias, expression))
            for role, alias, expression in expressions
            if expression
        ]
        compiled_lists = [
            (role, f"{alias}[{i}]", entry.language, _compile(alias, entry.file_name_expression))
            for role, alias, entries in lists
            for i, entry in enumerate(entries or [])
        ]
        roles: dict[Path, _Role] = {}
        for path in files:
            name = path.name
            found: dict[str, _Role] = {}
            # An explicit entry gives the language itself and wins over the role's expression.
            for role, origin, listed, regex in compiled_lists:
                if role not in found and regex.search(name):
                    found[role] = _Role(role, listed, origin, explicit=True)
            for role, origin, regex in compiled:
                if role in found:
                    continue
                match = regex.search(name)
                if match:
                    language = match.group(1) if role != VIDEO and regex.groups >= 1 else None
                    found[role] = _Role(role, language, origin, explicit=True)
            resolved = self._resolve(path, found)
            if resolved is None:
                self.file_reasons.setdefault(path, "matched no expression")
            else:
                roles[path] = resolved
        return roles

    def _resolve(self, path: Path, found: dict[str, _Role]) -> _Role | None:
        """One role for a file that several expressions matched (see the module docstring)."""
        if not found:
            return None
        is_text = path.suffix.lower() in TEXT_EXTENSIONS
        text = {r: v for r, v in found.items() if r in _TEXT_ROLES}
        media = {r: v for r, v in found.items() if r not in _TEXT_ROLES}
        if text and media:
            found = text if is_text else media
        if CAPTION in found:
            found.pop(SUBTITLE, None)
        if DESCRIPTIVE in found:
            found.pop(AUDIO, None)
        if len(found) > 1:  # video and an audio role: the content decides
            audio_role = next(v for r, v in found.items() if r in _AUDIO_ROLES)
            return found[VIDEO] if self._probe(path).video else audio_role
        return next(iter(found.values()))

    def _convention_roles(self, files: list[Path]) -> dict[Path, _Role]:
        roles: dict[Path, _Role] = {}
        for path in files:
            suffix = path.suffix.lower()
            markers = {m.lower() for m in _MARKER.findall(path.stem)}
            language = _language_from_name(path.name)
            if suffix in TEXT_EXTENSIONS:
                role = CAPTION if "cc" in markers else SUBTITLE
                roles[path] = _Role(role, language, "file name", explicit=False)
            elif suffix in IMAGE_EXTENSIONS:
                self.file_reasons[path] = "an image that no VisibleVideoWatermarks entry names"
            elif suffix in MEDIA_EXTENSIONS:
                info = self._probe(path)
                if info.video:
                    roles[path] = _Role(VIDEO, None, "a video track", explicit=False)
                elif info.audio:
                    role = DESCRIPTIVE if "ad" in markers else AUDIO
                    roles[path] = _Role(role, language, "an audio track", explicit=False)
                else:
                    self.file_reasons[path] = "has no video or audio track"
            else:
                self.file_reasons[path] = f"not a media, subtitle or image file ({suffix or '-'})"
        return roles

    # ---------------------------------------------------------------------------------- video

    def _map_video(self, candidates: list[Path]) -> None:
        m = self.mappings
        convention = m.media_detection == MediaDetection.Convention
        if self.processing.packaging_only and candidates:
            for path in candidates:
                info = self._probe(path)
                if not info.video:
                    raise MappingError(
                        f"{path.name} matched VideoStreamExpression as a rendition "
                        "(VideoFormat DoNotEncode) but has no video track"
                    )
                self.video_tracks.add((path, info.video[0].index))
                for extra in info.video[1:]:
                    self.track_reasons[(path, extra.index)] = "a second video track"
            self.renditions = tuple(candidates)  # already sorted by name
            self.video = self.main = candidates[0]
            for path in candidates[1:]:
                others: tuple[_Track, ...] = (
                    *self.sources[path].audio,
                    *self.sources[path].subtitles,
                )
                for track in others:
                    self.track_reasons[(path, track.index)] = (
                        f"only the tracks of the first rendition ({candidates[0].name}) are used"
                    )
            return
        if len(candidates) > 1:
            if convention:
                raise MappingError(
                    f"{len(candidates)} files have a video track, expected one (set VideoFormat "
                    f"DoNotEncode to package several renditions): {_names(candidates)}"
                )
            raise MappingError(
                f"VideoStreamExpression {m.video_stream_expression!r} matched {len(candidates)} "
                f"files, expected one: {_names(candidates)}"
            )
        if not candidates:
            if m.fail_on_no_video_tracks:
                if convention:
                    detail = f"no acquired file has a video track ({_names(self.files)})"
                elif not m.video_stream_expression:
                    detail = "VideoStreamExpression is not set"
                else:
                    detail = (
                        f"VideoStreamExpression {m.video_stream_expression!r} matched none of "
                        f"the acquired files ({_names(self.files)})"
                    )
                raise MappingError(f"FailOnNoVideoTracks: no video found: {detail}")
            return
        path = candidates[0]
        info = self._probe(path)
        self.main = path
        if not info.video:
            if m.fail_on_no_video_tracks:
                raise MappingError(
                    f"FailOnNoVideoTracks: {path.name} matched VideoStreamExpression but has no "
                    "video track"
                )
            return  # an audio-only main file: its tracks are the in-file audio and subtitles
        self.video = path
        self.video_tracks.add((path, info.video[0].index))
        for extra in info.video[1:]:
            self.track_reasons[(path, extra.index)] = "a second video track"

    # ---------------------------------------------------------------------------------- audio

    def _map_audio(
        self, main_files: list[tuple[Path, _Role]], descriptive: list[tuple[Path, _Role]]
    ) -> None:
        audio_mappings = self.mappings.audio_mappings
        groups = audio_mappings.video_stream_audio_tracks if audio_mappings else None
        in_file: list[AudioSource] = []
        if groups:
            in_file = self._grouped_audio(groups)
        elif self.main is not None:
            for track in self.sources[self.main].audio:
                what = f"audio track {self.main.name}#{track.index}"
                language = self._language([(track.language, False)], what)
                in_file.append(
                    AudioSource(self.main, (track.index,), language, False, track.channels)
                )
        separate = [
            source
            for path, role in (*main_files, *descriptive)
            for source in self._audio_file(path, role)
        ]
        # The union; a separate main audio file wins over an in-file track of its language.
        by_language = {s.language: s for s in separate if not s.descriptive}
        kept = []
        for source in in_file:
            replacement = by_language.get(source.language)
            if replacement is None:
                kept.append(source)
                continue
            tracks = "+".join(f"#{index}" for index in source.track_indices)
            self.replaced[(source.path, source.track_indices)] = (
                f"{source.path.name}{tracks} ({source.language}) by "
                f"{replacement.path.name}#{replacement.track_indices[0]}"
            )
        self.audio = kept + separate

    def _grouped_audio(self, groups) -> list[AudioSource]:
        """`AudioMappings.VideoStreamAudioTracks`: pick and group audio tracks of the video
        file (1-based positions among its audio tracks)."""
        if self.main is None:
            raise MappingError(
                "AudioMappings.VideoStreamAudioTracks names tracks of the video file, but there "
                "is no video file"
            )
        info = self.sources[self.main]
        tracks = info.audio
        result: list[AudioSource] = []
        for i, group in enumerate(groups):
            where = f"AudioMappings.VideoStreamAudioTracks[{i}]"
            for position in group.track_indices:
                if not 1 <= position <= len(tracks):
                    raise MappingError(
                        f"{where}: audio track {position} does not exist: {self.main.name} has "
                        f"{len(tracks)} audio track(s), numbered from 1"
                    )
            picked = [tracks[p - 1] for p in group.track_indices]
            if len(picked) > 1:
                for position, track in zip(group.track_indices, picked, strict=True):
                    if track.channels != 1:
                        raise MappingError(
                            f"{where}: only mono tracks can be grouped, but audio track "
                            f"{position} of {self.main.name} has {track.channels} channels"
                        )
                channels = len(picked)
            else:
                channels = picked[0].channels
            what = f"audio track(s) {', '.join(map(str, group.track_indices))} of {self.main.name}"
            language = self._language([(group.language, True), (picked[0].language, False)], what)
            result.append(
                AudioSource(self.main, tuple(t.index for t in picked), language, False, channels)
            )
        for track in tracks:
            if all(track.index not in s.track_indices for s in result):
                self.track_reasons[(self.main, track.index)] = (
                    "not listed in AudioMappings.VideoStreamAudioTracks"
                )
        return result

    def _audio_file(self, path: Path, role: _Role) -> list[AudioSource]:
        info = self._probe(path)
        if not info.audio:
            raise MappingError(
                f"{path.name} was mapped as {'descriptive ' if role.role == DESCRIPTIVE else ''}"
                f"audio ({role.origin}) but has no audio track"
            )
        descriptive = role.role == DESCRIPTIVE
        convention = self.mappings.media_detection == MediaDetection.Convention
        tracks = info.audio if convention else info.audio[:1]
        sources = []
        for track in tracks:
            what = f"audio track {path.name}#{track.index}"
            if convention:  # track metadata first, then the file name
                candidates = [(track.language, False), (role.language, False)]
            else:  # the expression's language first, then the track metadata
                candidates = [(role.language, role.explicit), (track.language, False)]
            language = self._language(candidates, what)
            sources.append(AudioSource(path, (track.index,), language, descriptive, track.channels))
        for track in info.audio[len(tracks) :]:
            self.track_reasons[(path, track.index)] = "only the first audio track is used"
        return sources

    # ------------------------------------------------------------------------------- text

    def _map_text(
        self, subtitle_files: list[tuple[Path, _Role]], caption_files: list[tuple[Path, _Role]]
    ) -> None:
        if self.main is not None:
            for track in self.sources[self.main].subtitles:
                if track.codec in BITMAP_SUBTITLE_CODECS:
                    self.track_reasons[(self.main, track.index)] = (
                        f"a bitmap subtitle track ({track.codec}) cannot be converted to text"
                    )
                    continue
                what = f"subtitle track {self.main.name}#{track.index}"
                language = self._language([(track.language, False)], what)
                self.subtitles.append(TextSource(self.main, language, SUBTITLE, track.index))
        self._embedded_captions()
        for files, kind, target in (
            (subtitle_files, SUBTITLE, self.subtitles),
            (caption_files, CAPTION, self.captions),
        ):
            for path, role in files:
                what = f"{kind} file {path.name}"
                language = self._language([(role.language, role.explicit)], what)
                target.append(TextSource(path, language, kind))

    def _embedded_captions(self) -> None:
        """CEA-608 captions in the video file's video track (see the module docstring)."""
        if self.video is None:
            return
        track = self.sources[self.video].video[0]
        if not has_cea608(self.video, track.index):
            return
        what = f"the CEA-608 captions of {self.video.name}#{track.index}"
        try:
            language = self._language([], what)
        except MappingError as error:
            log.info("left out %s: %s", what, error)
            return
        self.captions.append(TextSource(self.video, language, CAPTION, track.index))

    # ------------------------------------------------------------------------------ languages

    def _language(self, candidates: list[tuple[str | None, bool]], what: str) -> str:
        """The first usable language among (text, given by the job) candidates, else the
        fallback. A language the job gives that is not a language code is an error."""
        for text, explicit in candidates:
            if text is None or not text.strip():
                continue
            code = normalize_language(text)
            if code is not None:
                return code
            if explicit and text.strip().lower() != "und":
                raise MappingError(f"{what}: {text!r} is not a language code")
        fallback = self.mappings.fallback_language_code
        if not fallback:
            raise MappingError(
                f"no language found for {what}, and FallbackLanguageCode is empty (set it, or "
                "give the language in the job or the track metadata)"
            )
        code = normalize_language(fallback)
        if code is None:
            raise MappingError(f"FallbackLanguageCode {fallback!r} is not a language code")
        return code

    def _allowed(self, alias: str, values: list[str] | None) -> set[str] | None:
        if not values:
            return None
        allowed = set()
        for value in values:
            code = normalize_language(value)
            if code is None:
                raise MappingError(f"{alias}: {value!r} is not a language code")
            allowed.add(code)
        return allowed

    def _filter_languages(self) -> None:
        m = self.mappings
        self.audio = self._keep(self.audio, "AudioLanguages", m.audio_languages, "audio")
        self.subtitles = self._keep(
            self.subtitles, "SubtitleLanguages", m.subtitle_languages, "subtitle"
        )
        self.captions = self._keep(
            self.captions, "CaptionLanguages", m.caption_languages, "caption"
        )

    def _keep(self, sources: list, alias: str, values: list[str] | None, kind: str) -> list:
        allowed = self._allowed(alias, values)
        if allowed is None:
            return sources
        kept = []
        for source in sources:
            if source.language in allowed:
                kept.append(source)
                continue
            reason = f"language {source.language} is not in {alias}"
            if isinstance(source, AudioSource):
                indices = source.track_indices
            else:
                indices = () if source.track_index is None else (source.track_index,)
            for index in indices:
                self.track_reasons[(source.path, index)] = reason
            self.file_reasons[source.path] = reason
            where = source.path.name + (f"#{indices[0]}" if indices else "")
            self.filtered.setdefault(kind, []).append(f"{where}: {source.language}")
        return kept

    # ------------------------------------------------------------------------------ FailOn…

    def _check_fail_rules(self) -> None:
        m = self.mappings
        checks = (
            ("FailOnNoAudioTracks", m.fail_on_no_audio_tracks, self.audio, "audio"),
            ("FailOnNoSubtitleTracks", m.fail_on_no_subtitle_tracks, self.subtitles, "subtitle"),
            ("FailOnNoCaptionTracks", m.fail_on_no_caption_tracks, self.captions, "caption"),
        )
        for rule, on, found, kind in checks:
            if on and not found:
                raise MappingError(f"{rule}: no {kind} found ({self._why_none(kind)})")
        if m.fail_on_ignored_files:
            used_files, _ = self._usage()
            ignored = [f for f in self.files if f not in used_files]
            if ignored:
                details = [f"{f.name} ({self.file_reasons.get(f, 'not mapped')})" for f in ignored]
                raise MappingError(
                    f"FailOnIgnoredFiles: {len(ignored)} acquired file(s) not used: "
                    + _join(details)
                )
        if m.fail_on_ignored_tracks:
            ignored_tracks = self._ignored_tracks()
            if ignored_tracks:
                details = [
                    f"{text} ({self.track_reasons.get(key, 'not mapped')})"
                    for key, text in ignored_tracks
                ]
                raise MappingError(
                    f"FailOnIgnoredTracks: {len(details)} track(s) not used: " + _join(details)
                )

    def _why_none(self, kind: str) -> str:
        m = self.mappings
        alias = {"audio": "AudioLanguages", "subtitle": "SubtitleLanguages"}.get(
            kind, "CaptionLanguages"
        )
        if self.filtered.get(kind):
            return f"{alias} left out {_join(self.filtered[kind])}"
        if kind == "caption":
            main = None
        elif self.main is not None:
            main = f"{self.main.name} has no {kind} track"
        else:
            main = "there is no video file"
        if m.media_detection == MediaDetection.Convention:
            separate = f"no separate {kind} file was found"
        else:
            expression = {
                "audio": "AudioFileLanguageExpression, DescriptiveAudioFileLanguageExpression "
                "or AudioStreams",
                "subtitle": "SubtitleFileLanguageExpression or SubtitleStreams",
                "caption": "CaptionFileLanguageExpression or CaptionStreams",
            }[kind]
            separate = f"no file matched {expression}"
        if kind == "caption" and self.video is not None:
            return f"{separate}, and {self.video.name} carries no CEA-608 captions"
        return f"{main}, and {separate}" if main else separate

    # ------------------------------------------------------------------------------ helpers

    def _usage(self) -> tuple[set[Path], set[tuple[Path, int]]]:
        """The files and (file, stream index) tracks that the mapping uses."""
        tracks = set(self.video_tracks)
        for source in self.audio:
            tracks |= {(source.path, index) for index in source.track_indices}
        texts = (*self.subtitles, *self.captions)
        tracks |= {(t.path, t.track_index) for t in texts if t.track_index is not None}
        files = set(self.watermarks) | {path for path, _ in tracks} | {t.path for t in texts}
        return files, tracks

    def _ignored_tracks(self) -> list[tuple[tuple[Path, int], str]]:
        """Audio, video and subtitle tracks of used files that nothing uses."""
        used_files, used_tracks = self._usage()
        used_tracks |= {(path, i) for path, indices in self.replaced for i in indices}
        ignored = []
        for path, info in self.sources.items():
            if path not in used_files:
                continue  # the whole file is ignored; its tracks are not listed one by one
            tracks: tuple[_Track, ...] = (*info.video, *info.audio, *info.subtitles)
            for track in tracks:
                if (path, track.index) not in used_tracks:
                    ignored.append(((path, track.index), f"{path.name}#{track.index}"))
        return ignored


def _compile(alias: str, expression: str):
    try:
        return compile_expression(expression)
    except ValueError as error:
        raise MappingError(f"{alias}: {error}") from None


def _language_from_name(name: str) -> str | None:
    """The language a file name ends with: `movie-de.vtt`, `movie_en-cc.srt`, `movie.pt-BR.vtt`
    (the region dropped), `movie.English.srt`. Only known languages count, so that `-final` or
    `_hd` are not taken for one. The `-cc`/`-ad` markers are skipped."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    parts = [p for p in _NAME_PARTS.split(stem) if p and p.lower() not in ("cc", "ad")]
    if not parts:
        return None
    last = parts[-1]
    # "pt-BR": an upper-case region after a lower-case language code
    if len(parts) > 1 and len(last) == 2 and last.isupper() and parts[-2].islower():
        if is_known_language(parts[-2]):
            return parts[-2]
    if is_known_language(last):
        return last
    return None


def _names(paths) -> str:
    return _join([p.name for p in paths]) or "none"


def _join(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMES])
    if len(items) > _MAX_NAMES:
        shown += f" … and {len(items) - _MAX_NAMES} more"
    return shown

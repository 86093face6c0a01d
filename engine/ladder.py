"""Ladder planning (contract §5.1 and §7): which renditions a job makes from its sources, their
sizes, bitrates, quality groups and output names.

Pure functions over the job model (`engine.job`) and the probe results (`engine.media`): no media
is read here, so every rule is table-tested without media (tests/test_ladder.py).

Decisions **(vipe)** where the contract leaves room, each also noted where it is implemented:

Quality groups
- SD below 720 lines, HD 720-1080, UHD1 1081-2160, UHD2 above 2160. Heights between 1080 and
  1440 (e.g. 1920x1200) count as UHD1: anything above Full HD gets the stricter group, as in the
  pixel-count video filters of CPIX/SPEKE key policies.
- "Lines" means the shorter side of a rendition, so a 1080x1920 portrait rendition is HD, like its
  1920x1080 landscape twin.

Default ladders
- Ladder heights are lines of the shorter side: for a portrait source (display ratio below 1) a
  rung sets the output width and the height follows, so 1080x1920 gets 720x1280 and 1080x1920
  rungs. Renditions are named by their real output height (`video-H264-1280-2450k`).
- A rung taller than the source is dropped, except when the source is at most 5 % short of it
  (1920x1040 after cropping, 1280x704): that rung is kept at the source's own size instead of
  losing a whole rung. A source below the lowest rung gets one rung at its own size.
- A rung made smaller than its nominal size (the two cases above) gets its bitrate scaled by
  (pixels / nominal pixels) ** 0.75 (bits per pixel rise as the picture shrinks), rounded to
  10 kbps, never below 100 kbps nor above the rung's own bitrate.
- The width follows the display aspect ratio (SAR and rotation applied). Output sizes are upright:
  the encoder applies the rotation.

Custom VideoRepresentations
- One side given: the other follows the display aspect ratio. Both given: taken as they are (the
  picture is stretched to that shape if the job says so). Given sides must be even.
- Width and Height mean what they say, also for portrait sources (only the default ladders use the
  shorter-side rule).
- An empty VideoRepresentations list counts as absent (the default ladder applies).
- A representation larger than the source is clamped down to fit inside the source (its own
  aspect kept, both sides even) and keeps its asked bitrate. After clamping, a size that an
  unclamped representation already has is dropped; among clamped ones of one size the one asked
  closest to the source (smallest asked area) stays. Exact duplicates are removed.
- Two renditions of one height and bitrate but different widths are named with their size:
  `video-H264-960x720-2000k`.

SearchForOptimalNearbyResolutions (default true)
- Only a computed side is rounded; sides given by the job and the ladder heights stay as they are.
  The computed side becomes the nearest multiple of 16 when that is within 1 % of the exact value
  (the aspect ratio), else the nearest multiple of 8 within 1 %, else the nearest even number.
  Off: the nearest even number. Either way it never exceeds the source.

ForcePixelAspectRatioTo1 (default true)
- True: square pixels, sizes from the display aspect ratio. False: the source's storage
  proportions are kept (the width scales with the height) and each rendition carries
  `sample_aspect_ratio` = display ratio x height / width, so the display shape stays exact even
  when a side was rounded.

ForceAspectRatioToStandard (default false)
- The display ratio snaps to the nearest of 4:3, 16:9, 21:9 (7:3), 1:1, 9:16, 3:4 when within 5 %
  of it (1.85:1 -> 16:9, 2.39:1 -> 21:9); otherwise it is kept. The picture becomes the largest
  one of the snapped shape inside the source: one side keeps its length, the other shrinks
  (1998x1080 -> 1920x1080, 1440x1100 -> 1440x1080), so no side grows beyond the source.

UseHighestPossibleBitrate (default false)
- False: bitrates as the ladder or the representations say; the source bitrate is not consulted.
- True, and the source bitrate is known and lower than the top rendition's (largest picture)
  bitrate: the top rendition is encoded at the source bitrate (never below 100 kbps) instead, and
  every other rendition asking as much or more is dropped, so bitrates still rise with size.

Packaging-only (DoNotEncode)
- One rendition per file at its coded size and SAR (it is packaged as it is), codec from the
  FFmpeg name: h264 -> H264, hevc -> H265, anything else is a MappingError.

Audio
- Never upmixed. `Create: Always` makes the rendition with min(wanted, source) channels, on the
  layouts 1, 2 and 6 (a 4-channel source asked for 5.1 gets stereo). A rendition that gets fewer
  channels than asked has its bitrate scaled by channels (Stereo 128 on a mono source -> mono 64),
  and is dropped where the same source already gets that layout in that codec from a rendition
  asked for it. So the default ladder gives a mono source one mono 64 kbps rendition, a stereo or
  5.1 source one stereo 128 kbps rendition.
- `Create: OnMatchingSound`: only when the source has exactly that many channels.
- Without AudioRepresentations the defaults apply; `Sound` then replaces the layout of the default
  Stereo rendition, at 64 (Mono), 128 (Stereo) or 384 (5.1) kbps. With AudioRepresentations,
  `Sound` is not used. An empty AudioRepresentations list counts as absent.
- AC3 bitrates snap to the nearest AC-3 rate (32-640 kbps table), as the encoder would.
- A source whose representations are all OnMatchingSound and none matches gets no rendition; the
  caller decides whether that is worth a warning.

Names (contract §7)
- Video `video-<codec>-<height>-<kbps>k`; `VideoChunksPattern` replaces `video`.
- Audio `audio-<lang>`; descriptive audio `audio-<lang>-ad`; with more than one rendition in that
  language (and kind) every one of them adds its bitrate: `audio-en-64k`, `audio-en-ad-64k`. Names
  that still collide add the codec (`-ac3`), then the channel count (`-6ch`), then the number of
  the source (`-2`). `AudioChunksPattern` replaces `audio`.
- Subtitles `subtitle-<lang>`, captions `subtitle-<lang>-cc` (the `-cc` marker of the mapping
  conventions); `SubtitlePattern` replaces `subtitle` for both.
- Characters outside letters, digits, '.', '_' and '-' in a language become '_'.
- Manifests `manifest.mpd` / `manifest.m3u8`. `ManifestName` is a base name (a trailing `.mpd` or
  `.m3u8` is dropped, each format adds its own). `DashManifestName` / `HlsManifestName` are
  accepted with or without their extension (`main` or `main.mpd`); any other name gets the
  extension appended, and the other format's extension is refused.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from engine.errors import MappingError
from engine.job import (
    DEFAULT_AUDIO_REPRESENTATIONS,
    AudioFormat,
    AudioRepresentation,
    BitrateLadder,
    ContentProcessing,
    Create,
    Naming,
    OutputFormat,
    Sound,
    VideoFormat,
    VideoRepresentation,
)
from engine.media import AudioRendition, AudioSource, VideoRendition, VideoTrackInfo

# ------------------------------------------------------------------------------- constants

Rung = tuple[int, int]  # (lines of the shorter side, kbps)

_V1: tuple[Rung, ...] = ((360, 800), (480, 1200), (720, 2000), (1080, 4500))

LADDERS: dict[tuple[BitrateLadder, VideoFormat], tuple[Rung, ...]] = {
    (BitrateLadder.V2, VideoFormat.H264): (
        (234, 320),
        (360, 860),
        (432, 1130),
        (540, 1590),
        (720, 2450),
        (1080, 4500),
    ),
    (BitrateLadder.V2, VideoFormat.H265): (
        (360, 320),
        (432, 860),
        (540, 1200),
        (720, 1850),
        (1080, 3400),
        (1440, 5230),
        (2160, 9610),
    ),
    (BitrateLadder.V1, VideoFormat.H264): _V1,
    (BitrateLadder.V1, VideoFormat.H265): _V1,
}

STANDARD_ASPECT_RATIOS: tuple[Fraction, ...] = (
    Fraction(4, 3),
    Fraction(16, 9),
    Fraction(21, 9),
    Fraction(1),
    Fraction(9, 16),
    Fraction(3, 4),
)
ASPECT_SNAP_TOLERANCE = Fraction(5, 100)  # ForceAspectRatioToStandard: snap within 5 %
NEAR_RUNG_TOLERANCE = Fraction(5, 100)  # a source this close below a rung keeps the rung
ROUNDING_TOLERANCE = Fraction(1, 100)  # SearchForOptimalNearbyResolutions: at most 1 % off
MIN_VIDEO_KBPS = 100
BITRATE_SCALE_EXPONENT = 0.75  # kbps ~ pixels ** 0.75 when a rung shrinks

VIDEO_CODECS = ("H264", "H265")
PASSTHROUGH_CODECS = {"h264": "H264", "hevc": "H265"}  # FFmpeg codec name -> contract name

DEFAULT_SOUND_KBPS = {Sound.Mono: 64, Sound.Stereo: 128, Sound.Surround: 384}
AC3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)
OUTPUT_CHANNELS = (6, 2, 1)  # the layouts an audio rendition can have: 5.1, stereo, mono
MIN_AUDIO_KBPS = 32

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MANIFEST_EXTENSIONS = (".mpd", ".m3u8")

# ------------------------------------------------------------------------- quality groups


def quality_group(height: int) -> str:
    """The quality group of a rendition with `height` lines (contract §5.1).

    SD below 720, HD 720-1080, UHD1 above 1080 up to 2160 (1081-1439 included: anything above
    Full HD gets the stricter group), UHD2 above 2160. Planning passes the shorter side of the
    rendition, so portrait and landscape renditions of one size share a group.
    """
    if height <= 0:
        raise ValueError(f"a rendition height must be positive, got {height}")
    if height < 720:
        return "SD"
    if height <= 1080:
        return "HD"
    if height <= 2160:
        return "UHD1"
    return "UHD2"


# ---------------------------------------------------------------------------------- names


def _token(value: str, what: str) -> str:
    """`value` made safe as part of a file name."""
    token = _UNSAFE.sub("_", value.strip())
    if not token or set(token) == {"."}:
        raise ValueError(f"{what} {value!r} cannot be part of a file name")
    return token


def _prefix(pattern: str | None, default: str) -> str:
    return _token(pattern, "naming pattern") if pattern else default


def video_name(
    codec: str,
    height: int,
    kbps: int,
    naming: Naming | None = None,
    *,
    width: int | None = None,
) -> str:
    """Base name of a video rendition: `video-H264-720-2450k` (contract §7).

    `VideoChunksPattern` replaces `video`. With `width`, the size part is `<width>x<height>`
    (used only to tell apart renditions of one height and bitrate).
    """
    if codec not in VIDEO_CODECS:
        raise ValueError(f"video codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
    if height <= 0 or kbps <= 0 or (width is not None and width <= 0):
        raise ValueError(f"size and bitrate must be positive, got {width}x{height} {kbps} kbps")
    size = f"{width}x{height}" if width is not None else str(height)
    prefix = _prefix(naming.video_chunks_pattern if naming else None, "video")
    return f"{prefix}-{codec}-{size}-{kbps}k"


def audio_name(
    language: str,
    kbps: int,
    naming: Naming | None = None,
    with_bitrate: bool = False,
    *,
    descriptive: bool = False,
    tags: Sequence[str] = (),
) -> str:
    """Base name of an audio rendition: `audio-en`, `audio-en-64k` (contract §7).

    `with_bitrate` when the language has more than one rendition. Descriptive audio (audio
    description) is `audio-en-ad`, so it never collides with the normal track of its language.
    `tags` are appended as they are (codec, channels, source number) to break remaining ties.
    `AudioChunksPattern` replaces `audio`.
    """
    if kbps <= 0:
        raise ValueError(f"bitrate must be positive, got {kbps} kbps")
    parts = [_prefix(naming.audio_chunks_pattern if naming else None, "audio")]
    parts.append(_token(language, "language"))
    if descriptive:
        parts.append("ad")
    if with_bitrate:
        parts.append(f"{kbps}k")
    parts += [_token(tag, "name tag") for tag in tags]
    return "-".join(parts)


def subtitle_name(language: str, naming: Naming | None = None, kind: str = "subtitle") -> str:
    """Base name of a subtitle (`subtitle-en`) or caption (`subtitle-en-cc`) track.

    `SubtitlePattern` replaces `subtitle` for both kinds; captions carry the `-cc` marker of the
    mapping conventions so that they never collide with a subtitle of the same language.
    """
    if kind not in ("subtitle", "caption"):
        raise ValueError(f"kind must be 'subtitle' or 'caption', got {kind!r}")
    name = f"{_prefix(naming.subtitle_pattern if naming else None, 'subtitle')}-"
    name += _token(language, "language")
    return name + "-cc" if kind == "caption" else name


def _formats(output_format: object) -> list[OutputFormat]:
    if output_format is None:
        return []
    items = [output_format] if isinstance(output_format, str) else output_format
    if not isinstance(items, Iterable):
        raise ValueError(f"not an output format: {output_format!r}")
    formats = []
    for item in items:
        try:
            formats.append(OutputFormat(item))
        except ValueError:
            raise ValueError(f"unknown output format {item!r}") from None
    return formats


def _manifest_override(name: str, own: str, field: str) -> str:
    lowered = name.lower()
    if lowered.endswith(own):
        if len(name) == len(own):
            raise ValueError(f"{field} {name!r} has no name before the extension")
        return name
    other = next(ext for ext in _MANIFEST_EXTENSIONS if ext != own)
    if lowered.endswith(other):
        raise ValueError(f"{field} {name!r} ends in {other}; this manifest is a {own} file")
    return name + own


def manifest_names(
    naming: Naming | None,
    output_format: OutputFormat | str | Iterable[OutputFormat | str] | None = None,
) -> tuple[str, str]:
    """(DASH manifest, HLS master playlist) file names: `manifest.mpd`, `manifest.m3u8`.

    `ManifestName` replaces `manifest` (a trailing `.mpd`/`.m3u8` on it is dropped and each
    format adds its own). `DashManifestName` / `HlsManifestName` override one format and are
    accepted with or without their extension. `output_format` (one format or the job's list) is
    only checked: the names are the same for every format (DashOnDemand writes `.mpd`, HlsTs
    `.m3u8`), and both are always returned.
    """
    _formats(output_format)
    base = "manifest"
    if naming and naming.manifest_name:
        base = naming.manifest_name
        for ext in _MANIFEST_EXTENSIONS:
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
        base = _token(base, "ManifestName")
    dash = f"{base}.mpd"
    hls = f"{base}.m3u8"
    if naming and naming.dash_manifest_name:
        dash = _manifest_override(naming.dash_manifest_name, ".mpd", "DashManifestName")
    if naming and naming.hls_manifest_name:
        hls = _manifest_override(naming.hls_manifest_name, ".m3u8", "HlsManifestName")
    return dash, hls


# ------------------------------------------------------------------------------- geometry


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _even(value: Fraction) -> int:
    """The nearest even number (at least 2)."""
    return max(2, 2 * _round_half_up(value / 2))


def _even_floor(value: Fraction) -> int:
    """The largest even number not above `value` (at least 2)."""
    return max(2, 2 * math.floor(value / 2))


def _nearby(exact: Fraction, search: bool) -> int:
    """A computed side: even; with SearchForOptimalNearbyResolutions a multiple of 16, else of 8,
    when that stays within 1 % of the exact value (so the aspect ratio moves by at most 1 %)."""
    if search:
        for step in (16, 8):
            candidate = step * _round_half_up(exact / step)
            if candidate > 0 and abs(candidate - exact) <= exact * ROUNDING_TOLERANCE:
                return candidate
    return _even(exact)


def snap_aspect_ratio(ratio: Fraction) -> Fraction:
    """The nearest standard display ratio (4:3, 16:9, 21:9, 1:1, 9:16, 3:4) when `ratio` is
    within 5 % of it, else `ratio` unchanged (ForceAspectRatioToStandard)."""
    if ratio <= 0:
        raise ValueError(f"an aspect ratio must be positive, got {ratio}")
    best = min(STANDARD_ASPECT_RATIOS, key=lambda std: abs(ratio / std - 1))
    return best if abs(ratio / best - 1) <= ASPECT_SNAP_TOLERANCE else ratio


@dataclass(frozen=True)
class _Frame:
    """The source picture in the pixels the output is written in: the display picture when
    pixels are square, the upright storage picture when the source SAR is kept."""

    width: Fraction
    height: Fraction
    ratio: Fraction  # display aspect ratio the output shows (snapped when asked)
    square: bool  # ForcePixelAspectRatioTo1

    @property
    def portrait(self) -> bool:
        return self.ratio < 1

    @property
    def pixel_ratio(self) -> Fraction:
        """Width / height in output pixels."""
        return self.width / self.height


def _source_frame(source: VideoTrackInfo, processing: ContentProcessing) -> _Frame:
    if source.width <= 0 or source.height <= 0:
        raise ValueError(f"the source video has no size ({source.width}x{source.height})")
    sar = Fraction(source.sample_aspect_ratio)
    if sar <= 0:
        raise ValueError(f"the source sample aspect ratio must be positive, got {sar}")
    rotation = source.rotation % 360
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {source.rotation}")
    upright = rotation in (90, 270)
    # the storage picture and the display picture (SAR applied to the stored width, as
    # VideoTrackInfo.display_width does), both turned upright
    storage = (Fraction(source.width), Fraction(source.height))
    display = (source.width * sar, Fraction(source.height))
    if upright:
        storage, display = storage[::-1], display[::-1]
    ratio = display[0] / display[1]  # == source.display_aspect_ratio
    if processing.force_aspect_ratio_to_standard:
        ratio = snap_aspect_ratio(ratio)
    if not processing.force_pixel_aspect_ratio_to1:
        return _Frame(*storage, ratio, square=False)
    # square pixels: the display picture; a snapped ratio takes the largest picture of that
    # shape inside it, so one side keeps its length and no side grows beyond the source
    width, height = display
    if height * ratio <= width:
        width = height * ratio
    else:
        height = width / ratio
    return _Frame(width, height, ratio, square=True)


@dataclass(frozen=True)
class _Planned:
    width: int
    height: int
    kbps: int
    clamped: bool = False  # made smaller than asked to fit the source
    asked_area: int = 0  # pixels as asked, before clamping (clamped duplicates: closest wins)


def _scaled_kbps(kbps: int, pixels: int, nominal_pixels: Fraction) -> int:
    """The bitrate of a rung made smaller than nominal: kbps x (pixel share) ** 0.75, rounded
    to 10 kbps, at least 100 kbps and never more than asked."""
    if pixels >= nominal_pixels:
        return kbps
    value = kbps * float(pixels / nominal_pixels) ** BITRATE_SCALE_EXPONENT
    return min(kbps, max(MIN_VIDEO_KBPS, 10 * round(value / 10)))


def _ladder_rungs(frame: _Frame, rungs: Sequence[Rung], search: bool) -> list[_Planned]:
    # the ladder's lines are the shorter side: the height, or the width of a portrait picture
    if frame.portrait:
        axis, other = frame.width, frame.height
    else:
        axis, other = frame.height, frame.width
    other_per_line = other / axis
    axis_bound, other_bound = _even_floor(axis), _even_floor(other)

    def at(lines: int, kbps: int, size: int, clamped: bool) -> _Planned:
        other_side = min(_nearby(size * other_per_line, search), other_bound)
        width, height = (size, other_side) if frame.portrait else (other_side, size)
        if clamped:
            kbps = _scaled_kbps(kbps, width * height, lines * lines * other_per_line)
        return _Planned(width, height, kbps, clamped, asked_area=width * height)

    planned = []
    for lines, kbps in rungs:
        if lines <= axis:
            planned.append(at(lines, kbps, lines, clamped=False))
        elif axis >= lines * (1 - NEAR_RUNG_TOLERANCE):
            # a source just short of the rung (cropped 1080p) keeps it at its own size
            planned.append(at(lines, kbps, axis_bound, clamped=True))
    if not planned:
        # a source below the lowest rung: one rung at its own size
        lines, kbps = rungs[0]
        planned.append(at(lines, kbps, axis_bound, clamped=True))
    return planned


def _custom_rungs(
    frame: _Frame, representations: Sequence[VideoRepresentation], search: bool
) -> list[_Planned]:
    bound_w, bound_h = _even_floor(frame.width), _even_floor(frame.height)
    planned = []
    for i, rep in enumerate(representations):
        where = f"VideoRepresentations[{i}]"
        for alias, side in (("Width", rep.width), ("Height", rep.height)):
            if side is not None and (side <= 0 or side % 2):
                raise ValueError(f"{where}.{alias} must be a positive even number, got {side}")
        if rep.bitrate_in_kbps <= 0:
            raise ValueError(f"{where}.BitrateInKbps must be positive")
        if rep.width is not None and rep.height is not None:
            width, height = rep.width, rep.height
            asked = width * height
            clamped = width > bound_w or height > bound_h
            if clamped:
                # shrink both sides by one factor so the shape asked for is kept
                factor = min(Fraction(bound_w, width), Fraction(bound_h, height))
                width, height = _even_floor(width * factor), _even_floor(height * factor)
        elif rep.height is not None:
            asked = rep.height * _nearby(rep.height * frame.pixel_ratio, search)
            clamped = rep.height > bound_h
            height = bound_h if clamped else rep.height
            width = min(_nearby(height * frame.pixel_ratio, search), bound_w)
        elif rep.width is not None:
            asked = rep.width * _nearby(rep.width / frame.pixel_ratio, search)
            clamped = rep.width > bound_w
            width = bound_w if clamped else rep.width
            height = min(_nearby(width / frame.pixel_ratio, search), bound_h)
        else:
            raise ValueError(f"{where}: give Width, Height or both")
        planned.append(_Planned(width, height, rep.bitrate_in_kbps, clamped, asked))
    return planned


def _dedupe(planned: list[_Planned]) -> list[_Planned]:
    """Exact duplicates removed; a clamped rung loses to an unclamped one of the same size, and
    of clamped rungs of one size the one asked closest to the source stays."""
    by_size: dict[tuple[int, int], list[_Planned]] = {}
    for rung in planned:
        by_size.setdefault((rung.width, rung.height), []).append(rung)
    keep: list[_Planned] = []
    for group in by_size.values():
        unclamped = [r for r in group if not r.clamped]
        if not unclamped:
            unclamped = [min(group, key=lambda r: r.asked_area)]  # min() keeps the first tie
        seen: set[int] = set()
        for rung in unclamped:
            if rung.kbps not in seen:
                seen.add(rung.kbps)
                keep.append(rung)
    return keep


def _cap_at_source(planned: list[_Planned], source_bps: int) -> list[_Planned]:
    """UseHighestPossibleBitrate: the top rendition keeps the source bitrate when that is lower
    than asked; renditions asking as much or more are dropped so bitrates rise with size."""
    cap = max(MIN_VIDEO_KBPS, round(source_bps / 1000))
    top = max(planned, key=lambda r: (r.width * r.height, r.kbps))
    if top.kbps <= cap:
        return planned
    return [replace(r, kbps=cap) if r is top else r for r in planned if r is top or r.kbps < cap]


def _unique(names: list[str]) -> list[str]:
    """Names still equal get `-1`, `-2`, … in order (a last resort)."""
    counts = Counter(names)
    seen: Counter[str] = Counter()
    result = []
    for name in names:
        if counts[name] > 1:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        result.append(name)
    return result


def _video_renditions(
    planned: list[_Planned],
    codec: str,
    naming: Naming | None,
    sar_of: Callable[[_Planned, int], Fraction],
    sources: Sequence[Path | None] | None = None,
) -> list[VideoRendition]:
    order = sorted(range(len(planned)), key=lambda i: (planned[i].height, planned[i].kbps, i))
    rungs = [planned[i] for i in order]
    names = [video_name(codec, r.height, r.kbps, naming) for r in rungs]
    twice = {name for name, count in Counter(names).items() if count > 1}
    names = _unique(
        [
            video_name(codec, r.height, r.kbps, naming, width=r.width) if name in twice else name
            for r, name in zip(rungs, names, strict=True)
        ]
    )
    return [
        VideoRendition(
            width=r.width,
            height=r.height,
            bitrate_kbps=r.kbps,
            codec=codec,
            quality_group=quality_group(min(r.width, r.height)),
            name=name,
            source=sources[i] if sources is not None else None,
            sample_aspect_ratio=sar_of(r, i),
        )
        for r, name, i in zip(rungs, names, order, strict=True)
    ]


# ---------------------------------------------------------------------------------- video


def plan_video(source: VideoTrackInfo, processing: ContentProcessing) -> list[VideoRendition]:
    """The video renditions to encode from `source` (contract §5, §5.1), sorted by height and
    then bitrate.

    The default ladder of `BitrateLadder` and `VideoFormat`, or `VideoRepresentations`; sizes
    from the display aspect ratio, never above the source; the options ForcePixelAspectRatioTo1,
    SearchForOptimalNearbyResolutions, ForceAspectRatioToStandard and UseHighestPossibleBitrate
    as the module docstring describes.
    """
    if processing.video_format == VideoFormat.DoNotEncode:
        raise ValueError("VideoFormat DoNotEncode encodes nothing: plan it with plan_passthrough")
    codec = VideoFormat(processing.video_format).value
    frame = _source_frame(source, processing)
    search = processing.search_for_optimal_nearby_resolutions
    if processing.video_representations:
        planned = _custom_rungs(frame, processing.video_representations, search)
    else:
        ladder = LADDERS[(processing.bitrate_ladder, processing.video_format)]
        planned = _ladder_rungs(frame, ladder, search)
    planned = _dedupe(planned)
    if processing.use_highest_possible_bitrate and source.bitrate:
        planned = _cap_at_source(planned, source.bitrate)

    def sar_of(rung: _Planned, _index: int) -> Fraction:
        if frame.square:
            return Fraction(1)
        # keeps the display shape exact even where a side was rounded; 16 bits for the VUI
        return (frame.ratio * rung.height / rung.width).limit_denominator(65535)

    return _video_renditions(planned, codec, processing.naming, sar_of)


def plan_passthrough(
    sources: Sequence[VideoTrackInfo],
    bitrates: Sequence[int | None],
    codec_names: Sequence[str],
    naming: Naming | None = None,
    *,
    paths: Sequence[Path] | None = None,
) -> list[VideoRendition]:
    """Packaging-only mode (`DoNotEncode`, contract §5.4): one rendition per already-encoded file.

    `bitrates` are the files' bitrates in bits per second (None: the track's own bitrate is
    used); `codec_names` the FFmpeg codec names (h264, hevc). Each rendition has its file's coded
    size and SAR, as it is packaged unchanged. `paths` (optional) become `VideoRendition.source`.
    A codec other than H.264/H.265 raises `MappingError`.
    """
    count = len(sources)
    if len(bitrates) != count or len(codec_names) != count:
        raise ValueError(
            f"one bitrate and one codec name per source: {count} sources, "
            f"{len(bitrates)} bitrates, {len(codec_names)} codec names"
        )
    if paths is not None and len(paths) != count:
        raise ValueError(f"one path per source: {count} sources, {len(paths)} paths")
    if not count:
        raise ValueError("packaging-only mode needs at least one rendition file")
    planned, codecs, sars = [], [], []
    for i, (source, bps, codec_name) in enumerate(zip(sources, bitrates, codec_names, strict=True)):
        where = f"rendition file {paths[i].name!r}" if paths else f"rendition file {i + 1}"
        codec = PASSTHROUGH_CODECS.get(codec_name.strip().lower())
        if codec is None:
            raise MappingError(
                f"VideoFormat DoNotEncode packages H.264 or H.265 files as they are; "
                f"{where} is {codec_name!r}"
            )
        if source.width <= 0 or source.height <= 0:
            raise ValueError(f"{where} has no video size ({source.width}x{source.height})")
        if bps is None:
            bps = source.bitrate
        if not bps or bps <= 0:
            raise ValueError(
                f"the bitrate of {where} is unknown: pass the file size x 8 / duration instead"
            )
        planned.append(_Planned(source.width, source.height, max(1, round(bps / 1000))))
        codecs.append(codec)
        sars.append(Fraction(source.sample_aspect_ratio))
    if len(set(codecs)) > 1:
        raise MappingError("VideoFormat DoNotEncode: the rendition files mix H.264 and H.265")
    return _video_renditions(
        planned, codecs[0], naming, lambda _rung, i: sars[i], sources=paths or None
    )


# ---------------------------------------------------------------------------------- audio


def audio_representations(processing: ContentProcessing) -> list[AudioRepresentation]:
    """The audio representations that apply: the job's, or the defaults with `Sound` (when set)
    replacing the layout of the default Stereo rendition."""
    if processing.audio_representations:
        return list(processing.audio_representations)
    sound = processing.sound
    if sound is None:
        return list(DEFAULT_AUDIO_REPRESENTATIONS)
    reps = []
    for rep in DEFAULT_AUDIO_REPRESENTATIONS:
        if rep.create == Create.Always and rep.sound == Sound.Stereo:
            rep = rep.model_copy(
                update={"sound": sound, "bitrate_in_kbps": DEFAULT_SOUND_KBPS[sound]}
            )
        reps.append(rep)
    return reps


def _channels_for(wanted: int, available: int) -> int:
    """The largest output layout (5.1, stereo, mono) with at most min(wanted, available)
    channels: never upmixed."""
    limit = min(wanted, available)
    return next(channels for channels in OUTPUT_CHANNELS if channels <= limit)


def _ac3_kbps(kbps: int) -> int:
    return min(AC3_KBPS, key=lambda rate: (abs(rate - kbps), rate))


@dataclass(frozen=True)
class _PlannedAudio:
    source: AudioSource
    kbps: int
    channels: int
    codec: str
    reduced: bool  # fewer channels than asked, because the source has fewer


def plan_audio(
    sources: Sequence[AudioSource], processing: ContentProcessing
) -> list[AudioRendition]:
    """The audio renditions to encode (contract §5, §5.1): per source (one language track,
    maybe descriptive) and representation, never upmixed, exact duplicates removed, named per
    §7. In the order of the sources and then of the representations."""
    reps = audio_representations(processing)
    planned: list[_PlannedAudio] = []
    for i, source in enumerate(sources):
        if source.channels < 1:
            raise ValueError(f"audio source {i + 1} ({source.language}) has no channels")
        for rep in reps:
            wanted = Sound(rep.sound).channels
            if rep.create == Create.OnMatchingSound:
                if source.channels != wanted:
                    continue
                channels = wanted
            else:
                channels = _channels_for(wanted, source.channels)
            kbps = rep.bitrate_in_kbps
            if channels < wanted:
                # fewer channels than asked need fewer bits (Stereo 128 -> mono 64)
                kbps = max(MIN_AUDIO_KBPS, round(kbps * channels / wanted))
            codec = AudioFormat(rep.audio_format).value
            if codec == AudioFormat.AC3:
                kbps = _ac3_kbps(kbps)  # the encoder takes the nearest AC-3 rate anyway
            planned.append(_PlannedAudio(source, kbps, channels, codec, channels < wanted))
    native = {(p.source, p.codec, p.channels) for p in planned if not p.reduced}
    kept: list[_PlannedAudio] = []
    seen = set()
    for p in planned:
        key = (p.source, p.kbps, p.channels, p.codec)
        if key in seen or (p.reduced and (p.source, p.codec, p.channels) in native):
            continue
        seen.add(key)
        kept.append(p)
    names = _audio_names(kept, processing.naming)
    return [
        AudioRendition(
            source=p.source, bitrate_kbps=p.kbps, channels=p.channels, codec=p.codec, name=name
        )
        for p, name in zip(kept, names, strict=True)
    ]


def _audio_names(planned: list[_PlannedAudio], naming: Naming | None) -> list[str]:
    groups = Counter((p.source.language, p.source.descriptive) for p in planned)
    sources_in_group: dict[tuple[str, bool], list[AudioSource]] = {}
    for p in planned:
        members = sources_in_group.setdefault((p.source.language, p.source.descriptive), [])
        if p.source not in members:
            members.append(p.source)
    tags: list[list[str]] = [[] for _ in planned]

    def names() -> list[str]:
        return [
            audio_name(
                p.source.language,
                p.kbps,
                naming,
                groups[(p.source.language, p.source.descriptive)] > 1,
                descriptive=p.source.descriptive,
                tags=tag,
            )
            for p, tag in zip(planned, tags, strict=True)
        ]

    def source_number(p: _PlannedAudio) -> str:
        members = sources_in_group[(p.source.language, p.source.descriptive)]
        return str(members.index(p.source) + 1)

    # ties that the bitrate leaves: codec, then channels, then which source; a tag is added
    # only to names that it tells apart
    for tag_of in (lambda p: p.codec.lower(), lambda p: f"{p.channels}ch", source_number):
        clashes: dict[str, list[int]] = {}
        for i, name in enumerate(names()):
            clashes.setdefault(name, []).append(i)
        for clashing in clashes.values():
            if len({tag_of(planned[i]) for i in clashing}) > 1:
                for i in clashing:
                    tags[i].append(tag_of(planned[i]))
    return _unique(names())

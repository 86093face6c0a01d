"""DASH MPD writer (ISO/IEC 23009-1, DASH-IF IOP): a static MPD with one Period.

Two profiles, chosen by the layout of the media:
- segment files: `urn:mpeg:dash:profile:isoff-live:2011`, a SegmentTemplate with `$Number$`
  and a SegmentTimeline (`S t d r`) in the track's timescale;
- one file per rendition (DashOnDemand, SegmentFormat ByteRange):
  `urn:mpeg:dash:profile:isoff-on-demand:2011`, BaseURL + SegmentBase (sidx `indexRange`,
  `Initialization range`).

AdaptationSets: one per media type, codec family, language and role (and per distinct set of
DRM elements from `TrackProtection.dash_elements`); WebVTT files as text AdaptationSets with the
file as BaseURL; thumbnail tiles as DASH-IF image AdaptationSets.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from fractions import Fraction

from packagers.layout import ImageRef, TextRef, TrackLayout

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
LIVE_PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"
ON_DEMAND_PROFILE = "urn:mpeg:dash:profile:isoff-on-demand:2011"
ROLE_SCHEME = "urn:mpeg:dash:role:2011"
AUDIO_PURPOSE_SCHEME = "urn:tva:metadata:cs:AudioPurposeCS:2007"
THUMBNAIL_SCHEME = "http://dashif.org/thumbnail_tile"
SWITCHING_SCHEME = "urn:mpeg:dash:adaptation-set-switching:2016"

# prefixes for namespaced elements that DRM hooks add
ET.register_namespace("cenc", "urn:mpeg:cenc:2013")
ET.register_namespace("mspr", "urn:microsoft:playready")


def iso_duration(seconds: float | Fraction) -> str:
    """xs:duration, e.g. `PT1H2M3.5S`, `PT4S`."""
    millis = round(float(seconds) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if rest or text == "PT":
        whole, fraction = divmod(rest, 1000)
        text += f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "S"
    return text


def _ratio(fraction: Fraction) -> str:
    """`16:9` style ratio."""
    return f"{fraction.numerator}:{fraction.denominator}"


def _frame_rate(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _codec_family(codecs: str) -> str:
    return codecs.split(".")[0]


def write_mpd(
    layouts: list[TrackLayout],
    texts: list[TextRef],
    images: list[ImageRef],
    *,
    duration: Fraction,
) -> str:
    """The MPD text for the given media (all from one package folder)."""
    on_demand = any(layout.single_file for layout in layouts)
    longest = max(
        (
            Fraction(ref.duration, layout.track.timescale)
            for layout in layouts
            for ref in layout.segments
        ),
        default=Fraction(1),
    )
    mpd = ET.Element(
        "MPD",
        {
            "xmlns": MPD_NS,
            "profiles": ON_DEMAND_PROFILE if on_demand else LIVE_PROFILE,
            "type": "static",
            "mediaPresentationDuration": iso_duration(duration),
            "minBufferTime": iso_duration(math.ceil(longest)),
        },
    )
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S"})
    groups = _group(layouts)
    # sets split only by their DRM elements (a key per quality group) stay switchable
    siblings: dict[tuple, list[int]] = {}
    for set_id, (key, _) in enumerate(groups):
        siblings.setdefault(key[:-1], []).append(set_id)
    next_id = 0
    for key, group in groups:
        switchable = [str(i) for i in siblings[key[:-1]] if i != next_id]
        _adaptation_set(period, next_id, group, on_demand, switchable)
        next_id += 1
    for text in texts:
        _text_set(period, next_id, text)
        next_id += 1
    for image in images:
        _image_set(period, next_id, image)
        next_id += 1
    ET.indent(mpd)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(mpd, "unicode") + "\n"


def _protection_key(layout: TrackLayout) -> tuple[bytes, ...]:
    protection = layout.track.input.protection
    if protection is None:
        return ()
    return tuple(ET.tostring(element) for element in protection.dash_elements())


def _group(layouts: list[TrackLayout]) -> list[tuple[tuple, list[TrackLayout]]]:
    """AdaptationSets as (grouping key, tracks): video first, then audio, each in input order
    of its first track. The key's last item is the DRM elements' fingerprint."""
    groups: dict[tuple, list[TrackLayout]] = {}
    for kind in ("video", "audio"):
        for layout in layouts:
            track = layout.track
            if track.kind != kind:
                continue
            key = (
                kind,
                _codec_family(track.codecs),
                track.input.language if kind == "audio" else None,
                track.input.role,
                _protection_key(layout),
            )
            groups.setdefault(key, []).append(layout)
    return list(groups.items())


def _adaptation_set(
    period: ET.Element,
    set_id: int,
    group: list[TrackLayout],
    on_demand: bool,
    switchable: list[str],
) -> None:
    first = group[0].track
    kind = first.kind
    attributes = {"id": str(set_id), "contentType": kind, "mimeType": f"{kind}/mp4"}
    if on_demand:
        attributes |= {"subsegmentAlignment": "true", "subsegmentStartsWithSAP": "1"}
    else:
        attributes |= {"segmentAlignment": "true", "startWithSAP": "1"}
    if first.input.language:
        attributes["lang"] = first.input.language
    if kind == "video":
        attributes["maxWidth"] = str(max(layout.track.file.entry.width for layout in group))
        attributes["maxHeight"] = str(max(layout.track.file.entry.height for layout in group))
        # every video track has a frame rate (None is for the other kinds)
        rates = {r for layout in group if (r := layout.track.frame_rate) is not None}
        if len(rates) == 1:
            attributes["frameRate"] = _frame_rate(rates.pop())
        else:
            attributes["maxFrameRate"] = _frame_rate(max(r for r in rates if r))
        h_spacing, v_spacing = first.pixel_aspect
        entry = first.file.entry
        attributes["par"] = _ratio(Fraction(entry.width * h_spacing, entry.height * v_spacing))
    adaptation = ET.SubElement(period, "AdaptationSet", attributes)
    protection = first.input.protection
    if protection is not None:
        adaptation.extend(protection.dash_elements())
    if switchable:
        ET.SubElement(
            adaptation,
            "SupplementalProperty",
            {"schemeIdUri": SWITCHING_SCHEME, "value": ",".join(switchable)},
        )
    if first.input.label:
        ET.SubElement(adaptation, "Label").text = first.input.label
    if kind == "audio":
        if first.input.role == "description":
            ET.SubElement(
                adaptation, "Accessibility", {"schemeIdUri": AUDIO_PURPOSE_SCHEME, "value": "1"}
            )
            ET.SubElement(adaptation, "Role", {"schemeIdUri": ROLE_SCHEME, "value": "alternate"})
        else:
            ET.SubElement(adaptation, "Role", {"schemeIdUri": ROLE_SCHEME, "value": "main"})
    for layout in group:
        _representation(adaptation, layout)


def _representation(adaptation: ET.Element, layout: TrackLayout) -> None:
    track = layout.track
    entry = track.file.entry
    attributes = {
        "id": track.name,
        "bandwidth": str(layout.peak_bandwidth),
        "codecs": track.codecs,
    }
    if track.kind == "video":
        h_spacing, v_spacing = track.pixel_aspect
        attributes |= {
            "width": str(entry.width),
            "height": str(entry.height),
            "frameRate": _frame_rate(track.frame_rate or Fraction(0)),
            "sar": _ratio(Fraction(h_spacing, v_spacing)),
        }
    else:
        attributes["audioSamplingRate"] = str(entry.sample_rate or track.timescale)
    representation = ET.SubElement(adaptation, "Representation", attributes)
    if track.kind == "audio":
        channels = track.channels
        ET.SubElement(
            representation,
            "AudioChannelConfiguration",
            {"schemeIdUri": channels.scheme, "value": channels.value},
        )
    timescale = str(track.timescale)
    if layout.single_file:
        ET.SubElement(representation, "BaseURL").text = layout.init_uri
        index_start, index_size = layout.index_range or (0, 0)
        init_start, init_size = layout.init_range or (0, 0)
        base = ET.SubElement(
            representation,
            "SegmentBase",
            {"indexRange": f"{index_start}-{index_start + index_size - 1}", "timescale": timescale},
        )
        ET.SubElement(base, "Initialization", {"range": f"{init_start}-{init_size - 1}"})
        return
    template = ET.SubElement(
        representation,
        "SegmentTemplate",
        {
            "timescale": timescale,
            "initialization": layout.init_uri or "",
            "media": layout.media_template or "",
            "startNumber": "1",
        },
    )
    timeline = ET.SubElement(template, "SegmentTimeline")
    for start, duration, repeat, explicit in _timeline(layout):
        attributes = {"t": str(start)} if explicit else {}
        attributes["d"] = str(duration)
        if repeat:
            attributes["r"] = str(repeat)
        ET.SubElement(timeline, "S", attributes)


def _timeline(layout: TrackLayout) -> list[tuple[int, int, int, bool]]:
    """(t, d, r, t needed) runs: equal consecutive durations folded into `r`."""
    runs: list[list] = []
    expected = None
    for ref in layout.segments:
        contiguous = ref.start == expected
        if runs and contiguous and runs[-1][1] == ref.duration:
            runs[-1][2] += 1
        else:
            runs.append([ref.start, ref.duration, 0, not contiguous])
        expected = ref.start + ref.duration
    return [tuple(run) for run in runs]


def _text_set(period: ET.Element, set_id: int, text: TextRef) -> None:
    attributes = {"id": str(set_id), "contentType": "text", "mimeType": "text/vtt"}
    if text.input.language:
        attributes["lang"] = text.input.language
    adaptation = ET.SubElement(period, "AdaptationSet", attributes)
    if text.input.label:
        ET.SubElement(adaptation, "Label").text = text.input.label
    ET.SubElement(adaptation, "Role", {"schemeIdUri": ROLE_SCHEME, "value": text.input.kind})
    representation = ET.SubElement(
        adaptation,
        "Representation",
        {"id": text.input.name, "bandwidth": str(text.bandwidth)},
    )
    ET.SubElement(representation, "BaseURL").text = text.uri


def _image_set(period: ET.Element, set_id: int, image: ImageRef) -> None:
    """DASH-IF IOP thumbnail tiles: one image per tile segment."""
    spec = image.input
    adaptation = ET.SubElement(
        period,
        "AdaptationSet",
        {"id": str(set_id), "contentType": "image", "mimeType": "image/jpeg"},
    )
    ET.SubElement(
        adaptation,
        "SegmentTemplate",
        {
            "media": image.template,
            "timescale": "1000",
            "duration": str(round(image.tile_seconds * 1000)),
            "startNumber": "1",
        },
    )
    representation = ET.SubElement(
        adaptation,
        "Representation",
        {
            "id": spec.name,
            "bandwidth": str(image.bandwidth),
            "width": str(spec.thumbnail_width * spec.columns),
            "height": str(spec.thumbnail_height * spec.rows),
        },
    )
    ET.SubElement(
        representation,
        "EssentialProperty",
        {"schemeIdUri": THUMBNAIL_SCHEME, "value": f"{spec.columns}x{spec.rows}"},
    )

"""vipe's packager: per-rendition MP4 track files in, CMAF / DASH / HLS packages out.

A library: it never imports `engine`. The entry point is `package()`; `PACKAGERS` is the
registry of output formats keyed by the contract's OutputFormat spellings. DRM and thumbnail
extension points are described in `packagers.hooks`.
"""

from __future__ import annotations

from packagers.errors import PackagingError
from packagers.hooks import ImageInput, ProtectedSample, TrackProtection
from packagers.model import (
    FORMATS,
    PackageResult,
    PackageSpec,
    StreamInfo,
    TextInput,
    TrackInput,
)
from packagers.packager import PACKAGERS, FormatPackager, package

__all__ = [
    "FORMATS",
    "PACKAGERS",
    "FormatPackager",
    "ImageInput",
    "PackageResult",
    "PackageSpec",
    "PackagingError",
    "ProtectedSample",
    "StreamInfo",
    "TextInput",
    "TrackInput",
    "TrackProtection",
    "package",
]

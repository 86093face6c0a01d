"""The packager's one exception class."""

from __future__ import annotations


class PackagingError(Exception):
    """The inputs cannot be packaged as asked: a malformed or unsupported track file, renditions
    whose keyframes do not fall on the segment boundaries, an invalid format combination.

    The engine turns it into `FinalError` 4101; the message names the track and the reason.
    """

"""All the DRM of one track behind one object, for the packager.

`TrackEncryption` has the shape of the packager's per-track protection hooks
(`packagers.hooks.TrackProtection`: `sinf`, `init_boxes`, `protect_sample`, `dash_elements`,
`hls_keys`, `hls_session_keys`, `key_id`, `iv`) without importing the packager: drm stays a
library of its own. The pipeline attaches one per encrypted track.
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Protocol

from drm import pssh, signalling, systems
from drm.cenc import AUDIO_CODECS, VIDEO_CODECS, CencError, EncryptedSample, SampleEncryptor
from drm.keys import ContentKey


class SampleEntryLike(Protocol):
    """What is read of the packager's sample entry: its type and its child boxes' payloads."""

    fourcc: str
    boxes: Mapping[str, bytes]


class TrackEncryption:
    """Encrypts one track with `key` under `scheme` and signals it.

    `presentation_keys`: every key of the presentation, for the master playlist's session
    keys (default: this track's key). `iv`: the starting (cenc) or constant (cbcs) IV. Without
    it, cbcs uses the key's IV (a Key Service's `explicitIV`: the constant IV of every track
    under that key), else a random one; cenc always starts at a random IV of its own, never at
    the key's: AES-CTR tracks sharing a key and a starting IV would reuse keystream (the
    players read each sample's IV from `senc`, so nothing needs the key's IV).
    """

    def __init__(
        self,
        key: ContentKey,
        scheme: str,
        *,
        presentation_keys: Sequence[ContentKey] = (),
        system_ids: Sequence[uuid.UUID] = systems.ALL_SYSTEMS,
        playready_la_url: str | None = None,
        iv: bytes | None = None,
    ):
        self.key = key
        self.scheme = str(scheme)
        self.presentation_keys = list(presentation_keys) or [key]
        self.system_ids = tuple(system_ids)
        self.playready_la_url = playready_la_url
        if iv is None:  # cenc: one per track, never the key's (see above)
            iv = (key.iv or os.urandom(16)) if self.scheme == "cbcs" else os.urandom(8)
        self._iv = iv
        self.key_id: str | None = str(key.key_id)
        # Reported in StreamInfo: the constant IV only (cenc's per-sample IVs are in senc).
        self.iv: str | None = self._iv.hex() if self.scheme == "cbcs" else None
        self._encryptor: SampleEncryptor | None = None

    def __repr__(self) -> str:
        return f"TrackEncryption(scheme={self.scheme!r}, key_id={self.key_id})"

    def encryptor(self, entry: SampleEntryLike) -> SampleEncryptor:
        """The track's sample encryptor, made from the sample entry on first use."""
        if self._encryptor is None:
            codec = entry.fourcc
            if codec not in VIDEO_CODECS and codec not in AUDIO_CODECS:
                raise CencError(f"cannot encrypt a {codec!r} track (no CENC mapping in vipe)")
            config = entry.boxes.get("avcC") or entry.boxes.get("hvcC") or b""
            self._encryptor = SampleEncryptor(
                self.scheme, self.key, codec, parameter_sets=config, iv=self._iv
            )
        return self._encryptor

    # -- the packager's hooks --------------------------------------------------------------

    def sinf(self, entry: SampleEntryLike) -> bytes:
        """The `sinf` box that turns the sample entry into `encv`/`enca`."""
        return self.encryptor(entry).sinf(entry.fourcc)

    def init_boxes(self) -> list[bytes]:
        """The `pssh` boxes for the init segment's `moov`."""
        return pssh.pssh_boxes(
            self.key,
            self.scheme,
            system_ids=self.system_ids,
            playready_la_url=self.playready_la_url,
        )

    def protect_sample(self, data: bytes, entry: SampleEntryLike) -> EncryptedSample:
        """Encrypt one sample (decode order)."""
        return self.encryptor(entry).encrypt(data)

    def dash_elements(self) -> list[ET.Element]:
        """`ContentProtection` elements for the track's AdaptationSet."""
        return signalling.dash_content_protection(
            self.key,
            self.scheme,
            system_ids=self.system_ids,
            playready_la_url=self.playready_la_url,
        )

    def hls_keys(self) -> list[str]:
        """`#EXT-X-KEY` lines for the track's media playlists."""
        return signalling.hls_key_tags(
            self.key,
            self.scheme,
            system_ids=self.system_ids,
            playready_la_url=self.playready_la_url,
        )

    def hls_session_keys(self) -> list[str]:
        """`#EXT-X-SESSION-KEY` lines for the master playlist."""
        return signalling.hls_session_key_tags(
            self.presentation_keys,
            self.scheme,
            system_ids=self.system_ids,
            playready_la_url=self.playready_la_url,
        )

"""Content keys: `ContentKey`, `KeySet` and what a Key Service returned with them.

Where keys come from (the job JSON, a Key Service) is `engine.keys`: this library knows no
job paths.

Key material never reaches a log line, an exception text, a repr or a str: `ContentKey` shows
its key id only, and every error names the field or the Key Service, never a value.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Quality groups for multi-key and reporting (contract §5.1), in the order vipe lists them.
QUALITY_GROUPS: tuple[str, ...] = ("AUDIO", "SD", "HD", "UHD1", "UHD2")
KEY_SIZE = 16  # AES-128


class DrmKeyError(ValueError):
    """A content key cannot be resolved.

    `source` is the job field (`ContentProcessing.ContentKey`) or the Key Service URL;
    `transient` marks a fault worth retrying later (a Key Service down or overloaded).
    The message never holds key material or a secret.
    """

    def __init__(self, source: str, reason: str, *, transient: bool = False):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class SystemSignalling:
    """What a Key Service returned for one key and one DRM system; vipe uses it as given.

    `pssh` is the whole `pssh` box; `content_protection_data` the XML fragment for the DASH
    `ContentProtection` element; `hls_media` / `hls_master` the `#EXT-X-KEY` /
    `#EXT-X-SESSION-KEY` line(s). SPEKE v1 answers give the HLS key as `uri_ext_x_key` plus
    `key_format` and `key_format_versions` instead.
    """

    pssh: bytes | None = None
    content_protection_data: str | None = None
    hls_media: str | None = None
    hls_master: str | None = None
    uri_ext_x_key: str | None = None
    key_format: str | None = None
    key_format_versions: str | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in self.__dict__.values())


@dataclass(frozen=True, repr=False)
class ContentKey:
    """One AES-128 content key and its key id.

    `iv`: an IV given with the key (CPIX `explicitIV`): the constant IV of its cbcs tracks
    (cenc tracks start at IVs of their own, see `drm.track`); None: the encryptor picks.
    `quality_group`: the group the key is for (`AUDIO`, `SD`, …) in multi-key mode, else None.
    `signalling`: per DRM system id, what the Key Service returned (empty for job keys).
    `systems`: the DRM system ids the job chose to signal for this key (None: every system
    the output can carry); init segments and manifests carry these systems only.
    """

    key_id: uuid.UUID
    key: bytes
    iv: bytes | None = None
    quality_group: str | None = None
    signalling: Mapping[uuid.UUID, SystemSignalling] = field(default_factory=dict, compare=False)
    systems: tuple[uuid.UUID, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, uuid.UUID):
            object.__setattr__(self, "key_id", uuid.UUID(str(self.key_id)))
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            length = len(self.key) if isinstance(self.key, bytes | bytearray) else "?"
            raise DrmKeyError(
                f"content key {self.key_id}", f"must be {KEY_SIZE} bytes (AES-128), not {length}"
            )
        if self.iv is not None and len(self.iv) not in (8, 16):
            raise DrmKeyError(
                f"content key {self.key_id}", f"an IV must be 8 or 16 bytes, not {len(self.iv)}"
            )

    def __repr__(self) -> str:
        group = f", quality_group={self.quality_group!r}" if self.quality_group else ""
        iv = f", iv={self.iv.hex()}" if self.iv else ""  # IVs are public: they sit in the files
        return f"ContentKey(key_id={self.key_id}, key=<hidden>{iv}{group})"

    __str__ = __repr__

    @property
    def key_id_hex(self) -> str:
        """The key id as 32 lower-case hex digits (as in `skd://` URIs and `KEYID=0x…`)."""
        return self.key_id.hex

    def signals(self, system_id: uuid.UUID) -> bool:
        """Whether `system_id` is signalled for this key (the job's choice of systems)."""
        return self.systems is None or system_id in self.systems

    def for_system(self, system_id: uuid.UUID) -> SystemSignalling:
        """What the Key Service returned for `system_id` (empty when nothing)."""
        return self.signalling.get(system_id) or SystemSignalling()


@dataclass(frozen=True, repr=False)
class KeySet:
    """The keys of one job: one key for every track, or one key per quality group."""

    keys: tuple[ContentKey, ...]
    multi_key: bool = False

    def __post_init__(self) -> None:
        if not self.keys:
            raise DrmKeyError("KeySet", "needs at least one content key")
        if not self.multi_key and len(self.keys) != 1:
            raise DrmKeyError("KeySet", "a single-key set holds exactly one key")
        if self.multi_key:
            groups = [key.quality_group for key in self.keys]
            if None in groups or len(set(groups)) != len(groups):
                raise DrmKeyError("KeySet", "multi-key needs one key per distinct quality group")

    @classmethod
    def single(cls, key: ContentKey) -> KeySet:
        """One key for all tracks."""
        return cls((key,), multi_key=False)

    @classmethod
    def per_group(cls, keys: Iterable[ContentKey]) -> KeySet:
        """One key per quality group (each key carries its `quality_group`)."""
        order = {group: index for index, group in enumerate(QUALITY_GROUPS)}
        ordered = sorted(keys, key=lambda key: order.get(key.quality_group or "", len(order)))
        return cls(tuple(ordered), multi_key=True)

    def key_for(self, quality_group: str) -> ContentKey:
        """The key that protects tracks of `quality_group` (`AUDIO`, `SD`, `HD`, `UHD1`, `UHD2`)."""
        if not self.multi_key:
            return self.keys[0]
        wanted = quality_group.upper()
        for key in self.keys:
            if key.quality_group == wanted:
                return key
        raise DrmKeyError("KeySet", f"no content key for quality group {quality_group}")

    @property
    def key_ids(self) -> list[uuid.UUID]:
        """The key ids, in the order of the keys (what `POST /Job` answers)."""
        return [key.key_id for key in self.keys]

    def __iter__(self) -> Iterator[ContentKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeySet(multi_key={self.multi_key}, keys={list(self.keys)!r})"

    __str__ = __repr__

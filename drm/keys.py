"""Content keys and where they come from (contract §5.2).

`keys_from_job` turns the DRM settings of a job's `ContentProcessing` into a `KeySet`: the key
in the job (`Base64Key`), the key protected with the service certificate (`Encrypted`), or keys
from a Key Service speaking CPIX (`Managed`, see `drm.cpix`).

Key material never reaches a log line, an exception text, a repr or a str: `ContentKey` shows
its key id only, and every error names the field or the Key Service, never a value.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drm.credentials import CredentialsError

if TYPE_CHECKING:
    from drm.credentials import ServiceKey

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
    """

    key_id: uuid.UUID
    key: bytes
    iv: bytes | None = None
    quality_group: str | None = None
    signalling: Mapping[uuid.UUID, SystemSignalling] = field(default_factory=dict, compare=False)

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


# ------------------------------------------------------------------------------ key sources


def keys_from_job(
    processing: Any,
    service_key: ServiceKey | None,
    quality_groups: Iterable[str],
    content_id: str,
    *,
    ca_file: str | None = None,
    timeout: float = 10.0,
    attempts: int = 4,
    backoff: float = 0.5,
) -> KeySet | None:
    """Resolve the content keys of a job's `ContentProcessing` (None when DrmProtection is None).

    `service_key` decrypts `Encrypted` keys and protected `DrmManaged` secrets.
    `quality_groups` are the groups the job's renditions use (multi-key asks one key for each;
    an empty set means "not known yet" and asks for all five). `content_id` is the CPIX
    `contentId` when the job gives no `KeySeedId` (the job id, typically). The keyword
    arguments go to the CPIX client (`ca_file`: a CA bundle for the Key Service's TLS
    certificate; the environment variable `VIPE_CPIX_CA_FILE` does the same).
    """
    mode = str(processing.drm_protection)
    if mode == "None":
        return None
    if mode == "Base64Key":
        key = _key_from_base64(processing)
        log.info("content key %s from the job (Base64Key)", key.key_id)
        return KeySet.single(key)
    if mode == "Encrypted":
        key = _key_from_encrypted(processing, service_key)
        log.info("content key %s from the job (Encrypted)", key.key_id)
        return KeySet.single(key)
    if mode == "Managed":
        return _keys_from_key_service(
            processing,
            service_key,
            quality_groups,
            content_id,
            ca_file=ca_file,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
        )
    raise DrmKeyError("ContentProcessing.DrmProtection", f"unknown mode {mode}")


def _key_id(processing: Any) -> uuid.UUID:
    if not processing.key_id:
        raise DrmKeyError("ContentProcessing.KeyId", "required for this DrmProtection")
    try:
        return uuid.UUID(str(processing.key_id))
    except ValueError:
        raise DrmKeyError("ContentProcessing.KeyId", "is not a GUID") from None


def _reveal(value: Any) -> str | None:
    """The clear text of a pydantic SecretStr (or a plain string)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


def _key_from_base64(processing: Any) -> ContentKey:
    field_name = "ContentProcessing.ContentKey"
    text = _reveal(processing.content_key)
    if not text:
        raise DrmKeyError(field_name, "required when DrmProtection is Base64Key")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DrmKeyError(field_name, "is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise DrmKeyError(field_name, f"must decode to 16 bytes (AES-128), not {len(key)}")
    return ContentKey(_key_id(processing), key)


def _key_from_encrypted(processing: Any, service_key: ServiceKey | None) -> ContentKey:
    field_name = "ContentProcessing.ContentKey"
    text = _reveal(processing.content_key)
    if not text:
        raise DrmKeyError(field_name, "required when DrmProtection is Encrypted")
    if service_key is None:
        raise DrmKeyError(field_name, "is Encrypted but no service key is loaded to decrypt it")
    try:
        ciphertext = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DrmKeyError(field_name, "is not valid base64 ciphertext") from None
    try:
        key = service_key.decrypt_bytes(ciphertext, field_name)
    except CredentialsError as error:
        raise DrmKeyError(field_name, error.args[0].split(": ", 1)[-1]) from None
    if len(key) != KEY_SIZE:
        raise DrmKeyError(
            field_name, f"must decrypt to 16 bytes (AES-128), not {len(key)}: wrong plaintext"
        )
    return ContentKey(_key_id(processing), key)


def _managed_secret(
    value: Any, field_name: str, protected: bool, service_key: ServiceKey | None
) -> str | None:
    text = _reveal(value)
    if text is None or not protected:
        return text
    if service_key is None:
        raise DrmKeyError(field_name, "is Encrypted but no service key is loaded to decrypt it")
    try:
        return service_key.decrypt(text.strip(), field_name)
    except CredentialsError as error:
        raise DrmKeyError(field_name, error.args[0].split(": ", 1)[-1]) from None


def _keys_from_key_service(
    processing: Any,
    service_key: ServiceKey | None,
    quality_groups: Iterable[str],
    content_id: str,
    **client_options: Any,
) -> KeySet:
    # Imported here: drm.cpix builds ContentKey objects from this module.
    from drm.cpix import CpixClient, KeyRequest

    base = "ContentProcessing.DrmManaged"
    managed = processing.drm_managed
    if managed is None:
        raise DrmKeyError(base, "required when DrmProtection is Managed")
    if not managed.api_url:
        raise DrmKeyError(f"{base}.ApiUrl", "required when DrmProtection is Managed")
    if not managed.tenant_id:
        raise DrmKeyError(f"{base}.TenantId", "required when DrmProtection is Managed")
    protected = str(managed.keys_protection) == "Encrypted"
    management_key = _managed_secret(
        managed.management_key, f"{base}.ManagementKey", protected, service_key
    )
    if not management_key:
        raise DrmKeyError(f"{base}.ManagementKey", "required when DrmProtection is Managed")
    key_seed_id = _managed_secret(managed.key_seed_id, f"{base}.KeySeedId", protected, service_key)

    groups = _ordered_groups(quality_groups)
    if managed.multi_key:
        requests = [KeyRequest(uuid.uuid4(), group) for group in groups]
    else:
        requests = [KeyRequest(uuid.uuid4(), None)]
    client = CpixClient(managed.api_url, managed.tenant_id, management_key, **client_options)
    keys = client.request_keys(
        content_id=key_seed_id or content_id,
        requests=requests,
        scheme=str(processing.scheme),
        quality_groups=groups,
    )
    if managed.multi_key:
        return KeySet.per_group(keys)
    return KeySet.single(keys[0])


def _ordered_groups(quality_groups: Iterable[str]) -> list[str]:
    wanted = {group.upper() for group in quality_groups}
    unknown = wanted - set(QUALITY_GROUPS)
    if unknown:
        raise DrmKeyError(
            "quality groups", f"unknown {sorted(unknown)}; expected {list(QUALITY_GROUPS)}"
        )
    if not wanted:
        return list(QUALITY_GROUPS)
    return [group for group in QUALITY_GROUPS if group in wanted]

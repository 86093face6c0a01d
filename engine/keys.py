"""Job JSON → content keys (contract §5.2).

`keys_from_job` turns the DRM settings of a job's `ContentProcessing` into a `drm.keys.KeySet`:
the key in the job (`Base64Key`), the key protected with the service certificate
(`Encrypted`), or keys from a Key Service speaking CPIX (`Managed`, see `drm.cpix`).
`keys_again` gets the same keys once more at the worker (the key ids `POST /Job` answered).
`Managed` keys carry the job's DRM systems (`DrmManaged.DrmSystems`, default: all that the
output formats can signal), and the Key Service is asked for those only, authenticated as
`DrmManaged.Authentication` says (Basic by default), each secret decrypted with the service
key under `KeysProtection: Encrypted`.

Key material never reaches a log line or an exception text: every error names the field or
the Key Service, never a value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from drm import systems
from drm.cpix import (
    CA_FILE_ENV,
    Authentication,
    AwsSigV4Authentication,
    BasicAuthentication,
    BearerAuthentication,
    CpixClient,
    HeaderAuthentication,
    KeyRequest,
)
from drm.keys import KEY_SIZE, QUALITY_GROUPS, ContentKey, DrmKeyError, KeySet
from engine import ladder
from engine.job import AuthenticationType, VideoFormat
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy

if TYPE_CHECKING:
    import urllib.request

    from drm.credentials import ServiceKey
    from engine.job import DrmManaged, Job

log = logging.getLogger(__name__)


def possible_quality_groups(job: Job) -> set[str]:
    """Quality groups the job's ladder can use, known before the source is probed (for
    multi-key requests at job creation): from custom representations, else the default
    ladder's heights."""
    processing = job.content_processing
    groups = {"AUDIO"}
    if processing.video_representations:
        heights = [r.height or 2160 for r in processing.video_representations]
    else:
        codec = (
            VideoFormat.H265 if processing.video_format == VideoFormat.H265 else VideoFormat.H264
        )
        heights = [h for h, _ in ladder.LADDERS[(processing.bitrate_ladder, codec)]]
    groups |= {ladder.quality_group(h) for h in heights}
    return groups


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
    opener: urllib.request.OpenerDirector | None = None,
    egress: EgressPolicy = UNRESTRICTED,
) -> KeySet | None:
    """Resolve the content keys of a job's `ContentProcessing` (None when DrmProtection is None).

    `service_key` decrypts `Encrypted` keys and protected `DrmManaged` secrets.
    `quality_groups` are the groups the job's renditions use (multi-key asks one key for each;
    an empty set means "not known yet" and asks for all five). `content_id` is the CPIX
    `contentId` when the job gives no `KeySeedId` (the job id, typically). The keyword
    arguments go to the CPIX client (`ca_file`: a CA bundle for the Key Service's TLS
    certificate; the environment variable `VIPE_CPIX_CA_FILE` does the same; `opener`: the
    urllib opener that sends the request). `egress`: the server's egress policy; when it is
    restricted (and no `opener` is given) the Key Service is reached only through it.
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
            opener=opener or key_service_opener(egress, ca_file),
        )
    raise DrmKeyError("ContentProcessing.DrmProtection", f"unknown mode {mode}")


def key_service_opener(
    egress: EgressPolicy, ca_file: str | None = None
) -> urllib.request.OpenerDirector | None:
    """The opener for a Key Service under a restricted egress policy: connections only to
    admitted addresses, verified TLS (plus `ca_file` or VIPE_CPIX_CA_FILE), no redirects.
    None when unrestricted (the CPIX client's own opener)."""
    if not egress.restricted:
        return None
    import ssl  # here: a job whose keys come from no Key Service does not load it

    context = ssl.create_default_context()
    ca_file = ca_file or os.environ.get(CA_FILE_ENV)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return egress.opener("ContentProcessing.DrmManaged.ApiUrl", context=context, redirects=False)


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
    from drm.credentials import CredentialsError  # lazily: RSA only for Encrypted

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
    from drm.credentials import CredentialsError  # lazily: RSA only for Encrypted

    try:
        return service_key.decrypt(text.strip(), field_name)
    except CredentialsError as error:
        raise DrmKeyError(field_name, error.args[0].split(": ", 1)[-1]) from None


def _authentication(
    managed: DrmManaged, protected: bool, service_key: ServiceKey | None
) -> Authentication:
    """The job's Key Service authentication, its secrets decrypted (`KeysProtection`)."""
    base = "ContentProcessing.DrmManaged"
    auth = managed.authentication
    kind = managed.authentication_type
    if auth is None or kind == AuthenticationType.Basic:
        if not managed.tenant_id:
            raise DrmKeyError(f"{base}.TenantId", "required when DrmProtection is Managed")
        management_key = _managed_secret(
            managed.management_key, f"{base}.ManagementKey", protected, service_key
        )
        if not management_key:
            raise DrmKeyError(f"{base}.ManagementKey", "required when DrmProtection is Managed")
        return BasicAuthentication(managed.tenant_id, management_key)
    here = f"{base}.Authentication"

    def secret(value: Any, alias: str, required: bool = True) -> str | None:
        text = _managed_secret(value, f"{here}.{alias}", protected, service_key)
        if required and not text:
            raise DrmKeyError(f"{here}.{alias}", f"required when Type is {kind}")
        return text

    if kind == AuthenticationType.Bearer:
        return BearerAuthentication(secret(auth.token, "Token") or "")
    if kind == AuthenticationType.Header:
        if not auth.name:
            raise DrmKeyError(f"{here}.Name", "required when Type is Header")
        try:
            return HeaderAuthentication(auth.name, secret(auth.value, "Value") or "")
        except ValueError as error:
            raise DrmKeyError(f"{here}.Name", str(error)) from None
    if not auth.region:
        raise DrmKeyError(f"{here}.Region", "required when Type is AwsSigV4")
    try:
        return AwsSigV4Authentication(
            auth.region,
            auth.service or "execute-api",
            auth.access_key_id,
            secret(auth.secret_access_key, "SecretAccessKey", required=False),
            secret(auth.session_token, "SessionToken", required=False),
        )
    except ValueError as error:
        raise DrmKeyError(f"{here}.SecretAccessKey", str(error)) from None


def chosen_systems(processing: Any) -> tuple[uuid.UUID, ...]:
    """The DRM systems a job signals: `DrmManaged.DrmSystems`, else every system its output
    formats can signal under its scheme."""
    managed = processing.drm_managed
    if managed is not None and managed.drm_systems:
        return tuple(systems.system_id(str(name)) for name in managed.drm_systems)
    formats = [str(f) for f in processing.formats]
    return systems.signallable(formats, str(processing.scheme))


def _keys_from_key_service(
    processing: Any,
    service_key: ServiceKey | None,
    quality_groups: Iterable[str],
    content_id: str,
    requests: list[KeyRequest] | None = None,
    **client_options: Any,
) -> KeySet:
    """Keys from the job's Key Service: new key ids, or `requests` (the ids asked before).
    Each key carries the job's choice of DRM systems (`ContentKey.systems`)."""
    base = "ContentProcessing.DrmManaged"
    managed = processing.drm_managed
    if managed is None:
        raise DrmKeyError(base, "required when DrmProtection is Managed")
    if not managed.api_url:
        raise DrmKeyError(f"{base}.ApiUrl", "required when DrmProtection is Managed")
    protected = str(managed.keys_protection) == "Encrypted"
    authentication = _authentication(managed, protected, service_key)
    key_seed_id = _managed_secret(managed.key_seed_id, f"{base}.KeySeedId", protected, service_key)

    groups = _ordered_groups(quality_groups)  # checked in single-key mode too
    if requests is None and managed.multi_key:
        requests = [KeyRequest(uuid.uuid4(), group) for group in groups]
    elif requests is None:
        requests = [KeyRequest(uuid.uuid4(), None)]
    chosen = chosen_systems(processing)
    client = CpixClient(
        managed.api_url,
        managed.tenant_id,
        authentication=authentication,
        system_ids=chosen,
        **client_options,
    )
    try:
        keys = client.request_keys(
            content_id=key_seed_id or content_id, requests=requests, scheme=str(processing.scheme)
        )
    except EgressDenied as denied:  # the server's policy, not the Key Service: the job's field
        raise DrmKeyError(denied.field, denied.reason) from None
    keys = [dataclasses.replace(key, systems=chosen) for key in keys]
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


def keys_again(
    job: Job,
    service_key: ServiceKey | None,
    key_ids: list[tuple[str, str | None]],
    content_id: str,
    egress: EgressPolicy = UNRESTRICTED,
) -> KeySet:
    """The content keys of a job once more, at the worker: the same key ids (with their quality
    groups) that `POST /Job` answered. A Key Service is asked again for exactly those ids under
    the same content id (it answers the same key for the same id and content). Raises
    DrmKeyError when the keys cannot be had or are not the ones the job was created with."""
    processing = job.content_processing
    groups = possible_quality_groups(job)  # as at creation: the same request
    keys: KeySet | None
    if str(processing.drm_protection) == "Managed":
        requests = [KeyRequest(uuid.UUID(kid), group) for kid, group in key_ids]
        keys = _keys_from_key_service(
            processing,
            service_key,
            groups,
            content_id,
            requests,
            opener=key_service_opener(egress),
        )
    else:
        keys = keys_from_job(processing, service_key, groups, content_id)
    wanted = [kid for kid, _ in key_ids]
    got = [str(key.key_id) for key in keys or []]
    if keys is None or got != wanted:
        raise DrmKeyError(
            "content keys",
            f"the keys obtained now ({', '.join(got)}) are not the ones the job was created "
            f"with ({', '.join(wanted)})",
        )
    return keys

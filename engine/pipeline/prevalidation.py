"""Pre-Validation: open and check the job's storages, resolve its keys, `JobCreated`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from drm.keys import DrmKeyError
from engine.errors import DrmError, EngineError, ImageExtractionError, JobValidationError
from engine.events import EventType
from engine.job import DrmProtection, Job, Protection
from engine.locations import storage_error_to_engine
from engine.pipeline.payloads import job_created_fields
from engine.pipeline.results import Prepared
from engine.validation import FieldError
from storage import StorageError, open_storage

if TYPE_CHECKING:
    from drm.credentials import ServiceKey
    from drm.keys import KeySet
    from engine.job import StorageSpec
    from engine.pipeline.scope import JobScope
    from storage.base import Storage


def needs_service_key(job: Job) -> bool:
    """Whether the job holds a secret protected with the service certificate."""
    storages = [job.content_acquisition, job.content_publishing]
    if job.image_extraction:
        storages.append(job.image_extraction.location)
    if any(s.credentials_protection == Protection.Encrypted for s in storages):
        return True
    if any(p.credentials_protection == Protection.Encrypted for p in job.message_publishers or []):
        return True
    processing = job.content_processing
    if processing.drm_protection == DrmProtection.Encrypted:
        return True
    managed = processing.drm_managed
    return bool(managed and managed.keys_protection == Protection.Encrypted)


def load_service_key(scope: JobScope) -> ServiceKey | None:
    """The service key pair, loaded only when the job holds protected secrets."""
    if not needs_service_key(scope.job):
        return None
    from drm.credentials import ServiceKey  # lazily: RSA and X.509 cost start-up time

    return ServiceKey.load_or_create(scope.data_dir)


def pre_validate(
    scope: JobScope, service_key: ServiceKey | None, given_keys: KeySet | None
) -> Prepared:
    """Open the input and output storages (the output, and ImageExtraction's, checked for
    access before any work), resolve the keys unless the caller has them, emit JobCreated."""
    job = scope.job
    with contextlib.ExitStack() as opened:  # closed here if this phase fails
        source = open_job_storage(scope, job.content_acquisition, service_key, "ContentAcquisition")
        opened.callback(source.close)
        target = open_job_storage(scope, job.content_publishing, service_key, "ContentPublishing")
        opened.callback(target.close)
        check_output_access(target)
        if job.image_extraction is not None:
            _check_image_location(scope, job.image_extraction.location, service_key)
        keys = given_keys if given_keys is not None else resolve_keys(scope, service_key)
        opened.pop_all()  # from here on the run closes them
    created = job_created_fields(job, scope.warnings)
    if keys is not None:  # the key ids, as `POST /Job` answers them (contract §1)
        ids = [str(kid) for kid in keys.key_ids]
        if len(ids) == 1:
            created["KeyId"] = ids[0]
        else:
            created["KeyIds"] = ids
    scope.events.emit(EventType.JOB_CREATED, **created)
    for warning in scope.warnings:
        scope.events.warning("UnknownProperty", f"{warning.field}: {warning.message}")
    return Prepared(source, target, keys, service_key)


def open_job_storage(
    scope: JobScope, spec: StorageSpec, service_key: ServiceKey | None, field: str
) -> Storage:
    """A storage object of the job, opened. A location the server's policy refuses (a Local
    path outside the tenant's roots, a refused address) is access denied: 2002 for the input,
    4302 for an output; one the provider cannot use at all is an invalid job naming the field."""
    try:
        return open_storage(scope.location(spec, service_key, field))
    except StorageError as error:
        if error.kind == "denied":
            refused = storage_error_to_engine(error, publishing=field != "ContentAcquisition")
            named = refused.message if field in refused.message else f"{field}: {refused.message}"
            raise type(refused)(named, code=refused.code) from None
        raise JobValidationError([FieldError(f"{field}.UriPath", str(error))]) from None


def check_output_access(storage: Storage) -> None:
    """Fail before the encode, not after it, when the output storage refuses or cannot be
    reached; a folder that does not exist yet is fine (publishing creates it)."""
    try:
        storage.check_access()
    except StorageError as error:
        if error.kind in ("denied", "unreachable"):
            raise storage_error_to_engine(error, publishing=True) from None


def _check_image_location(
    scope: JobScope, spec: StorageSpec, service_key: ServiceKey | None
) -> None:
    """The stills' own storage, checked before the encode as ContentPublishing is."""
    try:
        storage = open_job_storage(scope, spec, service_key, "ImageExtraction.Location")
        try:
            check_output_access(storage)
        finally:
            storage.close()
    except JobValidationError:
        raise
    except EngineError as error:
        raise ImageExtractionError(f"ImageExtraction.Location: {error.message}") from None


def resolve_keys(scope: JobScope, service_key: ServiceKey | None) -> KeySet | None:
    """Content keys for an encrypted job (None in clear)."""
    processing = scope.processing
    if processing.drm_protection == DrmProtection.Off:
        return None
    # Imported here: the key sources (CPIX client, HTTP, XML) cost start-up time that a job
    # in clear does not need.
    from drm.cpix import KeyServiceError
    from engine.keys import keys_from_job, possible_quality_groups

    try:
        return keys_from_job(
            processing,
            service_key,
            possible_quality_groups(scope.job),
            content_id=scope.job_id,
            egress=scope.policy.egress,
        )
    except KeyServiceError as error:  # down, refused or nonsense: a DRM failure (4001)
        raise DrmError(str(error), retryable=error.transient) from None
    except DrmKeyError as error:
        if error.source.startswith("ContentProcessing."):
            # Key material of the job itself (a ContentKey that does not decrypt): an
            # invalid job naming the field (1001), as `POST /Job` answers 400.
            raise JobValidationError([FieldError(error.source, error.reason)]) from None
        raise DrmError(str(error)) from None

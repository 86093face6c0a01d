"""From the job's storage objects to storage providers, and from storage errors to FinalErrors.

`location_from_spec` turns a `StorageSpec` (ContentAcquisition, ContentPublishing,
ImageExtraction.Location) into a `StorageLocation`, decrypting an `Encrypted` CredentialsSecret
with the service key (contract §3). `storage_error_to_engine` maps a `StorageError` to the
phase's `EngineError` with its FinalError code (contract §8):

| StorageError kind | Acquisition | Publishing |
|---|---|---|
| unreachable | 2001 | 4301 |
| denied | 2002 | 4302 |
| missing (bucket/container/folder absent, input folder empty) | 2003 | 4301 |
| invalid (bad URI, unsafe file name, input-only provider) | 2003 | 4301 |

Why: on input, a missing bucket and an empty folder are the same to the user ("no input there"),
and an unsafe file name makes the input folder unusable, so both are 2003. On output, the contract
has only "unreachable" and "access denied"; a bucket that does not exist cannot be reached as a
destination, so missing and invalid are 4301.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import AcquisitionError, EngineError, JobValidationError, PublishError
from engine.job import Protection, StorageSpec
from engine.policy import TRUSTED, JobPolicy
from engine.validation import FieldError
from storage.base import StorageError, StorageLocation

if TYPE_CHECKING:
    from drm.credentials import ServiceKey

_ACQUISITION_CODES = {"unreachable": 2001, "denied": 2002, "missing": 2003, "invalid": 2003}
_PUBLISHING_CODES = {"unreachable": 4301, "denied": 4302, "missing": 4301, "invalid": 4301}


def location_from_spec(
    spec: StorageSpec,
    service_key: ServiceKey | None,
    field: str,
    policy: JobPolicy = TRUSTED,
    tenant_id: str = "local",
) -> StorageLocation:
    """The location a storage provider needs, its secret in clear, under the server's policy
    (`policy`: where connections may go, and the tenant's folders for `Local`).

    `field` is the JSON path of the storage object (e.g. `ContentAcquisition`), used to name
    `<field>.CredentialsSecret` when an Encrypted secret does not decrypt (JobValidationError,
    FinalError 1001). The secret itself never appears in an error.
    """
    secret_field = f"{field}.CredentialsSecret"
    secret = spec.credentials_secret.get_secret_value() if spec.credentials_secret else None
    if secret is not None and spec.credentials_protection == Protection.Encrypted:
        # RSA and X.509 are imported only when a secret needs them (start-up time)
        from drm.credentials import CredentialsError

        if service_key is None:
            raise JobValidationError(
                [FieldError(secret_field, "is Encrypted but this node has no service key")]
            )
        try:
            secret = service_key.decrypt(secret, secret_field)
        except CredentialsError as error:
            reason = str(error).removeprefix(f"{error.field}: ")
            raise JobValidationError([FieldError(error.field, reason)]) from None
    return StorageLocation(
        provider=str(spec.provider),
        uri=spec.uri_path,
        credentials_name=spec.credentials_name,
        credentials_secret=secret,
        role_arn=spec.role_arn_to_assume,
        role_session_seconds=spec.role_session_duration_in_seconds,
        egress=policy.egress,
        local_roots=policy.roots_for(tenant_id),
        local_excluded=policy.excluded,
        field=f"{field}.UriPath",
    )


def storage_error_to_engine(error: StorageError, publishing: bool) -> EngineError:
    """The phase error for a storage failure: AcquisitionError (2001/2002/2003) on input,
    PublishError (4301/4302) on output. The message is the storage error's (it names the
    provider and location, never a secret); `retryable` is carried over."""
    if publishing:
        return PublishError(
            str(error), code=_PUBLISHING_CODES.get(error.kind, 4301), retryable=error.retryable
        )
    return AcquisitionError(
        str(error), code=_ACQUISITION_CODES.get(error.kind, 2001), retryable=error.retryable
    )

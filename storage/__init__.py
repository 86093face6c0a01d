"""Storage providers keyed by the job's `Provider` string (contract §3).

`open_storage(location)` returns the provider for a location; a provider whose SDK is not
installed raises a StorageError that names the extra to install.
"""

from __future__ import annotations

import importlib

from storage.base import (
    RemoteFile,
    Storage,
    StorageError,
    StorageLocation,
    content_type,
    is_manifest,
    safe_name,
    safe_relative_path,
)

# Provider -> (module, class, pip extra that installs its SDK or None)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "Local": ("storage.local", "LocalStorage", None),
    "AmazonS3": ("storage.s3", "S3Storage", "s3"),
    "S3Compatible": ("storage.s3", "S3CompatibleStorage", "s3"),
    "AzureBlob": ("storage.azure", "AzureBlobStorage", "azure"),
    "Ftps": ("storage.ftps", "FtpsStorage", None),
    "Http": ("storage.http", "HttpStorage", None),
}


def provider_class(provider: str) -> type[Storage]:
    try:
        module_name, class_name, extra = REGISTRY[provider]
    except KeyError:
        raise StorageError(f"no storage provider named {provider!r}", "invalid") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"`pip install vipe[{extra}]`" if extra else "a dependency"
        message = f"{provider} needs {hint} ({error.name} is missing)"
        raise StorageError(message, "invalid") from None
    return getattr(module, class_name)


def open_storage(location: StorageLocation) -> Storage:
    return provider_class(location.provider)(location)


__all__ = [
    "REGISTRY",
    "RemoteFile",
    "Storage",
    "StorageError",
    "StorageLocation",
    "content_type",
    "is_manifest",
    "open_storage",
    "provider_class",
    "safe_name",
    "safe_relative_path",
]

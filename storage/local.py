"""`Local` storage: a folder on this machine (`file:///absolute/folder/`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from storage.base import (
    ErrorKind,
    Progress,
    RemoteFile,
    Storage,
    StorageError,
    StorageLocation,
    safe_name,
    safe_relative_path,
)

CHUNK = 1 << 20


class LocalStorage(Storage):
    provider = "Local"

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        parsed = urlparse(location.uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise StorageError(f"Local: {location.uri} is not a file:/// URI", "invalid")
        self.root = Path(unquote(parsed.path))
        if not self.root.is_absolute():
            raise StorageError(f"Local: {location.uri} is not an absolute path", "invalid")

    def list_files(self) -> list[RemoteFile]:
        try:
            entries = list(os.scandir(self.root))
        except OSError as error:
            raise self._error("cannot list", error) from None
        return [
            RemoteFile(entry.name, entry.stat().st_size)
            for entry in entries
            if entry.is_file(follow_symlinks=True)
        ]

    def download_file(self, name: str, target: Path, progress: Progress | None = None) -> None:
        source = self.root / safe_name(name)
        try:
            _copy(source, target, progress)
        except OSError as error:
            raise self._error(f"cannot read {name}", error) from None

    def upload_file(self, source: Path, name: str, progress: Progress | None = None) -> None:
        target = self.root / safe_relative_path(name)
        partial = target.with_name(f".{target.name}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(source, partial, progress)
            os.replace(partial, target)  # readers never see a half-written file
        except OSError as error:
            with contextlib.suppress(OSError):  # e.g. the parent is a file: nothing to remove
                partial.unlink(missing_ok=True)
            raise self._error(f"cannot write {name}", error) from None

    def delete_file(self, name: str) -> None:
        path = self.root / safe_relative_path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise self._error(f"cannot delete {name}", error) from None
        # Folders that upload_file created for this name go too once empty (a rolled-back
        # publish leaves nothing behind); the root folder itself stays.
        for folder in path.parents:
            if folder == self.root or self.root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop here
                break

    def _error(self, what: str, error: OSError) -> StorageError:
        kinds: dict[int | None, ErrorKind] = {
            errno.ENOENT: "missing",
            errno.ENOTDIR: "missing",
            errno.EACCES: "denied",
            errno.EPERM: "denied",
            errno.EROFS: "denied",
        }
        kind = kinds.get(error.errno, "unreachable")
        return StorageError(f"Local {self.root}: {what}: {error.strerror}", kind)


def _copy(source: Path, target: Path, progress: Progress | None) -> None:
    total = source.stat().st_size
    done = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    shutil.copystat(source, target)

"""`Local` storage: a folder on this machine (`file:///absolute/folder/`).

Confinement: when the server's policy gives `local_roots` (`StorageLocation.local_roots`), a
location is allowed only when its real path (symlinks and `..` resolved) lies inside one of them.
This is checked when the storage is opened and again at every file it opens: a symlink planted in
the folder later that leads outside is refused. Where /proc is available the check reads where the
opened file or folder really is (no window between the check and the open). Refusals are
StorageError(kind='denied'); no message names anything outside the root (only the location the
job gave and names inside it).

Output writes never follow symlinks: the temporary `.name.partial` file is created with
O_EXCL|O_NOFOLLOW (a stale one or a planted link is removed first, never written through), the
final rename replaces whatever has the target name instead of writing through it, and when
confined no sub-folder on the way may be a symlink.

Shared files (`download_folder` / `upload_folder` with `shared=True`: a job's input and its
package, which nothing writes into in place) are hard links instead of copies where the kernel
allows (one file system): a link of the very file that was opened and checked (linkat of
/proc/self/fd), made under a new name, never through a symlink; elsewhere a copy as above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from storage.base import (
    CancelCheck,
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

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_KINDS: dict[int, ErrorKind] = {
    errno.ENOENT: "missing",
    errno.ENOTDIR: "missing",
    errno.EACCES: "denied",
    errno.EPERM: "denied",
    errno.EROFS: "denied",
    errno.ELOOP: "denied",  # O_NOFOLLOW met a symlink
}


class LocalStorage(Storage):
    provider = "Local"

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        parsed = urlparse(location.uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise StorageError(f"Local: {location.uri} is not a file:/// URI", "invalid")
        path = unquote(parsed.path)
        if "\0" in path:
            raise StorageError("Local: the path holds a NUL character", "invalid")
        self.root = Path(path)
        if not self.root.is_absolute():
            raise StorageError(f"Local: {location.uri} is not an absolute path", "invalid")
        self.roots = location.local_roots
        if not self._allowed(os.path.realpath(self.root)):  # at open time
            raise self._refused("the folder")

    # -- confinement -------------------------------------------------------------------------

    @property
    def confined(self) -> bool:
        return self.roots is not None

    def _allowed(self, real: str) -> bool:
        """Whether a real (resolved) path lies inside a root (always when not confined) and
        outside every excluded folder (the server's data folder)."""
        path = Path(real)
        if any(path.is_relative_to(folder) for folder in self.location.local_excluded):
            return False
        if self.roots is None:
            return True
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def _refused(self, what: str) -> StorageError:
        # Names neither the location (it may be outside) nor where a symlink leads.
        return StorageError(f"Local: {what} lies outside the folders this server allows", "denied")

    def _check_opened(self, fd: int, fallback: str, what: str) -> None:
        """Refuse an opened file or folder that is not inside a root (closing it)."""
        if not self.confined:
            return
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")  # where it really is, as opened
        except OSError:
            real = os.path.realpath(fallback)  # no /proc: where the path leads now
        if not self._allowed(real):
            os.close(fd)
            raise self._refused(what)

    def _open_root(self, create: bool = False) -> tuple[int, str]:
        """An open descriptor of the location's folder, and its real path."""
        real = os.path.realpath(self.root)
        if not self._allowed(real):
            raise self._refused("the folder")
        if create:
            os.makedirs(real, exist_ok=True)
        fd = os.open(real, _DIRECTORY)
        self._check_opened(fd, real, "the folder")
        return fd, real

    def _open_folders(self, name: str, create: bool) -> list[int]:
        """Descriptors of the location's folder and of each sub-folder on the way to `name`
        (a safe relative path), created when `create`. Confined, a sub-folder that is a
        symlink is refused (O_NOFOLLOW). The caller closes them all."""
        root, _ = self._open_root(create)
        fds = [root]
        flags = _DIRECTORY | (os.O_NOFOLLOW if self.confined else 0)
        try:
            for part in name.split("/")[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fds[-1])
                try:
                    fds.append(os.open(part, flags, dir_fd=fds[-1]))
                except OSError as error:
                    if self.confined and error.errno in (errno.ENOTDIR, errno.ELOOP):
                        info = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
                        if stat.S_ISLNK(info.st_mode):  # O_NOFOLLOW met a symlink
                            raise self._refused(f"a symbolic link on the way to {name}") from None
                    raise
        except BaseException:
            _close_all(fds)
            raise
        return fds

    # -- operations --------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        try:
            fd, real = self._open_root()
        except OSError as error:
            raise self._error("cannot list", error) from None
        files = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if (
                        self.confined
                        and entry.is_symlink()
                        and not self._allowed(os.path.realpath(os.path.join(real, entry.name)))
                    ):
                        # Listed without looking at what it leads to, so that reading it is
                        # refused (denied) rather than the file silently missing.
                        files.append(RemoteFile(entry.name, 0))
                    elif entry.is_file(follow_symlinks=True):
                        files.append(RemoteFile(entry.name, entry.stat().st_size))
        except OSError as error:
            raise self._error("cannot list", error) from None
        finally:
            os.close(fd)
        return files

    def exists(self, name: str) -> bool:
        name = safe_relative_path(name)
        try:
            fds = self._open_folders(name, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            raise self._error(f"cannot look at {name}", error) from None
        try:
            os.stat(name.rsplit("/", 1)[-1], dir_fd=fds[-1], follow_symlinks=False)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            raise self._error(f"cannot look at {name}", error) from None
        finally:
            _close_all(fds)

    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        self._download(name, target, progress, cancel, share=False)

    def download_shared_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """`target` becomes a hard link of the file (the one opened and checked) when both are
        on one file system and the kernel allows it; else a copy."""
        self._download(name, target, progress, cancel, share=True)

    def _download(
        self,
        name: str,
        target: Path,
        progress: Progress | None,
        cancel: CancelCheck | None,
        *,
        share: bool,
    ) -> None:
        safe_name(name)
        try:
            root, real = self._open_root()
            try:
                # Follows a symlink in the folder, so where it leads is checked once open.
                # O_NONBLOCK: opening a FIFO must not hang (refused below as not a file).
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=root)
            finally:
                os.close(root)
            self._check_opened(fd, os.path.join(real, name), name)
            with open(fd, "rb") as reader:
                info = os.fstat(reader.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise StorageError(f"Local {self.root}: {name} is not a file", "invalid")
                os.set_blocking(reader.fileno(), True)
                if share:
                    # Whatever has the name (a link of an earlier attempt) is replaced, never
                    # written through: writing into a link would write into the stored file.
                    target.unlink(missing_ok=True)
                    if _link_into(reader.fileno(), target):
                        if progress:
                            progress(info.st_size, info.st_size)
                        return
                with open(target, "wb") as writer:
                    _copy(reader, writer, info.st_size, progress, cancel)
                    _copy_times(info, writer)
        except OSError as error:
            raise self._error(f"cannot read {name}", error) from None

    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        self._upload(source, name, progress, cancel, share=False)

    def upload_shared_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """The stored file becomes a hard link of `source` when both are on one file system
        and the kernel allows it; else a copy. Either way it appears under its name only when
        complete, and never through a symlink."""
        self._upload(source, name, progress, cancel, share=True)

    def _upload(
        self,
        source: Path,
        name: str,
        progress: Progress | None,
        cancel: CancelCheck | None,
        *,
        share: bool,
    ) -> None:
        name = safe_relative_path(name)
        base = name.rsplit("/", 1)[-1]
        partial = f".{base}.partial"
        try:
            fds = self._open_folders(name, create=True)
        except OSError as error:
            raise self._error(f"cannot write {name}", error) from None
        folder = fds[-1]
        try:
            with open(source, "rb") as reader:
                info = os.fstat(reader.fileno())
                if share and _link(reader.fileno(), partial, folder):
                    if progress:
                        progress(info.st_size, info.st_size)
                else:
                    with open(_create(partial, folder), "wb") as writer:
                        _copy(reader, writer, info.st_size, progress, cancel)
                        _copy_times(info, writer)
            # Readers never see a half-written file; a symlink at the target name is replaced,
            # not written through.
            os.replace(partial, base, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=folder)
            raise self._error(f"cannot write {name}", error) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=folder)
            raise
        finally:
            _close_all(fds)

    def delete_file(self, name: str) -> None:
        name = safe_relative_path(name)
        parts = name.split("/")
        try:
            fds = self._open_folders(name, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return  # its folder is gone: nothing to delete
        except OSError as error:
            raise self._error(f"cannot delete {name}", error) from None
        try:
            try:
                os.unlink(parts[-1], dir_fd=fds[-1])  # a symlink itself, never what it leads to
            except FileNotFoundError:
                pass
            except OSError as error:
                raise self._error(f"cannot delete {name}", error) from None
            # Folders that upload_file created for this name go too once empty (a rolled-back
            # publish leaves nothing behind); the location's folder itself stays.
            for depth in range(len(parts) - 2, -1, -1):
                try:
                    os.rmdir(parts[depth], dir_fd=fds[depth])
                except OSError:  # not empty (or already gone): stop here
                    break
        finally:
            _close_all(fds)

    def _error(self, what: str, error: OSError) -> StorageError:
        kind = _KINDS.get(error.errno or 0, "unreachable")
        reason = "a symbolic link is not followed" if error.errno == errno.ELOOP else error.strerror
        return StorageError(f"Local {self.root}: {what}: {reason}", kind)


def _create(name: str, folder: int) -> int:
    """Create `name` in `folder` for writing, never through a symlink: whatever already has the
    name (a partial file left by a crash, a planted link) is removed first, not followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o666, dir_fd=folder)
    except FileExistsError:
        os.unlink(name, dir_fd=folder)
        return os.open(name, flags, 0o666, dir_fd=folder)


def _link_into(fd: int, target: Path) -> bool:
    """_link of `fd` as the path `target`."""
    try:
        folder = os.open(target.parent, _DIRECTORY)
    except OSError:
        return False
    try:
        return _link(fd, target.name, folder)
    finally:
        os.close(folder)


def _link(fd: int, name: str, folder: int) -> bool:
    """Hard-link the open file `fd` as `name` in the folder open as `folder`: the very file
    that was opened and checked, not whatever its path leads to now (linkat of /proc's link
    with AT_SYMLINK_FOLLOW). Like _create, never through a symlink: a name already there (a
    partial file left by a crash, a planted link) is removed first, and link() itself never
    follows the new name. False where no link can be made (another file system,
    fs.protected_hardlinks, no /proc): the caller copies."""
    for attempt in range(2):
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
            return True
        except FileExistsError:
            if attempt:
                return False
            os.unlink(name, dir_fd=folder)
        except OSError:
            return False
    return False


def _copy(
    reader: BinaryIO,
    writer: BinaryIO,
    total: int,
    progress: Progress | None,
    cancel: CancelCheck | None,
) -> None:
    done = 0
    while chunk := reader.read(CHUNK):
        if cancel:
            cancel()
        writer.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)


def _copy_times(info: os.stat_result, writer: BinaryIO) -> None:
    """The source's permission bits and times on the copy (as shutil.copystat did)."""
    writer.flush()  # else closing it writes again and moves the time
    os.fchmod(writer.fileno(), stat.S_IMODE(info.st_mode))
    os.utime(writer.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

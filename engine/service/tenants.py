"""Tenants and their management keys (the `Tenant-Auth` scheme of contract §1).

An operator adds a tenant with `vipe tenant add NAME`: vipe makes a random UUID key, prints it
once, and keeps only its SHA-256 in `tenants.json` in the data folder (mode 0600). A management
key is 122 random bits, so a plain hash is enough: a slow KDF guards guessable passwords, and
nobody can guess a random UUID. Checking a key hashes it and compares with every tenant's hash
in constant time (`hmac.compare_digest`), so the answer time does not tell how much matched.

The file is re-read when it changes, so `vipe tenant add/remove` takes effect on a running
server without a restart.

The tenants of this file are the only tenants: a JWT's tenant claim must name one of them
(engine.service.auth), so both schemes share one namespace and a token cannot reach jobs of a
tenant the operator never added.

The data folder is private: `make_private` makes it 0700 and its files 0600, whoever (the
server, `vipe tenant add`) creates it first.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TENANTS_FILE = "tenants.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HASH_PREFIX = "sha256:"


def make_private(folder: Path) -> None:
    """Make the data folder (0700) if needed, and take group and other access from it and
    from the files directly in it (0600): keys, tenants, the database, TLS files."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        try:
            folder.chmod(0o700)
            log.warning("data folder %s was open to others; now 0700", folder)
        except PermissionError:
            log.warning("data folder %s is open to others and not this process's", folder)
    for entry in folder.iterdir():
        # Plain files only, never through a link; files this process does not own are left.
        if entry.is_file() and not entry.is_symlink() and entry.stat().st_mode & 0o077:
            try:
                entry.chmod(0o600)
            except PermissionError:
                log.warning("%s is open to others and not this process's to change", entry)


class TenantError(ValueError):
    """A tenant cannot be added or removed (bad name, exists, unknown)."""


@dataclass(frozen=True)
class Tenant:
    name: str
    created: str


def key_hash(key: str) -> str:
    """The stored form of a management key."""
    return HASH_PREFIX + hashlib.sha256(key.strip().encode()).hexdigest()


class TenantRegistry:
    """The tenants file of a data folder."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / TENANTS_FILE
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int], dict[str, dict[str, str]]] | None = None

    # -- reading ----------------------------------------------------------------------------

    def _entries(self) -> dict[str, dict[str, str]]:
        try:
            stat = self.path.stat()
            mtime = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return {}
        with self._lock:
            if self._cache and self._cache[0] == mtime:
                return self._cache[1]
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                log.error("tenants file %s unreadable: %s", self.path, type(error).__name__)
                return {}
            entries = dict(document.get("tenants", {}))
            self._cache = (mtime, entries)
            return entries

    def list(self) -> list[Tenant]:
        entries = sorted(self._entries().items())
        return [Tenant(name, entry.get("created", "")) for name, entry in entries]

    def known(self, name: str) -> bool:
        """Whether the tenant `name` exists (the check for a JWT's tenant claim)."""
        return name in self._entries()

    def verify(self, key: str) -> str | None:
        """The tenant whose management key this is, or None."""
        presented = key_hash(key).encode()
        found = None
        for name, entry in self._entries().items():
            # Every entry is compared (no early exit), each in constant time.
            if hmac.compare_digest(presented, str(entry.get("key_hash", "")).encode()):
                found = name
        return found

    # -- changing ---------------------------------------------------------------------------

    def add(self, name: str) -> str:
        """Add a tenant; returns its new management key (shown once, never stored)."""
        if not NAME_PATTERN.match(name):
            raise TenantError(f"tenant name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        entries = dict(self._entries())
        if name in entries:
            raise TenantError(f"tenant {name} exists already")
        key = str(uuid.uuid4())
        entries[name] = {
            "key_hash": key_hash(key),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self._write(entries)
        log.info("tenant %s added", name)
        return key

    def remove(self, name: str) -> None:
        entries = dict(self._entries())
        if name not in entries:
            raise TenantError(f"no tenant {name}")
        del entries[name]
        self._write(entries)
        log.info("tenant %s removed", name)

    def _write(self, entries: dict[str, dict[str, str]]) -> None:
        make_private(self.path.parent)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({"tenants": entries}, file, indent=2, sort_keys=True)
            file.write("\n")
        os.replace(temporary, self.path)  # readers see the old or the new file, never half
        with self._lock:
            self._cache = None

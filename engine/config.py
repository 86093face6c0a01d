"""Where vipe keeps its state: the data folder (`--data-dir`, `VIPE_DATA_DIR`, or
`~/.local/share/vipe`)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: Path | str | None = None) -> Path:
    """The data folder: certificate and keys, tenants, the SQLite job store."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("VIPE_DATA_DIR"):
        return Path(os.environ["VIPE_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vipe"

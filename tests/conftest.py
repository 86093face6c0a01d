"""Shared fixtures and the fixture modules (`pytest_plugins`). Media is generated with PyAV at
session scope (see `mediagen`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers (mediagen, ...)

# The helper modules that define fixtures, registered once for every test module: a test uses
# their fixtures by name and imports only the plain helpers it calls (helpers without fixtures,
# such as api_helpers, cluster_helpers, drm_helpers or mediagen, are only imported).
pytest_plugins = ["servers", "e2e_helpers", "publisher_helpers", "packager_media"]


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def pytest_collection_modifyitems(config, items):
    if _has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A session-wide folder for generated media, shared by tests that only read it."""
    return tmp_path_factory.mktemp("media")

"""Dockerfile.cuda (Docker cannot build here): its instructions, parsed and checked."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.cuda"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "a continuation runs off the end"
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def args(keyword: str) -> list[str]:
    return [rest for key, rest in instructions() if key == keyword]


def test_base_is_an_nvidia_cuda_ubuntu_image() -> None:
    (base,) = args("FROM")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+(\.\d+)?-(base|runtime)-ubuntu\d\d\.04", base)


def test_the_nvidia_runtime_mounts_video_and_compute() -> None:
    env = " ".join(args("ENV"))
    match = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert match and set(match.group(1).split(",")) == {"compute", "video", "utility"}


def test_python_311_and_vipe_from_this_repository() -> None:
    runs = " ".join(args("RUN"))
    assert re.search(r"--python 3\.11\b", runs)
    assert re.search(r"pip install [^&]*\"?\.\[all\]\"?", runs)
    copied = " ".join(args("COPY"))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for package in [p.rstrip("*") for p in packages] + ["pyproject.toml", "README.md"]:
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", copied), f"{package} not copied"


def test_runs_as_a_non_root_user() -> None:
    users = args("USER")
    assert users and users[-1] not in ("root", "0")
    keywords = [key for key, _ in instructions()]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert re.search(rf"useradd .*\b{re.escape(users[-1])}\b", " ".join(args("RUN")))


def test_healthcheck_runs_vipe_doctor() -> None:
    (health,) = args("HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    assert command[:2] == ["vipe", "doctor"] and "--quiet" in command


def test_entrypoint_is_vipe() -> None:
    (entrypoint,) = args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["vipe"]


@pytest.mark.parametrize("command", ["run", "worker"])
def test_the_header_shows_how_to_run_it(command: str) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"docker run .*--gpus all.* vipe:cuda {command}\b", text)

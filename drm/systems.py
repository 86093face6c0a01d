"""DRM system ids (DASH-IF registry), the names vipe writes for them, and which systems a job
signals.

A job may choose its systems (`DrmManaged.DrmSystems`, by name); by default it gets every
system its output formats can signal. What each format carries:

- DASH (`Dash`, `DashOnDemand`): `ContentProtection` for Widevine, PlayReady and ClearKey.
- HLS (`Hls`; `Cmaf` writes HLS playlists too): `EXT-X-KEY` lines for Widevine, PlayReady and
  FairPlay (cbcs only).
- Every init segment: a `pssh` box per system except FairPlay, which has none.

A Key Service is asked only for the systems it has something to say about: Widevine,
PlayReady and, with cbcs, FairPlay (ClearKey's common `pssh` lists key ids, nothing more).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

WIDEVINE = uuid.UUID("edef8ba9-79d6-4ace-a3c8-27dcd51d21ed")
PLAYREADY = uuid.UUID("9a04f079-9840-4286-ab92-e65be0885f95")
FAIRPLAY = uuid.UUID("94ce86fb-07ff-4f43-adb8-93d2fa968ca2")
# The W3C "common" system: a v1 pssh that only lists key ids (ClearKey and others read it).
CLEARKEY = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")

NAMES = {
    WIDEVINE: "Widevine",
    PLAYREADY: "PlayReady",
    FAIRPLAY: "FairPlay",
    CLEARKEY: "ClearKey",
}
BY_NAME = {name.lower(): system_id for system_id, name in NAMES.items()}

# Every system vipe signals by default; each output format keeps those it can carry
# (FairPlay only in HLS with cbcs, ClearKey only in DASH and in init segments).
ALL_SYSTEMS: tuple[uuid.UUID, ...] = (WIDEVINE, PLAYREADY, FAIRPLAY, CLEARKEY)

# The systems a Key Service is asked for in a CPIX request (ClearKey needs nothing from it).
KEY_SERVICE_SYSTEMS: tuple[uuid.UUID, ...] = (WIDEVINE, PLAYREADY, FAIRPLAY)

DASH_FORMATS = frozenset({"Dash", "DashOnDemand", "Cmaf"})
HLS_FORMATS = frozenset({"Hls", "Cmaf", "HlsTs"})
DASH_SYSTEMS = frozenset({WIDEVINE, PLAYREADY, CLEARKEY})
HLS_SYSTEMS = frozenset({WIDEVINE, PLAYREADY, FAIRPLAY})


def system_name(system_id: uuid.UUID) -> str:
    """A readable name for logs and errors: the system's name or its id."""
    return NAMES.get(system_id, str(system_id))


def system_id(name: str) -> uuid.UUID:
    """The id of a system named as in the job (`Widevine`, `PlayReady`, `FairPlay`,
    `ClearKey`; any case). KeyError for another name."""
    return BY_NAME[str(name).strip().lower()]


def _ordered(chosen: Iterable[uuid.UUID]) -> tuple[uuid.UUID, ...]:
    wanted = set(chosen)
    return tuple(s for s in ALL_SYSTEMS if s in wanted)


def signallable(formats: Iterable[str], scheme: str) -> tuple[uuid.UUID, ...]:
    """Every system that at least one of `formats` can signal under `scheme` (FairPlay needs
    cbcs and an HLS output): the default choice of a job."""
    names = {str(f) for f in formats}
    found: set[uuid.UUID] = set()
    if names & DASH_FORMATS:
        found |= DASH_SYSTEMS
    if names & HLS_FORMATS:
        found |= HLS_SYSTEMS if str(scheme) == "cbcs" else HLS_SYSTEMS - {FAIRPLAY}
    return _ordered(found)


def choice_problems(chosen: Sequence[uuid.UUID], formats: Iterable[str], scheme: str) -> list[str]:
    """Why a choice of systems does not fit the job's outputs (empty when it does): a system
    no output can signal, or an output left with no system it can signal."""
    names = [str(f) for f in formats]
    possible = set(signallable(names, scheme))
    problems = []
    for system in chosen:
        if system == FAIRPLAY and str(scheme) != "cbcs":
            problems.append("FairPlay needs EncryptionScheme cbcs")
        elif system not in possible:
            problems.append(f"{system_name(system)} cannot be signalled in {', '.join(names)}")
    for name in names:
        can = set(signallable([name], scheme))
        if not can & set(chosen):
            listed = ", ".join(system_name(s) for s in _ordered(can))
            problems.append(f"{name} output needs one of {listed}")
    return problems


def key_service_systems(chosen: Iterable[uuid.UUID], scheme: str) -> tuple[uuid.UUID, ...]:
    """The systems of `chosen` that a Key Service is asked for (FairPlay only with cbcs)."""
    return tuple(
        s
        for s in _ordered(chosen)
        if s in KEY_SERVICE_SYSTEMS and (s != FAIRPLAY or str(scheme) == "cbcs")
    )

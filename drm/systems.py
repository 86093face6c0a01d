"""DRM system ids (DASH-IF registry) and the names vipe writes for them."""

from __future__ import annotations

import uuid

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

# Every system vipe signals by default; each output format keeps those it can carry
# (FairPlay only in HLS with cbcs, ClearKey only in DASH and in init segments).
ALL_SYSTEMS: tuple[uuid.UUID, ...] = (WIDEVINE, PLAYREADY, FAIRPLAY, CLEARKEY)

# The systems a Key Service is asked for in a CPIX request (ClearKey needs nothing from it).
KEY_SERVICE_SYSTEMS: tuple[uuid.UUID, ...] = (WIDEVINE, PLAYREADY, FAIRPLAY)


def system_name(system_id: uuid.UUID) -> str:
    """A readable name for logs and errors: the system's name or its id."""
    return NAMES.get(system_id, str(system_id))

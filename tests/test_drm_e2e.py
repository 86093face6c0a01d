"""Encrypted jobs end to end: whole jobs through `run_job`, their output read back box by box and
decrypted with independent implementations (Shaka Packager and FFmpeg), bit for bit against the
clear track files the engine packaged in the same run (`<workdir>/encode/`).

Five jobs, each run once (module scope), together covering cenc and cbcs, H.264 and H.265,
video and audio, single-key and multi-key (keys per quality group AUDIO/SD/HD from the CPIX test
key server), segmented (Dash, Hls, Cmaf), on-demand (DashOnDemand) and ByteRange, and every key
source (Base64Key, Encrypted, Managed with CPIX 2.3 and SPEKE v1 answers, Managed with
protected secrets):

- dash-h264-cenc: Dash, H.264, cenc; Managed, one key, SPEKE v1 answer (signalling as given)
- hls-h265-cbcs: Hls, H.265, cbcs; Encrypted with the service certificate
- cmaf-h264-cbcs-multikey: Cmaf, H.264 SD+HD, cbcs; Managed MultiKey, keys only (vipe signals)
- ondemand-h265-cenc-multikey: DashOnDemand, H.265 SD+HD, cenc; Managed MultiKey with CPIX 2.3
  signalling (used as given), KeysProtection Encrypted
- byterange-h264-cenc: Dash+Hls ByteRange, H.264, cenc; Base64Key
"""

from __future__ import annotations

import base64
import itertools
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cpix_server import CpixServer, server_pssh
from cpix_server import self_signed_certificate as make_certificate
from Crypto.Cipher import AES
from drm_helpers import (
    CLEARKEY,
    FAIRPLAY,
    PLAYREADY,
    PR_NS,
    WIDEVINE,
    DrmRun,
    EncryptedSample,
    assert_no_secret,
    check_encrypted_against_clear,
    clear_samples,
    digest,
    ffmpeg_packets,
    packaged_tracks,
    read_protected,
    run_drm_job,
    shaka_decrypt,
    write_joined,
)
from e2e_helpers import Track, input_folder, make_job
from mediagen import make_media

from drm.credentials import ServiceKey, encrypt_for_certificate
from drm.keys import ContentKey
from drm.track import TrackEncryption

pytestmark = pytest.mark.e2e

TENANT, MANAGEMENT_KEY, KEY_SEED = "tenant-e2e", "mgmt-5d1c9a77-secret", "seed-e2e-7f3a"
KEY_ID = uuid.UUID("3f0e4c6a-9b1d-4e27-8a55-0c6f1d2e3b4a")
KEY = bytes.fromhex("8d1f3b5a7c9e0f2143658709badcfe10")
MANIFEST_NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
CENC = "{urn:mpeg:cenc:2013}"
MSPR = "{urn:microsoft:playready}"
SMALL = [{"Height": 180, "BitrateInKbps": 200}]
SD_HD = [{"Height": 180, "BitrateInKbps": 150}, {"Height": 720, "BitrateInKbps": 300}]
GROUPS = {"AUDIO", "SD", "HD"}


@dataclass(frozen=True)
class Plan:
    """One job of the module: what it asks for."""

    formats: list[str]
    codec: str
    scheme: str
    keys: str  # Base64Key, Encrypted, Managed
    multi_key: bool = False
    server_mode: str = "ok"  # ok (CPIX 2.3 signalling), speke_v1, keys_only
    byte_range: bool = False
    hd: bool = False
    protected_secrets: bool = False

    @property
    def vipe_signals(self) -> bool:
        """Whether vipe generates the signalling (no Key Service data to use as given)."""
        return self.keys != "Managed" or self.server_mode == "keys_only"


PLANS = {
    "dash-h264-cenc": Plan(["Dash"], "H264", "cenc", "Managed", server_mode="speke_v1"),
    "hls-h265-cbcs": Plan(["Hls"], "H265", "cbcs", "Encrypted"),
    "cmaf-h264-cbcs-multikey": Plan(
        ["Cmaf"], "H264", "cbcs", "Managed", multi_key=True, server_mode="keys_only", hd=True
    ),
    "ondemand-h265-cenc-multikey": Plan(
        ["DashOnDemand"],
        "H265",
        "cenc",
        "Managed",
        multi_key=True,
        hd=True,
        protected_secrets=True,
    ),
    "byterange-h264-cenc": Plan(["Dash", "Hls"], "H264", "cenc", "Base64Key", byte_range=True),
}
JOBS = list(PLANS)


class KeyServer(CpixServer):
    """The CPIX test server plus a `keys_only` mode: keys without any DRMSystem data, so that
    vipe generates every PSSH and manifest signal itself (multi-key included)."""

    def answer(self, body: bytes, authorization: str | None) -> tuple[int, bytes]:
        if self.mode != "keys_only":
            return super().answer(body, authorization)
        self.mode = "ok"
        try:
            status, answer = super().answer(body, authorization)
        finally:
            self.mode = "keys_only"
        if status != 200:
            return status, answer
        root = ET.fromstring(answer)
        for element in root.findall("{urn:dashif:org:cpix}DRMSystemList"):
            root.remove(element)
        return status, ET.tostring(root, encoding="utf-8", xml_declaration=True)


@dataclass
class Outcome:
    """A finished job and the keys it must have used."""

    plan: Plan
    run: DrmRun
    keys: dict[uuid.UUID, bytes]  # key id → key
    groups: dict[str, uuid.UUID]  # quality group → key id (every group → the one key)
    tracks: list[Track] = field(default_factory=list)  # every addressed rendition, deduplicated
    manifests: list[Path] = field(default_factory=list)

    def kid_of(self, track: Track) -> uuid.UUID:
        label = self.run.stream(track.name)["Label"]
        return self.groups[label]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def drm_env(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """Sources, the service key's data folder, and the CPIX test server over verified TLS."""
    root = tmp_path_factory.mktemp("drm-e2e")
    small = make_media(root / "src" / "small.mp4", duration=2.0, width=320, height=180)
    # 1280×720 for an HD rung; 10 fps keeps the HD encodes cheap on two cores
    hd = make_media(
        root / "src" / "hd.mp4",
        duration=2.0,
        width=1280,
        height=720,
        fps=10,
        video_options={"preset": "ultrafast"},
    )
    certificate = make_certificate(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIPE_CPIX_CA_FILE", str(certificate[0]))
        with KeyServer(TENANT, MANAGEMENT_KEY, certificate=certificate) as server:
            yield {
                "root": root,
                "small": small,
                "hd": hd,
                "data_dir": root / "data",
                "server": server,
                "runs": {},
            }


def _job_for(name: str, plan: Plan, env: dict[str, Any]) -> dict[str, Any]:
    folder = env["root"] / name
    source = env["hd"] if plan.hd else env["small"]
    drm: dict[str, Any] = {"DrmProtection": plan.keys}
    dash_only = set(plan.formats) <= {"Dash", "DashOnDemand"}
    if plan.scheme != ("cenc" if dash_only else "cbcs"):  # else the contract's default
        drm["EncryptionScheme"] = plan.scheme
    if plan.keys == "Base64Key":
        drm.update(KeyId=str(KEY_ID), ContentKey=base64.b64encode(KEY).decode())
    elif plan.keys == "Encrypted":
        certificate = ServiceKey.load_or_create(env["data_dir"]).certificate_base64
        drm.update(KeyId=str(KEY_ID), ContentKey=encrypt_for_certificate(KEY, certificate))
    else:
        secrets = {"ManagementKey": MANAGEMENT_KEY, "KeySeedId": KEY_SEED}
        managed: dict[str, Any] = {"ApiUrl": env["server"].url, "TenantId": TENANT}
        if plan.protected_secrets:
            certificate = ServiceKey.load_or_create(env["data_dir"]).certificate_base64
            secrets = {k: encrypt_for_certificate(v, certificate) for k, v in secrets.items()}
            managed["KeysProtection"] = "Encrypted"
        drm["DrmManaged"] = {**managed, **secrets, "MultiKey": plan.multi_key}
    return make_job(
        input_folder(folder, source),
        folder / "out",
        formats=plan.formats,
        VideoFormat=plan.codec,
        VideoRepresentations=SD_HD if plan.hd else SMALL,
        SegmentLengthInSeconds=1,
        SegmentFormat="ByteRange" if plan.byte_range else None,
        **drm,
    )


def _requested_keys(request: bytes) -> dict[str, uuid.UUID]:
    """Quality group → key id of a CPIX request (its usage rules)."""
    root = ET.fromstring(request)
    found: dict[str, uuid.UUID] = {}
    for rule in root.iter("{urn:dashif:org:cpix}ContentKeyUsageRule"):
        found[rule.get("intendedTrackType")] = uuid.UUID(rule.get("kid"))
    if "ALL" in found:  # SPEKE v2: one key for every track is the single rule ALL
        return dict.fromkeys(GROUPS, found["ALL"])
    return found


def outcome(env: dict[str, Any], name: str) -> Outcome:
    """The job `name`, run on first use."""
    if name in env["runs"]:
        return env["runs"][name]
    plan = PLANS[name]
    server: KeyServer = env["server"]
    server.mode = plan.server_mode
    asked = len(server.requests)
    run = run_drm_job(env["root"] / name, _job_for(name, plan, env), data_dir=env["data_dir"])
    run.assert_success()
    if plan.keys == "Managed":
        (request,) = server.requests[asked:]
        groups = _requested_keys(request)
        keys = {kid: CpixServer.key_for(KEY_SEED, kid) for kid in set(groups.values())}
    else:
        groups = dict.fromkeys(GROUPS, KEY_ID)
        keys = {KEY_ID: KEY}
    result = Outcome(plan, run, keys, groups)
    manifests, tracks = packaged_tracks(run)
    result.manifests.extend(manifests)
    result.tracks.extend(tracks)
    env["runs"][name] = result
    return result


@pytest.fixture(scope="module", params=JOBS)
def done(request, drm_env) -> Outcome:
    return outcome(drm_env, request.param)


def _tracks(result: Outcome) -> list[Track]:
    assert result.tracks
    return result.tracks


def _joined(track: Track, folder: Path) -> Path:
    name = f"{track.init.path.parent.name}-{track.name}.mp4"  # dash/ and hls/ copies apart
    return write_joined([track.data()], folder / name)


# -------------------------------------------------------------------------------- the jobs


def test_every_rendition_is_encrypted_with_its_quality_groups_key(done: Outcome):
    """EncodingFinished names each stream's key id (the one its `tenc` carries), JobCreated
    the key id(s) of the job; multi-key uses one key per quality group."""
    run, plan = done.run, done.plan
    assert run.report["Drm"] is True
    created = run.one("JobCreated")
    kids = sorted(str(k) for k in done.keys)
    if plan.multi_key:
        assert sorted(created["KeyIds"]) == kids and "KeyId" not in created
        assert len(done.keys) == 3 and set(done.groups) == GROUPS
    else:
        assert created["KeyId"] == kids[0] and "KeyIds" not in created
    for stream in run.streams:
        assert stream["KeyId"] == str(done.groups[stream["Label"]]), stream
    labels = {s["Label"] for s in run.streams}
    assert labels == (GROUPS if plan.hd else {"AUDIO", "SD"})
    for track in _tracks(done):
        init, _ = read_protected(track.init.read())
        assert init.tenc.key_id == done.kid_of(track), track.name
        stream = run.stream(track.name)
        if plan.scheme == "cbcs":
            assert stream["Iv"] == init.tenc.constant_iv.hex()
            if plan.keys == "Managed":  # the Key Service's explicitIV for that key
                assert init.tenc.constant_iv == CpixServer.iv_for(done.kid_of(track))
        else:
            assert stream["Iv"] is None


def test_init_segments_protect_the_sample_entry(done: Outcome):
    """encv/enca with frma, schm and tenc: cenc with per-sample IVs, cbcs with a constant IV
    and the 1:9 pattern for video (0:0, every block, for audio)."""
    originals = {"H264": "avc1", "H265": "hvc1"}
    for track in _tracks(done):
        init, _ = read_protected(track.init.read())
        video = track.kind == "video"
        assert init.entry == ("encv" if video else "enca")
        assert init.original == (originals[done.plan.codec] if video else "mp4a")
        assert init.scheme == done.plan.scheme
        tenc = init.tenc
        assert tenc.is_protected == 1
        if done.plan.scheme == "cenc":
            assert tenc.iv_size in (8, 16) and tenc.constant_iv is None
            assert (tenc.crypt, tenc.skip) == (0, 0)
        else:
            assert tenc.version == 1 and tenc.iv_size == 0 and len(tenc.constant_iv) == 16
            assert (tenc.crypt, tenc.skip) == ((1, 9) if video else (0, 0))


def test_init_segments_carry_pssh_boxes_for_every_system(done: Outcome):
    """Widevine, PlayReady and the common system (ClearKey) in every init segment; generated
    boxes parse back to the track's key id (PlayReady's checksum computed here independently);
    a Key Service's boxes are used as given."""
    for track in _tracks(done):
        init, _ = read_protected(track.init.read())
        kid = done.kid_of(track)
        by_system = {}
        for box in init.pssh:
            by_system.setdefault(box.system_id, []).append(box)
        assert set(by_system) == {WIDEVINE, PLAYREADY, CLEARKEY}, track.name
        assert all(len(boxes) == 1 for boxes in by_system.values())
        (common,) = by_system[CLEARKEY]
        assert (common.version, common.key_ids, common.data) == (1, (kid,), b"")
        (widevine,) = by_system[WIDEVINE]
        (playready,) = by_system[PLAYREADY]
        if not done.plan.vipe_signals:
            assert widevine.raw == server_pssh(WIDEVINE, kid)
            assert playready.raw == server_pssh(PLAYREADY, kid)
            continue
        assert widevine_key_ids(widevine.data) == [kid]
        assert widevine_scheme(widevine.data) == done.plan.scheme
        header = playready_header(playready.data)
        assert playready_kids(header) == [kid]
        if done.plan.scheme == "cenc":
            checksum = header.find(f"{PR_NS}DATA/{PR_NS}CHECKSUM").text
            assert checksum == independent_checksum(done.keys[kid], kid)
        else:
            assert header.get("version") == "4.3.0.0"


def test_fragments_match_the_clear_samples(done: Outcome):
    """Per fragment: one senc entry per trun sample, saiz/saio pointing at them; subsample
    clear+protected sizes add up to each sample; outside the protected ranges the bytes equal
    the clear encode, inside them the scheme's blocks (cbcs: 1 in 10) are encrypted."""
    for track in _tracks(done):
        init, fragments = read_protected(track.data())
        clear = clear_samples(done.run.clear_track(track.name))
        samples = [s for f in fragments for s in f.samples]
        assert len(samples) == len(clear), track.name
        assert len(fragments) == len(track.segments) and len(fragments) >= 2
        for fragment in fragments:
            assert fragment.senc_count == fragment.trun_count, track.name
            if done.plan.scheme == "cenc" or track.kind == "video":
                assert fragment.saiz_count == fragment.trun_count
                assert fragment.saio_points_at_senc is True
            else:  # cbcs audio: constant IV, whole samples: a senc of empty entries only
                assert fragment.saiz_count is None
        ivs = [s.iv for s in samples]
        if done.plan.scheme == "cenc":
            assert len(set(ivs)) == len(ivs), "a cenc IV was used twice"
        else:
            assert set(ivs) == {b""}  # constant IV from tenc
        for index, (sample, original) in enumerate(zip(samples, clear, strict=True)):
            if track.kind == "video":
                assert sample.subsamples, (track.name, index)
                assert sum(c + p for c, p in sample.subsamples) == len(sample.data)
            else:
                assert not sample.subsamples
            check_encrypted_against_clear(
                sample, original, done.plan.scheme, init.tenc.crypt, init.tenc.skip
            )


@pytest.mark.parametrize("name", [n for n, plan in PLANS.items() if plan.scheme == "cenc"])
def test_cenc_never_reuses_a_counter_under_one_key(drm_env, name):
    """AES-CTR: no counter block is used twice under one key, across all the renditions that
    share the key (video and audio, SD and HD in single-key mode): a reuse would give two
    plaintexts the same keystream."""
    done = outcome(drm_env, name)  # (cbcs: one constant IV per key is the scheme's design)
    ranges: dict[uuid.UUID, list[tuple[int, int, str]]] = {}
    seen: set[str] = set()
    for track in _tracks(done):
        if track.name in seen:  # the same rendition in another format's folder
            continue
        seen.add(track.name)
        _, fragments = read_protected(track.data())
        for sample in (s for f in fragments for s in f.samples):
            protected = sum(p for _, p in sample.subsamples) or len(sample.data)
            blocks = -(-protected // 16)
            # the 128-bit counter block: an 8-byte IV is its upper half, the count the lower
            first = int.from_bytes(sample.iv.ljust(16, b"\0"), "big")
            ranges.setdefault(done.kid_of(track), []).append((first, first + blocks, track.name))
    for kid, used in ranges.items():
        used.sort()
        for (_, end, name), (start, _, other) in itertools.pairwise(used):
            assert end <= start, f"key {kid}: {name} and {other} share AES-CTR counter blocks"


def test_a_key_services_iv_is_cbcs_only():
    """A Key Service's explicitIV is the constant IV of cbcs tracks; cenc tracks under the key
    each start at a random IV of their own (the regression behind the test above)."""
    keyed = ContentKey(KEY_ID, KEY, iv=bytes(range(16)))
    entry = SimpleNamespace(fourcc="mp4a", boxes={})
    assert TrackEncryption(keyed, "cbcs").iv == bytes(range(16)).hex()
    starts = {TrackEncryption(keyed, "cenc").protect_sample(b"x" * 40, entry).iv for _ in "ab"}
    assert len(starts) == 2 and keyed.iv not in starts and bytes(range(8)) not in starts


def test_shaka_packager_decrypts_to_the_clear_samples(done: Outcome, tmp_path):
    """Shaka Packager 3.8 (`--enable_raw_key_decryption`, all the job's keys) gives back the
    clear encode's samples, bit for bit."""
    from packagers.mp4 import read_track

    for track in _tracks(done):
        encrypted = _joined(track, tmp_path)
        output = tmp_path / f"clear-{encrypted.name}"
        result = shaka_decrypt(encrypted, track.kind, done.keys, output)
        assert result.returncode == 0, result.stderr[-2000:]
        decrypted = read_track(output)
        assert decrypted.entry.fourcc in ("avc1", "hvc1", "mp4a"), decrypted.entry.fourcc
        got = digest(decrypted.read_samples(0, len(decrypted.samples)))
        assert got == digest(clear_samples(done.run.clear_track(track.name))), track.name


@pytest.mark.parametrize("ffmpeg", ["ffmpeg9", "ffmpeg8"])
def test_ffmpeg_decrypts_to_the_clear_samples(done: Outcome, tmp_path, ffmpeg):
    """FFmpeg's mov demuxer with `-decryption_key` (FFmpeg 9 and 8; cenc and cbcs) gives back
    the clear encode's packets, bit for bit."""
    for track in _tracks(done):
        encrypted = _joined(track, tmp_path)
        got = ffmpeg_packets(encrypted, done.keys[done.kid_of(track)], ffmpeg)
        assert got == digest(clear_samples(done.run.clear_track(track.name))), track.name


def test_a_wrong_key_does_not_decrypt(done: Outcome, tmp_path):
    """The right key id with a wrong key: Shaka fails or yields other samples, and so does
    FFmpeg; another track's key (multi-key) does not decrypt this one either."""
    from packagers.mp4 import read_track

    for track in _tracks(done):
        kid = done.kid_of(track)
        clear = digest(clear_samples(done.run.clear_track(track.name)))
        encrypted = _joined(track, tmp_path)
        wrong = {kid: bytes(b ^ 0x5A for b in done.keys[kid])}
        output = tmp_path / f"wrong-{encrypted.name}"
        result = shaka_decrypt(encrypted, track.kind, wrong, output)
        if result.returncode == 0:
            decrypted = read_track(output)
            assert digest(decrypted.read_samples(0, len(decrypted.samples))) != clear
        assert ffmpeg_packets(encrypted, wrong[kid]) != clear
        for other, key in done.keys.items():
            if other != kid:
                assert ffmpeg_packets(encrypted, key) != clear, (track.name, other)


def test_the_sample_checks_catch_clear_and_misencrypted_samples(drm_env):
    """The comparison with the clear encode is not vacuous: a clear sample passed off as
    encrypted fails it, and so does a cbcs sample checked against another pattern or as cenc."""
    result = outcome(drm_env, "hls-h265-cbcs")
    video = next(t for t in result.tracks if t.kind == "video")
    _, fragments = read_protected(video.data())
    sample = fragments[0].samples[0]  # an IDR frame: many protected blocks
    clear = clear_samples(result.run.clear_track(video.name))[0]
    assert max(p for _, p in sample.subsamples) >= 20 * 16
    check_encrypted_against_clear(sample, clear, "cbcs", 1, 9)
    passed_off = EncryptedSample(clear, sample.iv, sample.subsamples)
    for scheme, crypt, skip in (("cbcs", 1, 9), ("cbcs", 2, 8), ("cenc", 0, 0)):
        with pytest.raises(AssertionError):
            check_encrypted_against_clear(passed_off, clear, scheme, crypt, skip)
        if (scheme, crypt) != ("cbcs", 1):
            with pytest.raises(AssertionError):
                check_encrypted_against_clear(sample, clear, scheme, crypt, skip)


# ---------------------------------------------------------------------------- manifests


def widevine_key_ids(data: bytes) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=v) for n, v in _protobuf(data) if n == 2]


def widevine_scheme(data: bytes) -> str:
    (value,) = [v for n, v in _protobuf(data) if n == 9]
    return value.to_bytes(4, "big").decode()


def _protobuf(data: bytes) -> list[tuple[int, Any]]:
    fields, position = [], 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while position < len(data):
        tag = varint()
        if tag & 7 == 0:
            fields.append((tag >> 3, varint()))
        else:
            assert tag & 7 == 2
            length = varint()
            fields.append((tag >> 3, data[position : position + length]))
            position += length
    return fields


def playready_header(pro: bytes) -> ET.Element:
    """The WRMHEADER inside a PlayReady Object (little-endian sizes, UTF-16LE XML)."""
    length = int.from_bytes(pro[:4], "little")
    assert length == len(pro) and int.from_bytes(pro[4:6], "little") == 1
    assert int.from_bytes(pro[6:8], "little") == 1  # record type: rights management header
    return ET.fromstring(pro[10:].decode("utf-16-le"))


def playready_kids(header: ET.Element) -> list[uuid.UUID]:
    values = [k.text for k in header.iter(f"{PR_NS}KID") if k.text]
    values += [k.get("VALUE") for k in header.iter(f"{PR_NS}KID") if k.get("VALUE")]
    return [uuid.UUID(bytes_le=base64.b64decode(v)) for v in values]


def independent_checksum(key: bytes, kid: uuid.UUID) -> str:
    """PlayReady's key checksum: AES-ECB of the little-endian GUID bytes, first 8 bytes."""
    guid = kid.bytes
    little = guid[3::-1] + guid[5:3:-1] + guid[7:5:-1] + guid[8:]
    return base64.b64encode(AES.new(key, AES.MODE_ECB).encrypt(little)[:8]).decode()


def _dash_manifests(result: Outcome) -> list[Path]:
    return [m for m in result.manifests if m.suffix == ".mpd"]


def _hls_masters(result: Outcome) -> list[Path]:
    return [m for m in result.manifests if m.suffix == ".m3u8"]


@pytest.mark.parametrize("name", [n for n, p in PLANS.items() if set(p.formats) - {"Hls"}])
def test_dash_content_protection(drm_env, name):
    """Every media AdaptationSet: the mp4protection element with the scheme and the
    `cenc:default_KID` that its init segments' `tenc` carries, then Widevine, PlayReady (with
    `mspr:pro`) and ClearKey elements with `cenc:pssh`; no FairPlay."""
    done = outcome(drm_env, name)
    manifests = _dash_manifests(done)
    assert manifests
    for manifest in manifests:
        root = ET.parse(manifest).getroot()
        sets = [
            a
            for a in root.iterfind("d:Period/d:AdaptationSet", MANIFEST_NS)
            if a.get("contentType") in ("video", "audio")
        ]
        assert sets
        for adaptation in sets:
            elements = adaptation.findall("d:ContentProtection", MANIFEST_NS)
            schemes = [e.get("schemeIdUri") for e in elements]
            assert schemes[0] == "urn:mpeg:dash:mp4protection:2011", schemes
            assert f"urn:uuid:{FAIRPLAY}" not in schemes
            mp4 = elements[0]
            assert mp4.get("value") == done.plan.scheme
            default_kid = uuid.UUID(mp4.get(f"{CENC}default_KID"))
            for rep in adaptation.iterfind("d:Representation", MANIFEST_NS):
                track = next(t for t in done.tracks if t.name == rep.get("id"))
                init, _ = read_protected(track.init.read())
                assert init.tenc.key_id == default_kid, rep.get("id")
            by_system = {uuid.UUID(s.removeprefix("urn:uuid:")): e for s, e in
                         zip(schemes[1:], elements[1:], strict=True)}  # fmt: skip
            assert set(by_system) == {WIDEVINE, PLAYREADY, CLEARKEY}
            boxes = {
                system: base64.b64decode(element.findtext(f"{CENC}pssh"))
                for system, element in by_system.items()
            }
            common = boxes[CLEARKEY]
            assert common[8] == 1 and uuid.UUID(bytes=common[32:48]) == default_kid
            pro = by_system[PLAYREADY].findtext(f"{MSPR}pro")
            if done.plan.vipe_signals:
                assert boxes == {b.system_id: b.raw for b in init.pssh}  # as in the init
                assert by_system[WIDEVINE].get("value") == "Widevine"
                assert by_system[PLAYREADY].get("value") == "MSPR 2.0"
                assert base64.b64decode(pro) == boxes[PLAYREADY][32:]  # the PRO in the pssh
                assert playready_kids(playready_header(base64.b64decode(pro))) == [default_kid]
            else:  # the Key Service's ContentProtectionData, as given
                assert boxes[WIDEVINE] == server_pssh(WIDEVINE, default_kid)
                assert boxes[PLAYREADY] == server_pssh(PLAYREADY, default_kid)
                if done.plan.server_mode == "ok":
                    assert pro == "c2VydmVyLXBybw=="


def _attributes(line: str) -> dict[str, str]:
    body = line.split(":", 1)[1]
    pairs = re.findall(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)', body)
    return {k: v.strip('"') for k, v in pairs}


def _check_key_lines(lines: list[str], result: Outcome, kids: list[uuid.UUID]) -> None:
    """`#EXT-X-KEY`/`#EXT-X-SESSION-KEY` lines for `kids`: Widevine, PlayReady and (cbcs)
    FairPlay each, with the scheme's METHOD."""
    scheme = result.plan.scheme
    formats: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        attributes = _attributes(line)
        formats.setdefault(attributes.get("KEYFORMAT", "identity"), []).append(attributes)
    expected = {f"urn:uuid:{WIDEVINE}", "com.microsoft.playready"}
    if scheme == "cbcs":
        expected.add("com.apple.streamingkeydelivery")
    assert result.plan.vipe_signals  # (the Key Service's HLS lines: test_drm_signalling)
    assert set(formats) == expected, list(formats)
    method = "SAMPLE-AES" if scheme == "cbcs" else "SAMPLE-AES-CTR"
    assert {a["METHOD"] for group in formats.values() for a in group} == {method}
    widevine = formats[f"urn:uuid:{WIDEVINE}"]
    assert [uuid.UUID(a["KEYID"].removeprefix("0x")) for a in widevine] == kids
    for attributes, kid in zip(widevine, kids, strict=True):
        prefix, data = attributes["URI"].split(",", 1)
        assert prefix == "data:text/plain;base64"
        box = base64.b64decode(data)
        assert uuid.UUID(bytes=box[12:28]) == WIDEVINE
        assert widevine_key_ids(box[32:]) == [kid]
    playready = formats["com.microsoft.playready"]
    for attributes, kid in zip(playready, kids, strict=True):
        prefix, data = attributes["URI"].split(",", 1)
        assert prefix == "data:text/plain;charset=UTF-16;base64"
        assert playready_kids(playready_header(base64.b64decode(data))) == [kid]
    if scheme == "cbcs":
        fairplay = formats["com.apple.streamingkeydelivery"]
        assert [a["URI"] for a in fairplay] == [f"skd://{kid.hex}" for kid in kids]


@pytest.mark.parametrize("name", [n for n, p in PLANS.items() if {"Hls", "Cmaf"} & set(p.formats)])
def test_hls_key_tags(drm_env, name):
    """Media playlists (I-frame playlists too): `#EXT-X-KEY` after `#EXT-X-MAP`, before the
    first segment, for the track's key; the master: `#EXT-X-SESSION-KEY` for every key."""
    done = outcome(drm_env, name)
    masters = _hls_masters(done)
    assert masters
    every_kid = sorted(set(done.groups.values()), key=str)
    for master in masters:
        text = master.read_text()
        session = [line for line in text.splitlines() if line.startswith("#EXT-X-SESSION-KEY:")]
        assert "#EXT-X-KEY:" not in text
        session_kids = _kids_in(session)
        assert sorted(session_kids, key=str) == every_kid
        _check_key_lines(session, done, session_kids)
        playlists = sorted({p for p in master.parent.glob("*.m3u8") if p != master})
        assert playlists
        for playlist in playlists:
            lines = playlist.read_text().splitlines()
            if "#EXT-X-IMAGES-ONLY" in lines:
                continue
            keys = [i for i, line in enumerate(lines) if line.startswith("#EXT-X-KEY:")]
            assert keys, playlist.name
            first_segment = next(i for i, line in enumerate(lines) if line.startswith("#EXTINF"))
            map_line = next(i for i, line in enumerate(lines) if line.startswith("#EXT-X-MAP"))
            assert map_line < min(keys) and max(keys) < first_segment, playlist.name
            name = playlist.stem.removesuffix("_iframes")
            kid = done.groups[done.run.stream(name)["Label"]]
            _check_key_lines([lines[i] for i in keys], done, [kid])


def _kids_in(lines: list[str]) -> list[uuid.UUID]:
    """The key ids that key lines name, in order (from the Widevine lines' KEYID)."""
    kids = []
    for line in lines:
        attributes = _attributes(line)
        if attributes.get("KEYFORMAT") != f"urn:uuid:{WIDEVINE}":
            continue
        kids.append(uuid.UUID(attributes["KEYID"].removeprefix("0x")))
    return kids


# ------------------------------------------------------------------------------- secrets


def test_key_material_never_reaches_logs_events_reports_or_manifests(drm_env):
    """Every job of the module: the base64 and hex forms of every content key, the
    ManagementKey and the KeySeedId appear in no log line (DEBUG), event, report, or output
    manifest."""
    for name in JOBS:
        result = outcome(drm_env, name)
        secrets: dict[str, bytes | str] = {f"content key {k}": v for k, v in result.keys.items()}
        secrets["ManagementKey"] = MANAGEMENT_KEY
        secrets["KeySeedId"] = KEY_SEED
        secrets["Basic credentials"] = f"{TENANT}:{MANAGEMENT_KEY}"
        said = result.run.everything_said()
        assert any(" INFO " in line for line in result.run.logs)  # the capture works
        assert_no_secret(said, secrets)
        for manifest in result.run.output_dir.rglob("*"):
            if manifest.suffix in (".mpd", ".m3u8"):
                assert_no_secret(manifest.read_text(), secrets)

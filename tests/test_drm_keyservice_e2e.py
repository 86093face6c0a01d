"""Key Services as deployed (issue 15), whole jobs: Managed DRM against the strict SPEKE v2
test server (tests/cpix_server.py), each job with its own choice of DRM systems and its own
authentication, its package decrypted by Shaka Packager with the server's keys and checked to
carry exactly the chosen systems' signalling; weak answers and refused credentials end the job
with 4001 before anything runs, and no secret reaches an event, a report or a log line.

Jobs (2 s, 160×90 source, one 90p rung + audio; each run once, module scope):

- cmaf-cbcs-single-widevine: Cmaf, cbcs, one key, DrmSystems [Widevine], AwsSigV4 (botocore)
- cmaf-cbcs-multi-fairplay-clearkey: Cmaf, cbcs, MultiKey, [FairPlay, ClearKey], Bearer
- cmaf-cbcs-multi-default: Cmaf, cbcs, MultiKey, no DrmSystems (all four), Basic
- dash-cenc-single-playready: Dash, cenc, one key, [PlayReady], custom header, secrets
  protected (KeysProtection Encrypted)
- dash-cenc-multi-widevine-clearkey: Dash, cenc, MultiKey, [Widevine, ClearKey], Basic
- dash-cenc-single-clearkey: Dash, cenc, one key, [ClearKey] (nothing asked of DRM systems)
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cpix_server import (
    BearerCheck,
    CpixServer,
    HeaderCheck,
    SigV4Check,
    server_pssh,
)
from cpix_server import self_signed_certificate as make_certificate
from drm_helpers import (
    CLEARKEY,
    FAIRPLAY,
    PLAYREADY,
    WIDEVINE,
    DrmRun,
    assert_no_secret,
    clear_samples,
    digest,
    packaged_tracks,
    read_protected,
    run_drm_job,
    shaka_decrypt,
    write_joined,
)
from e2e_helpers import Track, input_folder, make_job
from mediagen import make_media

from drm.credentials import ServiceKey, encrypt_for_certificate

pytestmark = pytest.mark.e2e

TENANT, MANAGEMENT_KEY, KEY_SEED = "tenant-ks", "mgmt-ks-2f9d41-secret", "seed-ks-83c1"
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "AKIDKS000001", "sigv4-ks-secret-7e21", "sess-ks-91aa"
TOKEN, API_KEY = "bearer-ks-token-5c0d", "api-ks-key-3b77"
SECRETS: dict[str, bytes | str] = {
    "ManagementKey": MANAGEMENT_KEY,
    "KeySeedId": KEY_SEED,
    "Basic credentials": f"{TENANT}:{MANAGEMENT_KEY}",
    "SecretAccessKey": SECRET_KEY,
    "SessionToken": SESSION_TOKEN,
    "Token": TOKEN,
    "X-Api-Key": API_KEY,
}
NAMES = {"Widevine": WIDEVINE, "PlayReady": PLAYREADY, "FairPlay": FAIRPLAY, "ClearKey": CLEARKEY}
DASH_CAN = {WIDEVINE, PLAYREADY, CLEARKEY}
HLS_KEYFORMATS = {
    WIDEVINE: f"urn:uuid:{WIDEVINE}",
    PLAYREADY: f"urn:uuid:{PLAYREADY}",  # the server's own HLS lines name it so
    FAIRPLAY: "com.apple.streamingkeydelivery",
}
MANIFEST_NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
CENC = "{urn:mpeg:cenc:2013}"


@dataclass(frozen=True)
class Plan:
    formats: list[str]
    scheme: str
    multi_key: bool
    systems: list[str] | None  # None: the default (every system the format can signal)
    auth: str  # Basic, Bearer, Header, AwsSigV4
    protected: bool = False

    @property
    def chosen(self) -> set[uuid.UUID]:
        if self.systems is not None:
            return {NAMES[name] for name in self.systems}
        if self.formats == ["Dash"]:
            return DASH_CAN
        return {WIDEVINE, PLAYREADY, FAIRPLAY, CLEARKEY}

    @property
    def asked(self) -> set[uuid.UUID]:
        """The systems the Key Service is asked for."""
        found = self.chosen & {WIDEVINE, PLAYREADY, FAIRPLAY}
        return found if self.scheme == "cbcs" else found - {FAIRPLAY}


PLANS = {
    "cmaf-cbcs-single-widevine": Plan(["Cmaf"], "cbcs", False, ["Widevine"], "AwsSigV4"),
    "cmaf-cbcs-multi-fairplay-clearkey": Plan(
        ["Cmaf"], "cbcs", True, ["FairPlay", "ClearKey"], "Bearer"
    ),
    "cmaf-cbcs-multi-default": Plan(["Cmaf"], "cbcs", True, None, "Basic"),
    "dash-cenc-single-playready": Plan(
        ["Dash"], "cenc", False, ["PlayReady"], "Header", protected=True
    ),
    "dash-cenc-multi-widevine-clearkey": Plan(
        ["Dash"], "cenc", True, ["Widevine", "ClearKey"], "Basic"
    ),
    "dash-cenc-single-clearkey": Plan(["Dash"], "cenc", False, ["ClearKey"], "Basic"),
}


def server_check(kind: str) -> BearerCheck | HeaderCheck | SigV4Check | None:
    if kind == "Bearer":
        return BearerCheck(TOKEN)
    if kind == "Header":
        return HeaderCheck("X-Api-Key", API_KEY)
    if kind == "AwsSigV4":
        return SigV4Check(ACCESS_KEY, SECRET_KEY, "us-east-1", session_token=SESSION_TOKEN)
    return None


def managed(
    server: CpixServer, plan: Plan, service_key: ServiceKey | None = None, **overrides: Any
) -> dict[str, Any]:
    """The job's DrmManaged section for `plan` (secrets protected when `plan.protected`)."""
    section: dict[str, Any] = {"ApiUrl": server.url, "KeySeedId": KEY_SEED}
    section["MultiKey"] = plan.multi_key
    if plan.systems is not None:
        section["DrmSystems"] = plan.systems
    if plan.auth == "Basic":
        section.update(TenantId=TENANT, ManagementKey=MANAGEMENT_KEY)
    elif plan.auth == "Bearer":
        section["Authentication"] = {"Type": "Bearer", "Token": TOKEN}
    elif plan.auth == "Header":
        section["Authentication"] = {"Type": "Header", "Name": "X-Api-Key", "Value": API_KEY}
    else:
        section["Authentication"] = {
            "Type": "AwsSigV4",
            "Region": "us-east-1",
            "Service": "execute-api",
            "AccessKeyId": ACCESS_KEY,
            "SecretAccessKey": SECRET_KEY,
            "SessionToken": SESSION_TOKEN,
        }
    section.update(overrides)
    if plan.protected:
        assert service_key is not None
        certificate = service_key.certificate_base64

        def protect(value: str) -> str:
            return encrypt_for_certificate(value.encode(), certificate)

        for name in ("ManagementKey", "KeySeedId"):
            if name in section:
                section[name] = protect(section[name])
        auth = section.get("Authentication", {})
        for name in ("Token", "Value", "SecretAccessKey", "SessionToken"):
            if name in auth:
                auth[name] = protect(auth[name])
        section["KeysProtection"] = "Encrypted"
    return section


@dataclass
class Outcome:
    plan: Plan
    run: DrmRun
    server: CpixServer
    request: bytes
    keys: dict[uuid.UUID, bytes]
    groups: dict[str, uuid.UUID]  # quality group → key id
    tracks: list[Track] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)

    def kid_of(self, track: Track) -> uuid.UUID:
        return self.groups[self.run.stream(track.name)["Label"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("drm-keyservice")
    source = make_media(root / "src" / "small.mp4", duration=2.0, width=160, height=90)
    certificate = make_certificate(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIPE_CPIX_CA_FILE", str(certificate[0]))
        yield {
            "root": root,
            "source": source,
            "certificate": certificate,
            "data_dir": root / "data",
            "runs": {},
        }


def job_for(env: dict[str, Any], name: str, drm_managed: dict[str, Any], plan: Plan) -> dict:
    folder = env["root"] / name
    return make_job(
        input_folder(folder, env["source"]),
        folder / "out",
        formats=plan.formats,
        VideoRepresentations=[{"Height": 90, "BitrateInKbps": 100}],
        SegmentLengthInSeconds=1,
        DrmProtection="Managed",
        DrmManaged=drm_managed,
    )


def _rules(request: bytes) -> dict[str, uuid.UUID]:
    root = ET.fromstring(request)
    return {
        rule.get("intendedTrackType"): uuid.UUID(rule.get("kid"))
        for rule in root.iter("{urn:dashif:org:cpix}ContentKeyUsageRule")
    }


def outcome(env: dict[str, Any], name: str) -> Outcome:
    if name in env["runs"]:
        return env["runs"][name]
    plan = PLANS[name]
    service_key = ServiceKey.load_or_create(env["data_dir"])
    with CpixServer(
        TENANT, MANAGEMENT_KEY, certificate=env["certificate"], auth=server_check(plan.auth)
    ) as server:
        job = job_for(env, name, managed(server, plan, service_key), plan)
        run = run_drm_job(env["root"] / name, job, data_dir=env["data_dir"])
    run.assert_success()
    (request,) = server.requests
    rules = _rules(request)
    if plan.multi_key:
        groups = rules
        assert set(groups) == {"AUDIO", "SD"}
    else:
        assert list(rules) == ["ALL"]
        groups = dict.fromkeys(("AUDIO", "SD"), rules["ALL"])
    keys = {kid: CpixServer.key_for(KEY_SEED, kid) for kid in set(groups.values())}
    result = Outcome(plan, run, server, request, keys, groups)
    manifests, tracks = packaged_tracks(run)
    result.manifests.extend(manifests)
    result.tracks.extend(tracks)
    env["runs"][name] = result
    return result


@pytest.fixture(scope="module", params=list(PLANS))
def done(request, env) -> Outcome:
    return outcome(env, request.param)


# ---------------------------------------------------------------------------------- the jobs


def test_the_strict_server_accepted_the_request_and_its_authentication(done: Outcome):
    """One request, no SPEKE v2 rule broken, asking exactly for the chosen systems that a Key
    Service serves, authenticated as the job said (SigV4: signature verified)."""
    assert done.server.violations == [[]]
    root = ET.fromstring(done.request)
    asked: dict[uuid.UUID, set[uuid.UUID]] = {kid: set() for kid in done.keys}
    for drm in root.iter("{urn:dashif:org:cpix}DRMSystem"):
        asked[uuid.UUID(drm.get("kid"))].add(uuid.UUID(drm.get("systemId")))
    assert all(found == done.plan.asked for found in asked.values()), asked
    if done.plan.auth == "AwsSigV4":
        assert done.server.auth.verified == 1
    created = done.run.one("JobCreated")
    assert len(created.get("KeyIds", [created.get("KeyId")])) == len(done.keys)


def test_init_segments_carry_exactly_the_chosen_systems(done: Outcome):
    """pssh boxes for the chosen systems only (FairPlay has none); the Key Service's boxes
    for Widevine and PlayReady, as given."""
    for track in done.tracks:
        init, _ = read_protected(track.init.read())
        kid = done.kid_of(track)
        assert init.tenc.key_id == kid and init.scheme == done.plan.scheme
        by_system = {box.system_id: box for box in init.pssh}
        assert set(by_system) == done.plan.chosen - {FAIRPLAY}, track.name
        assert len(init.pssh) == len(by_system)
        for system in by_system.keys() & {WIDEVINE, PLAYREADY}:
            assert by_system[system].raw == server_pssh(system, kid)
        if CLEARKEY in by_system:
            assert by_system[CLEARKEY].key_ids == (kid,)


def test_manifests_signal_exactly_the_chosen_systems(done: Outcome):
    """DASH: mp4protection plus a ContentProtection per chosen DASH system (no PlayReady
    element unless chosen). HLS: key lines for the chosen HLS systems only."""
    dash_expected = {f"urn:uuid:{s}" for s in done.plan.chosen & DASH_CAN}
    hls_expected = {HLS_KEYFORMATS[s] for s in done.plan.chosen & set(HLS_KEYFORMATS)}
    mpds = [m for m in done.manifests if m.suffix == ".mpd"]
    masters = [m for m in done.manifests if m.suffix == ".m3u8"]
    assert mpds and (masters or done.plan.formats == ["Dash"])
    for mpd in mpds:
        root = ET.parse(mpd).getroot()
        for adaptation in root.iterfind("d:Period/d:AdaptationSet", MANIFEST_NS):
            if adaptation.get("contentType") not in ("video", "audio"):
                continue
            schemes = [
                e.get("schemeIdUri") for e in adaptation.findall("d:ContentProtection", MANIFEST_NS)
            ]
            assert schemes[0] == "urn:mpeg:dash:mp4protection:2011"
            assert set(schemes[1:]) == dash_expected and len(schemes) == len(dash_expected) + 1
    for master in masters:
        for playlist in master.parent.glob("*.m3u8"):
            text = playlist.read_text()
            formats = set(re.findall(r'#EXT-X-(?:SESSION-)?KEY:.*?KEYFORMAT="([^"]+)"', text))
            if "#EXT-X-IMAGES-ONLY" in text:
                continue
            assert formats == hls_expected, (playlist.name, formats)


def test_shaka_packager_decrypts_with_the_servers_keys(done: Outcome, tmp_path):
    from packagers.mp4 import read_track

    for track in done.tracks:
        name = f"{track.init.path.parent.name}-{track.name}.mp4"
        encrypted = write_joined([track.data()], tmp_path / name)
        output = tmp_path / f"clear-{name}"
        result = shaka_decrypt(encrypted, track.kind, done.keys, output)
        assert result.returncode == 0, result.stderr[-2000:]
        decrypted = read_track(output)
        got = digest(decrypted.read_samples(0, len(decrypted.samples)))
        assert got == digest(clear_samples(done.run.clear_track(track.name))), track.name


def test_no_secret_reaches_events_reports_or_logs(done: Outcome):
    secrets = dict(SECRETS)
    secrets.update({f"content key {kid}": key for kid, key in done.keys.items()})
    assert_no_secret(done.run.everything_said(), secrets)
    created = done.run.one("JobCreated")["ContentProcessing"]["DrmManaged"]
    if "Authentication" in created:
        for name in ("Token", "Value", "SecretAccessKey", "SessionToken"):
            assert created["Authentication"].get(name, "**********") == "**********"


# ----------------------------------------------------------------------- jobs that must fail


def _assert_failed_before_running(run: DrmRun, folder: Path) -> str:
    assert run.report["Success"] is False and run.report["ErrorCode"] == 4001, run.report
    error = run.final_error
    assert error is not None and error["ErrorCode"] == 4001
    kinds = [e["MessageType"] for e in run.events]
    for phase_event in ("ContentAcquired", "VideoEncodingStarted", "ContentPublished"):
        assert phase_event not in kinds, kinds
    out = folder / "out"
    assert not out.exists() or not any(out.rglob("*")), "something was published"
    return error["ErrorMessage"]


WEAK = {
    "same_key": "returned the same content key for quality groups AUDIO and SD",
    "iv_is_key": "it would publish the key",
    "short_key": "returned a content key of 8 bytes",
    "long_key": "returned a content key of 32 bytes",
    "unasked_kid": "which was not asked for",
    "missing_key": "did not return the content key for key id",
    "empty_key": "returned an empty content key (PlainValue)",
}


@pytest.mark.parametrize("mode", list(WEAK))
def test_each_weak_answer_fails_the_job_with_4001(env, mode):
    plan = Plan(["Cmaf"], "cbcs", True, None, "AwsSigV4")
    name = f"weak-{mode}"
    with CpixServer(
        TENANT, MANAGEMENT_KEY, certificate=env["certificate"], auth=server_check(plan.auth)
    ) as server:
        server.mode = mode
        job = job_for(env, name, managed(server, plan), plan)
        run = run_drm_job(env["root"] / name, job, data_dir=env["data_dir"])
    message = _assert_failed_before_running(run, env["root"] / name)
    assert message.startswith(f"Key Service {server.url}: ") and WEAK[mode] in message, message
    assert server.violations == [[]]  # the request itself was right
    assert_no_secret(run.everything_said(), SECRETS)


@pytest.mark.parametrize(
    ("auth", "override", "expected"),
    [
        ("AwsSigV4", {"SecretAccessKey": "wrong-sigv4-secret"}, "(HTTP 403); it said: "),
        ("Bearer", {"Token": "wrong-bearer-token"}, "refused the Bearer token (HTTP 401)"),
        ("Header", {"Value": "wrong-api-key"}, "refused the X-Api-Key header (HTTP 403)"),
    ],
)
def test_a_wrong_signature_or_token_fails_with_the_servers_status_and_message(
    env, auth, override, expected
):
    plan = Plan(["Dash"], "cenc", False, None, auth)
    name = f"refused-{auth}"
    with CpixServer(
        TENANT, MANAGEMENT_KEY, certificate=env["certificate"], auth=server_check(auth)
    ) as server:
        section = managed(server, plan)
        section["Authentication"].update(override)
        run = run_drm_job(
            env["root"] / name, job_for(env, name, section, plan), data_dir=env["data_dir"]
        )
    message = _assert_failed_before_running(run, env["root"] / name)
    assert expected in message, message
    if auth == "AwsSigV4":
        assert SigV4Check.MISMATCH in message
    else:
        assert "it said: " in message and ("Unauthorized" in message or "Forbidden" in message)
    secrets = dict(SECRETS)
    secrets["wrong one"] = next(iter(override.values()))
    assert_no_secret(run.everything_said(), secrets)

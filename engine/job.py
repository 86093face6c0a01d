"""The job JSON of the Encoding API as pydantic models (contract §2–§9).

Property names and enum values match case-insensitively (`engine.validation` normalises the
keys before these models see them); defaults are the contract's. Cross-field rules live in each
model's `rules()` so that `engine.validation` can report every problem of a job at once.
"""

from __future__ import annotations

import base64
import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator
from pydantic.alias_generators import to_pascal

Problem = tuple[str, str]  # (path relative to the model, message)


class ContractEnum(StrEnum):
    """An enum whose values match the job JSON case-insensitively and print in the contract's
    spelling."""

    @classmethod
    def _missing_(cls, value: object) -> ContractEnum | None:
        if isinstance(value, str):
            for member in cls:
                if member.value.lower() == value.strip().lower():
                    return member
        return None

    def __str__(self) -> str:
        return self.value


class JobModel(BaseModel):
    """Base of every section: PascalCase JSON names, frozen, unknown keys already removed."""

    model_config = ConfigDict(
        alias_generator=to_pascal,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        str_strip_whitespace=True,
        # NaN and infinity are valid JSON for Python's parser but no valid size, time or percent
        allow_inf_nan=False,
    )
    # Older or alternative JSON names of a field: lower-case name -> alias of the field.
    legacy_names: ClassVar[dict[str, str]] = {}

    def rules(self) -> list[Problem]:
        """Cross-field problems of this model, paths relative to it (nested models report
        their own)."""
        return []


Secret = SecretStr  # repr, str and JSON dumps show '**********', never the value
Kbps = Annotated[int, Field(ge=16, le=200_000)]
# The External* values are echoed unchanged (contract §1), so they keep their whitespace.
Echoed = Annotated[str, StringConstraints(strip_whitespace=False)]
# The largest side of a baseline JPEG, which bounds a thumbnail tile sheet.
JPEG_MAX_SIDE = 65_535

# ---------------------------------------------------------------------------------- §3 storage


class Provider(ContractEnum):
    AmazonS3 = "AmazonS3"
    AzureBlob = "AzureBlob"
    Ftps = "Ftps"
    S3Compatible = "S3Compatible"
    Local = "Local"
    Http = "Http"


class Protection(ContractEnum):
    Unencrypted = "Unencrypted"
    Encrypted = "Encrypted"


_URI_SCHEMES = {
    Provider.AmazonS3: ("https", "s3"),
    Provider.S3Compatible: ("https", "http"),
    Provider.AzureBlob: ("https", "http"),
    Provider.Ftps: ("ftp", "ftps", "ftpes"),
    Provider.Local: ("file",),
    Provider.Http: ("https", "http"),
}


class StorageSpec(JobModel):
    """A storage location (ContentAcquisition, ContentPublishing, ImageExtraction.Location)."""

    provider: Provider
    uri_path: str = Field(min_length=1, max_length=2048)
    credentials_name: str | None = Field(default=None, max_length=512)
    credentials_secret: Secret | None = None
    credentials_protection: Protection = Protection.Unencrypted
    role_arn_to_assume: str | None = Field(default=None, max_length=2048)
    role_session_duration_in_seconds: int = Field(default=3600, ge=900, le=43200)

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        scheme = self.uri_path.split("://", 1)[0].lower() if "://" in self.uri_path else ""
        allowed = _URI_SCHEMES[self.provider]
        if scheme not in allowed:
            problems.append(
                (
                    "UriPath",
                    f"{self.provider} needs a URI starting with "
                    + " or ".join(f"{s}://" for s in allowed),
                )
            )
        elif self.provider == Provider.Local and not self.uri_path[len("file://") :].startswith(
            "/"
        ):
            problems.append(("UriPath", "Local needs an absolute path: file:///absolute/folder/"))
        if self.role_arn_to_assume and self.provider != Provider.AmazonS3:
            problems.append(("RoleArnToAssume", "only AmazonS3 can assume a role"))
        if (self.credentials_secret is None) != (self.credentials_name is None):
            problems.append(
                (
                    "CredentialsSecret",
                    "CredentialsName and CredentialsSecret must be given together",
                )
            )
        if self.credentials_protection == Protection.Encrypted and self.credentials_secret:
            if not _is_base64(self.credentials_secret.get_secret_value()):
                problems.append(("CredentialsSecret", "an Encrypted secret must be base64"))
        return problems


# ---------------------------------------------------------------------------------- §4 mappings


class MediaDetection(ContractEnum):
    Regex = "Regex"
    Convention = "Convention"


class StreamExpression(JobModel):
    language: str = Field(min_length=1, max_length=35)
    file_name_expression: str = Field(min_length=1, max_length=1000)


class VideoStreamAudioTrack(JobModel):
    track_indices: list[Annotated[int, Field(ge=0, le=63)]] = Field(min_length=1)
    language: str | None = Field(default=None, max_length=35)

    def rules(self) -> list[Problem]:
        if len(self.track_indices) not in (1, 2, 6):
            return [
                (
                    "TrackIndices",
                    "list 1 track (used as it is), 2 mono tracks (stereo) or 6 (5.1)",
                )
            ]
        if len(set(self.track_indices)) != len(self.track_indices):
            return [("TrackIndices", "a track index appears twice")]
        return []


class AudioMappings(JobModel):
    video_stream_audio_tracks: list[VideoStreamAudioTrack] | None = None


class MediaMappings(JobModel):
    media_detection: MediaDetection = MediaDetection.Regex
    video_stream_expression: str | None = Field(default=None, max_length=1000)
    audio_file_language_expression: str | None = Field(default=None, max_length=1000)
    descriptive_audio_file_language_expression: str | None = Field(default=None, max_length=1000)
    subtitle_file_language_expression: str | None = Field(default=None, max_length=1000)
    caption_file_language_expression: str | None = Field(default=None, max_length=1000)
    audio_streams: list[StreamExpression] | None = None
    subtitle_streams: list[StreamExpression] | None = None
    caption_streams: list[StreamExpression] | None = None
    audio_languages: list[str] | None = None
    subtitle_languages: list[str] | None = None
    caption_languages: list[str] | None = None
    audio_mappings: AudioMappings | None = None
    fallback_language_code: str = Field(default="en", max_length=35)
    fail_on_ignored_files: bool = False
    fail_on_ignored_tracks: bool = False
    fail_on_no_video_tracks: bool = True
    fail_on_no_audio_tracks: bool = True
    fail_on_no_subtitle_tracks: bool = False
    fail_on_no_caption_tracks: bool = False

    # expression field alias -> whether capture group 1 (the language) is required
    EXPRESSIONS: ClassVar[dict[str, bool]] = {
        "VideoStreamExpression": False,
        "AudioFileLanguageExpression": True,
        "DescriptiveAudioFileLanguageExpression": True,
        "SubtitleFileLanguageExpression": True,
        "CaptionFileLanguageExpression": True,
    }

    def rules(self) -> list[Problem]:
        from engine.regex import compile_expression  # local: keeps re2 out of model imports

        problems: list[Problem] = []
        if self.fail_on_no_video_tracks and not self.video_stream_expression:
            if self.media_detection == MediaDetection.Regex:
                problems.append(
                    (
                        "VideoStreamExpression",
                        "required unless FailOnNoVideoTracks is false (audio-only jobs)",
                    )
                )
        for alias, needs_group in self.EXPRESSIONS.items():
            expression = getattr(self, _field_name(type(self), alias))
            if expression:
                problems += _expression_problems(alias, expression, needs_group, compile_expression)
        for alias in ("AudioStreams", "SubtitleStreams", "CaptionStreams"):
            for i, stream in enumerate(getattr(self, _field_name(type(self), alias)) or []):
                problems += _expression_problems(
                    f"{alias}[{i}].FileNameExpression",
                    stream.file_name_expression,
                    False,
                    compile_expression,
                )
        return problems


def _expression_problems(path: str, expression: str, needs_group: bool, compile_expression):
    try:
        compiled = compile_expression(expression)
    except ValueError as error:
        return [(path, str(error))]
    if needs_group and compiled.groups < 1:
        return [(path, "needs a capture group: group 1 is the language")]
    return []


# ------------------------------------------------------------------------------ §5 processing


class OutputFormat(ContractEnum):
    Dash = "Dash"
    Hls = "Hls"
    Cmaf = "Cmaf"
    DashOnDemand = "DashOnDemand"
    HlsTs = "HlsTs"


class SegmentFormat(ContractEnum):
    Segments = "Segments"
    ByteRange = "ByteRange"


class VideoFormat(ContractEnum):
    H264 = "H264"
    H265 = "H265"
    DoNotEncode = "DoNotEncode"


class OptimizeFor(ContractEnum):
    Speed = "Speed"
    Balance = "Balance"
    Quality = "Quality"


class EncodingMode(ContractEnum):
    Default = "Default"
    PerScene = "PerScene"


class BitrateLadder(ContractEnum):
    V2 = "V2"
    V1 = "V1"


class Sound(ContractEnum):
    Mono = "Mono"
    Stereo = "Stereo"
    Surround = "5.1"

    @property
    def channels(self) -> int:
        return {"Mono": 1, "Stereo": 2, "5.1": 6}[self.value]


class AudioFormat(ContractEnum):
    AAC = "AAC"
    AC3 = "AC3"
    EAC3 = "EAC3"


class Create(ContractEnum):
    Always = "Always"
    OnMatchingSound = "OnMatchingSound"


class VideoSyncMethod(ContractEnum):
    Auto = "Auto"
    Passthrough = "Passthrough"
    Cfr = "Cfr"
    Vfr = "Vfr"


class AvoidNegativeTimestamps(ContractEnum):
    Auto = "Auto"
    MakeNonNegative = "MakeNonNegative"
    MakeZero = "MakeZero"
    Disabled = "Disabled"


class Archiving(ContractEnum):
    Off = "None"
    Tar = "Tar"
    SingleTar = "SingleTar"


class DrmProtection(ContractEnum):
    Off = "None"
    Base64Key = "Base64Key"
    Encrypted = "Encrypted"
    Managed = "Managed"


class EncryptionScheme(ContractEnum):
    cenc = "cenc"
    cbcs = "cbcs"


class HardwareAcceleration(ContractEnum):
    Auto = "Auto"
    Nvidia = "Nvidia"
    Off = "None"


class VideoRepresentation(JobModel):
    width: int | None = Field(default=None, ge=32, le=7680)
    height: int | None = Field(default=None, ge=32, le=4320)
    bitrate_in_kbps: int = Field(ge=50, le=200_000)

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.width is None and self.height is None:
            problems.append(("Height", "give Width, Height or both"))
        for alias, value in (("Width", self.width), ("Height", self.height)):
            if value is not None and value % 2:
                problems.append((alias, f"must be even, got {value}"))
        return problems


class AudioRepresentation(JobModel):
    bitrate_in_kbps: int = Field(ge=16, le=1536)
    sound: Sound = Sound.Stereo
    audio_format: AudioFormat = AudioFormat.AAC
    create: Create = Create.Always

    def rules(self) -> list[Problem]:
        limits = {AudioFormat.AAC: 640, AudioFormat.AC3: 640, AudioFormat.EAC3: 1536}
        if self.bitrate_in_kbps > limits[self.audio_format]:
            limit = limits[self.audio_format]
            return [("BitrateInKbps", f"{self.audio_format} allows at most {limit} kbps")]
        return []


DEFAULT_AUDIO_REPRESENTATIONS = (
    AudioRepresentation(bitrate_in_kbps=128, sound=Sound.Stereo, create=Create.Always),
    AudioRepresentation(bitrate_in_kbps=64, sound=Sound.Mono, create=Create.OnMatchingSound),
)

_FILE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class Naming(JobModel):
    video_chunks_pattern: str | None = None
    audio_chunks_pattern: str | None = None
    subtitle_pattern: str | None = None
    manifest_name: str | None = None
    dash_manifest_name: str | None = None
    hls_manifest_name: str | None = None

    def rules(self) -> list[Problem]:
        problems = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is not None and not _FILE_PATTERN.match(value):
                problems.append(
                    (
                        field.alias or name,
                        "use 1-100 letters, digits, '.', '_' or '-' (a file name, no folders)",
                    )
                )
        return problems


_TIME = re.compile(r"^(\d{1,2}):([0-5]\d):([0-5]\d)(?:\.(\d{1,3}))?$")


def parse_time(value: str) -> float:
    """'HH:MM:SS[.fff]' -> seconds."""
    match = _TIME.match(value)
    if not match:
        raise ValueError(f"expected HH:MM:SS or HH:MM:SS.fff, got {value!r}")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + float(f"0.{fraction or 0}")


Percent = Annotated[float, Field(ge=0, le=100)]


class VisibleVideoWatermark(JobModel):
    watermark_file_name: str = Field(min_length=1, max_length=255)
    position_x_percentage: Percent = 0
    position_y_percentage: Percent = 0
    size_percentage: Annotated[float, Field(gt=0, le=100)] = 10
    opacity_percentage: Percent = 100
    start_time: str | None = None
    end_time: str | None = None
    fade_in_duration_in_ms: int = Field(default=0, ge=0, le=3_600_000)
    fade_out_duration_in_ms: int = Field(default=0, ge=0, le=3_600_000)

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        times = {}
        for alias, value in (("StartTime", self.start_time), ("EndTime", self.end_time)):
            if value is not None:
                try:
                    times[alias] = parse_time(value)
                except ValueError as error:
                    problems.append((alias, str(error)))
        if len(times) == 2 and times["EndTime"] <= times["StartTime"]:
            problems.append(("EndTime", "must be after StartTime"))
        if not re.search(r"\.(png|jpe?g|gif)$", self.watermark_file_name, re.IGNORECASE):
            problems.append(("WatermarkFileName", "must be a png, jpg or gif file"))
        return problems

    @property
    def start_seconds(self) -> float:
        return parse_time(self.start_time) if self.start_time else 0.0

    @property
    def end_seconds(self) -> float | None:
        return parse_time(self.end_time) if self.end_time else None


class DrmSystem(ContractEnum):
    """A DRM system a job can choose (`DrmManaged.DrmSystems`, a vipe extension)."""

    Widevine = "Widevine"
    PlayReady = "PlayReady"
    FairPlay = "FairPlay"
    ClearKey = "ClearKey"


class AuthenticationType(ContractEnum):
    Basic = "Basic"
    Bearer = "Bearer"
    Header = "Header"
    AwsSigV4 = "AwsSigV4"


# The fields each Authentication type uses (the others must be absent), and those it needs.
_AUTH_FIELDS: dict[AuthenticationType, tuple[tuple[str, ...], tuple[str, ...]]] = {
    AuthenticationType.Basic: ((), ()),
    AuthenticationType.Bearer: (("Token",), ("Token",)),
    AuthenticationType.Header: (("Name", "Value"), ("Name", "Value")),
    AuthenticationType.AwsSigV4: (
        ("Region", "Service", "AccessKeyId", "SecretAccessKey", "SessionToken"),
        ("Region",),
    ),
}
_ALL_AUTH_FIELDS = (
    "Token",
    "Name",
    "Value",
    "Region",
    "Service",
    "AccessKeyId",
    "SecretAccessKey",
    "SessionToken",
)


class DrmAuthentication(JobModel):
    """How vipe authenticates to the Key Service (`DrmManaged.Authentication`, a vipe
    extension): `Basic` (TenantId:ManagementKey, the default), `Bearer` (Token), `Header`
    (Name, Value) or `AwsSigV4` (Region, Service, and optionally AccessKeyId,
    SecretAccessKey, SessionToken; absent: the node's AWS credential chain)."""

    type: AuthenticationType = AuthenticationType.Basic
    token: Secret | None = None
    name: str | None = Field(default=None, max_length=100)
    value: Secret | None = None
    region: str | None = Field(default=None, max_length=50, pattern=r"^[a-z0-9-]+$")
    service: str | None = Field(default=None, max_length=100, pattern=r"^[a-z0-9-]+$")
    access_key_id: str | None = Field(default=None, max_length=200)
    secret_access_key: Secret | None = None
    session_token: Secret | None = None

    SECRETS: ClassVar[tuple[str, ...]] = ("Token", "Value", "SecretAccessKey", "SessionToken")

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        uses, needs = _AUTH_FIELDS[self.type]
        for alias in _ALL_AUTH_FIELDS:
            value = getattr(self, _field_name(type(self), alias))
            if alias in needs and value is None:
                problems.append((alias, f"required when Type is {self.type}"))
            elif alias not in uses and value is not None:
                problems.append((alias, f"not used when Type is {self.type}"))
        if self.type == AuthenticationType.Header and self.name is not None:
            from drm.cpix import HEADER_NAME, RESERVED_HEADERS  # the client's own rules

            if not HEADER_NAME.match(self.name):
                problems.append(("Name", "must be an HTTP header name"))
            elif self.name.lower() in RESERVED_HEADERS:
                problems.append(("Name", f"{self.name} is set by vipe itself"))
        if self.type == AuthenticationType.AwsSigV4:
            if (self.access_key_id is None) != (self.secret_access_key is None):
                problems.append(("SecretAccessKey", "AccessKeyId and SecretAccessKey go together"))
            if self.session_token is not None and self.access_key_id is None:
                problems.append(("SessionToken", "needs AccessKeyId and SecretAccessKey"))
        return problems


class DrmManaged(JobModel):
    api_url: str | None = Field(default=None, max_length=2048)
    tenant_id: str | None = Field(default=None, max_length=200)
    management_key: Secret | None = None
    key_seed_id: Secret | None = None
    thumbprints: Secret | None = None
    multi_key: bool = False
    proxy: str | None = None
    keys_protection: Protection = Protection.Unencrypted
    # vipe extensions (docs/job-contract.md): the DRM systems to signal (None: every system
    # the output formats can signal) and how to authenticate to the Key Service.
    drm_systems: list[DrmSystem] | None = Field(default=None, min_length=1, max_length=4)
    authentication: DrmAuthentication | None = None

    legacy_names: ClassVar[dict[str, str]] = {"keyseed": "KeySeedId"}

    @property
    def authentication_type(self) -> AuthenticationType:
        """The authentication's type (Basic when none is given)."""
        return self.authentication.type if self.authentication else AuthenticationType.Basic

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        required = ["ApiUrl"]
        if self.authentication_type == AuthenticationType.Basic:
            required += ["TenantId", "ManagementKey"]
        for alias in required:
            if getattr(self, _field_name(type(self), alias)) is None:
                problems.append((alias, "required when DrmProtection is Managed"))
        if self.api_url and not self.api_url.lower().startswith(("https://", "http://")):
            problems.append(("ApiUrl", "must be an http(s) URL"))
        if self.drm_systems and len(set(self.drm_systems)) != len(self.drm_systems):
            problems.append(("DrmSystems", "lists a system twice"))
        if self.keys_protection == Protection.Encrypted:
            for alias in ("ManagementKey", "KeySeedId"):
                value = getattr(self, _field_name(type(self), alias))
                if value is not None and not _is_base64(value.get_secret_value()):
                    problems.append((alias, "an Encrypted secret must be base64"))
            auth = self.authentication
            for alias in DrmAuthentication.SECRETS if auth else ():
                value = getattr(auth, _field_name(DrmAuthentication, alias))
                if value is not None and not _is_base64(value.get_secret_value()):
                    problems.append(
                        (f"Authentication.{alias}", "an Encrypted secret must be base64")
                    )
        return problems


class PerSceneEncoding(JobModel):
    target_vmaf_score: float = Field(default=95, ge=50, le=100)


class ContentProcessing(JobModel):
    output_format: list[OutputFormat] = Field(min_length=1, max_length=5)
    segment_format: SegmentFormat = SegmentFormat.Segments
    segment_length_in_seconds: float = Field(default=4, ge=1, le=10)
    video_format: VideoFormat = VideoFormat.H264
    optimize_for: OptimizeFor = OptimizeFor.Balance
    encoding_mode: EncodingMode = EncodingMode.Default
    per_scene_encoding: PerSceneEncoding | None = None
    bitrate_ladder: BitrateLadder = BitrateLadder.V2
    video_representations: list[VideoRepresentation] | None = Field(default=None, max_length=20)
    audio_representations: list[AudioRepresentation] | None = Field(default=None, max_length=10)
    sound: Sound | None = None
    normalize_audio: bool = False
    force_pixel_aspect_ratio_to1: bool = Field(default=True, alias="ForcePixelAspectRatioTo1")
    search_for_optimal_nearby_resolutions: bool = True
    force_aspect_ratio_to_standard: bool = False
    use_highest_possible_bitrate: bool = False
    extract_and_apply_hdr: bool = Field(default=False, alias="ExtractAndApplyHDR")
    extract_and_apply_hdr10_plus: bool = Field(default=False, alias="ExtractAndApplyHDR10Plus")
    video_sync_method: VideoSyncMethod = VideoSyncMethod.Auto
    avoid_negative_video_timestamps: AvoidNegativeTimestamps = AvoidNegativeTimestamps.Auto
    archiving: Archiving = Archiving.Off
    delete_files_from_source_when_done: bool = False
    use_native_language_names: bool = False
    naming: Naming | None = None
    visible_video_watermarks: list[VisibleVideoWatermark] | None = Field(
        default=None, max_length=10
    )
    drm_protection: DrmProtection = DrmProtection.Off
    key_id: str | None = None
    content_key: Secret | None = None
    drm_managed: DrmManaged | None = None
    encryption_scheme: EncryptionScheme | None = None
    hardware_acceleration: HardwareAcceleration = HardwareAcceleration.Auto
    quality_metrics: bool = False

    @field_validator("optimize_for", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return OptimizeFor.Balance if isinstance(value, str) and not value.strip() else value

    @field_validator("key_id")
    @classmethod
    def _guid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(
                "must be a GUID such as 1c6f2b9e-0d3a-4c52-9a3e-5f0e8e6d7a21"
            ) from None

    @property
    def scheme(self) -> EncryptionScheme:
        """The CENC scheme: given, or `cenc` for DASH-only outputs and `cbcs` otherwise."""
        if self.encryption_scheme is not None:
            return self.encryption_scheme
        dash_only = all(f in (OutputFormat.Dash, OutputFormat.DashOnDemand) for f in self.formats)
        return EncryptionScheme.cenc if dash_only else EncryptionScheme.cbcs

    @property
    def formats(self) -> list[OutputFormat]:
        return list(dict.fromkeys(self.output_format))

    @property
    def encrypted(self) -> bool:
        return self.drm_protection != DrmProtection.Off

    @property
    def packaging_only(self) -> bool:
        return self.video_format == VideoFormat.DoNotEncode

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        formats = self.formats
        if len(formats) != len(self.output_format):
            problems.append(("OutputFormat", "lists a format twice"))
        for alone in (OutputFormat.Cmaf, OutputFormat.DashOnDemand):
            if alone in formats and len(formats) > 1:
                problems.append(("OutputFormat", f"{alone} combines with no other format"))
        if self.packaging_only:
            for alias, value in (
                ("VideoRepresentations", self.video_representations),
                ("VisibleVideoWatermarks", self.visible_video_watermarks),
            ):
                if value:
                    problems.append((alias, "not possible with VideoFormat DoNotEncode"))
            if self.encoding_mode == EncodingMode.PerScene:
                problems.append(("EncodingMode", "PerScene needs encoding, not DoNotEncode"))
            for alias, on in (
                ("ExtractAndApplyHDR", self.extract_and_apply_hdr),
                ("ExtractAndApplyHDR10Plus", self.extract_and_apply_hdr10_plus),
            ):
                if on:
                    problems.append((alias, "not possible with VideoFormat DoNotEncode"))
        elif self.video_format == VideoFormat.H264:
            for alias, on in (
                ("ExtractAndApplyHDR", self.extract_and_apply_hdr),
                ("ExtractAndApplyHDR10Plus", self.extract_and_apply_hdr10_plus),
            ):
                if on:
                    problems.append((alias, "HDR output needs VideoFormat H265"))
        if self.extract_and_apply_hdr10_plus and not self.extract_and_apply_hdr:
            problems.append(("ExtractAndApplyHDR10Plus", "needs ExtractAndApplyHDR too"))
        problems += self._drm_rules()
        return problems

    def _drm_rules(self) -> list[Problem]:
        problems: list[Problem] = []
        mode = self.drm_protection
        if mode in (DrmProtection.Base64Key, DrmProtection.Encrypted):
            if self.key_id is None:
                problems.append(("KeyId", f"required when DrmProtection is {mode}"))
            if self.content_key is None:
                problems.append(("ContentKey", f"required when DrmProtection is {mode}"))
            elif mode == DrmProtection.Base64Key:
                try:
                    key = base64.b64decode(self.content_key.get_secret_value(), validate=True)
                except ValueError:
                    problems.append(("ContentKey", "is not valid base64"))
                else:
                    if len(key) != 16:
                        problems.append(
                            ("ContentKey", f"must decode to 16 bytes (AES-128), not {len(key)}")
                        )
            elif not _is_base64(self.content_key.get_secret_value()):
                problems.append(("ContentKey", "an Encrypted key must be base64 ciphertext"))
        if mode == DrmProtection.Managed and self.drm_managed is None:
            problems.append(("DrmManaged", "required when DrmProtection is Managed"))
        if mode == DrmProtection.Managed and self.drm_managed and self.drm_managed.drm_systems:
            from drm import systems  # the one table of what each format can signal

            chosen = [systems.system_id(s.value) for s in self.drm_managed.drm_systems]
            formats = [f.value for f in self.formats]
            for problem in systems.choice_problems(chosen, formats, self.scheme.value):
                problems.append(("DrmManaged.DrmSystems", problem))
        if mode == DrmProtection.Off:
            for alias, value in (
                ("KeyId", self.key_id),
                ("ContentKey", self.content_key),
                ("DrmManaged", self.drm_managed),
                ("EncryptionScheme", self.encryption_scheme),
            ):
                if value is not None:
                    problems.append((alias, "given although DrmProtection is None"))
        if mode != DrmProtection.Off and OutputFormat.HlsTs in self.formats:
            problems.append(("DrmProtection", "HlsTs output cannot be encrypted; use Hls or Cmaf"))
        return problems


# --------------------------------------------------------------------------- §6 images, thumbnails


class ImageExtraction(JobModel):
    quality: int = Field(default=90, ge=1, le=100)
    intervals: list[Percent] = Field(min_length=1, max_length=1000)
    pattern: str = Field(min_length=1, max_length=200)
    location: StorageSpec

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        if "%" not in self.pattern:
            problems.append(("Pattern", "must contain % (replaced by the 1-based image number)"))
        elif not _FILE_PATTERN.match(self.pattern.replace("%", "0")):
            problems.append(("Pattern", "must be a file name: letters, digits, '.', '_', '-', '%'"))
        if not self.pattern.lower().endswith((".jpg", ".jpeg")):
            problems.append(("Pattern", "must end in .jpg or .jpeg"))
        if self.location.provider == Provider.Http:
            problems.append(("Location.Provider", "Http is input only"))
        return problems


class Thumbnails(JobModel):
    generate: bool = False
    width: int | None = Field(default=None, ge=24, le=7680)
    height: int | None = Field(default=None, ge=24, le=4320)
    duration_in_seconds: float | None = Field(default=None, gt=0, le=3600)
    bandwidth_in_kbps: int | None = Field(default=None, ge=1, le=100_000)
    tile_columns: int = Field(default=10, ge=1, le=20)
    tile_rows: int = Field(default=10, ge=1, le=20)

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        # A tile sheet is one JPEG, whose sides cannot exceed 65535 pixels.
        for alias, size, count_alias, count in (
            ("Width", self.width, "TileColumns", self.tile_columns),
            ("Height", self.height, "TileRows", self.tile_rows),
        ):
            if size is not None and size * count > JPEG_MAX_SIDE:
                problems.append(
                    (
                        alias,
                        f"{alias} × {count_alias} = {size * count} pixels; a JPEG tile sheet "
                        f"allows at most {JPEG_MAX_SIDE}",
                    )
                )
        return problems


# ------------------------------------------------------------------------------- §8 publishers


class PublisherType(ContractEnum):
    RabbitMQ = "RabbitMQ"
    AzureServiceBusQueue = "AzureServiceBusQueue"
    AmazonSqs = "AmazonSqs"
    Ftps = "Ftps"
    Webhook = "Webhook"


class AmqpProtocol(ContractEnum):
    amqp = "amqp"
    amqps = "amqps"


class MessagePublisher(JobModel):
    """One event destination; which fields are required depends on `Type`."""

    type: PublisherType
    protocol: AmqpProtocol = AmqpProtocol.amqp
    host: str | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    virtual_host: str | None = Field(default=None, max_length=255)
    queue: str | None = Field(default=None, max_length=255)
    connection: Secret | None = None
    queue_url: str | None = Field(default=None, max_length=2048)
    region: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, max_length=2048)
    uri_path: str | None = Field(default=None, max_length=2048)
    credentials_name: str | None = Field(default=None, max_length=512)
    credentials_secret: Secret | None = None
    credentials_protection: Protection = Protection.Unencrypted

    REQUIRED: ClassVar[dict[PublisherType, tuple[str, ...]]] = {
        PublisherType.RabbitMQ: ("Host", "Queue"),
        PublisherType.AzureServiceBusQueue: ("Connection",),
        PublisherType.AmazonSqs: ("QueueUrl",),
        PublisherType.Ftps: ("UriPath",),
        PublisherType.Webhook: ("Url",),
    }

    def rules(self) -> list[Problem]:
        problems: list[Problem] = []
        for alias in self.REQUIRED[self.type]:
            if getattr(self, _field_name(type(self), alias)) is None:
                problems.append((alias, f"required for a {self.type} publisher"))
        if (
            self.type == PublisherType.AzureServiceBusQueue
            and self.connection is not None
            and self.credentials_protection == Protection.Unencrypted
            and self.queue is None
            and "entitypath=" not in self.connection.get_secret_value().lower()
        ):
            problems.append(("Queue", "required when the Connection string has no EntityPath"))
        if self.type == PublisherType.Webhook and self.url:
            if not self.url.lower().startswith(("https://", "http://")):
                problems.append(("Url", "must be an http(s) URL"))
        if self.type == PublisherType.Ftps and self.uri_path:
            if not self.uri_path.lower().startswith(("ftp://", "ftps://", "ftpes://")):
                problems.append(("UriPath", "must start with ftp://, ftpes:// or ftps://"))
        if self.credentials_protection == Protection.Encrypted:
            for alias in ("CredentialsSecret", "Connection"):
                value = getattr(self, _field_name(type(self), alias))
                if value is not None and not _is_base64(value.get_secret_value()):
                    problems.append((alias, "an Encrypted secret must be base64"))
        return problems


# ---------------------------------------------------------------------------------- §2 the job


class Job(JobModel):
    """A whole encoding job."""

    external_id: Echoed = Field(default="", max_length=200)
    external_type: Echoed = Field(default="", max_length=100)
    external_provider: Echoed = Field(default="", max_length=100)
    content_acquisition: StorageSpec
    media_mappings: MediaMappings
    content_processing: ContentProcessing
    image_extraction: ImageExtraction | None = None
    thumbnails: Thumbnails | None = None
    content_publishing: StorageSpec
    message_publishers: list[MessagePublisher] | None = Field(default=None, max_length=5)

    legacy_names: ClassVar[dict[str, str]] = {"contentpreprocessing": "MediaMappings"}

    @field_validator("external_id", "external_type", "external_provider", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    def rules(self) -> list[Problem]:
        if self.content_publishing.provider == Provider.Http:
            return [("ContentPublishing.Provider", "Http is input only")]
        return []

    @property
    def secrets(self) -> list[str]:
        """Every secret value of the job, to check that none leaks (tests, log filters)."""
        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)

        walk(self)
        return [s for s in found if s]


def _field_name(model: type[BaseModel], alias: str) -> str:
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias:
            return name
    raise KeyError(alias)


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return bool(value)

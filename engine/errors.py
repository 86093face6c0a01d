"""The exception tree of a job: one class per phase, each with its FinalError code (contract §8)."""

from __future__ import annotations

from engine.events import Phase


class EngineError(Exception):
    """Base of every error that ends a job with a `FinalError`.

    `code` is the contract's FinalError code, `phase` the phase the error belongs to (the
    FinalError names the phase the runner was in), and
    `retryable` marks transient faults (only those are retried, with a bound).
    """

    code = 5000
    phase: Phase | None = None
    retryable = False

    def __init__(self, message: str, *, code: int | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class JobValidationError(EngineError):
    """The job is invalid. `errors` lists every problem with the JSON path of its field."""

    code = 1001
    phase = Phase.PRE_VALIDATION

    def __init__(self, errors: list, warnings: list | None = None):
        self.errors = errors
        self.warnings = warnings or []
        lines = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(f"invalid job: {lines}")


class AcquisitionError(EngineError):
    """Input storage: 2001 unreachable, 2002 access denied, 2003 input folder empty or missing."""

    code = 2001
    phase = Phase.ACQUISITION


class MappingError(EngineError):
    """Media mapping failed: no video, nothing matched, a FailOn… rule."""

    code = 3001
    phase = Phase.MEDIA_MAPPING


class SourceError(EngineError):
    """A source file is unreadable or corrupt."""

    code = 3002
    phase = Phase.MEDIA_MAPPING


class EncodingError(EngineError):
    code = 3101
    phase = Phase.ENCODING


class HardwareUnavailableError(EncodingError):
    """`HardwareAcceleration: Nvidia` was demanded but the node cannot encode on NVENC."""

    code = 3102


class DrmError(EngineError):
    code = 4001
    phase = Phase.PACKAGING


class PackagingError(EngineError):
    code = 4101
    phase = Phase.PACKAGING


class ImageExtractionError(EngineError):
    code = 4201
    phase = Phase.IMAGE_EXTRACTION


class PublishError(EngineError):
    """Output storage: 4301 unreachable, 4302 access denied."""

    code = 4301
    phase = Phase.PUBLISHING


# A BaseException, so that a broad `except Exception` cannot swallow a cancellation.
class Cancelled(BaseException):
    """The job was cancelled (FinalError 5001)."""

    code = 5001

    def __init__(self, message: str = "the job was cancelled"):
        super().__init__(message)
        self.message = message

"""What every phase of one run reads: the job, where it works, how it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.locations import location_from_spec

if TYPE_CHECKING:
    from drm.credentials import ServiceKey
    from engine.cancel import CancelToken
    from engine.chunks import ChunkSettings
    from engine.encoders import NodeCapabilities
    from engine.events import EventEmitter
    from engine.job import ContentProcessing, Job, StorageSpec
    from engine.policy import JobPolicy
    from engine.validation import FieldError
    from storage.base import StorageLocation


@dataclass(frozen=True)
class JobScope:
    """The read-only context of a run. Phases emit through `events` and stop on `cancel`;
    they keep nothing here (each returns what it found, see `engine.pipeline.results`)."""

    job: Job
    warnings: tuple[FieldError, ...]
    job_id: str
    tenant_id: str
    workdir: Path
    events: EventEmitter
    cancel: CancelToken
    capabilities: NodeCapabilities
    data_dir: Path
    policy: JobPolicy
    # Told the names Publishing will create before it writes any (see Storage.upload_folder),
    # so that a service can roll a crashed publish back.
    on_publish_plan: Callable[[list[str]], None] | None = None
    # How this node splits a job's video into chunks (engine.chunks); None: one pass.
    chunking: ChunkSettings | None = None

    @property
    def processing(self) -> ContentProcessing:
        return self.job.content_processing

    def location(
        self, spec: StorageSpec, service_key: ServiceKey | None, field: str
    ) -> StorageLocation:
        """A storage object of the job as a location under the server's policy."""
        return location_from_spec(spec, service_key, field, self.policy, self.tenant_id)

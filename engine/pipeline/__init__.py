"""The orchestrator and its phases (contract §10); `run_job` is the entry point."""

from engine.pipeline.payloads import job_created_fields
from engine.pipeline.runner import run_job

__all__ = ["job_created_fields", "run_job"]

"""The orchestrator and its phases (contract §10); `run_job` is the entry point."""

from engine.pipeline.runner import run_job

__all__ = ["run_job"]

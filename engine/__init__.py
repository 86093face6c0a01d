"""vipe's engine: the job model, the pipeline, the CLI and the services.

`engine.run_job(job, on_event=..., cancel=...)` runs one job in this process and returns its
reporting entry; see `engine.pipeline.run_job`.
"""

from __future__ import annotations

from typing import Any


def run_job(job: Any, **options: Any) -> dict[str, Any]:
    """Run one job here; see `engine.pipeline.run_job` (imported lazily: it pulls in PyAV)."""
    from engine.pipeline import run_job as run

    return run(job, **options)

"""Logging of `vipe worker` and `vipe serve --log-format json`: one JSON object per line, with
the job a line is about (`job_id`) and the worker that wrote it, for log shippers."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from typing import Any

# The job the current thread works on (set by the worker around each job): its log lines
# carry its id even when their message does not name it.
JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("vipe_job_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, worker, pid."""

    JOB = re.compile(
        r"(?:\bjob |\brun_job\[)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
    )

    def __init__(self, worker: str = ""):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if job_id is None:
            found = self.JOB.search(message)
            job_id = found.group(1) if found else None
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "job_id": job_id,
            "worker": self.worker or None,
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: int = logging.INFO, worker: str = "") -> None:
    """Root logging to stderr, as text or JSON lines (replaces what `main` set up)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "kombu", "amqp", "celery.worker.consumer", "celery.bootsteps"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def name_worker_in_logs(worker: str) -> None:
    """Make the JSON lines of the root logger's handlers name this worker."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.worker = worker


__all__ = ["JOB_ID", "JsonFormatter", "configure_logging", "name_worker_in_logs"]

"""Helpers for the cluster tests: the machine's PostgreSQL, Redis and RabbitMQ on 127.0.0.1,
each test run in a namespace of its own, the API with a Celery queue, `vipe worker` processes.

- `postgres_schema()`: a schema of its own in the `test` database (dropped afterwards); the URL
  sets `search_path`, so the store, its Alembic table and every worker live in it.
- `redis_broker()` / `rabbitmq_broker()`: a `Broker` with a unique queue prefix; on Redis also a
  Redis database picked at random (1-15) and a `global_keyprefix`, so that nothing of another
  run is seen; afterwards its keys (Redis) or queues and exchanges (RabbitMQ) are deleted.
- `Cluster`: the API (uvicorn in a thread, `CeleryQueue`) plus `WorkerProcess`es
  (`python -m engine.cli worker` subprocesses with JSON logs in the data folder).

A service that is not reachable skips the tests, unless `VIPE_REQUIRE_TEST_SERVERS=1` (CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_helpers import REPO, ApiServer, TokenIssuer, job_state, tiny_job, wait_for
from mediagen import make_media
from sqlalchemy import create_engine, text

from engine.service.cluster import CeleryQueue, queue_name

POSTGRES_URL = os.environ.get(
    "VIPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBITMQ_URL = os.environ.get("VIPE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _unavailable(what: str, error: BaseException) -> None:
    reason = f"{what} not reachable: {type(error).__name__}: {error}"
    if os.environ.get("VIPE_REQUIRE_TEST_SERVERS"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL in a fresh schema of the `test` database."""
    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        _unavailable("PostgreSQL", error)
    schema = f"vipe_cluster_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Broker:
    """A broker URL and the namespace of this test run on it."""

    kind: str  # "redis" or "rabbitmq"
    url: str
    prefix: str
    transport_options: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            "VIPE_BROKER_URL": self.url,
            "VIPE_QUEUE_PREFIX": self.prefix,
            "VIPE_BROKER_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
        }

    def queue_names(self) -> list[str]:
        return [queue_name(route, self.prefix) for route in ("gpu", "cpu")]


@contextlib.contextmanager
def redis_broker() -> Iterator[Broker]:
    import redis

    database = random.randint(1, 15)
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=database, socket_timeout=5)
    try:
        client.ping()
    except Exception as error:
        _unavailable("Redis", error)
    prefix = f"vipe-test-{uuid.uuid4().hex[:10]}"
    broker = Broker(
        "redis",
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{database}",
        prefix,
        {"global_keyprefix": f"{prefix}:"},
    )
    try:
        yield broker
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def rabbitmq_broker() -> Iterator[Broker]:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:
        if os.environ.get("VIPE_REQUIRE_RABBITMQ") == "1":
            pytest.fail(f"RabbitMQ not reachable: {error}")
        _unavailable("RabbitMQ", error)
    broker = Broker("rabbitmq", RABBITMQ_URL, f"vipe-test-{uuid.uuid4().hex[:10]}")
    try:
        yield broker
    finally:
        with Connection(RABBITMQ_URL, connect_timeout=3) as connection:
            for name in broker.queue_names():
                for delete in ("queue_delete", "exchange_delete"):
                    with contextlib.suppress(Exception):
                        getattr(connection.channel(), delete)(name)


# ----------------------------------------------------------------------------- workers


class WorkerProcess:
    """`vipe worker` in a subprocess, its log (JSON lines) in its data folder."""

    def __init__(self, cluster: Cluster, name: str, *args: str, env: dict[str, str] | None = None):
        self.cluster = cluster
        self.name = name
        self.data_dir = cluster.root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir / "worker.log"
        self.owner: str | None = None

    def start(self, *, wait: bool = True) -> WorkerProcess:
        settings = self.cluster.worker_settings
        command = [
            sys.executable,
            "-m",
            "engine.cli",
            "worker",
            "--data-dir",
            str(self.data_dir),
            "--keys-dir",
            str(self.cluster.api.data_dir),
            "--lease-seconds",
            str(settings["lease"]),
            "--max-attempts",
            str(settings["attempts"]),
            "--log-format",
            "json",
            # The tests' jobs read and write under the temporary folder and reach their
            # servers on loopback: both refused by default.
            "--local-root",
            tempfile.gettempdir(),
            "--allow-network",
            "127.0.0.0/8",
            *self.args,
        ]
        if not any(a.startswith("--queues") for a in self.args):
            command += ["--queues", "cpu"]
        environment = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            VIPE_DATABASE_URL=self.cluster.database_url,
            **self.cluster.broker.env(),
            **self.env,
        )
        environment.pop("VIPE_STORE_KEY", None)  # the key comes from --keys-dir
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO
            )
        if wait:
            self.wait_registered()
        return self

    def wait_registered(self, timeout: float = 60) -> str:
        """The worker's owner id, once its row is in the store (it consumes right after)."""
        assert self.process is not None
        pid = self.process.pid

        def registered() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited: {self.tail()}")
            for row in self.cluster.store.workers():
                if row.pid == pid:
                    return row.id
            return None

        self.owner = wait_for(registered, timeout, 0.2)
        self.wait_consuming()
        return self.owner

    def wait_consuming(self, timeout: float = 30) -> None:
        """Until the worker logs that its consumer is ready."""

        def consuming() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited: {self.tail()}")
            return f"worker {self.owner}: consuming" in self.tail(20000)

        wait_for(consuming, timeout, 0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def lines(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines (others, e.g. a traceback, skipped)."""
        result = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                result.append(json.loads(line))
        return result


# ----------------------------------------------------------------------------- cluster


class Cluster:
    """The API with a Celery queue, and worker processes, on one store and broker."""

    def __init__(
        self,
        root: Path,
        broker: Broker,
        database_url: str,
        issuer: TokenIssuer,
        *,
        lease: float = 4.0,
        attempts: int = 2,
        gpu_wait_seconds: float = 0.0,
    ):
        self.root = root
        self.broker = broker
        self.database_url = database_url
        self.issuer = issuer
        self.worker_settings = {"lease": lease, "attempts": attempts}
        self.workers: list[WorkerProcess] = []

        def queue_factory(service):
            return CeleryQueue(
                service,
                broker.url,
                prefix=broker.prefix,
                gpu_wait_seconds=gpu_wait_seconds,
                transport_options=broker.transport_options,
            )

        self.api = ApiServer(
            root / "api",
            issuer.auth_settings(),
            workers=0,
            database_url=database_url,
            lease_seconds=lease,
            max_attempts=attempts,
            queue_factory=queue_factory,
        )

    def __enter__(self) -> Cluster:
        self.api.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.__exit__(*exc)

    @property
    def store(self):
        return self.api.store

    def worker(self, name: str, *args: str, start: bool = True, **options: Any) -> WorkerProcess:
        process = WorkerProcess(self, name, *args, **options)
        self.workers.append(process)
        if start:
            process.start()
        return process

    def client(self, tenant: str = "tenant-a"):
        return self.api.client(f"Bearer {self.issuer.token(tenant)}")


def encodes(view: dict[str, Any]) -> int:
    """How many times a job started encoding (VideoEncodingStarted events, all attempts)."""
    return sum(1 for e in view["Events"] if e["MessageType"] == "VideoEncodingStarted")


def wait_state(client, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        view = job_state(client, job_id)
        return view if view["State"] in states else None

    return wait_for(reached, timeout, 0.1)


def wait_encoding(client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Until the job reports encoding progress (it is in the middle of its encode)."""

    def encoding() -> dict[str, Any] | None:
        view = job_state(client, job_id)
        assert view["State"] not in ("Succeeded", "Failed", "Cancelled"), view["State"]
        progress = [e for e in view["Events"] if e["MessageType"] == "EncodingProgress"]
        return view if progress and view["State"] == "Running" else None

    return wait_for(encoding, timeout, 0.1)


def cluster_sources(media_dir: Path) -> dict[str, Path]:
    """`tiny`: 2 s, under a second of work; `long`: 20 s, seconds of encoding (for kills);
    `heavy`: 30 s of 320x180, seconds of encoding even on a quiet machine (for SIGTERM's
    short grace)."""
    folders = {
        "tiny": media_dir / "cluster-tiny",
        "long": media_dir / "cluster-long",
        "heavy": media_dir / "cluster-heavy",
    }
    for name, seconds, width, height in (
        ("tiny", 2, 160, 90),
        ("long", 20, 160, 90),
        ("heavy", 30, 320, 180),
    ):
        clip = folders[name] / "clip.mp4"
        if not clip.exists():
            make_media(clip, duration=seconds, width=width, height=height, audio=[])
    return folders


def quick_job(source: Path, output: Path, **fields) -> dict:
    job = tiny_job(source, output, **fields)
    job["MediaMappings"]["FailOnNoAudioTracks"] = False
    return job


def slow_job(source: Path, output: Path) -> dict:
    """Seconds of encoding on 2 cores: two rungs at the Quality preset."""
    return quick_job(
        source,
        output,
        OptimizeFor="Quality",
        VideoRepresentations=[
            {"Width": 160, "Height": 90, "BitrateInKbps": 200},
            {"Width": 160, "Height": 90, "BitrateInKbps": 100},
        ],
    )


def heavy_job(source: Path, output: Path) -> dict:
    """Seconds of encoding even on a quiet machine: the `heavy` source's two rungs at the
    Quality preset."""
    return quick_job(
        source,
        output,
        OptimizeFor="Quality",
        VideoRepresentations=[
            {"Width": 320, "Height": 180, "BitrateInKbps": 400},
            {"Width": 160, "Height": 90, "BitrateInKbps": 100},
        ],
    )


def relative_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def now() -> float:
    return time.monotonic()

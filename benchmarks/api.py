"""`POST /Job` latency: `vipe serve` (a child process, `--workers 0`: it accepts and stores, runs
nothing) answers 20 concurrent HTTPS clients on loopback; p50 and p99 of the request latency.
Target: p99 < 50 ms, p50 < 15 ms. Two modes, each against a fresh server:

- saturated closed loop: each client submits its next job as soon as its last is answered, so
  the server is never idle and latency is about clients / throughput (queueing, not service
  time); its jobs/s (in `extra`) is the server's capacity on this machine.
- paced open loop: the clients together submit PACED_RATE jobs/s on a fixed schedule (job n
  of the run is due at start + n / rate, client n % 20 sends it), well inside capacity; a job's
  latency runs from its scheduled time, not from when it was actually sent, so a slow answer
  that delays the next send counts against that send too (no coordinated omission; uvloop's
  timers may send up to ~1 ms late, which counts too). This is how a latency SLO is stated.

The clients are cheap so that they do not take the server's CPU (the machine has 2 cores):
20 keep-alive TLS connections driven by one asyncio (uvloop) loop in this process, the request
bytes built before the clock starts, the answer read by Content-Length. Each client waits for
its answer before its next request, as an HTTP/1.1 client on one connection must.

Each mode gives two rows: "vipe s" the p99 against the 50 ms target and the p50 against the
15 ms target (ratio = measured / target); throughput, the server's and the clients' CPU per
job are in `extra`. The server's peak memory is its own VmHWM, read from /proc before it
stops.

`python -m benchmarks.api [--quick]` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvloop

from benchmarks.common import Result

CLIENTS = 20
PACED_RATE = 100  # jobs/s of the paced row, all clients together: well inside capacity
TARGET_P99_S = 0.050
TARGET_P50_S = 0.015
ISSUER, AUDIENCE, TENANT = "https://id.vipe.bench/", "vipe-bench", "tenant-bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _token(folder: Path) -> tuple[Path, str]:
    """A public key file for the server and a bearer token for the benchmark's tenant."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = folder / "jwt-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = datetime.datetime.now(datetime.UTC)
    claims = {
        "sub": "bench", "iat": now, "exp": now + datetime.timedelta(hours=1), "aud": AUDIENCE,
        "iss": ISSUER, "tenantId": TENANT, "permissions": ["Videos: Encode"],
    }  # fmt: skip
    return public, jwt.encode(claims, key, algorithm="RS256")


def _job(folder: Path, number: int) -> dict:
    return {
        "ExternalId": f"bench-{number}",
        "ContentAcquisition": {"Provider": "Local", "UriPath": (folder / "in").as_uri() + "/"},
        "MediaMappings": {"VideoStreamExpression": r"^.*\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": ["Cmaf"], "OptimizeFor": "Speed", "HardwareAcceleration": "None",
            "VideoRepresentations": [{"Width": 160, "Height": 90, "BitrateInKbps": 200}],
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": (folder / "out").as_uri() + "/"},
    }  # fmt: skip


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class _Server:
    """A running `vipe serve` of the benchmark: its process and what a client needs."""

    process: subprocess.Popen
    port: int
    context: ssl.SSLContext
    token: str
    folder: Path


@contextlib.contextmanager
def _serve(python: tuple[str, ...] = ()) -> Iterator[_Server]:
    """Start `vipe serve` in a fresh data folder, wait until it answers, stop it at the end.
    `python`: interpreter options for the server (e.g. `-m cProfile -o FILE`)."""
    import httpx

    from engine.service.tenants import TenantRegistry

    with tempfile.TemporaryDirectory(prefix="vipe-bench-api-") as name:
        folder = Path(name)
        data = folder / "data"
        data.mkdir()
        TenantRegistry(data).add(TENANT)
        public, token = _token(folder)
        port = _free_port()
        command = [
            sys.executable, *python, "-m", "engine.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data), "--workers", "0",
            "--jwt-public-key", str(public), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
            "--local-root", str(folder), "--max-queued-per-tenant", "1000000",
        ]  # fmt: skip
        with (folder / "serve.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                cert = data / "tls-certificate.pem"
                deadline = time.monotonic() + 60
                while True:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"vipe serve did not start: {_tail(folder)}")
                    if cert.exists():
                        try:
                            context = ssl.create_default_context(cafile=str(cert))
                            url = f"https://127.0.0.1:{port}/health"
                            if httpx.get(url, verify=context).status_code == 200:
                                break
                        except (httpx.HTTPError, ssl.SSLError):
                            pass
                    time.sleep(0.1)
                yield _Server(process, port, context, token, folder)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


def _post_job(server: _Server, number: int) -> bytes:
    """The whole HTTP/1.1 request that submits job `number`."""
    body = json.dumps(_job(server.folder, number)).encode()
    head = (
        f"POST /Job HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.token}\r\nAccept: application/json\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read its whole answer; the status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _clients(
    server: _Server, per_client: int, rate: float | None
) -> tuple[list[float], list[int], float]:
    """CLIENTS connections, each submitting `per_client` jobs: back to back (`rate` None) or
    job n of the run due at start + n / rate. Latencies (s), failed statuses, wall time."""
    health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    connections = [
        await asyncio.open_connection("127.0.0.1", server.port, ssl=server.context)
        for _ in range(CLIENTS)
    ]
    for reader, writer in connections:  # TLS handshakes and first answers before the clock
        await _exchange(reader, writer, health)
    requests = [[_post_job(server, c * per_client + k) for k in range(per_client)]
                for c in range(CLIENTS)]  # fmt: skip
    latencies: list[float] = []
    failures: list[int] = []
    clock = time.perf_counter  # not loop.time(): uvloop's counts whole milliseconds

    async def client(index: int) -> None:
        reader, writer = connections[index]
        for number, request in enumerate(requests[index]):
            if rate is None:
                began = clock()
            else:  # the schedule, not the moment it could be sent
                began = start + (number * CLIENTS + index) / rate
                await asyncio.sleep(began - clock())
            status = await _exchange(reader, writer, request)
            latencies.append(clock() - began)
            if status != 201:
                failures.append(status)

    start = clock()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    wall = clock() - start
    for _, writer in connections:
        writer.close()
    return latencies, failures, wall


def measure_submissions(
    per_client: int, rate: float | None = None, python: tuple[str, ...] = ()
) -> dict:
    """Start `vipe serve`, submit CLIENTS x per_client jobs (back to back, or `rate` jobs/s in
    all on a fixed schedule), stop it. `python`: interpreter options for the server."""
    with _serve(python) as server:
        pid = server.process.pid
        server_before, client_before = _cpu_s(pid), time.process_time()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            latencies, failures, wall = runner.run(_clients(server, per_client, rate))
        client_cpu = time.process_time() - client_before
        server_cpu = _cpu_s(pid) - server_before
        peak = _peak_mb(pid)
    if failures:
        raise RuntimeError(f"POST /Job answered {sorted(set(failures))} to {len(failures)}")
    ordered = sorted(latencies)
    return {
        "mode": "saturated closed loop" if rate is None else f"paced open loop, {rate:g} jobs/s",
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[max(0, round(0.99 * len(ordered)) - 1)] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "jobs_per_s": round(len(ordered) / wall, 1),
        "submissions": len(ordered),
        "clients": CLIENTS,
        "server_peak_mb": round(peak, 1),
        # the server's CPU per accepted job: saturated, latency is about clients x this
        # (the server is busy all along) plus the clients' own share
        "server_cpu_ms_per_job": round(server_cpu / len(ordered) * 1000, 2),
        # this process's (the 20 clients') CPU per job, which the server cannot use
        "client_cpu_ms_per_job": round(client_cpu / len(ordered) * 1000, 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(folder: Path) -> str:
    path = folder / "serve.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _rows(title: str, figures: dict) -> list[Result]:
    """A p99 row and a p50 row, each against its target. Names hold no measured figure, so
    a later run replaces them in latest.json; jobs/s and the CPU figures are in `extra`."""
    return [
        Result(
            name=f"POST /Job {stat}, {title}, {CLIENTS} clients, {figures['submissions']} jobs",
            vipe_s=round(figures[f"{stat}_ms"] / 1000, 4),
            anchor=f"target {stat}",
            anchor_s=target,
            ratio=round(figures[f"{stat}_ms"] / 1000 / target, 3),
            vipe_peak_mb=figures["server_peak_mb"],
            anchor_peak_mb=0.0,
            vipe_cpu_s=0.0,
            anchor_cpu_s=0.0,
            runs=1,
            extra=figures,
        )
        for stat, target in (("p99", TARGET_P99_S), ("p50", TARGET_P50_S))
    ]


def run(quick: bool = False) -> list[Result]:
    saturated = measure_submissions(15 if quick else 50)
    paced = measure_submissions(15 if quick else 30, rate=PACED_RATE)
    return [
        *_rows("saturated closed loop (back to back)", saturated),
        *_rows(f"paced open loop ({PACED_RATE} jobs/s, from scheduled send)", paced),
    ]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)

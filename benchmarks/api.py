"""`POST /Job` latency: `vipe serve` (a child process, `--workers 0`: it accepts and stores, runs
nothing) answers 20 concurrent HTTPS clients on loopback, each submitting jobs back to back;
p50 and p99 of the request latency as each client sees it. Target: p99 < 50 ms, p50 < 15 ms.

The row's "vipe s" is the p99 and its anchor the 50 ms target (ratio = p99 / 50 ms); p50,
throughput and the count are in `extra`. The server's peak memory is its own VmHWM, read from
/proc before it stops.

`python -m benchmarks.api [--quick]` runs it alone.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Result

CLIENTS = 20
TARGET_P99_S = 0.050
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


def measure_submissions(per_client: int, python: tuple[str, ...] = ()) -> dict:
    """Start `vipe serve`, submit CLIENTS x per_client jobs concurrently, stop it. `python`:
    interpreter options for the server (e.g. `-m cProfile -o FILE` to profile the server)."""
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
        log = (folder / "serve.log").open("wb")
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"
        cert = data / "tls-certificate.pem"
        try:
            deadline = time.monotonic() + 60
            context: ssl.SSLContext | None = None
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vipe serve did not start: {_tail(folder)}")
                if cert.exists():
                    try:
                        context = ssl.create_default_context(cafile=str(cert))
                        if httpx.get(f"{url}/health", verify=context).status_code == 200:
                            break
                    except (httpx.HTTPError, ssl.SSLError):
                        pass
                time.sleep(0.1)
            latencies: list[float] = []
            failures: list[int] = []
            lock = threading.Lock()
            barrier = threading.Barrier(CLIENTS)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

            def client(index: int) -> None:
                with httpx.Client(base_url=url, verify=context, headers=headers) as http:
                    http.get("/health")  # TLS handshake before the clock starts
                    barrier.wait()
                    for number in range(per_client):
                        body = _job(folder, index * per_client + number)
                        began = time.perf_counter()
                        answer = http.post("/Job", json=body, timeout=60)
                        elapsed = time.perf_counter() - began
                        with lock:
                            latencies.append(elapsed)
                            if answer.status_code != 201:
                                failures.append(answer.status_code)

            cpu_before = _cpu_s(server.pid)
            began = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
            peak = _peak_mb(server.pid)
            server_cpu = _cpu_s(server.pid) - cpu_before
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    if failures:
        raise RuntimeError(f"POST /Job answered {sorted(set(failures))} to {len(failures)}")
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[max(0, round(0.99 * len(ordered)) - 1)] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "jobs_per_s": round(len(ordered) / wall, 1),
        "submissions": len(ordered),
        "clients": CLIENTS,
        "server_peak_mb": round(peak, 1),
        # the server's CPU per accepted job: with 20 clients on 2 cores, latency is about
        # clients x this (the server is busy all along) plus the clients' own share
        "server_cpu_ms_per_job": round(server_cpu / len(ordered) * 1000, 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(folder: Path) -> str:
    path = folder / "serve.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def run(quick: bool = False) -> Result:
    figures = measure_submissions(10 if quick else 15)
    p99 = figures["p99_ms"] / 1000
    return Result(
        name=f"POST /Job p99 (p50 {figures['p50_ms']:.0f} ms), {CLIENTS} clients, "
        f"{figures['submissions']} jobs",
        vipe_s=round(p99, 4),
        anchor="target p99",
        anchor_s=TARGET_P99_S,
        ratio=round(p99 / TARGET_P99_S, 3),
        vipe_peak_mb=figures["server_peak_mb"],
        anchor_peak_mb=0.0,
        vipe_cpu_s=0.0,
        anchor_cpu_s=0.0,
        runs=1,
        extra=figures,
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))

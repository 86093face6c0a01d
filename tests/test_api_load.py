"""A small, bounded load test on loopback: 200 `POST /Job` from 20 concurrent clients.

The server runs with `--workers 0` (accepts and stores, runs nothing), so the test measures the
API and the store, not encoding. Every submission must be answered 201 and be in the store.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from api_helpers import ApiServer, TokenIssuer, tiny_job

CLIENTS = 20
PER_CLIENT = 10


@pytest.mark.slow
def test_200_submissions_from_20_clients(tmp_path, capsys):
    issuer = TokenIssuer(tmp_path)
    token = issuer.token("tenant-load")
    job = tiny_job(tmp_path / "in", tmp_path / "out")
    latencies: list[float] = []
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    # One tenant's 200 jobs: the per-tenant queued limit (default 100) is not what is measured.
    settings = issuer.auth_settings()
    with ApiServer(tmp_path / "data", settings, workers=0, max_queued_per_tenant=None) as server:

        def client_loop(index: int) -> None:
            with server.client(f"Bearer {token}") as client:
                client.get("/health")  # TLS handshake before the clock starts
                start.wait()
                for number in range(PER_CLIENT):
                    body = dict(job, ExternalId=f"load-{index}-{number}")
                    began = time.perf_counter()
                    answer = client.post("/Job", json=body)
                    elapsed = time.perf_counter() - began
                    job_id = answer.json().get("JobId", "") if answer.status_code == 201 else ""
                    with lock:
                        latencies.append(elapsed)
                        answers.append((answer.status_code, job_id))

        began = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wall = time.perf_counter() - began

        statuses = [status for status, _ in answers]
        job_ids = {job_id for _, job_id in answers}
        assert statuses == [201] * (CLIENTS * PER_CLIENT)
        assert len(job_ids) == CLIENTS * PER_CLIENT
        store = server.store
        assert store.count_jobs("tenant-load") == CLIENTS * PER_CLIENT
        assert all(store.get_job(job_id, "tenant-load") for job_id in job_ids)  # none lost
        assert store.count_by_state()["Queued"] == CLIENTS * PER_CLIENT

    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[max(0, round(0.99 * len(ordered)) - 1)]
    with capsys.disabled():
        print(
            f"\nPOST /Job x{len(ordered)} from {CLIENTS} clients: p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, {len(ordered) / wall:.0f} jobs/s"
        )

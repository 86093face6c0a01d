"""The queued-limit count of `POST /Job` (a tenant's Queued jobs, counted in the storing
transaction) reads only the (tenant_id, state) index of migration 0006, not each Queued job's
row: with a high limit it runs once per stored batch over every Queued job of the tenant."""

from __future__ import annotations

import os

from engine.service.store import JobSealer, Store, _queued_count


def test_queued_count_reads_only_the_tenant_state_index(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'vipe.db'}", JobSealer(os.urandom(32)))
    store.migrate()
    try:
        with store.reading() as session:
            sqlite = session.connection().connection.driver_connection
            assert sqlite is not None
            sent: list[str] = []  # the statements as SQLite runs them, values filled in
            sqlite.set_trace_callback(sent.append)
            try:
                assert _queued_count(session, "tenant-a") == 0
            finally:
                sqlite.set_trace_callback(None)
            (count,) = [s for s in sent if "count(" in s.lower()]
            plan = [row[-1] for row in sqlite.execute(f"EXPLAIN QUERY PLAN {count}")]
        assert any("COVERING INDEX ix_jobs_tenant_state" in step for step in plan), plan
    finally:
        store.close()

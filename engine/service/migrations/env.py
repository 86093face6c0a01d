"""Alembic environment: runs on the connection that `migrations.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from engine.service.store import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only programmatic use is supported
    raise RuntimeError("run the migrations through engine.service.migrations.upgrade(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
)
with context.begin_transaction():
    context.run_migrations()

"""Chunk plans: the fingerprint of the chunk plan a job's chunk rows belong to, so that a job
whose coordinator died keeps the chunks done under the same plan (engine.service.cluster.chunks).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("plan", sa.String(64)))
    # The workers' sweep looks for the rows that still have a plan (few: the rest forgot it).
    op.create_index("ix_chunks_plan", "chunks", ["plan"])


def downgrade() -> None:
    op.drop_index("ix_chunks_plan", table_name="chunks")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("plan")

"""Jobs by tenant and state: the queued-limit count of `POST /Job` (a tenant's Queued jobs,
counted in the storing transaction) reads only the index, not every Queued job's row. It
replaces the index on the tenant alone, which is its first column.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_state", "jobs", ["tenant_id", "state"])
    op.drop_index("ix_jobs_tenant_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_tenant_id", "jobs", ["tenant_id"])
    op.drop_index("ix_jobs_tenant_state", table_name="jobs")

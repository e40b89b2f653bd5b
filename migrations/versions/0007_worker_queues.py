"""Each worker queue remembers until when it had a live worker, so jobs stranded in a dead class can be re-routed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_queues",
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("live_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_worker_queues")),
    )


def downgrade() -> None:
    op.drop_table("worker_queues")

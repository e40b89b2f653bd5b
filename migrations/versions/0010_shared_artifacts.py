"""Shared dense artifacts have a row: when each was stored and last read or written, so unused ones can expire.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shared_artifacts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(100), nullable=True),
        sa.Column("total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_by_job", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reads", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_shared_artifacts")),
    )
    op.create_index(op.f("ix_shared_artifacts_last_used_at"), "shared_artifacts", ["last_used_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_shared_artifacts_last_used_at"), table_name="shared_artifacts")
    op.drop_table("shared_artifacts")

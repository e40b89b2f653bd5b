"""Job kinds: `kind` (prune | sweep); method and sparsity are null for sweeps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="prune"))
        batch.alter_column("method", existing_type=sa.String(50), nullable=True)
        batch.alter_column("sparsity", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # sweeps have no single method/sparsity and cannot be kept in the older schema
    op.execute("DELETE FROM jobs WHERE kind <> 'prune'")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("sparsity", existing_type=sa.Float(), nullable=False)
        batch.alter_column("method", existing_type=sa.String(50), nullable=False)
        batch.drop_column("kind")

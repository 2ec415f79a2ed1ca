"""harvest run owner: the host and pid of the process running a harvest, so a killed one is told apart

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('harvest_runs', sa.Column('host', sa.String(length=255), nullable=True))
    op.add_column('harvest_runs', sa.Column('pid', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('harvest_runs') as batch:
        batch.drop_column('pid')
        batch.drop_column('host')

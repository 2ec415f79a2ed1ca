"""ordered json: PostgreSQL columns from jsonb to json, which keeps objects' key order

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 06:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# every JSON column; on SQLite they are JSON text already
COLUMNS = {
    "datasets": ("source",), "harvest_runs": ("params",), "routing_policies": ("params",),
    "tasks": ("messages", "tools", "ground_truth"), "model_versions": ("config", "metrics"),
    "request_logs": ("request", "response", "detail"), "samples": ("trajectory", "tool_calls"),
    "dataset_items": ("messages", "tools"), "engines": ("config",), "evaluations": ("per_category", "details"),
}


def _convert(to: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE {to} USING "{column}"::text::{to}')


def upgrade() -> None:
    # rows written before keep the key order jsonb gave them; rows written from now on keep their own
    _convert("json")


def downgrade() -> None:
    _convert("jsonb")

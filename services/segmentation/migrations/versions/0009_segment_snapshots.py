"""segmentation: daily snapshots of each merchant's segment counts, for trends

Revision ID: seg_0009
Revises: seg_0008
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0009"
down_revision = "seg_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_snapshots",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("taken_at", UTCDateTime, nullable=False),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
        sa.Column("repeat_buyers", sa.BigInteger, nullable=False),
        sa.Column("tiers", sa.Text, nullable=False),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("cells", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_snapshots")

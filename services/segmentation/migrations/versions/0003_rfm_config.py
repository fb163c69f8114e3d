"""segmentation: versioned RFM configuration and computed statistics

Revision ID: seg_0003
Revises: seg_0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0003"
down_revision = "seg_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rfm_configs",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "rfm_stats",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("computed_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rfm_stats")
    op.drop_table("rfm_configs")

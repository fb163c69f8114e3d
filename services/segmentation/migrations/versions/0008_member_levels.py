"""segmentation: member levels from loyalty (level.changed), for audiences

Revision ID: seg_0008
Revises: seg_0007
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0008"
down_revision = "seg_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_levels",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("level", sa.String(64), nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_member_levels_merchant_level", "member_levels", ["merchant_id", "level"])


def downgrade() -> None:
    op.drop_table("member_levels")

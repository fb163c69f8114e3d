"""segmentation: merchants' custom tag rules

Revision ID: seg_0006
Revises: seg_0005
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0006"
down_revision = "seg_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tag_rules",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("filter", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tag_rules")

"""segmentation: customer profiles and saved audiences

Revision ID: seg_0005
Revises: seg_0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0005"
down_revision = "seg_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("region", sa.String(128), nullable=True),
        sa.Column("birthday", sa.String(10), nullable=True),
        sa.Column("registered_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_profiles_merchant_region", "profiles", ["merchant_id", "region"])
    op.create_table(
        "audiences",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("audience_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("filter", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audiences")
    op.drop_table("profiles")

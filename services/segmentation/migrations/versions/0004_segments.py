"""segmentation: stored segments, tags and re-scoring jobs

Revision ID: seg_0004
Revises: seg_0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0004"
down_revision = "seg_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("r_level", sa.Integer, nullable=True),
        sa.Column("f_level", sa.Integer, nullable=True),
        sa.Column("m_level", sa.Integer, nullable=True),
        sa.Column("cell", sa.String(8), nullable=True),
        sa.Column("tier", sa.String(1), nullable=True),
        sa.Column("rfm_class", sa.String(32), nullable=True),
        sa.Column("frequency", sa.Integer, nullable=True),
        sa.Column("monetary_fen", sa.BigInteger, nullable=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("next_change_at", UTCDateTime, nullable=True),
        sa.Column("scored_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_segments_merchant_tier", "segments", ["merchant_id", "tier"])
    op.create_index("ix_segments_merchant_cell", "segments", ["merchant_id", "cell"])
    op.create_index("ix_segments_merchant_class", "segments", ["merchant_id", "rfm_class"])
    op.create_index("ix_segments_next_change_at", "segments", ["next_change_at"])
    op.create_table(
        "customer_tags",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("tag", sa.String(160), primary_key=True),
    )
    op.create_index("ix_customer_tags_merchant_tag", "customer_tags", ["merchant_id", "tag"])
    op.create_table(
        "rescore_jobs",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("config_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("changed", sa.Integer, nullable=False),
        sa.Column("cursor", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_rescore_jobs_merchant_id", "rescore_jobs", ["merchant_id"])
    op.create_index("ix_rescore_jobs_status", "rescore_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("rescore_jobs")
    op.drop_table("customer_tags")
    op.drop_table("segments")

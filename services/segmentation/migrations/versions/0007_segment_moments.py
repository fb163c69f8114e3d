"""segmentation: what moves a segment with time, kept apart; re-score jobs that only re-score

Revision ID: seg_0007
Revises: seg_0006
Create Date: 2026-11-24

`next_change_at` stays the sweep's key. `tags_change_at` (a tag's window) and
`period_change_at` (an order leaving the F/M period) are kept beside it, so that a configuration
change that only moves boundaries, tiers or the class split can re-score in SQL (the recency
moment is recomputed there). Existing rows take next_change_at for both: an early moment only
means a full re-score of that customer at that moment.
"""

import sqlalchemy as sa
from alembic import op

from shared.db import PG_DAY_START_PLUS, UTCDateTime

revision = "seg_0007"
down_revision = "seg_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segments") as t:
        t.add_column(sa.Column("tags_change_at", UTCDateTime, nullable=True))
        t.add_column(sa.Column("period_change_at", UTCDateTime, nullable=True))
    op.execute("UPDATE segments SET tags_change_at = next_change_at, period_change_at = next_change_at")
    # Every re-score rewrites tier, cell and class; these indexes cost more there than they save
    # in the audience queries (a tier or class holds a large share of a merchant's customers).
    for name in ("ix_segments_merchant_tier", "ix_segments_merchant_cell", "ix_segments_merchant_class"):
        op.drop_index(name, table_name="segments")
    with op.batch_alter_table("rescore_jobs") as t:
        t.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default=sa.text("'full'")))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_DAY_START_PLUS)


def downgrade() -> None:
    op.create_index("ix_segments_merchant_tier", "segments", ["merchant_id", "tier"])
    op.create_index("ix_segments_merchant_cell", "segments", ["merchant_id", "cell"])
    op.create_index("ix_segments_merchant_class", "segments", ["merchant_id", "rfm_class"])
    with op.batch_alter_table("rescore_jobs") as t:
        t.drop_column("mode")
    with op.batch_alter_table("segments") as t:
        t.drop_column("period_change_at")
        t.drop_column("tags_change_at")

"""notifications: messages listed by rule (GET /v1/notifications/messages?rule_id=, the console's
playbooks), newest first

Revision ID: not_0003
Revises: not_0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "not_0003"
down_revision = "not_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_rule", "messages", ["merchant_id", "rule_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_rule", table_name="messages")

"""notifications: contacts, consents, WeChat credits, channels, policy, templates, rules,
campaigns, messages and their log

Revision ID: not_0002
Revises: not_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import BigId, UTCDateTime

revision = "not_0002"
down_revision = "not_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("phone", sa.String(32), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("openid", sa.String(128), nullable=True),
        sa.Column("birthday", sa.String(5), nullable=True),
        sa.Column("locale", sa.String(8), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_contacts_birthday", "contacts", ["merchant_id", "birthday"])
    op.create_index("ix_contacts_phone", "contacts", ["merchant_id", "phone"])
    op.create_table(
        "consents",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "wechat_credits",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("template_id", sa.String(128), primary_key=True),
        sa.Column("credits", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("long_term", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "channel_configs",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("rate_per_s", sa.Integer, nullable=False),
        sa.Column("burst", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notify_policies",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "templates",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("parts", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notify_rules",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_notify_rules_trigger", "notify_rules", ["merchant_id", "trigger"])
    op.create_table(
        "campaigns",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scheduled_at", UTCDateTime, nullable=False),
        sa.Column("cursor", sa.String(256), nullable=True),
        sa.Column("audience_done", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("enqueued", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_campaigns_due", "campaigns", ["status", "scheduled_at"])
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(36), primary_key=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("dedupe_key", sa.String(300), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("trigger_key", sa.String(200), nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("template_key", sa.String(64), nullable=False),
        sa.Column("template_version", sa.Integer, nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("provider", sa.String(32), nullable=True),
        sa.Column("provider_id", sa.String(128), nullable=True),
        sa.Column("recipient", sa.String(320), nullable=True),
        sa.Column("rendered", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=True),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("merchant_id", "dedupe_key", name="uq_messages_dedupe"),
    )
    op.create_index("ix_messages_campaign", "messages", ["campaign_id", "status"])
    op.create_index("ix_messages_customer", "messages", ["merchant_id", "customer_id", "created_at"])
    op.create_index(
        "ix_messages_due",
        "messages",
        ["due_at"],
        postgresql_where=sa.text("status IN ('queued', 'held')"),
        sqlite_where=sa.text("status IN ('queued', 'held')"),
    )
    op.create_index(
        "ix_messages_lease",
        "messages",
        ["lease_until"],
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )
    op.create_index("ix_messages_provider_id", "messages", ["provider", "provider_id"])
    op.create_table(
        "message_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_message_log_message", "message_log", ["message_id", "id"])


def downgrade() -> None:
    for table in (
        "message_log",
        "messages",
        "campaigns",
        "notify_rules",
        "templates",
        "notify_policies",
        "channel_configs",
        "wechat_credits",
        "consents",
        "contacts",
    ):
        op.drop_table(table)

"""Notifications' tables (SQLAlchemy Core; the domain stays free of the ORM).

Every table is keyed by ``merchant_id``. ``messages`` is the heart: one row per (trigger,
customer, template) — the unique ``dedupe_key`` makes a redelivered trigger harmless — carrying
the message from ``queued`` (or ``held`` until quiet hours end) through ``sending`` to ``sent``,
``delivered``, ``failed``, ``skipped`` (a rule that protects the customer said no), ``dead``
(the provider refused it ``max_attempts`` times) or ``cancelled``/``paused`` (its campaign).
``message_log`` keeps each step with its reason: the explain API and the funnel read it.

The ``contacts`` row of a customer is what the dispatcher locks before counting that customer's
marketing sends, so two dispatchers cannot both squeeze one more message under a cap."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text, UniqueConstraint, text

from shared.db import BigId, UTCDateTime, new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

# What the shop told us about a customer (customer.registered / customer.updated), latest wins.
contacts = Table(
    "contacts",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("phone", String(32), nullable=True),  # E.164
    Column("email", String(320), nullable=True),
    Column("openid", String(128), nullable=True),
    Column("birthday", String(5), nullable=True),  # MM-DD
    Column("locale", String(8), nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_contacts_phone", "merchant_id", "phone"),
    Index("ix_contacts_birthday", "merchant_id", "birthday"),
)

# Consent per channel: granted or denied, with where it came from (event, api, sms_reply,
# unsubscribe_link, provider). No row: unknown.
consents = Table(
    "consents",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("state", String(8), nullable=False),
    Column("source", String(32), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# WeChat one-time subscription credits per template (wechat.subscription.granted adds, a send
# spends one); long_term: a long-term subscription, never spent.
wechat_credits = Table(
    "wechat_credits",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("template_id", String(128), primary_key=True),
    Column("credits", Integer, nullable=False, server_default=text("0")),
    Column("long_term", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The merchant's provider per channel kind (no row: the console channel records the message).
channel_configs = Table(
    "channel_configs",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("config", Text, nullable=False),  # JSON, validated by the provider's config model
    Column("rate_per_s", Integer, nullable=False),
    Column("burst", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Caps, quiet hours, consent policy and retries (JSON of service_layer.policies.Policy); no row:
# the defaults.
policies = Table(
    "notify_policies",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("body", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Templates, versioned: a save with new content adds a version; messages name the version they
# were rendered from.
templates = Table(
    "templates",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("locale", String(8), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("parts", Text, nullable=False),  # JSON
    Column("fingerprint", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Which trigger sends what: conditions, the channels in order of preference (each with its
# template key), purpose and value.
rules = Table(
    "notify_rules",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("rule_id", String(64), primary_key=True),
    Column("trigger", String(64), nullable=False),
    Column("body", Text, nullable=False),  # JSON of service_layer.rules.NotifyRule
    Column("active", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_notify_rules_trigger", "merchant_id", "trigger"),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("campaign_id", String(64), primary_key=True),
    Column("body", Text, nullable=False),  # JSON of service_layer.campaigns.CampaignSpec
    Column("status", String(16), nullable=False),  # scheduled, running, paused, cancelled, done
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("cursor", String(256), nullable=True),  # the audience's keyset position
    Column("audience_done", Boolean, nullable=False, server_default=text("false")),
    Column("enqueued", BigInteger, nullable=False, server_default=text("0")),
    Column("error", Text, nullable=True),  # why a walk failed (the audience went away…)
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_campaigns_due", "status", "scheduled_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("merchant_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("dedupe_key", String(300), nullable=False),  # trigger key | customer | template key
    Column("trigger", String(64), nullable=False),
    Column("trigger_key", String(200), nullable=False),  # the event id, campaign id or clock key
    Column("rule_id", String(64), nullable=True),
    Column("campaign_id", String(64), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("template_key", String(64), nullable=False),
    Column("template_version", Integer, nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("value", BigInteger, nullable=False, server_default=text("0")),
    Column("context", Text, nullable=False),  # JSON: the variables the template renders from
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("due_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("provider", String(32), nullable=True),
    Column("provider_id", String(128), nullable=True),
    Column("recipient", String(320), nullable=True),
    Column("rendered", Text, nullable=True),  # JSON of what was sent
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("merchant_id", "dedupe_key", name="uq_messages_dedupe"),
    # The dispatcher's queue: due messages, oldest first (a partial index holds only the waiting).
    Index(
        "ix_messages_due",
        "due_at",
        postgresql_where=text("status IN ('queued', 'held')"),
        sqlite_where=text("status IN ('queued', 'held')"),
    ),
    Index(
        "ix_messages_lease",
        "lease_until",
        postgresql_where=text("status = 'sending'"),
        sqlite_where=text("status = 'sending'"),
    ),
    Index("ix_messages_customer", "merchant_id", "customer_id", "created_at"),
    Index("ix_messages_rule", "merchant_id", "rule_id", "created_at"),  # a rule's (a playbook's) messages
    Index("ix_messages_campaign", "campaign_id", "status"),
    Index("ix_messages_provider_id", "provider", "provider_id"),
)

# Every step of a message, with its reason: explain and the funnel.
message_log = Table(
    "message_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("merchant_id", String(128), nullable=False),
    Column("message_id", String(36), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("detail", Text, nullable=True),  # JSON
    Index("ix_message_log_message", "message_id", "id"),
)

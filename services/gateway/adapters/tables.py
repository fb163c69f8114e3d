"""The gateway's tables: the authoritative merchants and keys, its outbox, and an inbox used as
the ingestion dedupe log (each accepted event_id, once)."""

from shared.db import new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

"""Loyalty's tables. So far only the messaging tables every service has (outbox, inbox, its
copy of the merchants); the domain tables come with the loyalty issue."""

from shared.db import new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

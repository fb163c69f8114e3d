"""Code every Fugou service uses: the event contract, the bus, the outbox/inbox, the database,
settings, logging, metrics and tenancy. Nothing here knows about any one service's domain."""

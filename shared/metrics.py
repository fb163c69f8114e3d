"""Prometheus metrics shared by all services (labelled by service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "fugou_events_consumed_total",
    "Events taken from the bus, by outcome (applied, duplicate, dead_lettered).",
    ["service", "topic", "outcome"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "fugou_consumer_batch_seconds",
    "Time to apply one consumed batch, database commit included.",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_RETRIES = Counter(
    "fugou_consumer_retries_total", "Batches retried after an infrastructure error.", ["service"]
)
OUTBOX_PUBLISHED = Counter("fugou_outbox_published_total", "Outbox messages published.", ["service"])
OUTBOX_PENDING = Gauge("fugou_outbox_pending", "Outbox messages not yet published (last seen).", ["service"])
HTTP_REQUESTS = Counter("fugou_http_requests_total", "HTTP requests.", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "fugou_http_request_seconds",
    "HTTP request latency.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
INGESTED = Counter("fugou_ingested_events_total", "Events posted to /v1/events, by outcome.", ["outcome"])
PROXY_REQUESTS = Counter(
    "fugou_proxy_requests_total",
    "Requests the gateway forwarded to another service, by upstream and status (the upstream's, or "
    "502 unreachable, 503 too many in flight, 504 no answer in time).",
    ["upstream", "status"],
)

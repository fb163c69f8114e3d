"""The gateway: Fugou's edge. It owns merchants and their API keys, and takes shop events over
HTTP (POST /v1/events) for shops that are not on Kafka, publishing them to the shop topics
through its outbox. It has no domain of its own beyond that."""

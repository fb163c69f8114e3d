"""Typed settings, read from FUGOU_* environment variables (and a .env file if present).

Defaults make `make run` work with nothing configured; outside development, the settings that
would be unsafe to leave at their defaults (secrets) are refused at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEV_SECRET = "fugou-development-only"
SERVICES = ("gateway", "segmentation", "coupons", "loyalty", "notifications")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUGOU_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("./data")
    bus: Literal["inprocess", "kafka"] = "inprocess"
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Put in front of every topic and consumer group name, to share one cluster between environments.
    kafka_prefix: str = ""
    # Replication factor of topics the services create when missing (a topics job may create them first).
    kafka_replication_factor: int = Field(1, ge=1)
    # One URL per service; empty means SQLite under data_dir (embedded mode).
    gateway_database_url: str = ""
    segmentation_database_url: str = ""
    coupons_database_url: str = ""
    loyalty_database_url: str = ""
    notifications_database_url: str = ""
    # Secrets.
    api_key_pepper: SecretStr = SecretStr(_DEV_SECRET)
    admin_token: SecretStr = SecretStr(_DEV_SECRET)
    # Services calling each other's admin APIs on a merchant's behalf (X-Fugou-Internal-Token
    # with X-Merchant-Id); never given to merchants.
    internal_token: SecretStr = SecretStr(_DEV_SECRET)
    # Where each service's API answers, as a base URL (http://fugou-segmentation:8000); empty in
    # embedded mode, where every service answers in process. The gateway, the front door of the
    # distributed mode, forwards each service's routes to its URL (a service without one is not
    # forwarded); coupons and notifications also call segmentation's audience API at its URL.
    segmentation_url: str = Field(
        "",
        description=(
            "Base URL of segmentation's API: the gateway forwards segmentation's routes there, and "
            "coupons and notifications call its audience API there. Empty: in process (embedded mode)."
        ),
    )
    coupons_url: str = Field(
        "", description=("Base URL of coupons' API: the gateway forwards coupons' routes there. Empty: not forwarded.")
    )
    loyalty_url: str = Field(
        "",
        description=("Base URL of loyalty's API: the gateway forwards loyalty's routes there. Empty: not forwarded."),
    )
    notifications_url: str = Field(
        "",
        description=(
            "Base URL of notifications' API: the gateway forwards notifications' routes there (unsubscribe "
            "links and provider receipts included). Empty: not forwarded."
        ),
    )
    bootstrap_api_key: SecretStr | None = None
    # Notifications: the public base URL of the API (unsubscribe links in messages), and what
    # happens to a message on a channel the merchant has configured no provider for: recorded by
    # the console channel (the embedded default: `make run` needs no provider) or failed.
    public_url: str = "http://127.0.0.1:8000"
    notify_unconfigured: Literal["console", "fail"] = "console"
    notify_batch: int = Field(1000, ge=1, le=20_000)
    notify_idle_ms: int = Field(200, ge=1)
    notify_workers: int = Field(0, ge=0, le=32)  # concurrent dispatch rounds; 0: 1 on SQLite, 3 on PostgreSQL
    # Messaging knobs.
    consumer_batch: int = Field(2000, ge=1, le=50_000)
    consumer_poll_ms: int = Field(200, ge=1)
    relay_batch: int = Field(2000, ge=1, le=50_000)
    relay_idle_ms: int = Field(100, ge=1)
    log_level: str = "INFO"
    log_json: bool = True
    # Moves the process's clock (shared.clock) by this much: an ISO 8601 duration (P365D, -P365D, PT2H).
    # For tests and demos that need another day; refused in production.
    clock_offset: timedelta = timedelta(0)

    @field_validator("segmentation_url", "coupons_url", "loyalty_url", "notifications_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"want an http:// or https:// base URL (or nothing), not {value!r}")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.env == "production":
            for name in ("api_key_pepper", "admin_token", "internal_token"):
                if getattr(self, name).get_secret_value() == _DEV_SECRET:
                    raise ValueError(f"FUGOU_{name.upper()} must be set in production")
            if self.clock_offset:
                raise ValueError("FUGOU_CLOCK_OFFSET moves the clock; production runs on the real one")
        return self

    def database_url(self, service: str) -> str:
        url = getattr(self, f"{service}_database_url")
        if url:
            return url
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.sqlite').as_posix()}"

    @property
    def bus_path(self) -> Path:
        return self.data_dir / "bus.sqlite"

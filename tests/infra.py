"""Real infrastructure for tests and benchmarks: a single-node Apache Kafka (deploy/kafka) and a
PostgreSQL cluster of our own (deploy/postgres), each on free loopback ports in a fresh run
directory, stopped and removed afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(script: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


@dataclass
class Kafka:
    run_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    bootstrap: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_RUN_DIR": str(self.run_dir),
        }

    def start(self) -> Kafka:
        self.bootstrap = _run(ROOT / "deploy/kafka/start.sh", self.env, timeout=600)
        return self

    def stop(self) -> None:
        subprocess.run([str(ROOT / "deploy/kafka/stop.sh")], env=self.env, capture_output=True, timeout=120)


@dataclass
class Postgres:
    run_dir: Path
    port: int = field(default_factory=free_port)
    user: str = "postgres"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PG_PORT": str(self.port), "PG_RUN_DIR": str(self.run_dir)}

    def start(self) -> Postgres:
        self.user = _run(ROOT / "deploy/postgres/start.sh", self.env, timeout=900)
        return self

    def stop(self) -> None:
        subprocess.run([str(ROOT / "deploy/postgres/stop.sh")], env=self.env, capture_output=True, timeout=120)

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def scratch_dir(prefix: str) -> Path:
    # Short paths: PostgreSQL's unix socket path must stay under 107 bytes.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running_kafka(prefix: str = "fgk-") -> Iterator[Kafka]:
    """A broker of our own for the duration of the block, in a fresh run directory."""
    root = scratch_dir(prefix)
    broker = Kafka(root / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()
        remove(root)


@contextmanager
def running_postgres(prefix: str = "fgp-") -> Iterator[Postgres]:
    """A PostgreSQL cluster of our own for the duration of the block."""
    root = scratch_dir(prefix)
    cluster = Postgres(root / "pg").start()
    try:
        yield cluster
    finally:
        cluster.stop()
        remove(root)


async def pg_scalar(dsn: str, sql: str) -> int:
    """One number from PostgreSQL (-1 while the table does not exist yet: not migrated)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    except asyncpg.UndefinedTableError:
        return -1
    finally:
        await conn.close()

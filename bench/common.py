"""Shared by the benchmarks: the result line of DESIGN.md, and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime


def result(
    bench: str, metric: str, value: float, unit: str, peer: str, peer_value: float, **extra: object
) -> dict[str, object]:
    line: dict[str, object] = {
        "bench": bench,
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "peer": peer,
        "peer_value": round(peer_value, 3),
        "ratio": round(value / peer_value, 4) if peer_value else None,
    }
    line.update(extra)
    print(json.dumps(line, ensure_ascii=False), flush=True)
    return line


def machine() -> str:
    return (
        f"{platform.node()} · {os.cpu_count()} cores · Python {sys.version.split()[0]} · {datetime.now(UTC):%Y-%m-%d}"
    )


def say(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)

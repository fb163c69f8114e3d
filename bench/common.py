"""Shared by the benchmarks: the result line of DESIGN.md, and the machine it ran on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from shared import clock


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
    return f"{platform.node()} · {os.cpu_count()} cores · Python {sys.version.split()[0]} · {clock.now():%Y-%m-%d}"


def say(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes, from async code
#
# A benchmark drives its servers from the event loop that also measures them: starting, waiting
# for and stopping them must not block it (asyncio's processes, not subprocess's).

Process = asyncio.subprocess.Process


async def spawn(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Process:
    """Start ``cmd`` (its output goes where ours does)."""
    return await asyncio.create_subprocess_exec(*cmd, env=env)


async def run_checked(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd`` to its end; CalledProcessError if it fails (``subprocess.run(check=True)``)."""
    code = await (await spawn(cmd, env)).wait()
    if code:
        raise subprocess.CalledProcessError(code, list(cmd))


async def stop(proc: Process, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` (unless the process has ended) and wait for its end: its exit status, or
    TimeoutError after ``timeout`` seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), timeout)

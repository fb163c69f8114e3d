"""The HTTP load client the GET benches share, and its helpers.

A minimal asyncio HTTP/1.1 client (httpx alone tops out near the peer's rate on 2 cores):
``concurrency`` keep-alive connections, each sending one GET after another for ``seconds``
(closed loop), or, with ``rate``, requests started on a fixed schedule (open loop: latency is
counted from the scheduled start, so a queue shows)."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from typing import NamedTuple


class Figures(NamedTuple):
    req_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_up(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                await client.get(url, timeout=2)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


async def load_test(
    base: str,
    pick: Callable[[random.Random], tuple[str, str]],
    seconds: float,
    concurrency: int = 32,
    rate: float | None = None,
) -> Figures:
    """``pick(rnd)`` gives each request's (path, one header line, e.g. "X-Api-Key: …")."""
    host, port = base.removeprefix("http://").split(":")
    lat: list[float] = []
    errors = 0
    rnd = random.Random(5)

    async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        path, header = pick(rnd)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return status

    ready = asyncio.Event()
    schedule: asyncio.Queue[float] = asyncio.Queue()

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(5):  # warm up (caches, statistics)
                await get(reader, writer)
            await ready.wait()
            while True:
                start = await schedule.get() if rate else time.perf_counter()
                status = await get(reader, writer)
                lat.append(time.perf_counter() - start)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(2.0)  # connections open, warmed up
    started = time.perf_counter()
    stop_at = started + seconds
    ready.set()
    if rate:
        k = 0
        while time.perf_counter() < stop_at:
            due = started + k / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            schedule.put_nowait(due)
            k += 1
    else:
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    n_at_stop, errors_at_stop = len(lat), errors
    elapsed = time.perf_counter() - started
    for tk in tasks:
        tk.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    done = sorted(lat[:n_at_stop])

    def pct(q: float) -> float:
        return done[min(len(done) - 1, int(len(done) * q))] * 1000

    return Figures(n_at_stop / elapsed, pct(0.5), pct(0.99), n_at_stop, errors_at_stop)


async def measure(
    base: str, pick: Callable[[random.Random], tuple[str, str]], seconds: float, concurrency: int, rates: list[float]
) -> tuple[Figures, dict[float, Figures]]:
    """A closed loop (the most the service answers), then open loops paced at each rate."""
    closed = await load_test(base, pick, seconds, concurrency)
    return closed, {r: await load_test(base, pick, seconds, concurrency, rate=r) for r in rates}


def told(figures: dict[float, Figures]) -> str:
    return "; ".join(
        f"paced at {r:,.0f}/s: {f.req_per_s:,.0f} req/s, p50 {f.p50_ms:.1f} ms, p99 {f.p99_ms:.1f} ms, "
        f"{f.errors} errors"
        for r, f in figures.items()
    )


def paced_summary(paced: dict[float, Figures], peer_paced: dict[float, Figures]) -> dict[str, dict[str, float]]:
    return {
        f"{r:.0f}_per_s": {
            "req_per_s": round(f.req_per_s, 1),
            "p50_ms": round(f.p50_ms, 2),
            "p99_ms": round(f.p99_ms, 2),
            "errors": f.errors,
            "peer_p99_ms": round(peer_paced[r].p99_ms, 2),
        }
        for r, f in paced.items()
    }

"""`make bench`: start Kafka and PostgreSQL as the tests do, run every benchmark, print one JSON
line per figure (with its peer, measured in the same run), and stop what was started.

    python -m bench [--only NAME] [--scale 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

import asyncpg

from bench.common import machine, say
from tests.infra import Kafka, Postgres, remove, scratch_dir


async def _create_db(pg: Postgres, name: str) -> str:
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.dsn(name)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "--only",
        action="append",
        help="run only these benches (ingest, import, segmentation, coupons, loyalty, notifications)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="scale every workload (e.g. 0.1 for a smoke run)")
    args = parser.parse_args()
    wanted = set(args.only or ["ingest", "import", "segmentation", "coupons", "loyalty", "notifications"])
    say(f"machine: {machine()}")
    lines: list[str] = []

    def run(cmd: list[str]) -> None:
        out = subprocess.run([sys.executable, *cmd], stdout=subprocess.PIPE, text=True, check=True).stdout
        lines.extend(line for line in out.splitlines() if line.startswith("{"))
        print(out, end="", flush=True)

    root = scratch_dir("fgb-")
    kafka = pg = None
    try:
        if "ingest" in wanted:
            kafka = Kafka(root / "kafka").start()
            pg = Postgres(root / "pg").start()
            dsn = asyncio.run(_create_db(pg, "bench_ingest"))
            run(
                [
                    "-m",
                    "bench.bench_ingest",
                    "--events",
                    str(int(1_000_000 * args.scale)),
                    "--customers",
                    str(int(200_000 * args.scale)),
                    "--kafka",
                    kafka.bootstrap,
                    "--pg-dsn",
                    dsn,
                ]
            )
        if "import" in wanted:
            run(["-m", "bench.bench_import", "--orders", str(int(1_000_000 * args.scale))])
        if "segmentation" in wanted:
            pg = pg or Postgres(root / "pg").start()
            dsn = asyncio.run(_create_db(pg, "bench_segmentation"))
            run(["-m", "bench.bench_segmentation", "--customers", str(int(1_000_000 * args.scale)), "--pg-dsn", dsn])
        if "coupons" in wanted:
            pg = pg or Postgres(root / "pg").start()
            dsn = asyncio.run(_create_db(pg, "bench_coupons_wallet"))
            run(["-m", "bench.bench_coupons_wallet", "--customers", str(int(100_000 * args.scale)), "--pg-dsn", dsn])
            dsn = asyncio.run(_create_db(pg, "bench_coupons_issue"))
            run(["-m", "bench.bench_coupons_issue", "--customers", str(int(100_000 * args.scale)), "--pg-dsn", dsn])
        if "loyalty" in wanted:
            kafka = kafka or Kafka(root / "kafka").start()
            pg = pg or Postgres(root / "pg").start()
            dsn = asyncio.run(_create_db(pg, "bench_loyalty_ledger"))
            run(
                [
                    "-m",
                    "bench.bench_loyalty",
                    "ledger",
                    "--events",
                    str(int(200_000 * args.scale)),
                    "--customers",
                    str(int(50_000 * args.scale)),
                    "--kafka",
                    kafka.bootstrap,
                    "--pg-dsn",
                    dsn,
                    # Two consumers in one group, as deployed (deploy/k8s/loyalty.yaml: 2 replicas).
                    "--processes",
                    "2",
                ]
            )
            dsn = asyncio.run(_create_db(pg, "bench_loyalty_points"))
            run(
                [
                    "-m",
                    "bench.bench_loyalty",
                    "points",
                    "--customers",
                    str(int(100_000 * args.scale)),
                    "--pg-dsn",
                    dsn,
                    "--seconds",
                    "15",
                ]
            )
        if "notifications" in wanted:
            pg = pg or Postgres(root / "pg").start()
            dsn = asyncio.run(_create_db(pg, "bench_notifications"))
            run(
                [
                    "-m",
                    "bench.bench_notifications",
                    "--customers",
                    str(int(100_000 * args.scale)),
                    "--campaign",
                    str(int(100_000 * args.scale)),
                    "--pg-dsn",
                    dsn,
                ]
            )
    finally:
        if kafka:
            kafka.stop()
        if pg:
            pg.stop()
        remove(root)
    say("results:")
    for line in lines:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()

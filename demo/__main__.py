"""Fill Fugou with a believable synthetic shop (贝贝母婴旗舰店), through the public event API.

    python -m demo [--customers 10000] [--months 6] [--seed 42] [--url URL] [--key KEY] [--start]

With ``--start`` (``make demo``): start the embedded system as ``make run`` does (same HOST, PORT
and FUGOU_* environment), wait until it is ready, set the merchant up, feed the shop, say where to
look, and keep the server in the foreground until Ctrl-C. Without it: feed a system that is
already running at ``--url`` (default http://$HOST:$PORT).

The key: ``--key``, else FUGOU_BOOTSTRAP_API_KEY, else the one ``make run`` wrote to
data/demo-api-key (FUGOU_DATA_DIR).

The shop's "now" is kept in data/demo-shop.json with the seed and size it was made for, and used
again by the next run with the same seed and size: the same events, with the same ids, which the
gateway answers as duplicates. Re-running ``make demo`` therefore changes nothing; ``--now`` (or
deleting ./data) makes a shop that ends at another moment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType

import httpx

from demo import feed, shop
from shared import clock

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
SHOP = shop.SHOP_NAME


def _default_url() -> str:
    host = os.environ.get("HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: talk to it on loopback
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('PORT', '8000')}"


def _key_from_environment(data_dir: Path) -> str | None:
    if os.environ.get("FUGOU_BOOTSTRAP_API_KEY"):
        return os.environ["FUGOU_BOOTSTRAP_API_KEY"]
    key_file = data_dir / "demo-api-key"
    if not key_file.exists():
        return None
    return key_file.read_text().strip() or None


# ---------------------------------------------------------------- the embedded server


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the demo dies, even by kill -9, so the
    server is never left orphaned."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_server(url: str) -> subprocess.Popen[bytes]:
    """``python -m services.embedded`` in its own process group: Ctrl-C reaches only the demo,
    which passes it on once (a second signal would make uvicorn skip its graceful shutdown).
    Its logs are warnings only unless FUGOU_LOG_LEVEL says otherwise, so that the progress bar
    stays readable."""
    parsed = httpx.URL(url)
    env = {
        **os.environ,
        "HOST": os.environ.get("HOST", parsed.host),
        "PORT": str(parsed.port or 80),
        "FUGOU_LOG_LEVEL": os.environ.get("FUGOU_LOG_LEVEL", "WARNING"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.embedded"], env=env, process_group=0, preexec_fn=_die_with_parent
    )


def stop_server(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Ask the server to stop, then insist. SIGTERM, for Ctrl-C too: uvicorn shuts down as
    gracefully on either, and re-raising SIGINT after its shutdown prints a KeyboardInterrupt
    traceback where SIGTERM just ends the process."""
    if proc.poll() is None:
        print("  Stopping the server…", file=sys.stderr, flush=True)
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("  The server did not stop in time: terminating it.", file=sys.stderr)
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_ready(url: str, proc: subprocess.Popen[bytes], key_file: Path | None) -> None:
    """Until GET /readyz answers 200 (and the demo merchant's key file exists, when the key is to
    come from it); the server's own exit is an error at once."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready_at: float | None = None
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"The server exited with code {proc.returncode} before it was ready "
                    f"(is {url} in use? PORT=9000 make demo picks another port)."
                )
            if ready_at is None:
                try:
                    if client.get("/readyz").status_code == 200:
                        ready_at = time.monotonic()
                except httpx.TransportError:
                    pass
            # The key file is written at start-up, before the port opens; a merchant created by an
            # older run whose key file is gone never gets one: give up on it after a few seconds.
            if ready_at is not None and (key_file is None or key_file.exists() or time.monotonic() - ready_at > 5):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"The server at {url} was not ready within {READY_TIMEOUT_S:.0f} s.")
            time.sleep(0.5)


def _already_serving(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


# ---------------------------------------------------------------- feeding


def shop_moment(args: argparse.Namespace, data_dir: Path) -> datetime:
    """The moment the shop's history ends: ``--now``, else the one the last run with the same
    seed and size used (so that a re-run posts the same events), else the clock. Remembered in
    data_dir/demo-shop.json."""
    memo = data_dir / "demo-shop.json"
    made_for = {"merchant": args.merchant, "seed": args.seed, "customers": args.customers, "months": args.months}
    if args.now is not None:
        now = datetime.fromisoformat(args.now)
        if now.tzinfo is None:
            raise SystemExit(f"--now needs an offset, e.g. {args.now}+08:00")
    else:
        remembered: datetime | None
        try:
            known = json.loads(memo.read_text())
            remembered = (
                datetime.fromisoformat(known["now"]) if {k: known.get(k) for k in made_for} == made_for else None
            )
        except (OSError, ValueError, KeyError, TypeError):
            remembered = None
        if remembered is not None:
            now = remembered
            print(
                f"  The same shop as the last run (ending {now.isoformat()}): what was fed already comes back "
                "as duplicates.",
                file=sys.stderr,
                flush=True,
            )
        else:
            now = clock.now().astimezone(shop.TZ).replace(microsecond=0)
    if now > clock.now().astimezone(shop.TZ):
        raise SystemExit(f"--now {now.isoformat()} is in the future: the shop's events cannot have happened yet")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({**made_for, "now": now.isoformat()}) + "\n")
    except OSError:
        pass  # only a memo: the next run makes a new shop
    return now


async def run_feed(args: argparse.Namespace, url: str, key: str, data_dir: Path, key_hint: str) -> int:
    now = shop_moment(args, data_dir)
    print(
        f"  Generating {SHOP} ({args.customers:,} customers, {args.months} months, seed {args.seed})…",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    the_shop = shop.generate(args.customers, args.months, args.seed, now=now, merchant_id=args.merchant)
    events = the_shop.events if args.order == "time" else shop.by_customer(the_shop.events)
    print(
        f"  {len(events):,} events in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{n:,} {t}" for t, n in the_shop.counts().most_common()),
        file=sys.stderr,
        flush=True,
    )
    if not args.no_setup:
        for note in await feed.setup_merchant(url, key):
            print(f"  {note}", file=sys.stderr, flush=True)
    report = await feed.post_events(
        url, key, events, batch_size=args.batch, concurrency=args.concurrency, progress=not args.quiet
    )
    print(f"  {report.summary()}", file=sys.stderr, flush=True)
    if report.rejected:
        print(f"  First rejection: {report.first_rejection}", file=sys.stderr, flush=True)
        return 1
    if args.wait:
        expected = the_shop.buyers()
        count = await feed.wait_until_scored(url, key, expected, progress=not args.quiet)
        if count < expected:
            print(
                f"  {count:,} of {expected:,} buying customers segmented so far; the rest follow.",
                file=sys.stderr,
                flush=True,
            )
    _where_to_look(url, the_shop, key_hint)
    return 0


def _where_to_look(url: str, the_shop: shop.Shop, key_hint: str) -> None:
    loyal = next((c.customer_id for c in the_shop.customers if c.persona == "loyal"), the_shop.customers[0].customer_id)
    h = '-H "X-Api-Key: $KEY"'
    print(
        f"""
  {SHOP} is open. Look around, with {key_hint}:

    API docs                 {url}/docs
    segments                 curl -s {url}/v1/segments/summary {h}
    a loyal customer         curl -s {url}/v1/customers/{loyal}/rfm {h}
    their points             curl -s {url}/v1/loyalty/customers/{loyal}/points {h}
    their coupons            curl -s {url}/v1/customers/{loyal}/coupons {h}
    dormant customers        curl -s {url}/v1/audiences/query {h} -H 'content-type: application/json' \\
                                  -d '{{"filter": {{"tag": ["dormant"]}}, "limit": 20}}'
    coupon ROI               curl -s {url}/v1/coupons/reports/roi {h}
    points liability         curl -s {url}/v1/loyalty/reports/liability {h}
    messages funnel          curl -s {url}/v1/notifications/funnel {h}
    what the console sent    curl -s '{url}/v1/notifications/console?limit=5' {h}
""",
        file=sys.stderr,
        flush=True,
    )


# ---------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--months", type=int, default=6)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--url", default=None, help="the running system (default http://$HOST:$PORT)")
    p.add_argument("--key", default=None, help="the merchant's API key (default: see above)")
    p.add_argument("--merchant", default="demo", help="the merchant the key belongs to")
    p.add_argument("--start", action="store_true", help="start the embedded system first and keep it running")
    p.add_argument("--batch", type=int, default=feed.BATCH, help="events per POST (≤ 1000)")
    p.add_argument("--concurrency", type=int, default=feed.CONCURRENCY, help="POSTs in flight")
    p.add_argument(
        "--order",
        choices=("customer", "time"),
        default="customer",
        help="post each customer's history together (default), or every event in time order",
    )
    p.add_argument("--no-setup", action="store_true", help="post events only; leave the merchant's settings alone")
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="do not wait for segmentation to have scored every buying customer",
    )
    p.add_argument(
        "--now",
        default=None,
        help="when the shop's history ends, ISO 8601 with an offset "
        "(default: as the last run with the same seed and size, else now)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _key_hint(args: argparse.Namespace, data_dir: Path) -> str:
    if args.key:
        return "KEY=<the key you passed>"
    if os.environ.get("FUGOU_BOOTSTRAP_API_KEY"):
        return "KEY=$FUGOU_BOOTSTRAP_API_KEY"
    return f"KEY=$(cat {data_dir / 'demo-api-key'})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from shared.cli import process_settings  # (imported here: the server's dependencies are heavy)

    # The settings the server reads (FUGOU_DATA_DIR, .env), and the clock it runs on
    # (FUGOU_CLOCK_OFFSET): the shop's history ends at the server's now, not the wall clock's.
    settings = process_settings()
    url = (args.url or _default_url()).rstrip("/")
    data_dir = settings.data_dir
    hint = _key_hint(args, data_dir)
    if not args.start:
        key = args.key or _key_from_environment(data_dir)
        if not key:
            raise SystemExit(
                "No API key: pass --key, set FUGOU_BOOTSTRAP_API_KEY, or start the system once "
                "(make run writes data/demo-api-key); or use --start."
            )
        try:
            return asyncio.run(run_feed(args, url, key, data_dir, hint))
        except feed.FeedError as e:
            raise SystemExit(f"  {e}") from None
        except KeyboardInterrupt:
            return 130

    if _already_serving(url):
        raise SystemExit(
            f"Something already answers at {url}: feed it with `python -m demo` (no --start), "
            "or pick another port (PORT=9000 make demo)."
        )
    wait_for_key_file = None if (args.key or os.environ.get("FUGOU_BOOTSTRAP_API_KEY")) else data_dir / "demo-api-key"
    # Ctrl-C or a SIGTERM to the demo stops the server too (set explicitly: a shell starting the
    # demo in the background would have it ignore SIGINT).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    proc = start_server(url)
    try:
        wait_ready(url, proc, wait_for_key_file)
        key = args.key or _key_from_environment(data_dir)
        if not key:
            raise SystemExit(
                f"The server is up but has no key for the demo merchant: {data_dir}/demo-api-key is "
                "missing (data from an older run?). Pass --key or set FUGOU_BOOTSTRAP_API_KEY."
            )
        code = asyncio.run(run_feed(args, url, key, data_dir, hint))
        if code:
            return code
        print("  The server keeps running; Ctrl-C stops it.", file=sys.stderr, flush=True)
        code = proc.wait()  # the server ended by itself: its status, as a shell would report it
        return code if code >= 0 else 128 - code
    except feed.FeedError as e:
        print(f"  {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping takes a moment: no second Ctrl-C in it
        stop_server(proc)


if __name__ == "__main__":
    sys.exit(main())

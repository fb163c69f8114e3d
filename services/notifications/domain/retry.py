"""Retries with exponential backoff, and the dead letter (pure, no I/O).

After the ``attempt``-th failed try (1 for the first), the nominal wait is
``min(cap_s, base_s × factor^(attempt−1))``: 2 s, 4 s, 8 s … up to an hour by default. The caller
supplies ``jitter`` in [0, 1) (from its own random source, so this stays deterministic) and the wait
is shortened by up to half of it, ``nominal × (1 − jitter/2)``, which spreads a burst of failures
without ever exceeding the cap, and keeps the wait non-decreasing in ``attempt`` for a given jitter.
A provider's ``Retry-After`` wins when it is longer (even beyond the cap: retrying earlier would
only be refused again).

Outcomes: ``transient`` (timeouts, 5xx, the provider's rate limit: ``rate_limited``) are retried
until ``max_attempts`` tries have been made (8 by default), then the message goes to the dead
letter with reason ``max_attempts``; ``permanent`` (a number the provider refuses, a template it
rejects) goes to the dead letter at once with reason ``permanent``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

MAX_ATTEMPTS = 8
BASE_S = 2.0
FACTOR = 2.0
CAP_S = 3600.0

Outcome = Literal["transient", "rate_limited", "permanent"]
Step = tuple[Literal["retry"], datetime] | tuple[Literal["dead"], str]


def backoff(
    attempt: int,
    *,
    base_s: float = BASE_S,
    factor: float = FACTOR,
    cap_s: float = CAP_S,
    jitter: float = 0.0,
    retry_after_s: float | None = None,
) -> timedelta:
    """How long to wait after the ``attempt``-th failed try."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter is in [0, 1)")
    if base_s <= 0 or factor < 1 or cap_s < base_s:
        raise ValueError("need base_s > 0, factor ≥ 1 and cap_s ≥ base_s")
    # Compare exponents in logs so a large attempt cannot overflow a float.
    if factor == 1 or (attempt - 1) * math.log(factor) < math.log(cap_s / base_s):
        nominal = min(cap_s, base_s * factor ** (attempt - 1))
    else:
        nominal = cap_s
    wait = nominal * (1.0 - jitter / 2.0)
    if retry_after_s is not None and retry_after_s > wait:
        wait = retry_after_s
    return timedelta(seconds=wait)


def next_step(
    attempt: int,
    outcome: Outcome,
    retry_after_s: float | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    *,
    now: datetime,
    jitter: float = 0.0,
) -> Step:
    """After the ``attempt``-th try failed with ``outcome``: ``("retry", at)`` or ``("dead", reason)``."""
    if outcome == "permanent":
        return ("dead", "permanent")
    if attempt >= max_attempts:
        return ("dead", "max_attempts")
    return ("retry", now + backoff(attempt, jitter=jitter, retry_after_s=retry_after_s))

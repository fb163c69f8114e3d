"""The one clock: every reading of the current time in Fugou comes from here.

Handlers, workers, validators and API helpers call ``clock.now()`` (an aware UTC datetime), never
``datetime.now()`` or ``time.time()`` (ruff bans both outside this module). What ``now()`` answers
is the clock installed for the process:

- a process's entry point (``make run``, ``python -m services.<name> run``) installs a
  ``SystemClock`` built from the settings: the wall clock, moved by ``FUGOU_CLOCK_OFFSET`` when it
  is set (a duration such as ``P365D`` or ``-P365D``; refused in production). The test suite runs
  with an offset of a year ahead and a year back to show it holds on any date, and real service
  processes it starts inherit the same offset from the environment;
- a test installs a ``ManualClock`` (a fixture) and moves it by hand.

Durations (timeouts, token buckets, leases measured in seconds from now) use ``time.monotonic``,
which no date can make stale and which this clock does not replace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The wall clock, moved by a fixed offset (zero unless a test or a demo asks for another day)."""

    offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset  # noqa: TID251 - the one place that reads the wall clock


class ManualClock:
    """A clock that moves only when told to: ``set`` and ``advance``."""

    def __init__(self, start: datetime) -> None:
        self._now = _aware(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = _aware(when)

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**parts)`` (``advance(days=3)``); the new now."""
        self._now += delta if delta is not None else timedelta(**parts)
        return self._now


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a clock's time carries its offset: {when!r}")
    return when.astimezone(UTC)


_current: Clock = SystemClock()


def now() -> datetime:
    """The current instant from the process's clock (UTC, aware)."""
    return _current.now()


def timestamp() -> float:
    """Seconds since the epoch, from the process's clock (JWT ``iat``/``exp`` and the like)."""
    return _current.now().timestamp()


def current() -> Clock:
    return _current


def install(clock: Clock) -> Clock:
    """Make ``clock`` the process's clock; the one it replaces is returned (to put back)."""
    global _current
    previous, _current = _current, clock
    return previous


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """``clock`` is the process's clock inside the block, the previous one again after it."""
    previous = install(clock)
    try:
        yield clock
    finally:
        install(previous)

"""Crash points for reliability tests.

A test starts a real process with FUGOU_FAULT=<point>; when the code reaches that point the
process dies at once, as with kill -9 (no cleanup, no offset commit, no outbox delete)."""

from __future__ import annotations

import os

_ARMED = os.environ.get("FUGOU_FAULT", "")


def point(name: str) -> None:
    if _ARMED and name == _ARMED:
        os._exit(137)

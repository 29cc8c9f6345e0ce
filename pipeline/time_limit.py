"""A per-video time limit: a video that hangs the decoder or the solver must not stall its whole shard.

Python cannot interrupt a thread, so the work runs in a daemon thread and the caller stops waiting after
the limit. The work is handed a `stop` event, set on time-out, which decoding checks at every frame and the
flow at every batch, so it usually ends soon after; a call that never returns (a read that blocks forever)
is left behind without holding up the process's exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TimeLimitExceeded(Exception):
    """The call did not finish within its limit; str(error) is the one-line reason."""


def call_with_time_limit(fn: Callable[[threading.Event], T], seconds: float | None) -> T:
    """Return `fn(stop)`, or raise TimeLimitExceeded after `seconds` (None or 0: no limit, run it here).

    Exceptions raised by `fn` are raised here.
    """
    stop = threading.Event()
    if not seconds:
        return fn(stop)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn(stop)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="flowshard-time-limited", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        stop.set()
        raise TimeLimitExceeded(f"timed out after {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

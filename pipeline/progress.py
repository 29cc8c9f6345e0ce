"""Progress of a long run: videos done of total, frames per second, ETA, failures, at a readable rate."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_bytes(n: float) -> str:
    """1.2 TiB, 3.4 GiB, 5.6 MiB or 7.8 KiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def format_duration(seconds: float) -> str:
    """Seconds as 1h02m05s, 3m07s or 42s."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Prints one line at most every `interval` seconds (or when forced).

    Counts are totals so far; the caller passes them in (they may come from many workers). Videos done
    before this run started (`already_done`, a resumed run) count toward the total but not the rate.
    """

    def __init__(
        self, total: int, interval: float = 10.0, print_fn: Callable[[str], None] = print, clock=time.monotonic, already_done: int = 0
    ):
        self.total, self.interval, self.print, self.clock = total, interval, print_fn, clock
        self.already_done = already_done
        self.start = clock()
        self._last = None

    def line(self, videos: int, frames: int | None, failed: int) -> str:
        """`frames` counts this run's frames only; None: work without frames (a census), its rate in videos/s."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (videos - self.already_done) / elapsed
        eta = 0.0 if videos >= self.total else (self.total - videos) / rate if rate > 0 else float("nan")
        pct = 100.0 * videos / self.total if self.total else 100.0
        eta_text = format_duration(eta) if eta == eta else "?"
        speed = f"{rate:.1f} videos/s" if frames is None else f"{frames / elapsed:.1f} frames/s"
        return f"[{format_duration(elapsed)}] {videos}/{self.total} videos ({pct:.0f}%), {speed}, ETA {eta_text}, {failed} failed"

    def update(self, videos: int, frames: int | None, failed: int, force: bool = False) -> bool:
        """Print a line if `interval` has passed since the last one (or `force`); returns whether it did."""
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        self.print(self.line(videos, frames, failed))
        return True

"""plan.png: a dry run's census at a glance, before the run: durations, stored sizes, frame rates and codecs of
the videos to run, and the failures it predicts by reason. Pure: census rows in, PNG bytes out."""

from __future__ import annotations

import io
import textwrap
from collections import Counter

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .census import VideoCensus
from .report import failure_reason


def plan_png(census: list[VideoCensus], title: str, notes: list[str]) -> bytes:
    """Six panels: duration, stored short side and frame rate histograms of the readable videos, their codecs,
    the predicted failures by reason, and `notes` (the plan's figures, a line each)."""
    figure = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 3)
    durations, sizes, rates = grid[0]
    codecs, failures, text = grid[1]
    text.set_axis_off()
    text.text(0, 1, "\n".join(_wrapped(notes)), va="top", ha="left", family="monospace", fontsize=8, transform=text.transAxes)
    read = [r for r in census if r.codec]
    histogram(durations, [r.duration for r in read], "duration (s)", "tab:blue")
    histogram(sizes, [min(r.width, r.height) for r in read], "stored short side (pixels)", "tab:green")
    histogram(rates, [r.fps for r in read], "frame rate (frames/s)", "tab:purple")
    bars(codecs, Counter(f"{r.codec} in {r.container.split(',')[0]}" for r in read), "codec in container", "tab:orange")
    reasons = Counter(failure_reason(r.reason) for r in census if r.status != "ok")
    if reasons:
        bars(failures, reasons, f"predicted failures by reason ({sum(reasons.values())})", "tab:red")
    else:
        failures.set(title="predicted failures by reason", xticks=[], yticks=[])
        failures.text(0.5, 0.5, "no video is expected to fail", ha="center", va="center", fontsize=14, transform=failures.transAxes)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def histogram(axes, values: list[float], what: str, color: str) -> None:
    """A histogram of `values` titled with their median, or a note where there are none."""
    if not values:
        axes.set(title=what, xticks=[], yticks=[])
        axes.text(0.5, 0.5, "no readable video", ha="center", va="center", transform=axes.transAxes)
        return
    axes.hist(values, bins=min(40, max(5, len(set(values)))), color=color)
    axes.set(title=f"{what}: median {np.median(values):.4g}", xlabel=what, ylabel="videos")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3, axis="y")


def bars(axes, counts: Counter, title: str, color: str, most: int = 12) -> None:
    """Horizontal bars of the `most` largest counts, the largest on top."""
    kinds = [k for k, _ in counts.most_common(most)][::-1]
    axes.barh(range(len(kinds)), [counts[k] for k in kinds], color=color)
    axes.set_yticks(range(len(kinds)), kinds, fontsize=8)
    axes.set(title=title, xlabel="videos")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3, axis="x")


def _wrapped(lines: list[str], width: int = 60) -> list[str]:
    """Lines broken at spaces to fit a panel."""
    return [part for line in lines for part in (textwrap.wrap(line, width, subsequent_indent="  ") or [""])]

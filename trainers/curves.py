"""Training curves as a picture: loss, top-1 (training and validation) and learning rate against epochs.

The x axis counts epochs trained: the epoch printed as "epoch 3" (0-based, as in metrics.csv) ends at 4.

`curves_png` is a pure function of the rows of `metrics.csv` (as `trainers.run_folder.read_metrics` returns them:
strings, empty where a row has no value), drawn with matplotlib's object API (no pyplot, no global figure).
"""

from __future__ import annotations

import io
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _floats(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves_png(rows: list[dict], title: str = "") -> bytes:
    """A 3-panel PNG: training loss (each step, at its fractional epoch, and each epoch's mean), top-1 per epoch
    (training, and validation where it ran), learning rate per step."""
    steps = [r for r in rows if r.get("loss") not in (None, "")]
    epochs = [r for r in rows if r.get("loss") in (None, "")]
    per_epoch = defaultdict(list)  # epoch -> its steps, to place each step at a fractional epoch
    for r in steps:
        per_epoch[int(r["epoch"])].append(r)
    at = [int(r["epoch"]) + (i + 1) / len(per_epoch[int(r["epoch"])]) for e in sorted(per_epoch) for i, r in enumerate(per_epoch[e])]
    ordered = [r for e in sorted(per_epoch) for r in per_epoch[e]]

    # Fixed margins rather than a layout engine: "constrained" costs ~0.5 s a picture, and this one is redrawn
    # every epoch.
    figure = Figure(figsize=(15, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.05, right=0.985, bottom=0.12, top=0.84 if title else 0.9, wspace=0.22)
    loss, top1, lr = figure.subplots(1, 3)
    loss.plot(at, [float(r["loss"]) for r in ordered], color="tab:blue", alpha=0.35, linewidth=1, label="each step")
    means = [(e + 1, sum(float(r["loss"]) for r in per_epoch[e]) / len(per_epoch[e])) for e in sorted(per_epoch)]
    loss.plot([m[0] for m in means], [m[1] for m in means], "o-", color="tab:blue", label="epoch mean")
    loss.set(title="training loss", xlabel="epochs trained", ylabel="cross-entropy")
    loss.legend()

    for field, label, style in (("train_top1", "training", "o-"), ("val_top1", "validation", "s-")):
        x, y = _floats(epochs, "epoch", field)
        if x:
            top1.plot([e + 1 for e in x], [100 * v for v in y], style, label=label)
    top1.set(title="top-1 accuracy", xlabel="epochs trained", ylabel="top-1 (%)", ylim=(0, 100))
    if top1.lines:
        top1.legend()

    lr.plot(at, [float(r["lr"]) for r in ordered], color="tab:green")
    lr.set(title="learning rate", xlabel="epochs trained", ylabel="lr")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for axes in (loss, top1, lr):
        axes.grid(alpha=0.3)
        axes.set_xlim(left=0)
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

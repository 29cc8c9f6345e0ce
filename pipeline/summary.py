"""What a preprocessed dataset holds, from its tables only (dataset.json, index.parquet, results.parquet,
report.json): videos per split and class, frames per video, bytes per shard, failures by reason, how it was
built. Reads no shard, so it is fast on 100k videos; `summary_png` draws it (matplotlib's object API).
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from schemas.dataset import INDEX_FILE, RESULTS_FILE, read_dataset_info
from storage import Location, StorageError

from .report import REPORT_FILE, failure_reason

THINNEST = 5  # classes named as the thinnest
EXAMPLES = 3  # videos named per failure reason


@dataclass
class DatasetSummary:
    """The counts `jobs.inspect` prints and draws."""

    root: str
    classes: list[str]
    modalities: list[str]
    parameters: dict
    videos: dict[str, int]  # split -> videos in the shards
    failed: dict[str, int]  # split -> videos that failed
    frames: dict[str, int]  # split -> frames stored
    per_class: dict[str, list[int]]  # split -> videos per class (index = label)
    frames_per_video: list[int]
    shard_bytes: dict[str, int]  # shard -> bytes of its samples
    failures: dict[str, list[str]] = field(default_factory=dict)  # reason kind -> video ids
    report: dict = field(default_factory=dict)  # report.json, {} where absent
    turned: dict[str, int] = field(default_factory=dict)  # "rotated 90", "rotated 90, mirrored", ... -> videos stored turned
    damaged: dict[str, int] = field(default_factory=dict)  # video id -> frames damaged packets lost (it was kept without them)

    def thinnest(self, split: str) -> list[tuple[str, int]]:
        """The THINNEST classes of `split` with the fewest videos (ties by class order)."""
        counts = self.per_class.get(split, [])
        order = sorted(range(len(counts)), key=lambda i: (counts[i], i))[:THINNEST]
        return [(self.classes[i], counts[i]) for i in order]


def summarize(root: str) -> DatasetSummary:
    """The summary of the dataset at `root` (a local path or URI).

    Raises:
        ValueError: `root` is not a dataset written by jobs.preprocess.
    """
    info = read_dataset_info(root)
    location = Location(root)
    index = pq.read_table(location.open_input_file(INDEX_FILE)).to_pydict()
    results = pq.read_table(location.open_input_file(RESULTS_FILE)).to_pydict()
    try:
        report = json.loads(location.read_text(REPORT_FILE))
    except StorageError:
        report = {}
    n = len(info.classes)
    videos, frames, per_class, shard_bytes = Counter(), Counter(), defaultdict(lambda: [0] * n), Counter()
    for split, label, count, shard, size in zip(index["split"], index["label"], index["frames"], index["shard"], index["bytes"]):
        videos[split] += 1
        frames[split] += count
        if 0 <= label < n:
            per_class[split][label] += 1
        shard_bytes[shard] += size
    turned = Counter(
        f"rotated {r}" + (", mirrored" if m else "") if r else "mirrored"
        for status, r, m in zip(results["status"], results.get("rotation", []), results.get("mirrored", []))
        if status == "ok" and (r or m)
    )
    damaged = {v: n for v, status, n in zip(results["video_id"], results["status"], results.get("frames_lost", [])) if status == "ok" and n}
    failed, failures = Counter(), defaultdict(list)
    for video, split, status, reason in zip(results["video_id"], results["split"], results["status"], results["reason"]):
        if status != "ok":
            failed[split] += 1
            failures[failure_reason(reason)].append(video)
    return DatasetSummary(
        root=root,
        classes=list(info.classes),
        modalities=list(info.modalities),
        parameters=info.parameters,
        videos=dict(videos),
        failed=dict(failed),
        frames=dict(frames),
        per_class=dict(per_class),
        frames_per_video=list(index["frames"]),
        shard_bytes=dict(shard_bytes),
        failures=dict(sorted(failures.items(), key=lambda kv: -len(kv[1]))),
        report=report,
        turned=dict(sorted(turned.items())),
        damaged=damaged,
    )


def summary_lines(s: DatasetSummary) -> list[str]:
    """The summary as the lines `jobs.inspect` prints."""
    total, failed = sum(s.videos.values()), sum(s.failed.values())
    lines = [f"{s.root}: {total} videos in the shards, {failed} failed; {len(s.classes)} classes; {', '.join(s.modalities)}", ""]
    lines.append(f"{'split':<8}{'videos':>8}{'failed':>8}{'frames':>10}{'frames/video':>14}")
    for split in sorted(set(s.videos) | set(s.failed)):
        v = s.videos.get(split, 0)
        lines.append(f"{split:<8}{v:>8}{s.failed.get(split, 0):>8}{s.frames.get(split, 0):>10}{s.frames.get(split, 0) / max(v, 1):>14.1f}")
    for split in sorted(s.per_class):
        named = ", ".join(f"{name} ({count})" for name, count in s.thinnest(split))
        lines.append(f"thinnest {split} classes: {named}")
    if s.frames_per_video:
        f = np.array(s.frames_per_video)
        lines.append(f"frames per video: min {f.min()}, median {int(np.median(f))}, max {f.max()}")
    if s.shard_bytes:
        mb = np.array(list(s.shard_bytes.values())) / 2**20
        lines.append(
            f"{len(mb)} shards: {mb.sum():.1f} MB, per shard min {mb.min():.1f}, median {np.median(mb):.1f}, max {mb.max():.1f} MB"
        )
    if s.turned:
        turns = ", ".join(f"{n} {how}" for how, n in s.turned.items())
        lines.append(f"{sum(s.turned.values())} videos stored turned as their display matrix asks (as players show them): {turns}")
    if s.damaged:
        named = ", ".join(f"{v} ({n})" for v, n in list(s.damaged.items())[:EXAMPLES])
        more = f", ... {len(s.damaged) - EXAMPLES} more" if len(s.damaged) > EXAMPLES else ""
        videos = f"{len(s.damaged)} {'video' if len(s.damaged) == 1 else 'videos'}"
        lines.append(f"{videos} kept without frames that damaged packets lost (frames lost): {named}{more}; results.parquet says when")
    if s.failures:
        lines.append("failures by reason:")
        for kind, ids in s.failures.items():
            more = f", ... {len(ids) - EXAMPLES} more" if len(ids) > EXAMPLES else ""
            lines.append(f"  {len(ids):>6}  {kind}: {', '.join(ids[:EXAMPLES])}{more}")
        lines.append("  (once their files are fixed, jobs.preprocess --retry-failed processes them again)")
    lines.append("built with: " + _parameters_line(s.parameters))
    if s.report:
        r = s.report
        rates = f"{r.get('videos_per_s', 0):.2f} videos/s, {r.get('pairs_per_s', 0):.1f} flow pairs/s"
        part = f": {r['videos']} of {r['dataset_videos']} videos" if r.get("dataset_videos", r.get("videos")) != r.get("videos") else ""
        lines.append(f"took {r.get('seconds', 0):.0f} s: {rates} (report.json of the last run{part})")
    return lines


def _parameters_line(parameters: dict) -> str:
    decode = parameters.get("decode", {})
    size = decode.get("size") or (f"short side {decode['short_side']}" if decode.get("short_side") else "native size")
    parts = [str(size) if not isinstance(size, str) else size]
    parts += [f"{k.replace('_', ' ')} {decode[k]}" for k in ("fps", "max_frames") if decode.get(k)]
    for modality, spec in parameters.get("flow", {}).items():
        parts.append(f"{modality} ({spec.get('preset', 'custom')} preset)")
    parts += [f"{k.replace('_', ' ')} {parameters[k]}" for k in ("flow_encoding", "flow_bound", "jpeg_quality") if k in parameters]
    return ", ".join(parts)


def summary_png(s: DatasetSummary) -> bytes:
    """Four panels: videos per class (stacked by split, the thinnest named), frames per video, MB per shard,
    failures by reason."""
    figure = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    (classes, frames), (shards, failures) = figure.subplots(2, 2, width_ratios=[2, 1])
    n = len(s.classes)
    bottom = np.zeros(n)
    for split in sorted(s.per_class):
        counts = np.array(s.per_class[split])
        classes.bar(range(n), counts, bottom=bottom, label=split, width=0.85)
        bottom += counts
    title = f"videos per class ({n} classes)"
    if "train" in s.per_class:
        title += "; thinnest train classes: " + ", ".join(f"{name} ({c})" for name, c in s.thinnest("train")[:3])
    classes.set(title=title, xlabel="class", ylabel="videos")
    if n <= 60:
        classes.set_xticks(range(n), s.classes, rotation=0 if n <= 8 else 90, fontsize=10 if n <= 30 else 6)
    else:
        classes.set_xlabel("class index (names: see dataset.json)")
    if s.per_class:
        classes.legend(title="split")
    frames.hist(s.frames_per_video, bins=min(40, max(5, len(set(s.frames_per_video)))), color="tab:purple")
    frames.set(title="frames per video (stored)", xlabel="frames", ylabel="videos")
    mb = np.array(list(s.shard_bytes.values())) / 2**20
    shards.hist(mb, bins=min(40, max(5, len(mb))), color="tab:orange")
    shards.set(title=f"shard sizes ({len(mb)} shards, {mb.sum():.0f} MB)", xlabel="MB of samples", ylabel="shards")
    if s.failures:
        kinds = list(s.failures)[:12][::-1]
        failures.barh(range(len(kinds)), [len(s.failures[k]) for k in kinds], color="tab:red")
        failures.set_yticks(range(len(kinds)), kinds, fontsize=8)
        failures.set(title=f"failed videos by reason ({sum(s.failed.values())})", xlabel="videos")
    else:
        failures.set(title="failed videos by reason", xticks=[], yticks=[])
        failures.text(0.5, 0.5, "no video failed", ha="center", va="center", fontsize=14, transform=failures.transAxes)
    for axes in (classes, frames, shards, failures):
        counts = axes.xaxis if axes is failures else axes.yaxis
        counts.set_major_locator(MaxNLocator(integer=True))  # videos and shards come whole
        axes.grid(alpha=0.3, axis="x" if axes is failures else "y")
    total = sum(s.videos.values())
    figure.suptitle(f"{s.root}: {total} videos, {', '.join(s.modalities)}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

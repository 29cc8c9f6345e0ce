"""Look at a preprocessed dataset's samples: a contact sheet, one row per sample (RGB frames across the video, each
flow in Middlebury colours with its key and largest speed, x and y as stored, warped flow's homography inliers),
and optionally one sample's RGB | flow as an animated GIF or MP4. Reads only the shards holding the samples shown.

python -m jobs.visualize --data data/ucf101 [--out sheet.png] [--samples 8] [--keys ID,ID] [--class NAME]
                         [--split test] [--index 5] [--gif sample.gif] [--mp4 sample.mp4]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pyarrow.parquet as pq

from jobs.common import ArgumentParser, check_locations, cli
from pipeline.contact_sheet import animation_frames, choose_samples, encode_gif, layout, sample_row, sheet_png
from pipeline.decode import encode_mp4
from schemas.dataset import INDEX_FILE, read_dataset_info
from schemas.sample import decode_sample
from storage import Location, join, redact
from trainers.shard_reader import sample_table, whole_samples

CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class VisualizeConfig:
    """Which samples `jobs.visualize` shows and where the pictures go."""

    data: str
    out: str | None = None  # default: contact_sheet.png in the dataset folder
    samples: int = 8  # rows, spread across classes and splits
    keys: tuple[str, ...] = ()  # these video ids instead, in this order (not with class_name or split)
    class_name: str | None = None  # only this class
    split: str | None = None  # only this split (default: all)
    index: int | None = None  # flow index shown (frame index -> index + 1); default: each video's middle
    tile_height: int = 180  # pixels; the stored frames are scaled to it
    gif: str | None = None  # the first sample's RGB | flow as an animated GIF
    mp4: str | None = None  # ... as an MP4
    fps: float = 4.0  # of the animation


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    defaults = VisualizeConfig(data="")
    parser = ArgumentParser(
        prog="python -m jobs.visualize",
        description="Draw a contact sheet of a dataset's samples (RGB frames, flow colours, x/y as stored) and optionally "
        "animate one sample.",
        add_help=add_help,
    )
    parser.add_argument("--data", required=True, help="a dataset written by `python -m jobs.preprocess` (a local path or URI)")
    parser.add_argument("--out", help=f"the contact sheet PNG (a local path or URI; default DATA/{CONTACT_SHEET})")
    parser.add_argument(
        "--samples", type=int, default=defaults.samples, help="rows, spread across classes and splits (default %(default)s)"
    )
    parser.add_argument("--keys", help="comma-separated video ids to show instead (in this order)")
    parser.add_argument("--class", dest="class_name", help="show only samples of this class")
    parser.add_argument("--split", help="show only samples of this split (default: every split)")
    parser.add_argument("--index", type=int, help="flow index i shown (frame i -> i+1); default: each video's middle")
    parser.add_argument("--tile-height", type=int, default=defaults.tile_height, help="tile height in pixels (default %(default)s)")
    parser.add_argument("--gif", help="also write the first sample's RGB | flow as an animated GIF (a local path or URI)")
    parser.add_argument("--mp4", help="also write it as an H.264 MP4 (a local path or URI)")
    parser.add_argument("--fps", type=float, default=defaults.fps, help="frames per second of the animation (default %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> VisualizeConfig:
    keys = tuple(k.strip() for k in args.keys.split(",") if k.strip()) if args.keys else ()
    return VisualizeConfig(
        data=args.data,
        out=args.out,
        samples=args.samples,
        keys=keys,
        class_name=args.class_name,
        split=args.split,
        index=args.index,
        tile_height=args.tile_height,
        gif=args.gif,
        mp4=args.mp4,
        fps=args.fps,
    )


def check(cfg: VisualizeConfig) -> None:
    """The flags' values, before anything is read.

    Raises:
        ValueError: a value out of range, with the fix.
    """
    if cfg.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {cfg.samples}")
    if not 32 <= cfg.tile_height <= 2048:
        raise ValueError(f"--tile-height must be in 32..2048 pixels, got {cfg.tile_height}")
    if cfg.fps <= 0:
        raise ValueError(f"--fps must be positive, got {cfg.fps}")


def chosen_rows(cfg: VisualizeConfig, classes: list[str]) -> list[dict]:
    """The index.parquet rows of the samples to show.

    Raises:
        ValueError: an unknown class or key, or nothing left to show; each names what exists.
    """
    index = pq.read_table(Location(cfg.data).open_input_file(INDEX_FILE)).to_pylist()
    if cfg.keys:
        if cfg.class_name is not None or cfg.split is not None:
            raise ValueError("--keys chooses the samples itself; leave out --class and --split (or --keys)")
        by_key = {row["key"]: row for row in index}
        missing = [k for k in cfg.keys if k not in by_key]
        if missing:
            raise ValueError(f"no sample {', '.join(missing)} in {cfg.data} (its video ids are in {join(cfg.data, INDEX_FILE)})")
        return [by_key[k] for k in dict.fromkeys(cfg.keys)]  # each once, in the order given
    if cfg.class_name is not None:
        if cfg.class_name not in classes:
            raise ValueError(
                f"--class {cfg.class_name!r} is not a class of {cfg.data} (it has: {', '.join(classes[:20])}{' ...' * (len(classes) > 20)})"
            )
        index = [row for row in index if row["label"] == classes.index(cfg.class_name)]
    if cfg.split is not None:
        splits = sorted({row["split"] for row in index})
        index = [row for row in index if row["split"] == cfg.split]
        if not index:
            raise ValueError(f"no samples in split {cfg.split!r} (the dataset has: {', '.join(splits) or 'none'})")
    if not index:
        which = f" of class {cfg.class_name!r}" if cfg.class_name is not None else ""
        raise ValueError(f"{cfg.data} has no samples{which} to show")
    order = choose_samples([r["key"] for r in index], [r["split"] for r in index], [r["label"] for r in index], cfg.samples)
    return [index[i] for i in order]


def read_chosen(data: str, rows: list[dict]) -> list:
    """The chosen samples, decoded (their members, not their images), in the order of `rows`; each read alone by
    its byte range."""
    found = {}
    for split in sorted({row["split"] for row in rows}):
        table = sample_table(data, split)
        place = {key: i for i, key in enumerate(table.keys)}
        wanted = [place[row["key"]] for row in rows if row["split"] == split]
        found |= {members["__key__"]: decode_sample(members) for members in whole_samples(table, wanted)}
    return [found[row["key"]] for row in rows]


def main(cfg: VisualizeConfig) -> int:
    out = cfg.out or join(cfg.data, CONTACT_SHEET)
    check_locations(cfg.data, outputs=tuple(p for p in (out, cfg.gif, cfg.mp4) if p))
    check(cfg)
    info = read_dataset_info(cfg.data)
    samples = read_chosen(cfg.data, chosen_rows(cfg, info.classes))
    rows = [sample_row(s, info.classes[s.meta.label] if 0 <= s.meta.label < len(info.classes) else "-", cfg.index) for s in samples]
    header = (  # drawn into the picture: credentials in the URI must not be
        f"{redact(cfg.data)}: {len(rows)} samples ({', '.join(info.modalities)}). Flow colours: hue = direction, saturation = "
        "speed up to the tile's max (key in the corner); x / y as stored: 128 = still"
    )
    sheet = layout(rows, header, cfg.tile_height)
    Location(out).write_bytes(sheet_png(sheet))
    height, width = sheet.canvas.shape[:2]
    print(f"wrote {out}: {len(rows)} samples ({', '.join(s.key for s in samples)}), {width}x{height} px")
    if cfg.gif or cfg.mp4:
        frames = animation_frames(samples[0], cfg.tile_height)
        for path, encode in ((cfg.gif, encode_gif), (cfg.mp4, encode_mp4)):
            if path:
                Location(path).write_bytes(encode(frames, cfg.fps))
                print(f"wrote {path}: {samples[0].key}, {len(frames)} frames at {cfg.fps:g} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))

"""Build a video manifest (Parquet) from a dataset's official annotation files.

python -m jobs.manifest ucf101 --annotations ucfTrainTestlist --videos UCF-101 --split 1 --out m.parquet
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from jobs.common import ArgumentParser, check_locations, cli, fail, write_config
from pipeline.datasets import DATASETS, load_dataset, summarize
from schemas.manifest import manifest_table, write_manifest
from storage import basename


@dataclass(frozen=True)
class ManifestConfig:
    """Which dataset's annotation files and videos `jobs.manifest` lists, and where the manifest goes."""

    dataset: str
    videos: str
    out: str
    annotations: str | None = None
    split: int = 1
    label_map: str | None = None
    allow_missing: bool = False


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m jobs.manifest",
        description="Read a dataset's official annotation files into one manifest (one row per video).",
        add_help=add_help,
    )
    parser.add_argument(
        "dataset",
        choices=DATASETS,
        help="ucf101: folder with classInd.txt, trainlist0N.txt, testlist0N.txt; hmdb51: folder with the 153 "
        "<class>_test_splitN.txt files; kinetics: the CSV (label,youtube_id,time_start,time_end,split); "
        "folder: ROOT/<class>/<video> (or ROOT/<split>/<class>/<video>); csv: a path,label[,split] list",
    )
    parser.add_argument(
        "--annotations",
        help="annotation folder (ucf101, hmdb51) or CSV file (kinetics, csv); unused for folder. "
        "A local path or a URI (s3://, gs://, hdfs://), as every path here",
    )
    parser.add_argument("--videos", required=True, help="root folder under which the video files are looked up (a local path or URI)")
    default_split = ManifestConfig(dataset="", videos="", out="").split
    parser.add_argument(
        "--split", type=int, default=default_split, choices=(1, 2, 3), help="official split number for ucf101/hmdb51 (default %(default)s)"
    )
    parser.add_argument("--label-map", help="kinetics only: file with one label per line giving the class order (default: sorted labels)")
    parser.add_argument("--out", required=True, help="where to write the manifest (.parquet; a local path or URI)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="keep videos whose file is missing (exists=false) instead of failing",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ManifestConfig:
    return ManifestConfig(
        dataset=args.dataset,
        videos=args.videos,
        out=args.out,
        annotations=args.annotations,
        split=args.split,
        label_map=args.label_map,
        allow_missing=args.allow_missing,
    )


def config_path(out: str) -> str:
    """`m.config.json` beside the manifest `m.parquet`."""
    stem = out.rsplit(".", 1)[0] if "." in basename(out) else out
    return stem + ".config.json"


def main(cfg: ManifestConfig) -> int:
    check_locations(cfg.annotations, cfg.videos, cfg.label_map, outputs=(cfg.out,))
    manifest = load_dataset(cfg.dataset, cfg.annotations, cfg.videos, split=cfg.split, label_map=cfg.label_map)
    table = manifest_table(manifest.records, manifest.classes, manifest.dataset)
    print(summarize(manifest))
    missing = manifest.missing
    if missing and not cfg.allow_missing:
        return fail(
            f"{len(missing)} of {len(manifest.records)} videos are missing under {cfg.videos} (first: {missing[0].path}); "
            "fix --videos or pass --allow-missing to keep them with exists=false"
        )
    write_manifest(table, cfg.out)
    write_config(cfg, config_path(cfg.out))
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))

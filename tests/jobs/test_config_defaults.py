"""Each command's flag defaults are its configuration dataclasses' defaults: a default set in two places
cannot drift (a job given only its required flags builds the configuration the dataclasses describe)."""

from __future__ import annotations

import pytest

from jobs import evaluate, export, make_synthetic, manifest, preprocess, train, visualize
from pipeline.preprocess import PreprocessConfig
from pipeline.synthetic import SyntheticConfig
from trainers.config import TrainConfig

CASES = {
    "preprocess": (
        preprocess,
        ["--manifest", "m.parquet", "--out", "out"],
        lambda: preprocess.PreprocessJobConfig(run=PreprocessConfig(manifest="m.parquet", out="out")),
    ),
    "train": (
        train,
        ["--data", "d", "--model", "tsn_flow", "--out", "/tmp/run"],
        lambda: train.TrainJobConfig(train=TrainConfig(data="d", model="tsn_flow", out="/tmp/run")),
    ),
    "evaluate": (
        evaluate,
        ["--data", "d", "--run", "flow=runs/flow"],
        lambda: evaluate.EvaluateConfig(data="d", runs=(("flow", "runs/flow"),)),
    ),
    "visualize": (visualize, ["--data", "d", "--out", "f.png"], lambda: visualize.VisualizeConfig(data="d", out="f.png")),
    "export": (
        export,
        ["rawframes", "--data", "d", "--out", "o"],
        lambda: export.ExportConfig(format="rawframes", data="d", out="o"),
    ),
    "make_synthetic": (
        make_synthetic,
        ["--out", "videos"],
        lambda: make_synthetic.MakeSyntheticConfig(out="videos", dataset=SyntheticConfig()),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flag_defaults_are_the_dataclass_defaults(name):
    module, required, expected = CASES[name]
    config = module.config_from_args(module.get_args_parser().parse_args(required))
    assert config == expected()


def test_manifest_defaults_are_the_dataclass_defaults():
    args = manifest.get_args_parser().parse_args(["csv", "--annotations", "list.csv", "--videos", "v", "--out", "m.parquet"])
    config = manifest.config_from_args(args)
    assert config == manifest.ManifestConfig(dataset="csv", videos="v", out="m.parquet", annotations="list.csv")

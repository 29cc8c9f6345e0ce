"""jobs.evaluate follows each run: mirrored test views only for a run trained with flips, unless forced."""

from __future__ import annotations

import pytest

from jobs.evaluate import _views, config_from_args, get_args_parser, mirrors
from trainers.config import TrainConfig


@pytest.mark.parametrize(
    "mirror,trained_with_flips,header",
    [
        ("run", True, "10 crops (corners + centre, mirrored too)"),
        ("run", False, "5 crops (corners + centre, not mirrored: the run trained without flips)"),
        ("no", True, "5 crops (corners + centre, not mirrored: --mirror no)"),
        ("yes", False, "10 crops (corners + centre, mirrored too)"),
    ],
)
def test_the_header_states_the_views_each_run_gets(mirror, trained_with_flips, header):
    cfg = config_from_args(get_args_parser().parse_args(["--data", "d", "--run", "flow=r", "--crops", "10", "--mirror", mirror]))
    train = TrainConfig(data="d", model="tsn_flow", out="r", flip=trained_with_flips)
    assert mirrors(cfg, train) == header.startswith("10 crops")
    assert _views(cfg, train, mirrors(cfg, train)) == header

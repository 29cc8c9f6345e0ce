"""No behaviour change from a refactor: this checkout and a reference commit, given the same videos and the same
command lines, write the same manifest and the same shards, byte for byte.

The reference is the last commit that changed the output on purpose (583287b: each sample holds a member table, so
a loader reads only the members an example uses; before it 29b3dfc, member times as an int, so no PAX record per
member). Move it forward only in a commit
that changes the output on purpose, and say there what changed and why.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.synthetic import SyntheticConfig, generate_dataset
from schemas.sample import dali_index_of, sample_ranges
from tests.conftest import REPO, run_job
from tests.helpers import QUICK_FLOW, whole_shards

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REFERENCE = "583287b8f4d95157739429ba3fe1982d93d40f5e"

# A probe appended to the reference copy's pipeline/shards.py wraps `process_shard`: every call writes its pid and
# the file it came from, so the test can prove the shard tasks ran the reference code, not this checkout.
PROBE = """
_probed_process_shard = process_shard


def process_shard(*args, **kwargs):
    import os

    with open(os.environ["FLOWSHARD_PROBE"], "a") as probe:
        probe.write(f"{os.getpid()} {__file__}\\n")
    return _probed_process_shard(*args, **kwargs)
"""


def reference_tree(dest: Path) -> Path:
    """The reference commit's files, extracted with `git archive`; skips where the history is not at hand."""
    try:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", REFERENCE], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the reference commit {REFERENCE[:10]} is not in this checkout's git history ({e}); clone without --depth")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    with open(dest / "pipeline" / "shards.py", "a") as f:
        f.write(PROBE)
    return dest


def run_chain(tree: Path, videos: Path, work: Path, probe: Path, keep: Path) -> None:
    """manifest -> preprocess into `work`, each with `tree`'s own code (PYTHONPATH reaches the Ray workers), then
    the outputs moved to `keep`: both runs write to the same paths, which the outputs record."""
    env = {"PYTHONPATH": str(tree), "FLOWSHARD_PROBE": str(probe)}
    manifest, data = work / "manifest.parquet", work / "data"
    commands = [
        ("jobs.manifest", "ucf101", "--annotations", videos, "--videos", videos, "--split", 1, "--out", manifest),
        ("jobs.preprocess", "--manifest", manifest, "--out", data, "--modalities", "rgb,tvl1,warp_tvl1", "--videos-per-shard", 2)
        + tuple(QUICK_FLOW),
    ]
    for module, *args in commands:
        result = run_job(module, *map(str, args), env=env, cwd=tree)
        assert result.returncode == 0, f"{module} in {tree}:\n{result.stderr[-3000:]}"
    work.rename(keep)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_this_checkout_writes_what_the_reference_commit_wrote(tmp_path):
    ref = reference_tree(tmp_path / "reference")
    # The same input for both: H.264 encoding is not part of the contract (x264 gave one video a different
    # encoding in a few of ~40 processes here), decoding and everything after it is.
    videos = tmp_path / "videos"
    generate_dataset(SyntheticConfig(classes=2, videos_per_class=3, width=64, height=48, frames=8, camera_pan=1.5), videos)
    run_chain(ref, videos, tmp_path / "work", tmp_path / "ref_probe.txt", keep=tmp_path / "ref_out")
    run_chain(REPO, videos, tmp_path / "work", tmp_path / "new_probe.txt", keep=tmp_path / "new_out")

    calls = [line.split(" ", 1) for line in (tmp_path / "ref_probe.txt").read_text().splitlines()]
    assert [path for _, path in calls] == [str(ref / "pipeline" / "shards.py")] * 3, "each shard task must run the reference code"

    old, new = tmp_path / "ref_out", tmp_path / "new_out"
    assert pq.read_table(old / "manifest.parquet").equals(pq.read_table(new / "manifest.parquet"), check_metadata=True)
    old_shards, new_shards = files(old / "data" / "shards"), files(new / "data" / "shards")
    # 6 videos, 2 per shard, each tar with its DALI index beside it
    assert len(whole_shards(list(old_shards))) == 3 and sorted(new_shards) == sorted(old_shards)
    for name in old_shards:
        assert old_shards[name] == new_shards[name], f"shard file {name} differs from the reference commit's"
    # index.parquet: the same rows, each sample's byte range and head as its tar's headers place them
    old_index, new_index = pq.read_table(old / "data" / "index.parquet"), pq.read_table(new / "data" / "index.parquet")
    assert old_index.equals(new_index)
    for row in new_index.to_pylist():
        with open(new / "data" / "shards" / row["shard"], "rb") as tar:
            assert sample_ranges(dali_index_of(tar))[row["key"]] == (row["offset"], row["bytes"], row["head"])
    assert (old / "data" / "dataset.json").read_bytes() == (new / "data" / "dataset.json").read_bytes()
    # The same flags, the same configuration (compared as values: --shard-size-mb's default is now written as the
    # float the flag's type makes of a value given by hand, 1024.0 where the reference wrote 1024).
    # Flags that came after the reference, as a plain run writes them: unset.
    config = [json.loads((run / "data" / "preprocess.config.json").read_text()) for run in (old, new)]
    assert (config[1]["run"].pop("retry_failed"), config[1]["run"].pop("compare_plan"), config[1].pop("dry_run")) == (False, None, None)
    assert config[1]["run"]["process"]["decode"].pop("strict") is False
    assert config[1]["run"].pop("lease_seconds") == 60
    assert config[0] == config[1]

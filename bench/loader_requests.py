"""What the training loader asks object storage for, counted at the server: bytes and requests per example.

    python bench/loader_requests.py [--samples 8] [--frames 300]

Writes a dataset of `--samples` 300-frame samples (textured 170x128 RGB JPEGs and tvl1 flow JPEGs, as short side
128 gives), uploads it to moto's S3 server on 127.0.0.1, and reads it back through a counting HTTP proxy in front
of moto: one training epoch per recipe (tsn_rgb, tsn_flow, i3d_flow) and a 25-segment TSN evaluation, the loader in
this process. The reference is what each example uses, measured in the same run: the bytes of its chosen members
(the JPEGs its frames and flows come from), each with its 512-byte tar header. Issue 27's bounds: served bytes at
most 2.5x that, requests at most 2 x segments + 2 (TSN) or 6 (I3D). The same samples written without member tables
(as flowshard wrote them before; read whole, one ranged read per sample) are measured in the same run beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402

from bench.s3_proxy import Counter, s3_proxy  # noqa: E402
from schemas.sample import Sample, SampleMeta, encode_flow, encode_jpeg  # noqa: E402
from storage import Location  # noqa: E402
from tests.conftest import s3_env, start_moto, stop_process  # noqa: E402
from tests.helpers import write_dataset  # noqa: E402
from trainers.data import ExampleConfig, example_pipeline  # noqa: E402
from trainers.shard_reader import sample_table  # noqa: E402

RECIPES = {  # (config, train, the bound on requests per example)
    "tsn_rgb, 3 segments": (ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=64), True, 2 * 3 + 2),
    "tsn_flow, 3 x 5 flows": (ExampleConfig(arch="tsn", modality="tvl1", segments=3, new_length=5, input_size=64), True, 2 * 3 + 2),
    "i3d_flow, 16 flows at interval 2": (ExampleConfig(arch="i3d", modality="tvl1", clip_len=16, interval=2, input_size=64), True, 6),
    "evaluation, 25 segments, rgb": (ExampleConfig(arch="tsn", modality="rgb", segments=25, input_size=64), False, 2 * 25 + 2),
}


def textured_sample(key: str, label: int, frames: int, rng: np.random.Generator) -> Sample:
    h, w = 128, 170
    base = rng.integers(0, 255, (h + frames, w + frames, 3), dtype=np.uint8)
    base = (np.cumsum(np.cumsum(base.astype(np.float32), 0), 1) % 251).astype(np.uint8)
    rgb = [encode_jpeg(np.ascontiguousarray(base[i : i + h, i : i + w]), 95) for i in range(frames)]
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = 1.0
    flows = [encode_flow(flow + rng.normal(0, 0.3, flow.shape).astype(np.float32), quality=95) for _ in range(frames - 1)]
    meta = SampleMeta(key, label, f"c{label}", "train", "-", 30.0, frames, h, w, ("rgb", "tvl1"))
    return Sample(meta=meta, rgb=rgb, flow={"tvl1": flows})


def used_bytes(selection) -> int:
    """The bytes of the members an example uses, each with its 512-byte tar header (flow: both images)."""
    return sum(sum(len(p) + 512 for p in m) if isinstance(m, tuple) else len(m) + 512 for m in selection.members)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowshard-requests-"))
    rng = np.random.default_rng(0)
    half = args.samples // 2
    samples = [textured_sample(f"v{i}", i % 2, args.frames, rng) for i in range(args.samples)]
    layouts = {"member tables (read by member)": "data", "no member tables (read whole)": "old"}
    for folder in layouts.values():
        shards = {"train-000000.tar": samples[:half], "train-000001.tar": samples[half:]}
        write_dataset(work / folder, shards, member_tables=folder == "data")
    sample_mb = sum(p.stat().st_size for p in (work / "data" / "shards").glob("*.tar")) / args.samples / 2**20
    server, port = start_moto()
    counter, proxy = Counter(), None
    try:
        os.environ.update(s3_env(port))
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        for folder in layouts.values():
            target = Location(f"s3://{bucket}/{folder}")
            for path in (work / folder).rglob("*"):
                if path.is_file():
                    target.write_bytes(path.read_bytes(), str(path.relative_to(work / folder)))
        proxy, proxy_port = s3_proxy(port, counter)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy_port}"  # the loader reads through the proxy
        rows = []
        for name, (cfg, train, bound) in RECIPES.items():
            for layout, folder in layouts.items():
                table = sample_table(f"s3://{bucket}/{folder}", "train")  # index.parquet, dataset.json: once per epoch, not counted
                counter.reset()
                selections = list(example_pipeline(table, cfg, train, seed=1, decode=False))
                used = sum(used_bytes(s) for s in selections)
                n = len(selections)
                gets = sum(counter.requests.values())
                rows.append((name, layout, counter.bytes / n / 2**20, gets / n, bound, counter.bytes / used, dict(counter.requests)))
    finally:
        if proxy is not None:
            proxy.shutdown()
        stop_process(server)
    print(
        f"\n{args.samples} samples of {args.frames} frames ({sample_mb:.1f} MB each, rgb + tvl1 JPEGs), moto S3 behind a counting proxy\n"
    )
    print("| recipe | shards | MB served per example | requests per example (bound) | served / used (bound 2.5x) | requests |")
    print("|---|---|---|---|---|---|")
    for name, layout, mb, requests, bound, ratio, by_method in rows:
        methods = ", ".join(f"{k} {v}" for k, v in sorted(by_method.items()))
        print(f"| {name} | {layout} | {mb:.3f} | {requests:.1f} ({bound}) | {ratio:.2f}x | {methods} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

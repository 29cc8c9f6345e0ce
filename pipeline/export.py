"""A dataset's samples in the layouts other tools read. Pure: a decoded sample in, file names and bytes out;
`jobs.export` writes them.

MMAction2 rawframes, as its `tools/data/build_rawframes.py` (level 2) and `build_file_list.py` lay them out:

    OUT/<class>/<video>/img_00001.jpg ...        RGB frames, numbered from 1 (RawframeDataset's start_index 1)
    OUT/<class>/<video>/flow_x_00001.jpg ...     flow i -> i+1 as 8-bit x and y images, numbered from 1:
    OUT/<class>/<video>/flow_y_00001.jpg ...     one fewer than the frames
    OUT/<name>_<subset>_split_<n>_rawframes.txt       one line per video: `<class>/<video> <total_frames> <label>`
    OUT/<name>_<subset>_split_<n>_rawframes_flow.txt  the same with the flow count, for flow models

`total_frames` counts the `img_` files in the first list (as build_file_list.py writes it) and the `flow_x_`
files in the second (build_file_list.py counts them but never writes that list: training flow from the first
would ask for one flow past the last); labels are 0-based; a split named `test` is MMAction2's `val` subset
unless the dataset has a `val` split too. Class folders are named as `build_file_list.py` names Kinetics'
classes: quotes dropped, spaces as underscores (a list line is split on whitespace).
"""

from __future__ import annotations

import re

from schemas.manifest import name_problem
from schemas.sample import Sample, decode_flow, encode_flow

RGB_TEMPLATE = "img_{:05d}.jpg"
FLOW_TEMPLATE = "flow_{}_{:05d}.jpg"  # RawframeDataset's filename_tmpl for flow: 'flow_{}_{:05d}.jpg'
START_INDEX = 1


def class_folder(name: str) -> str:
    """A class name as a folder name of one word (mmaction2's `convert_label`, with any whitespace as '_', since a
    list line is split on whitespace); 'unlabelled' for no class, '_' for each '.' or quote of a name that dropping
    quotes would leave empty or a folder's alias."""
    if not name:
        return "unlabelled"
    folder = re.sub(r"\s", "_", name.replace('"', "").replace("'", ""))
    return folder if folder not in ("", ".", "..") else re.sub(r"[.'\"]", "_", name)


def rawframes_dir(sample: Sample) -> str:
    """The video's folder relative to the rawframes root: `<class>/<video id>`.

    Raises:
        ValueError: the sample's class name or key is no name (`name_problem`): its dataset was changed after
            preprocessing, which checks both; nothing may be written outside the export's folder.
    """
    meta = sample.meta
    named = [("key", sample.key)] + ([("class name", meta.label_name)] if meta.label_name else [])  # "": unlabelled
    for what, name in named:
        problem = name_problem(name)
        if problem:
            raise ValueError(
                f"sample {sample.key!r}: its {what} {name!r} {problem}; the dataset was changed after preprocessing (which refuses "
                "such names): rebuild it from its annotation files"
            )
    return f"{class_folder(meta.label_name)}/{sample.key}"


def rawframe_files(sample: Sample, flow: str | None) -> dict[str, bytes]:
    """{file name: bytes} of one video's rawframes folder: the RGB JPEGs as stored, and `flow`'s x and y images,
    as stored where they are 8-bit JPEGs, else quantized to 8 bits with the dataset's bound and JPEG-encoded at
    its quality."""
    files = {RGB_TEMPLATE.format(i + START_INDEX): data for i, data in enumerate(sample.rgb)}
    if flow is not None:
        meta = sample.meta
        for i, parts in enumerate(sample.flow[flow]):
            if meta.flow_encoding == "jpeg":
                x, y = parts
            else:
                field = decode_flow(parts, meta.flow_encoding, meta.flow_bound)
                x, y = encode_flow(field, "jpeg", meta.flow_bound, meta.jpeg_quality)
            files[FLOW_TEMPLATE.format("x", i + START_INDEX)] = x
            files[FLOW_TEMPLATE.format("y", i + START_INDEX)] = y
    return files


def list_lines(sample: Sample, flow: str | None) -> tuple[str | None, str | None]:
    """The video's lines in the RGB and the flow list (`<class>/<video> <count> <label>`); None for a list the
    video has nothing for (no RGB stored, no flow exported, or a single frame and so no flow)."""
    meta, folder = sample.meta, rawframes_dir(sample)
    rgb = f"{folder} {meta.num_frames} {meta.label}\n" if sample.rgb else None
    flows = f"{folder} {meta.num_flows} {meta.label}\n" if flow is not None and meta.num_flows else None
    return rgb, flows


def list_name(name: str, split: str, number: int, splits: list[str], flow: bool = False) -> str:
    """A split's list file, as build_file_list.py names it (`test` is MMAction2's `val` where the dataset has no
    `val` split of its own); `_flow` added for the flow counts."""
    subset = "val" if split == "test" and "val" not in splits else split
    return f"{name}_{subset}_split_{number}_rawframes{'_flow' if flow else ''}.txt"

"""A dataset's generations: the manifest rows its shards were built from, kept beside them run by run, so that
a grown manifest adds shards instead of rebuilding them.

Generation 0 holds the first build's rows. A later run whose manifest keeps those rows and adds new ones adds a
generation of the new rows (with --retry-failed, also of the videos that failed); `plan.plan_generations` puts
each generation into shards numbered after the earlier ones', so a finished shard is never rewritten. A video's
latest generation is the one its sample and result come from. Pure, but for reading and writing the rows file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.manifest import VideoRecord
from storage import Location

from .plan import ShardSpec
from .shards import PROGRESS_DIR, ShardResult, VideoResult

ROWS_FILE = "manifest_rows.parquet"  # under _progress/: every generation's rows
ROW_FIELDS = ("video_id", "path", "label", "split", "start_sec", "end_sec")  # what the plan and the shards depend on
ROWS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("split", pa.string()),
        ("start_sec", pa.float64()),
        ("end_sec", pa.float64()),
        ("generation", pa.int64()),
    ]
)


def rows_table(generations: Sequence[Sequence[VideoRecord]]) -> pa.Table:
    """The kept rows: `ROW_FIELDS` of every generation's records, with the generation's number."""
    return pa.Table.from_pylist(
        [{**_fields(r), "generation": g} for g, records in enumerate(generations) for r in records], schema=ROWS_SCHEMA
    )


def read_generations(out: Location) -> list[list[VideoRecord]] | None:
    """The generations kept in `out` (records holding `ROW_FIELDS` only), or None where no rows were kept (nothing
    built yet, or built before flowshard kept them). Rows kept before generations were numbered are generation 0."""
    if not out.is_file(PROGRESS_DIR, ROWS_FILE):
        return None
    with out.open_input_file(PROGRESS_DIR, ROWS_FILE) as f:
        rows = pq.read_table(f).to_pylist()
    generations: list[list[VideoRecord]] = []
    for row in rows:
        g = row.get("generation") or 0
        generations += [[] for _ in range(g + 1 - len(generations))]
        generations[g].append(
            VideoRecord(row["video_id"], row["path"], row["label"], "", row["split"], "", row["start_sec"], row["end_sec"])
        )
    return generations


def write_generations(out: Location, generations: Sequence[Sequence[VideoRecord]]) -> None:
    """Keep the rows of every generation in `out` (atomically)."""
    with out.atomic_write(PROGRESS_DIR, ROWS_FILE) as stream:
        pq.write_table(rows_table(generations), stream)


@dataclass(frozen=True)
class Changes:
    """How a manifest differs from the rows a dataset holds, by video id."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (video id, the fields that differ)

    def describe(self, named: int = 3) -> str:
        """In words: "2 videos added (v_a, v_b), 1 video removed (v_c), 1 changed (v_d: path)"."""

        def some(ids: Sequence[str]) -> str:
            return ", ".join(ids[:named]) + (f", ... {len(ids) - named} more" if len(ids) > named else "")

        parts = [
            f"{len(ids)} {'video' if len(ids) == 1 else 'videos'} {what} ({some(ids)})"
            for what, ids in (("added", self.added), ("removed", self.removed))
            if ids
        ]
        changed = [f"{v}: {', '.join(fields)}" for v, fields in self.changed]
        return ", ".join(parts + ([f"{len(changed)} changed ({some(changed)})"] if changed else [])) or "nothing changed"


def changes(kept: Sequence[VideoRecord], manifest: Sequence[VideoRecord]) -> Changes:
    """How `manifest` differs from the `kept` rows (each video's latest), in manifest order then kept order."""
    before = {r.video_id: _fields(r) for r in kept}
    after = {r.video_id: _fields(r) for r in manifest}
    return Changes(
        added=tuple(v for v in after if v not in before),
        removed=tuple(v for v in before if v not in after),
        changed=tuple(
            (v, tuple(k for k in ROW_FIELDS if before[v][k] != row[k])) for v, row in after.items() if v in before and before[v] != row
        ),
    )


def latest_rows(generations: Sequence[Sequence[VideoRecord]]) -> dict[str, VideoRecord]:
    """Each video's row in the latest generation that holds it."""
    return {r.video_id: r for records in generations for r in records}


def grow(
    generations: Sequence[Sequence[VideoRecord]], manifest: Sequence[VideoRecord], failed: set[str], retry_failed: bool
) -> list[VideoRecord]:
    """The records of the generation a run over `manifest` adds: the manifest's new rows, then with `retry_failed`
    the videos whose latest result is a failure (`failed`), as the manifest now lists them. Empty: nothing to add.

    Raises:
        ValueError: the manifest removes a video the dataset holds, or changes one's row (only a failed video's row
            may change, when it is retried); the message names them.
    """
    diff = changes(list(latest_rows(generations).values()), manifest)
    retried_changes = {v for v, _ in diff.changed if v in failed and retry_failed}
    refused = Changes(removed=diff.removed, changed=tuple(c for c in diff.changed if c[0] not in retried_changes))
    if refused.removed or refused.changed:
        hint = ""
        if any(v in failed for v, _ in refused.changed):
            hint = " (a failed video's row may change when it is retried: pass --retry-failed)"
        elif any("label" in fields for _, fields in refused.changed):
            hint = " (labels are places in the manifest's class list: a class added among the old ones moves those after it)"
        raise ValueError(
            f"the manifest removes or changes videos the dataset was built from: {refused.describe()}; a dataset grows "
            f"only by new rows{hint}: restore them, or pass --overwrite to rebuild it, or choose another --out"
        )
    new = set(diff.added) | (failed if retry_failed else set())
    return [r for r in manifest if r.video_id in new]


def latest_results(specs: Sequence[ShardSpec], finished: dict[str, ShardResult]) -> dict[str, VideoResult]:
    """Each video's result from the latest planned shard that holds it, where that shard is `finished`; in plan
    order. A video retried in a later generation thus has one result, the retry's."""
    last = {r.video_id: spec.name for spec in specs for r in spec.records}
    results = {}
    for spec in specs:
        if spec.name in finished:
            for v in finished[spec.name].videos:
                if last.get(v.video_id) == spec.name:
                    results[v.video_id] = v
    return results


def _fields(record: VideoRecord) -> dict:
    return {name: getattr(record, name) for name in ROW_FIELDS}

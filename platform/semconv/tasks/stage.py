"""The ``tasks`` stage: ``items/``, ``sequences/``, ``splits/``, ``item_codes/`` -> ``sft/``.

``sft/`` holds Parquet shards (``task, prompt, label, split, user_id, item_id``), ``sa_init.json``
when ``tasks.sa_init`` is on, and a manifest that counts rows per task and split. A complete
``sft/`` is kept as is; the pipeline deletes it first when the tasks config or an input changed
(:mod:`semconv.lineage`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from semconv.lineage import stage_run
from semconv.tasks.build import sft_pieces
from semconv.tasks.inputs import load_inputs
from semconv.tasks.rows import empty_table

if TYPE_CHECKING:
    from semconv.config import PipelineConfig

SFT = "sft"
SA_INIT_FILE = "sa_init.json"


class ShardWriter:
    """``part-00000.parquet``, ... of at most ``rows_per_shard`` rows, written as blocks come."""

    def __init__(self, out: Path, rows_per_shard: int):
        self.out, self.limit = out, rows_per_shard
        self.buffer: list[pa.Table] = []
        self.buffered = self.files = self.rows = 0

    def add(self, block: pa.Table) -> None:
        self.buffer.append(block)
        self.buffered += block.num_rows
        while self.buffered >= self.limit:
            self._flush(self.limit)

    def close(self) -> None:
        if self.buffered or not self.files:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.buffer) if self.buffer else empty_table()
        pq.write_table(table.slice(0, n), self.out / f"part-{self.files:05d}.parquet")
        rest = table.slice(n)
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        self.files += 1
        self.rows += n


def run_tasks(cfg: PipelineConfig) -> dict[str, str]:
    """Build the Alignment Tasks' SFT rows; returns ``{"sft": path}``.

    Reads ``cfg.tasks``, ``cfg.seed`` and ``cfg.ray`` (for Ray Data on large tables). The rows
    are written as they are built (:func:`sft_pieces`): the stage holds its inputs and one
    shard, never all of ``sft/``.
    """
    run = stage_run(cfg, "tasks")
    if run.is_complete(SFT):
        return {SFT: run.path(SFT)}
    inputs = load_inputs(run)
    summary: dict = {}
    manifest: dict = {
        "num_items": inputs.num_items,
        "code_levels": int(inputs.codes.shape[1]),
        "tasks_config": cfg.tasks.model_dump(mode="json"),  # finetune reads the objective
    }
    with run.writing(SFT, manifest) as tmp:
        writer = ShardWriter(tmp, cfg.tasks.rows_per_shard)
        for block in sft_pieces(inputs, cfg.tasks, cfg.seed, cfg.ray, summary):
            writer.add(block)
        writer.close()
        sa_init = summary.pop("sa_init", None)
        if sa_init is not None:
            (tmp / SA_INIT_FILE).write_text(json.dumps(sa_init, indent=1, sort_keys=True))
        counts = summary.pop("rows_per_task")
        manifest.update({
            "rows": writer.rows,
            "rows_per_task": {t: c["train"] + c["valid"] for t, c in counts.items()},
            "rows_per_task_split": counts,
            "summary": summary,
            "sa_init": SA_INIT_FILE if sa_init is not None else None,
        })
    print(f"tasks: sft/ {writer.rows:,} rows (" + ", ".join(
        f"{t} {n:,}" for t, n in manifest["rows_per_task"].items() if n) + ")", flush=True)
    return {SFT: run.path(SFT)}

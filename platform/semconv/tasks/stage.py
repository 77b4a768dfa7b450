"""The ``tasks`` stage: ``items/``, ``sequences/``, ``splits/``, ``item_codes/`` -> ``sft/``.

``sft/`` holds Parquet shards (``task, prompt, label, split, user_id, item_id``), ``sa_init.json``
when ``tasks.sa_init`` is on, and a manifest that counts rows per task and split. A complete
``sft/`` is kept as is; the pipeline deletes it first when the tasks config or an input changed
(:mod:`semconv.lineage`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from semconv.lineage import stage_run
from semconv.tasks.build import build_sft
from semconv.tasks.inputs import load_inputs

if TYPE_CHECKING:
    from semconv.config import PipelineConfig

SFT = "sft"
SA_INIT_FILE = "sa_init.json"


def run_tasks(cfg: PipelineConfig) -> dict[str, str]:
    """Build the Alignment Tasks' SFT rows; returns ``{"sft": path}``.

    Reads ``cfg.tasks``, ``cfg.seed`` and ``cfg.ray`` (for Ray Data on large tables).
    """
    run = stage_run(cfg, "tasks")
    if run.is_complete(SFT):
        return {SFT: run.path(SFT)}
    inputs = load_inputs(run)
    result = build_sft(inputs, cfg.tasks, cfg.seed, cfg.ray)
    table = result.table
    counts = result.summary["rows_per_task"]
    manifest = {
        "rows": table.num_rows,
        "rows_per_task": {t: c["train"] + c["valid"] for t, c in counts.items()},
        "rows_per_task_split": counts,
        "num_items": inputs.num_items,
        "code_levels": int(inputs.codes.shape[1]),
        "summary": {k: v for k, v in result.summary.items() if k != "rows_per_task"},
        "sa_init": SA_INIT_FILE if result.sa_init is not None else None,
        "tasks_config": cfg.tasks.model_dump(mode="json"),  # finetune reads the objective
    }
    with run.writing(SFT, manifest) as tmp:
        n = max(1, min(cfg.tasks.num_shards, table.num_rows or 1))
        step = -(-table.num_rows // n) if table.num_rows else 0
        for i in range(n):
            pq.write_table(table.slice(i * step, step) if step else table, tmp / f"part-{i:05d}.parquet")
        if result.sa_init is not None:
            (tmp / SA_INIT_FILE).write_text(json.dumps(result.sa_init, indent=1, sort_keys=True))
    print(f"tasks: sft/ {table.num_rows:,} rows (" + ", ".join(
        f"{t} {n:,}" for t, n in manifest["rows_per_task"].items() if n) + ")", flush=True)
    return {SFT: run.path(SFT)}

"""Assemble every enabled Alignment Task into one ``sft/`` table (plus SA-Init keywords).

Behaviour rows (sequential + negative) scale with the number of users, so they are built by
:func:`behaviour.behaviour_rows` over batches of the protocol's train rows: in process for small
data, with Ray Data ``map_batches`` for large tables (``tasks.ray_data``), and handed on block by
block (:func:`sft_pieces`) so the stage writes them as they come. Both paths give the same rows
in the same order. History-level rows (``tasks.sequential_objective: history``, the
default; :mod:`semconv.tasks.history`) are one per user (or per window of a long history), built
from ``sequences/`` by the same local / Ray Data path. Item- and token-level tasks scale with the
catalogue and run in process.

Task weights apply to train rows only; held-out rows are the protocol's ``valid`` rows in the
inference prompt of the chosen objective (a seeded subset of ``max_valid_rows``), for the fine-tune stage's eval loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.ray_env import init_ray
from semconv.tasks.behaviour import BATCH_COLUMNS, BehaviourSpec, behaviour_rows, heldout_rows
from semconv.tasks.config import TasksConfig
from semconv.tasks.history import HISTORY_COLUMNS, heldout_history_rows, history_batch
from semconv.tasks.inputs import TaskInputs, full_histories
from semconv.tasks.keywords import code_keywords
from semconv.tasks.query import query_rows
from semconv.tasks.rows import SFT_SCHEMA, empty_table
from semconv.tasks.sampling import repeat_counts
from semconv.tasks.templates import TASK_NAMES, resolve_templates
from semconv.tasks.text import text_rows
from semconv.tasks.token_align import ts_align_rows


@dataclass
class SFTResult:
    table: pa.Table
    sa_init: dict[str, list[str]] | None
    summary: dict[str, Any] = field(default_factory=dict)


def prompt_objective(cfg: TasksConfig) -> bool:
    """Whether next-item prediction is taught with the paper's per-prompt sequential rows."""
    return cfg.sequential and cfg.sequential_objective == "prompt"


def behaviour_input(inputs: TaskInputs, cfg: TasksConfig, seed: int) -> pa.Table:
    """The protocol's train rows that the task weights use, with the columns
    :func:`behaviour_rows` reads; rows drawn zero times are never derived (at a weight of 0.01
    the others would be 99% of the memory), and each row keeps its global ``row`` number."""
    n = inputs.num_train_rows()
    zeros = np.zeros(n, dtype=np.int64)
    seq = repeat_counts(n, cfg.weight("sequential"), seed, "sequential") if prompt_objective(cfg) else zeros
    use_neg = cfg.negative and cfg.negative_ratio > 0
    neg = repeat_counts(n, cfg.weight("negative"), seed, "negative") if use_neg else zeros
    keep = (seq > 0) | (neg > 0)
    train = inputs.rows("train", keep)
    users = train.column("user_id").to_numpy().astype(np.int64)
    return pa.table(
        {
            "row": np.flatnonzero(keep).astype(np.int64),
            "user_id": users,
            "history": train.column("history"),
            "target": train.column("target"),
            "full_history": full_histories(inputs, users),
            "seq_repeats": seq[keep],
            "neg_repeats": neg[keep],
        }
    ).select(list(BATCH_COLUMNS))


Blocks = Callable[[], Iterator[pa.Table]]  # a re-iterable source of output blocks


def _map_local(fn: Callable[..., pa.Table], batches: pa.Table, size: int, **kwargs: Any) -> Blocks:
    parts = [fn(batches.slice(i, size), **kwargs) for i in range(0, batches.num_rows, size)]
    return lambda: iter(parts)


def _map_ray(fn: Callable[..., pa.Table], batches: pa.Table, size: int, ray_cfg: Any, **kwargs: Any) -> Blocks:
    """``fn`` over batches of ``size`` rows as Ray Data tasks, blocks in the local path's order.
    The blocks stay in the object store (spilled to disk when large); the driver fetches one at a
    time as they are written."""
    import ray

    init_ray(getattr(ray_cfg, "address", None), getattr(ray_cfg, "num_cpus", None))  # no-op if running
    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # same row order as the local path
    try:
        blocks = [batches.slice(i, size) for i in range(0, batches.num_rows, size)] or [batches]
        ds = ray.data.from_arrow(blocks).map_batches(  # one block per batch: parallel tasks
            fn, batch_format="pyarrow", batch_size=size, fn_kwargs=kwargs,
        )
        refs = ds.to_arrow_refs()
    finally:
        ctx.execution_options.preserve_order = previous
    return lambda: (ray.get(ref) for ref in refs)


def _map_rows(fn: Callable[..., pa.Table], batches: pa.Table, cfg: TasksConfig, ray_cfg: Any,
              **kwargs: Any) -> tuple[Blocks, bool]:
    """``fn`` over ``tasks.batch_size`` batches, with Ray Data for large inputs; (blocks, used Ray)."""
    if use_ray_data(cfg, batches.num_rows):
        return _map_ray(fn, batches, cfg.batch_size, ray_cfg, **kwargs), True
    return _map_local(fn, batches, cfg.batch_size, **kwargs), False


def _of_task(blocks: Blocks, task: str | None = None) -> Iterator[pa.Table]:
    """The non-empty blocks in the ``sft/`` schema, only ``task``'s rows when given."""
    for b in blocks():
        if task is not None:
            b = b.filter(pc.equal(b.column("task"), task))
        if b.num_rows:
            yield b.select(SFT_SCHEMA.names).cast(SFT_SCHEMA)


def use_ray_data(cfg: TasksConfig, train_rows: int) -> bool:
    return cfg.ray_data == "on" or (cfg.ray_data == "auto" and train_rows >= cfg.ray_min_rows)


def _valid_subset(inputs: TaskInputs, cfg: TasksConfig, seed: int) -> pa.Table:
    valid = inputs.rows("valid")
    if cfg.max_valid_rows is not None and valid.num_rows > cfg.max_valid_rows:
        pick = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(valid.num_rows)
        valid = valid.take(pa.array(np.sort(pick[: cfg.max_valid_rows])))
    return valid


def history_task(inputs: TaskInputs, cfg: TasksConfig, seed: int, ray_cfg: Any = None) -> tuple[list[Iterable[pa.Table]], bool]:
    """History-level train rows (weighted per user; Ray Data for many users) and held-out rows
    in the history format, as block sources; and whether Ray Data ran."""
    seqs = inputs.sequences
    histories = seqs.column("history")
    max_len = inputs.context
    batches = pa.table({
        "user_id": seqs.column("user_id").cast(pa.int64()), "history": histories,
        "repeats": repeat_counts(seqs.num_rows, cfg.weight("history"), seed, "history"),
    }).select(list(HISTORY_COLUMNS))
    train, ray_on = _map_rows(history_batch, batches, cfg, ray_cfg, codes=inputs.codes, max_len=max_len)
    return [_of_task(train), [heldout_history_rows(_valid_subset(inputs, cfg, seed), inputs.codes)]], ray_on


def add_counts(counts: dict[str, dict[str, int]], table: pa.Table) -> None:
    """Add ``table``'s rows to ``{task: {"train": n, "valid": n}}``."""
    if table.num_rows:
        grouped = table.group_by(["task", "split"]).aggregate([([], "count_all")])
        for task, split, n in zip(*(grouped.column(c).to_pylist() for c in ("task", "split", "count_all"))):
            counts.setdefault(task, {"train": 0, "valid": 0})[split] += n


def sft_pieces(inputs: TaskInputs, cfg: TasksConfig, seed: int, ray_cfg: Any = None,
               summary: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """Every enabled task's rows, in ``templates.TASK_NAMES`` order (train before valid), one
    block at a time, so that a writer never holds them all: the rows that grow with the users
    (behaviour, history) come in ``tasks.batch_size`` blocks; catalogue-sized tasks whole.
    ``summary`` is filled as the blocks go by (``rows_per_task`` complete at the end) and holds
    ``sa_init``'s keywords when asked for."""
    seed = cfg.seed if cfg.seed is not None else seed
    summary = {} if summary is None else summary
    summary["seed"] = seed
    templates = resolve_templates(cfg.templates)
    weights = {t: cfg.weight(t) for t in TASK_NAMES}
    codes = inputs.codes
    sources: dict[str, list[Iterable[pa.Table]]] = {t: [] for t in TASK_NAMES}

    if prompt_objective(cfg) or (cfg.negative and cfg.negative_ratio > 0):
        batches = behaviour_input(inputs, cfg, seed)
        spec = BehaviourSpec(
            seed=seed, num_items=inputs.num_items, sequential_templates=templates["sequential"],
            negative_templates=templates["negative"], negative_ratio=cfg.negative_ratio,
        )
        rows, summary["ray_data"] = _map_rows(behaviour_rows, batches, cfg, ray_cfg, codes=codes, spec=spec)
        for task in ("sequential", "negative"):
            sources[task].append(_of_task(rows, task))
    if prompt_objective(cfg):
        sources["sequential"].append([heldout_rows(_valid_subset(inputs, cfg, seed), codes, templates["sequential"][0])])
    elif cfg.sequential:
        blocks, ray_on = history_task(inputs, cfg, seed, ray_cfg)
        sources["history"] += blocks
        summary["ray_data"] = summary.get("ray_data", False) or ray_on
    if cfg.text:
        for task, table in text_rows(inputs.items, codes, templates, weights, seed, cfg.max_text_words).items():
            sources[task].append([table])
    if cfg.query:
        table, summary["query"] = query_rows(
            inputs, cfg.query_source, templates["query2item"], weights["query2item"], seed,
            cfg.max_text_words, cfg.query_keywords,
        )
        sources["query2item"].append([table])
    keywords = None
    if cfg.sa_init or cfg.ts_align:
        items = inputs.items
        keywords = code_keywords(
            items.column("title").to_pylist(), items.column("description").to_pylist(), codes,
            cfg.keywords_per_token,
        )
    if cfg.ts_align and keywords is not None:
        for task, table in ts_align_rows(keywords, templates, weights, seed).items():
            sources[task].append([table])
    if cfg.sa_init:
        summary["sa_init"] = keywords
    counts = {t: {"train": 0, "valid": 0} for t in TASK_NAMES}
    for task in TASK_NAMES:
        for source in sources[task]:
            for block in source:
                if block.num_rows:
                    block = block.cast(SFT_SCHEMA)
                    add_counts(counts, block)
                    yield block
    summary["rows_per_task"] = counts


def build_sft(inputs: TaskInputs, cfg: TasksConfig, seed: int, ray_cfg: Any = None) -> SFTResult:
    """:func:`sft_pieces` in one table (tests, benchmarks; the stage writes them as they come)."""
    summary: dict[str, Any] = {}
    tables = list(sft_pieces(inputs, cfg, seed, ray_cfg, summary))
    table = pa.concat_tables(tables) if tables else empty_table()
    sa_init = summary.pop("sa_init", None)
    return SFTResult(table=table, sa_init=sa_init, summary=summary)

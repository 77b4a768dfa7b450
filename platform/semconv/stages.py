"""The stage registry: the one list of stages, what each reads and writes, and what config it uses.

The pipeline runner, the CLI (``semconv <stage>``, ``jobs/*.py``), the ablations and docs/pipeline.md's
stage table all come from :data:`STAGES`. ``config`` names the config sections or keys a stage's
artifacts depend on (a section means every key under it); ``ignore`` names keys under them that
do not change what the stage writes (threads, actors, checkpoint and log cadence, restarts, shard
counts, inference batch sizes), each listed in its section's docstring too. Both feed the
fingerprint in every artifact's manifest (:mod:`semconv.lineage`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    func: str  # "module:function"; the function takes the PipelineConfig and returns artifact paths
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    config: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    output: str = ""  # docs/pipeline.md's description of what it writes
    format: int = 1  # bumped when what it writes changes shape for the same config: older builds rebuild

    @property
    def job(self) -> str:
        return f"jobs/{self.name}.py"

    def function(self) -> Callable[[Any], dict[str, str]]:
        module, func = self.func.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "semconv.data.prepare:run_prepare", (), ("items", "sequences", "splits"),
          ("prepare",), ("prepare.num_shards", "prepare.ray_data", "prepare.ray_min_mb", "prepare.num_blocks"),
          "`items/`, `sequences/`, `splits/`", format=2),  # 2: splits/ holds bounds, not prefix rows
    Stage("embed", "semconv.embed.stage:run_embed", ("items", "sequences", "splits"), ("item_emb", "item_text_emb"),
          ("embed", "seed"),
          ("embed.cf.cpus_per_worker", "embed.cf.checkpoint_every", "embed.text_batch_size",
           "embed.text_actors"),
          "`item_emb/` (+ CF model and its training log), `item_text_emb/`"),
    Stage("tokenize", "semconv.tokenize.stage:run_tokenize", ("item_emb", "item_text_emb"),
          ("codebook", "item_codes"), ("tokenize", "seed"),
          ("tokenize.checkpoint_every", "tokenize.max_failures"),
          "`codebook/` (+ `metrics.json`), `item_codes/`"),
    Stage("tasks", "semconv.tasks.stage:run_tasks", ("items", "sequences", "splits", "item_codes"),
          ("sft",), ("tasks", "seed"),
          ("tasks.rows_per_shard", "tasks.ray_data", "tasks.ray_min_rows", "tasks.batch_size"),
          "`sft/`"),
    Stage("finetune", "semconv.finetune.stage:run_finetune", ("sft",), ("model",),
          ("finetune", "tokenize.levels", "tokenize.codes_per_level", "tasks.sa_init", "seed"),
          ("finetune.checkpoint_every", "finetune.log_every", "finetune.max_failures",
           "finetune.cpus_per_worker"),
          "`model/` (LoRA adapter, or the whole model with `num_layers` / `method: full`; tokenizer with "
          "code tokens, `recommender.json`, `train_metrics.json`)"),
    Stage("precache", "semconv.inference.stage:run_precache", ("sequences", "splits", "item_codes", "model"),
          ("precache",), ("precache", "prepare.max_len", "finetune.base_model", "seed"),
          ("precache.batch_size", "precache.sort_window", "precache.num_actors",
           "precache.cpus_per_actor", "precache.threads_per_actor", "precache.share_prefix",
           "precache.users_per_shard"),
          "`precache/` (top-K per user, manifest)"),
    Stage("evaluate", "semconv.evaluate.stage:run_evaluate",
          ("items", "sequences", "splits", "item_emb", "codebook", "item_codes", "sft", "model", "precache"),
          ("report",),
          ("evaluate", "precache.exclude_history", "precache.num_beams", "prepare.max_len", "finetune.base_model",
           "finetune.code_softmax", "finetune.pack_len", "finetune.max_minutes", "tokenize.levels",
           "tokenize.codes_per_level", "seed"),
          ("evaluate.sasrec.num_threads", "evaluate.scratch.num_threads"),
          "`report/` (`metrics.json`, `report.md`, plots)"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in _BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(NAMES)}")
    return _BY_NAME[name]


def producer(artifact: str) -> Stage:
    """The stage that writes ``artifact``."""
    for s in STAGES:
        if artifact in s.writes:
            return s
    raise ValueError(f"no stage writes {artifact!r}")


def downstream(name: str) -> list[str]:
    """Stages that read, directly or not, what ``name`` writes, in pipeline order."""
    changed = set(stage(name).writes)
    out = []
    for s in STAGES[NAMES.index(name) + 1:]:
        if changed & set(s.reads):
            out.append(s.name)
            changed |= set(s.writes)
    return out


def stage_table() -> list[str]:
    """The stage table of docs/pipeline.md (a test keeps the two equal)."""
    lines = ["| stage | job | reads | writes | config in its fingerprint |",
             "| --- | --- | --- | --- | --- |"]
    for s in STAGES:
        reads = ", ".join(f"`{a}/`" for a in s.reads) or "the raw data (`prepare.dataset` or files)"
        config = ", ".join(f"`{k}`" for k in s.config)
        lines.append(f"| {s.name} | `{s.job}` | {reads} | {s.output} | {config} |")
    return lines


if __name__ == "__main__":
    print("\n".join(stage_table()))

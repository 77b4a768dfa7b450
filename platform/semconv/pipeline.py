"""Run the stages in order; each skips its complete artifacts, so a rerun resumes at once."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Sequence

from semconv.config import PipelineConfig

log = logging.getLogger(__name__)

# stage name -> "module:function"; the function takes the config and returns artifact paths
STAGES: dict[str, str] = {
    "prepare": "semconv.data.prepare:run_prepare",
    "embed": "semconv.embed.stage:run_embed",
    "tokenize": "semconv.tokenize.stage:run_tokenize",
    "tasks": "semconv.tasks.stage:run_tasks",
    "finetune": "semconv.finetune.stage:run_finetune",
    "precache": "semconv.inference.stage:run_precache",
    "evaluate": "semconv.evaluate.stage:run_evaluate",
}


def stage_function(name: str) -> Callable[[PipelineConfig], dict[str, str]]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(cfg: PipelineConfig, name: str) -> dict[str, str]:
    start = time.perf_counter()
    print(f"== {name} ==", flush=True)
    out = stage_function(name)(cfg)
    print(f"== {name} done in {time.perf_counter() - start:.1f}s ==", flush=True)
    return out


def available(name: str) -> bool:
    """Whether the stage's module exists in this build (stages land one by one)."""
    module = STAGES[name].split(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return False
        raise
    return True


def run_pipeline(cfg: PipelineConfig, stages: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """Run ``stages`` (default: every stage this build has, in order); returns artifact paths."""
    if stages:
        names = list(stages)
        for n in names:
            stage_function(n)  # fail fast on a typo or a missing stage before any work
    else:
        names = [n for n in STAGES if available(n)]
        missing = [n for n in STAGES if n not in names]
        if missing:
            print(f"note: stages not built yet, skipped: {', '.join(missing)}", flush=True)
    return {n: run_stage(cfg, n) for n in names}

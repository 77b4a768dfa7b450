"""Run the stages in order; each skips its complete artifacts, so a rerun resumes at once.

Every run times its stages, prints a table at the end and writes ``<run_dir>/pipeline.json``::

    {"stages": {"prepare": {"seconds": 0.4, "skipped": true, "built_seconds": 41.2,
                            "finished_at": "2025-01-01T10:00:00Z"}, ...},
     "ran": ["prepare", ...], "total_seconds": 812.3, "finished_at": "...",
     "machine": {"cpu": "AMD EPYC", "cores": 2, "bf16_native": true, "torch_threads": 2}}

* ``skipped``: every artifact the stage writes (:data:`WRITES`, the README table) was complete
  before it ran, so it returned at once; ``seconds`` is then this run's (tiny) time, and
  ``built_seconds`` the time of the run that built it, carried over from the previous
  ``pipeline.json`` (absent when that file never timed the build).
* ``failed``: true on the stage that raised; the file is written before the error propagates.
* ``ran`` lists this command's stages in order, and ``total_seconds`` is this command's wall
  time (``run_pipeline``'s) on ``machine``. Entries of stages this command did not run are kept
  from the previous file, so running the stage jobs one by one still leaves one full record.

Build times live here rather than in each artifact's ``_SUCCESS``: a manifest is written last and
never edited, and this file is the one place that says where a run's time went.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from semconv.artifacts import RunDir, write_json_atomic
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
# stage name -> the artifacts it writes; all complete before it runs = the stage is skipped
WRITES: dict[str, tuple[str, ...]] = {
    "prepare": ("items", "sequences", "splits"),
    "embed": ("item_emb", "item_text_emb"),
    "tokenize": ("codebook", "item_codes"),
    "tasks": ("sft",),
    "finetune": ("model",),
    "precache": ("precache",),
    "evaluate": ("report",),
}
RECORD = "pipeline.json"


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


def run_pipeline(cfg: PipelineConfig, stages: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """Run ``stages`` (default: every stage, in order); returns artifact paths.

    Times each stage, prints the timing table and writes ``<run_dir>/pipeline.json`` (module
    docstring), also when a stage raises.
    """
    start = time.perf_counter()
    names = list(stages) if stages else list(STAGES)
    for n in names:
        stage_function(n)  # fail fast on a typo before any work
    run = RunDir(cfg.run_dir)
    old = read_record(run).get("stages", {})
    timed: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, str]] = {}
    try:
        for n in names:
            entry = timed[n] = {"skipped": n in WRITES and all(run.is_complete(a) for a in WRITES[n])}
            stage_start = time.perf_counter()
            try:
                out[n] = run_stage(cfg, n)
            except BaseException:
                entry["failed"] = True
                raise
            finally:
                entry["seconds"] = round(time.perf_counter() - stage_start, 3)
                entry["finished_at"] = _now()
            if entry["skipped"] and (built := built_seconds(old.get(n))) is not None:
                entry["built_seconds"] = built
    finally:
        record = make_record(old, timed, time.perf_counter() - start)
        write_record(run, record)
        print("\n".join(timing_table(record)), flush=True)
    return out


def built_seconds(entry: dict[str, Any] | None) -> float | None:
    """How long building the stage took, from its entry in an earlier ``pipeline.json``."""
    if not entry or entry.get("failed"):
        return None
    return entry.get("built_seconds") if entry.get("skipped") else entry.get("seconds")


def make_record(old: dict[str, Any], timed: dict[str, dict[str, Any]], total: float) -> dict[str, Any]:
    """This command's stage times over the previous file's entries for stages it did not run."""
    from semconv.hardware import machine_info

    return {"stages": {**old, **timed}, "ran": list(timed), "total_seconds": round(total, 3),
            "finished_at": _now(), "machine": machine_info()}


def timing_table(record: dict[str, Any]) -> list[str]:
    """The end-of-run table: this command's stages, their seconds and whether they skipped."""
    lines = ["", "| stage | seconds | skipped |", "| --- | ---: | --- |"]
    for name in record["ran"]:
        e = record["stages"][name]
        state = "FAILED" if e.get("failed") else "yes" if e["skipped"] else "no"
        if e.get("built_seconds") is not None:
            state += f" (built in {e['built_seconds']:.1f}s)"
        lines.append(f"| {name} | {e['seconds']:.1f} | {state} |")
    lines.append(f"| total | {record['total_seconds']:.1f} | |")
    m = record["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, "
                 f"{'native' if m['bf16_native'] else 'no native'} bf16, {m['torch_threads']} torch threads")
    return lines


def read_record(run: RunDir) -> dict[str, Any]:
    """The run dir's ``pipeline.json``, or ``{}`` when there is none (or it does not parse)."""
    path = f"{run.root}/{RECORD}"
    if run.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    try:
        with run.fs.open_input_stream(path) as f:
            record = json.loads(f.read().decode())
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return {}
    return record if isinstance(record, dict) else {}


def write_record(run: RunDir, record: dict[str, Any]) -> None:
    """Write ``pipeline.json`` atomically: a temp name beside it, then a rename (any filesystem)."""
    path = f"{run.root}/{RECORD}"
    if run.is_local:
        write_json_atomic(Path(path), record)
        return
    tmp = f"{run.root}/.{RECORD}.tmp-{uuid.uuid4().hex}"
    with run.fs.open_output_stream(tmp) as f:
        f.write(json.dumps(record, indent=2, sort_keys=True, default=str).encode())
    run.fs.move(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""Run the stages in order; each skips when its artifacts are current, so a rerun resumes at once.

Stages come from the registry (:mod:`semconv.stages`). Before a stage runs, its artifacts are
checked against the present config (:mod:`semconv.lineage`): *current* ones skip; a *stale* one
(another fingerprint) is rebuilt together with every stage downstream of it, whose artifacts are
deleted first, and the changed keys are printed; with ``on_change="error"`` (``--on-change error``)
the run stops instead with a message naming the stage, the key and both values. A stage with some
artifacts missing runs and resumes (checkpoints, complete sibling artifacts, partial shards).

Every run times its stages, prints a table at the end and writes ``<run_dir>/pipeline.json``::

    {"stages": {"prepare": {"seconds": 0.4, "skipped": true, "built_seconds": 41.2,
                            "finished_at": "2025-01-01T10:00:00Z"}, ...},
     "ran": ["prepare", ...], "total_seconds": 812.3, "finished_at": "...",
     "machine": {"cpu": "AMD EPYC", "cores": 2, "bf16_native": true, "torch_threads": 2}}

* ``skipped``: every artifact the stage writes was current before it ran, so it did not run;
  ``seconds`` is then this run's (tiny) time, and ``built_seconds`` the time of the run that
  built it, carried over from the previous ``pipeline.json`` (absent when that file never timed
  the build).
* ``rebuilt``: the change that made the stage stale (``"tokenize.levels was 4 ..., now 3"``).
* ``failed``: true on the stage that raised; the file is written before the error propagates.
* ``ran`` lists this command's stages in order, and ``total_seconds`` is this command's wall
  time (``run_pipeline``'s) on ``machine``. Entries of stages this command did not run are kept
  from the previous file, so running the stage jobs one by one still leaves one full record.

Build times live here rather than in each artifact's ``_SUCCESS``: a manifest is written last and
never edited, and this file is the one place that says where a run's time went.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from semconv import lineage
from semconv.artifacts import RunDir, write_json_atomic
from semconv.config import PipelineConfig
from semconv.stages import NAMES, downstream, stage

log = logging.getLogger(__name__)

RECORD = "pipeline.json"


def run_stage(cfg: PipelineConfig, name: str, on_change: str | None = None,
              rebuilt: dict[str, str] | None = None) -> tuple[dict[str, str], bool]:
    """Run stage ``name`` unless its artifacts are current; returns (artifact paths, skipped).

    A stale stage is rebuilt with its downstream (or refused, ``on_change="error"``); what
    changed is printed and stored in ``rebuilt[name]``.
    """
    s = stage(name)
    run = RunDir(cfg.run_dir)
    state = lineage.status(cfg, run, name)
    if state.current:
        print(f"== {name}: current, skipped ==", flush=True)
        return {a: run.path(a) for a in s.writes}, True
    if state.change is not None:
        if (on_change or cfg.on_change) == "error":
            raise lineage.StaleArtifactError(lineage.stale_message(state.change))
        names = [name, *downstream(name)]
        lineage.invalidate(run, names)
        why = state.change.describe()
        print(f"== {name}: {why}; rebuilding {', '.join(names)} ==", flush=True)
        if rebuilt is not None:
            rebuilt[name] = why
    start = time.perf_counter()
    print(f"== {name} ==", flush=True)
    out = s.function()(cfg)
    print(f"== {name} done in {time.perf_counter() - start:.1f}s ==", flush=True)
    return out, False


def run_pipeline(cfg: PipelineConfig, stages: Sequence[str] | None = None,
                 on_change: str | None = None) -> dict[str, dict[str, str]]:
    """Run ``stages`` (default: every stage, in order); returns artifact paths.

    ``on_change`` (``rebuild`` or ``error``; default ``cfg.on_change``) decides what a stale stage
    does. Times each stage, prints the timing table and writes ``<run_dir>/pipeline.json`` (module
    docstring), also when a stage raises.
    """
    start = time.perf_counter()
    names = list(stages) if stages else list(NAMES)
    for n in names:
        stage(n)  # fail fast on a typo before any work
    names.sort(key=NAMES.index)
    run = RunDir(cfg.run_dir)
    old = read_record(run).get("stages", {})
    timed: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, str]] = {}
    rebuilt: dict[str, str] = {}
    try:
        for n in names:
            entry = timed[n] = {"skipped": False}
            stage_start = time.perf_counter()
            try:
                out[n], entry["skipped"] = run_stage(cfg, n, on_change, rebuilt)
            except BaseException:
                entry["failed"] = True
                raise
            finally:
                entry["seconds"] = round(time.perf_counter() - stage_start, 3)
                entry["finished_at"] = _now()
                if n in rebuilt:
                    entry["rebuilt"] = rebuilt[n]
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

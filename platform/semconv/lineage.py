"""Lineage: which config and which inputs built an artifact, and whether it is still current.

Every artifact's ``_SUCCESS`` carries ``lineage``::

    {"stage": "tokenize", "fingerprint": "9c1e...",
     "config": {"seed": 0, "tokenize.levels": 4, ...},      # the keys the stage depends on
     "inputs": {"item_emb": "51ab...@3f9c0e12aa01", ...}}  # which build of each input

``config`` holds the values of the stage's registry keys (:mod:`semconv.stages`) minus its
ignored ones, flattened to dotted keys; ``inputs`` the fingerprint and build id of each
artifact it read; the fingerprint hashes both, so a change anywhere upstream, or an input rebuilt
for any reason (even with the same config: training is not bit-reproducible), changes every
fingerprint below it. A stage
is *current* when each artifact it writes is complete with the fingerprint the present config and
inputs give; *stale* when one is complete with another (or none: built before lineage existed).
:func:`semconv.pipeline.run_pipeline` skips current stages, resumes incomplete ones, and on a
stale one either rebuilds it and everything downstream (naming the changed keys) or refuses
(``on_change: error``). The trainers' checkpoints and the precache's partial shards are keyed by
the same fingerprint (:func:`checkpoint_name`), so a rerun after a crash resumes them and a
changed config never does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from semconv.artifacts import CHECKPOINTS, SUCCESS, RunDir
from semconv.stages import Stage, downstream, stage

if TYPE_CHECKING:
    from semconv.config import PipelineConfig

UNSET = object()  # a key one side of a comparison does not have


class StaleArtifactError(RuntimeError):
    """A stage's artifacts were built with other config or inputs and ``on_change`` is ``error``."""


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):  # an empty mapping adds no key: setting one entry names just it
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = value


def config_values(cfg: PipelineConfig, s: Stage) -> dict[str, Any]:
    """The stage's dependent config as ``{"tokenize.levels": 4, ...}`` (ignored keys left out)."""
    raw = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in s.config:
        node: Any = raw
        for part in key.split("."):
            node = node[part]
        _flatten(node, key, out)
    return {k: v for k, v in sorted(out.items())
            if not any(k == i or k.startswith(i + ".") for i in s.ignore)}


def artifact_build(run: RunDir, name: str) -> str | None:
    """Which build of an artifact is there: ``<fingerprint>@<build id>`` (None: incomplete)."""
    if not run.is_complete(name):
        return None
    manifest = run.manifest(name)
    fingerprint = (manifest.get("lineage") or {}).get("fingerprint", "no-lineage")
    return f"{fingerprint}@{manifest.get('build', manifest.get('created_at'))}"


def record(cfg: PipelineConfig, name: str, run: RunDir | None = None) -> dict[str, Any]:
    """The lineage a stage's artifacts get when built now from ``run``'s inputs."""
    s = stage(name)
    run = run or RunDir(cfg.run_dir)
    config = config_values(cfg, s)
    inputs = {a: artifact_build(run, a) for a in s.reads}
    payload: dict[str, Any] = {"stage": name, "config": config, "inputs": inputs}
    if s.format != 1:  # format 1 stays out of the hash: builds from before formats stay current
        payload["format"] = s.format
    blob = json.dumps(payload, sort_keys=True)
    return {"stage": name, "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:16],
            "config": config, "inputs": inputs, "format": s.format}


def stage_run(cfg: PipelineConfig, name: str) -> RunDir:
    """The run directory as stage ``name`` sees it: every manifest it writes carries its lineage."""
    return RunDir(cfg.run_dir, lineage=record(cfg, name))


def checkpoint_name(run: RunDir, name: str) -> str:
    """The Ray Train run name of stage ``name``'s checkpoints under ``run.checkpoint_root``:
    ``<stage>-<fingerprint>``. Checkpoints of the stage under any other fingerprint are deleted
    (resuming them would mix two trainings); a rerun with the same one resumes."""
    fingerprint = (run.lineage or {}).get("fingerprint")
    if fingerprint is None:
        raise ValueError(f"{run!r} carries no lineage; build it with semconv.lineage.stage_run")
    want = f"{name}-{fingerprint}"
    for info in run.fs.get_file_info(pafs.FileSelector(run.path(CHECKPOINTS), allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(f"{name}-") \
                and info.base_name != want:
            run.fs.delete_dir(info.path)
    return want


@dataclass
class Change:
    """Why a stage is stale: its changed config keys and rebuilt inputs."""

    stage: str
    artifact: str
    keys: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, old, new)
    inputs: list[str] = field(default_factory=list)
    legacy: bool = False  # built before manifests carried lineage
    formats: tuple[int, int] | None = None  # (written, now) when the stage's format changed

    def describe(self) -> str:
        if self.legacy:
            return f"{self.artifact}/ was built before manifests recorded lineage"
        if self.formats:
            return f"{self.artifact}/ was written in format {self.formats[0]}, the stage now writes format " \
                   f"{self.formats[1]}"
        parts = [f"{k} was {_show(old)} when {self.artifact}/ was built, now {_show(new)}"
                 for k, old, new in self.keys]
        parts += [f"its input {a}/ was rebuilt since" for a in self.inputs]
        return "; ".join(parts)


def _show(value: Any) -> str:
    return "unset" if value is UNSET else json.dumps(value)


def _diff(stage_name: str, artifact: str, old: dict[str, Any] | None, new: dict[str, Any]) -> Change:
    if not old:
        return Change(stage_name, artifact, legacy=True)
    if old.get("format", 1) != new["format"]:
        return Change(stage_name, artifact, formats=(old.get("format", 1), new["format"]))
    before, now = old.get("config", {}), new["config"]
    keys = [(k, before.get(k, UNSET), now.get(k, UNSET)) for k in sorted(set(before) | set(now))
            if before.get(k, UNSET) != now.get(k, UNSET)]
    inputs = [a for a in sorted(set(old.get("inputs", {})) | set(new["inputs"]))
              if old.get("inputs", {}).get(a) != new["inputs"].get(a)]
    return Change(stage_name, artifact, keys, inputs)


@dataclass
class Status:
    """A stage's artifacts against the present config: ``current`` (skip), ``stale`` (a Change)
    or neither (some are missing: run it, reusing the complete, current ones)."""

    stage: str
    lineage: dict[str, Any]
    current: bool
    change: Change | None = None


def status(cfg: PipelineConfig, run: RunDir, name: str) -> Status:
    want = record(cfg, name, run)
    complete = [a for a in stage(name).writes if run.is_complete(a)]
    for a in complete:
        have = run.manifest(a).get("lineage")
        if not have or have.get("fingerprint") != want["fingerprint"]:
            return Status(name, want, False, _diff(name, a, have, want))
    return Status(name, want, len(complete) == len(stage(name).writes))


def stale_message(change: Change) -> str:
    rebuilt = [change.stage, *downstream(change.stage)]
    return (f"stage {change.stage} is stale: {change.describe()}. Rerun with --on-change rebuild "
            f"(config on_change: rebuild) to rebuild {', '.join(rebuilt)}")


def invalidate(run: RunDir, names: list[str]) -> list[str]:
    """Make the artifacts of stages ``names`` incomplete (all manifests first), then delete them.

    Manifests go first so that no moment leaves a rebuilt upstream beside a downstream artifact
    still marked complete. Returns the artifacts that were there.
    """
    found = [a for n in reversed(names) for a in stage(n).writes
             if run.fs.get_file_info(run.path(a)).type != pafs.FileType.NotFound]
    for a in found:
        if run.is_complete(a):
            run.fs.delete_file(f"{run.path(a)}/{SUCCESS}")
    for a in found:
        run.fs.delete_dir(run.path(a))
    return found


def reusable_stages(main: PipelineConfig, other: PipelineConfig) -> list[str]:
    """Stages whose artifacts built for ``main`` are current for ``other`` too: the same
    dependent config, and every input written by a reusable stage."""
    from semconv.stages import STAGES, producer

    ok: list[str] = []
    for s in STAGES:
        if config_values(main, s) == config_values(other, s) and all(producer(a).name in ok for a in s.reads):
            ok.append(s.name)
    return ok

"""The paper's ablations as named config overrides, run by one command.

Each ablation runs the whole pipeline in a sibling run directory ``<run_dir>/ablations/<name>``.
Artifacts of the stages whose lineage the overrides leave unchanged (the same dependent config
and reusable inputs, :func:`semconv.lineage.reusable_stages`) are linked (hard links, or copies
where links are impossible) from the main run, so e.g. a tokenizer ablation reuses ``items/
sequences/ splits/ item_emb/ item_text_emb/`` and retrains from the codebook on; the pipeline's
lineage check then skips them in the sibling run.
Baselines do not depend on any ablated switch, so ablation runs score ours only; the main run's
report holds the baselines. ``python -m semconv.evaluate.ablations --config c.yaml wo_negative``.

An orchestration above the pipeline, not a part of the evaluate stage: it runs whole pipelines and
nothing in the package imports it, so its (lazy) import of :mod:`semconv.pipeline` is no cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from semconv.artifacts import SUCCESS, RunDir, write_json_atomic
from semconv.config import PipelineConfig, apply_overrides, load_config, validate_config
from semconv.lineage import reusable_stages
from semconv.stages import NAMES, STAGES

ABLATIONS: dict[str, list[str]] = {
    "wo_llm_alignment": ["tokenize.llm_alignment=false"],
    "wo_negative": ["tasks.negative=false"],
    "ed_tokenizer": ["tokenize.encoder_decoder=true"],
    **{f"neg_ratio_{r}": [f"tasks.negative_ratio={r}"] for r in range(6)},
    **{f"levels_{n}": [f"tokenize.levels={n}"] for n in range(2, 6)},
    "sa_init": ["tasks.sa_init=true"],
    "ts_align": ["tasks.ts_align=true"],
    "ts_rec": ["tasks.sa_init=true", "tasks.ts_align=true"],
    "wo_sa_init": ["tasks.sa_init=false"],  # for configs that turn SA-Init on (configs/demo.yaml)
    "prompt_objective": ["tasks.sequential_objective=prompt"],  # the paper's one-target prompts
    "vocabulary_softmax": ["finetune.code_softmax=vocabulary"],
}
GROUPS: dict[str, list[str]] = {
    "paper": ["wo_llm_alignment", "wo_negative", "ed_tokenizer"],
    "neg_ratio": [f"neg_ratio_{r}" for r in range(6)],
    "levels": [f"levels_{n}" for n in range(2, 6)],
    "ts_rec": ["sa_init", "ts_align", "ts_rec"],
    "objective": ["prompt_objective", "vocabulary_softmax"],
    "all": list(ABLATIONS),
}
Pipeline = Callable[[PipelineConfig], Any]


class AblationError(ValueError):
    """An unknown ablation name or an override that does not fit the config."""


def expand_names(names: Sequence[str]) -> list[str]:
    """Ablation names with groups (``paper``, ``neg_ratio``, ``levels``, ``ts_rec``, ``all``) expanded."""
    out: list[str] = []
    for name in names:
        for n in GROUPS.get(name, [name]):
            if n not in ABLATIONS:
                known = ", ".join(list(ABLATIONS) + list(GROUPS))
                raise AblationError(f"unknown ablation {n!r}; known: {known}")
            if n not in out:
                out.append(n)
    return out


def ablation_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The main config with the ablation's overrides, in its sibling run directory, no baselines."""
    if name not in ABLATIONS:
        raise AblationError(f"unknown ablation {name!r}")
    run_dir = f"{cfg.run_dir.rstrip('/')}/ablations/{name}"
    raw = apply_overrides(cfg.model_dump(mode="json"), ABLATIONS[name])
    raw["run_dir"] = run_dir
    raw["evaluate"]["baselines"] = []
    return validate_config(raw, f"ablation {name}")


def reused_artifacts(main: PipelineConfig, ablated: PipelineConfig) -> list[str]:
    """Artifacts the ablation can take unchanged from the main run, in pipeline order."""
    reusable = reusable_stages(main, ablated)
    return [a for s in STAGES if s.name in reusable for a in s.writes]


def same_as_main(main: PipelineConfig, ablated: PipelineConfig) -> bool:
    """Whether only the report differs (ablation runs score ours alone, without baselines)."""
    return set(NAMES) - set(reusable_stages(main, ablated)) <= {"evaluate"}


def link_artifact(src: RunDir, dst: RunDir, name: str) -> bool:
    """Make ``dst/<name>`` a complete copy of ``src/<name>``; False when src lacks it."""
    if not src.is_complete(name):
        return False
    if dst.is_complete(name):
        return True
    if src.is_local and dst.is_local:
        tmp = Path(f"{dst.path(name)}.tmp-{uuid.uuid4().hex}")

        def link(a: str, b: str) -> None:
            try:
                os.link(a, b)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(a, b)

        try:
            shutil.copytree(src.path(name), tmp, copy_function=link)
            if Path(dst.path(name)).exists():
                shutil.rmtree(dst.path(name))
            os.replace(tmp, dst.path(name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    files = [f for f in src.fs.get_file_info(pafs.FileSelector(src.path(name), recursive=True))
             if f.type == pafs.FileType.File]
    files.sort(key=lambda f: f.path.endswith(SUCCESS))  # the manifest last: complete only at the end
    for f in files:
        rel = f.path[len(src.path(name)) + 1:]
        target = f"{dst.path(name)}/{rel}"
        dst.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(f.path, target, source_filesystem=src.fs, destination_filesystem=dst.fs)
    return True


def _default_pipeline(cfg: PipelineConfig) -> Any:
    from semconv.pipeline import run_pipeline

    return run_pipeline(cfg)


def _semconv_row(run: RunDir) -> dict[str, Any]:
    with run.fs.open_input_stream(run.file("report", "metrics.json")) as f:
        metrics = json.loads(f.read().decode())
    if "semconv" not in metrics.get("systems", {}):
        raise AblationError(f"{run.path('report')}/metrics.json has no 'semconv' system")
    return {**metrics["systems"]["semconv"], "missing_users": metrics.get("missing_users", {}).get("semconv", 0),
            "config_hash": metrics.get("config_hash")}


def run_ablations(
    cfg: PipelineConfig, names: Sequence[str], pipeline: Pipeline | None = None, include_full: bool = True
) -> list[dict[str, Any]]:
    """Run each named ablation (groups allowed) and return one row per run, the full model first.

    Rows: ``ablation``, ``overrides``, ``run_dir``, ``reused`` and the test metrics of ours. The
    table is also written to ``<run_dir>/ablations/summary.json`` and ``summary.md``.
    ``pipeline`` defaults to :func:`semconv.pipeline.run_pipeline` (skips current artifacts).
    """
    pipeline = pipeline or _default_pipeline
    names = expand_names(names)
    main = RunDir(cfg.run_dir)
    rows: list[dict[str, Any]] = []
    if include_full:
        pipeline(cfg)
        rows.append({"ablation": "full", "overrides": [], "run_dir": cfg.run_dir, "reused": [],
                     **_semconv_row(main)})
    for name in names:
        acfg = ablation_config(cfg, name)
        if same_as_main(cfg, acfg) and include_full:
            rows.append({**rows[0], "ablation": name, "overrides": ABLATIONS[name], "same_as": "full"})
            continue
        sib = RunDir(acfg.run_dir)
        reused = [a for a in reused_artifacts(cfg, acfg) if link_artifact(main, sib, a)]
        pipeline(acfg)
        rows.append({"ablation": name, "overrides": ABLATIONS[name], "run_dir": acfg.run_dir,
                     "reused": reused, **_semconv_row(sib)})
    write_summary(cfg, rows)
    return rows


def summary_markdown(rows: list[dict[str, Any]], ks: Sequence[int]) -> str:
    from semconv.evaluate.report import fmt, metric_columns

    cols = metric_columns(sorted(set(ks)))
    lines = ["| ablation | overrides | " + " | ".join(cols) + " |", "| --- | --- |" + " ---: |" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) if c in r else "-" for c in cols]
        lines.append(f"| {r['ablation']} | {' '.join(r['overrides']) or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(cfg: PipelineConfig, rows: list[dict[str, Any]]) -> None:
    root = RunDir(f"{cfg.run_dir.rstrip('/')}/ablations")
    text = summary_markdown(rows, cfg.evaluate.ks)
    if root.is_local:
        write_json_atomic(Path(root.root) / "summary.json", rows)
        (Path(root.root) / "summary.md").write_text(text)
    else:
        with root.fs.open_output_stream(f"{root.root}/summary.json") as f:
            f.write(json.dumps(rows, indent=2, default=str).encode())
        with root.fs.open_output_stream(f"{root.root}/summary.md") as f:
            f.write(text.encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=["paper"], help="ablations or groups: " + ", ".join(GROUPS))
    parser.add_argument("--config", default=None, help="pipeline YAML (default: the demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--list", action="store_true", help="print the ablations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, ov in ABLATIONS.items():
            print(f"{name:18s} {' '.join(ov)}")
        return 0
    cfg = load_config(args.config, args.overrides)
    from semconv.ray_env import init_ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    rows = run_ablations(cfg, args.names)
    print(summary_markdown(rows, cfg.evaluate.ks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

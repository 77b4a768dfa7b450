"""Learning per CPU-second: HR@10 / NDCG@10 against training wall time, per fine-tune option.

Each variant is the demo's config with some keys changed, written ``key=value`` joined by ``+``:
``finetune`` keys (``num_layers=12``, ``code_rows_first=0.1``, ``method=full+lr=1e-4``,
``lora_r=32``, ``pack_len=512``), ``objective=prompt|history`` (``tasks.sequential_objective``) and
``levels=3`` (``tokenize.levels``: the codebook is retrained in a copy of the run directory),
and ``steps=N`` (this variant's step budget under ``--steps``); ``default`` changes nothing. For each, the script builds the variant's ``sft/`` rows in memory
from one run directory (``prepare``, ``embed``, ``tokenize`` and ``tasks`` done; built into a
temporary directory when ``--run-dir`` is not given) and runs the package's own fine-tune loop
(:func:`semconv.finetune.recipe.train`, in this process) with the LR decaying over the time budget
as ``finetune.max_minutes`` does, or with ``--steps N`` over N optimizer steps (robust to a
machine shared with other work: compare variants of equal cost per step at equal steps, and
variants of different cost at steps in the ratio of their quiet step times). Every
``--eval-every`` seconds of *training* (with ``--steps``: at half and all of the steps) a probe decodes a
fixed seeded sample of valid users with the constrained beam search in the variant's prompt
format (history items excluded) and scores the valid targets; the held-out label loss is taken at
the last step (comparable only between variants with the same tasks and codes). All variants run on the same CPU in
the same run, so the curves compare directly; ``--demo-seconds`` marks the demo's budget.

    python bench/learning_curve.py --quick --json /tmp/learning_curve.json
    SEMCONV_FORCE_NO_BF16=1 python bench/learning_curve.py --variants default,num_layers=15 --seconds 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.decoding import Decoding
from semconv.finetune.data import split_examples
from semconv.finetune.model import resolve_base
from semconv.finetune.optim import TrainBudget
from semconv.finetune.recipe import FinetuneData, train
from semconv.finetune.stage import read_sa_init, recipe_of
from semconv.hardware import cpu_bf16_supported, machine_info
from semconv.inference.ranker import GenerativeRanker
from semconv.metrics import ranking_metrics
from semconv.pipeline import run_pipeline
from semconv.protocol import split_rows
from semconv.tasks.build import build_sft
from semconv.tasks.inputs import load_inputs
from semconv.training import Session

OBJECTIVES = {"prompt": "instruction", "history": "history"}  # objective -> inference prompt format


def valid_sample(run: RunDir, n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """A seeded sample of valid rows: (histories, targets)."""
    valid = split_rows(run.read_table("sequences", columns=["user_id", "history"]), run.read_table("splits"),
                       run.manifest("splits")["max_len"], ("valid",))
    pick = np.sort(np.random.default_rng(seed).permutation(valid.num_rows)[:n])
    valid = valid.take(pick)
    return valid["history"].to_pylist(), valid["target"].to_pylist()


def score(model, tok, codes, fmt, code_softmax, histories, targets, beams, batch_size) -> dict[str, float]:
    """HR/NDCG@10 of the constrained beam search on the sample (model left in train mode)."""
    ranker = GenerativeRanker(model, tok, codes, num_beams=beams, top_k=10, batch_size=batch_size,
                              decoding=Decoding(fmt, code_softmax))
    items, _ = ranker.rank(histories, exclude_history=True)
    model.train()
    return ranking_metrics(items.tolist(), targets, ks=(10,))


def parse_variant(variant: str) -> dict[str, str]:
    """``"num_layers=12+lr=2e-3"`` -> ``{"num_layers": "12", "lr": "2e-3"}``; ``default`` -> ``{}``."""
    if variant == "default":
        return {}
    pairs = [part.partition("=") for part in variant.split("+")]
    bad = [k for k, eq, v in pairs if not eq or not k or not v]
    if bad:
        raise SystemExit(f"variant {variant!r}: write key=value pairs joined by '+' (bad: {bad})")
    return {k: v for k, _, v in pairs}


def variant_config(cfg, variant: str):
    """The demo config with the variant's keys changed (validated as the config file would be)."""
    over = parse_variant(variant)
    over.pop("steps", None)  # the bench's budget, not a config key
    if "levels" in over:
        tokenize = cfg.tokenize.model_copy(update={"levels": int(over.pop("levels"))})
        cfg = cfg.model_copy(update={"tokenize": tokenize})
    tasks = cfg.tasks
    if "objective" in over:
        tasks = tasks.model_copy(update={"sequential_objective": over.pop("objective")})
    ft = type(cfg.finetune).model_validate({**cfg.finetune.model_dump(), **over})
    return cfg.model_copy(update={"finetune": ft, "tasks": tasks})


def variant_run(cfg, vcfg, work: Path) -> RunDir:
    """The run directory whose codes the variant trains on: the shared one, or for another
    codebook (``levels=``) a copy with ``tokenize`` and ``tasks`` rebuilt (prepare and embed kept)."""
    if vcfg.tokenize == cfg.tokenize:
        return RunDir(cfg.run_dir)
    path = work / f"levels-{vcfg.tokenize.levels}"
    if not path.exists():
        shutil.copytree(cfg.run_dir, path, ignore=shutil.ignore_patterns("_checkpoints"))
        run_pipeline(vcfg.model_copy(update={"run_dir": str(path)}), ["tokenize", "tasks"], on_change="rebuild")
    return RunDir(str(path))


def curve(cfg, variant: str, args, sample, work: Path) -> dict:
    """Train one variant for ``args.seconds`` of training time with the package's loop, scoring
    every ``args.eval_every`` seconds. The LR decays over the time budget as the demo's
    ``finetune.max_minutes`` does, so the last point is what a run of that budget ends with."""
    steps = parse_variant(variant).get("steps")
    vcfg = variant_config(cfg, variant)
    run = variant_run(cfg, vcfg, work)
    inputs = load_inputs(run)
    table = build_sft(inputs, vcfg.tasks, cfg.seed).table
    data = FinetuneData(split_examples(table, "train"), split_examples(table, "valid"))
    ft = vcfg.finetune
    sa_init = read_sa_init(run) if vcfg.tasks.sa_init else None
    recipe = recipe_of(vcfg, resolve_base(ft.base_model), sa_init)
    if args.steps:
        max_steps = int(steps or args.steps)
        budget = TrainBudget(max_steps, None, ft.warmup_steps, ft.lr_schedule, ft.min_lr_ratio)
        marks = {max_steps // 2, max_steps}
    else:
        budget = TrainBudget(10**9, args.seconds, ft.warmup_steps, ft.lr_schedule, ft.min_lr_ratio)
    recipe = dataclasses.replace(recipe, budget=budget, eval_every=10**9, eval_samples=256)
    fmt = OBJECTIVES[vcfg.tasks.sequential_objective]
    points: list[dict[str, Any]] = []
    due = {"next": args.eval_every}

    def probe(step: int, seconds: float, model, tok) -> None:
        if args.steps:
            if step not in marks:
                return
        elif seconds < due["next"] and seconds < args.seconds:
            return
        due["next"] += args.eval_every
        t0 = time.perf_counter()
        points.append({"train_seconds": seconds, "steps": step,
                       **score(model, tok, inputs.codes, fmt, ft.code_softmax, *sample, args.beams, args.eval_batch)})
        print(f"{variant:>24} {seconds:>7.0f}s {step:>6} steps HR@10 {points[-1]['HR@10']:.4f} "
              f"NDCG@10 {points[-1]['NDCG@10']:.4f} (scored in {time.perf_counter() - t0:.0f}s)", flush=True)

    trained = train(recipe, data, Session(checkpoint_every=10**9), probes=[probe])
    h = trained.history
    return {"variant": variant, "overrides": parse_variant(variant), "prompt_format": fmt,
            "code_softmax": ft.code_softmax, "levels": vcfg.tokenize.levels, "train_rows": len(data.train),
            "steps": h["step"], "tokens": h["tokens"], "tokens_per_s": h["tokens"] / max(h["train_time_s"], 1e-9),
            "train_loss": h["train_loss"][-1] if h["train_loss"] else None,
            "eval_loss": h["eval_loss"][-1] if h["eval_loss"] else None, "points": points}


def at(points: list[dict], seconds: float) -> dict:
    """The point nearest ``seconds`` of training (evaluations land a step after their mark)."""
    return min(points, key=lambda p: abs(p["train_seconds"] - seconds))


def write_json(args, machine: dict, bf16: bool, users: int, mark: float, curves: list[dict]) -> None:
    summary = {c["variant"]: c["points"][-1] if args.steps else at(c["points"], mark) for c in curves if c["points"]}
    args.json.write_text(json.dumps({
        "machine": {**machine, "bf16": bf16},
        "config": {"seconds": None if args.steps else args.seconds, "steps": args.steps,
                   "eval_every": args.eval_every, "users": users, "beams": args.beams, "demo_seconds": mark},
        "curves": curves, "at_demo_budget": summary,
    }, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--run-dir", help="a run dir with prepare/embed/tokenize/tasks done (default: build one)")
    ap.add_argument("--variants", default="default,num_layers=15,code_rows_first=0.1",
                    help="comma-separated variants, each 'default' or key=value pairs joined by '+'")
    ap.add_argument("--seconds", type=float, default=1200, help="training seconds per variant")
    ap.add_argument("--steps", type=int, default=None,
                    help="a step budget per variant instead of --seconds (a variant's steps=N overrides)")
    ap.add_argument("--eval-every", type=float, default=300)
    ap.add_argument("--users", type=int, default=500, help="valid users scored at each point")
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--demo-seconds", type=float, default=None,
                    help="the demo's fine-tune seconds, marked on the curves (default: --seconds)")
    ap.add_argument("--quick", action="store_true", help="180 s per variant, 2 points, 150 users")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.eval_every, args.users = 180, 90, 150
    tmp = None
    if args.run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="semconv-curve-")
        args.run_dir = tmp.name
    cfg = load_config(args.config, [f"run_dir={args.run_dir}"])
    run_pipeline(cfg, ["prepare", "embed", "tokenize", "tasks"])  # tasks: sa_init.json for SA-Init
    bf16 = cfg.finetune.bf16 and cpu_bf16_supported()
    sample = valid_sample(RunDir(cfg.run_dir), args.users, cfg.seed)
    machine = machine_info()
    mark = args.demo_seconds or args.seconds
    curves: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="semconv-curve-variants-") as work:
        for v in args.variants.split(","):
            curves.append(curve(cfg, v, args, sample, Path(work)))
            if args.json:  # after every variant: a long run that is stopped keeps what it measured
                write_json(args, machine, bf16, len(sample[0]), mark, curves)
    print(f"\nCPU: {machine['cpu']}, {machine['torch_threads']} threads, bf16 {'on' if bf16 else 'off'}; "
          f"{len(sample[0])} valid users, beam {args.beams}")
    print(f"{'variant':>24} {'seconds':>8} {'steps':>6} {'HR@10':>7} {'NDCG@10':>8}")
    for c in curves:
        for p in c["points"]:
            print(f"{c['variant']:>24} {p['train_seconds']:>8.0f} {p['steps']:>6} {p['HR@10']:>7.4f} "
                  f"{p['NDCG@10']:>8.4f}")
        print(f"{c['variant']:>24} {c['tokens_per_s']:.0f} training tokens/s, final train loss {c['train_loss']:.3f}, "
              f"held-out loss {c['eval_loss'] if c['eval_loss'] is None else round(c['eval_loss'], 3)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

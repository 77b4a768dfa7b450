"""Learning per CPU-second: HR@10 / NDCG@10 against training wall time, per sequential objective.

For each variant (``prompt``: the paper's one-target instruction prompts; ``history``: every next
item of a history in one row, see ``semconv.tasks.history``; either with ``:full`` for full
fine-tuning instead of LoRA) the script builds the demo's ``sft/`` rows in memory from one run
directory (``prepare``, ``embed`` and ``tokenize`` done; built into a temporary directory when
``--run-dir`` is not given), fine-tunes the real model (SmolLM2 + code tokens + LoRA, the demo's
optimizer settings, the LR decaying over the time budget as ``finetune.max_minutes`` does) in
this process, and every ``--eval-every`` seconds of *training* time decodes a fixed seeded
sample of valid users with the constrained beam search in the variant's own prompt format
(history items excluded) and scores the valid targets. All variants run on the same CPU in the
same run, so the curves compare directly; ``--demo-seconds`` marks the demo's fine-tune budget.
The table also gives tokens per taught item and the share of padding in the batches.

    python bench/learning_curve.py --quick --json /tmp/learning_curve.json
    SEMCONV_FORCE_NO_BF16=1 python bench/learning_curve.py --variants history,history:full --seconds 600
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.finetune.data import BatchPlan, encode_batch, split_examples
from semconv.finetune.model import build_finetune_model, resolve_base
from semconv.finetune.optim import build_optimizer, build_scheduler
from semconv.finetune.stage import read_sa_init
from semconv.decoding import Decoding
from semconv.finetune.train import optimizer_step, training_loss
from semconv.hardware import cpu_bf16_supported, machine_info
from semconv.inference.ranker import GenerativeRanker
from semconv.metrics import ranking_metrics
from semconv.pipeline import run_pipeline
from semconv.tasks.build import build_sft
from semconv.tasks.inputs import load_inputs

OBJECTIVES = {"prompt": "instruction", "history": "history"}  # objective -> inference prompt format


def valid_sample(run: RunDir, n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """A seeded sample of valid rows: (histories, targets)."""
    splits = run.read_table("splits", columns=["split", "history", "target"])
    valid = splits.filter(pc.equal(splits["split"], "valid"))
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


def full_model(model):
    """The LoRA model folded into plain weights (B starts at zero: the same function), every
    weight trainable: full fine-tuning from the same start."""
    model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def curve(cfg, run: RunDir, variant: str, args, sample, bf16: bool) -> dict:
    """Train one variant (``objective`` or ``objective:full``) for ``args.seconds`` of training
    time, scoring every ``eval_every``. The LR decays over the time budget as the demo's
    ``finetune.max_minutes`` does, so the last point is what a run of that budget ends with."""
    objective, _, method = variant.partition(":")
    method = method or "lora"
    tasks = cfg.tasks.model_copy(update={"sequential_objective": objective})
    inputs = load_inputs(run)
    table = build_sft(inputs, tasks, cfg.seed).table
    train = split_examples(table, "train")
    sa_init = read_sa_init(run) if tasks.sa_init else None
    ft = cfg.finetune
    torch.manual_seed(cfg.seed)
    model, tok, code_ids = build_finetune_model(resolve_base(ft.base_model), cfg.tokenize.levels,
                                         cfg.tokenize.codes_per_level, sa_init=sa_init)
    lr = ft.lr
    if method == "full":
        model, lr = full_model(model), args.full_lr
    params = [p for p in model.parameters() if p.requires_grad]
    code_set = torch.tensor(code_ids)
    opt = build_optimizer(model.named_parameters(), lr, ft.weight_decay, ft.code_token_lr_scale)
    loss_fn = training_loss(ft.code_softmax, code_ids, cfg.tokenize.levels)
    trained = 0.0
    sched = build_scheduler(opt, ft.warmup_steps, 10**6, ft.lr_schedule, ft.min_lr_ratio,
                            progress=lambda: trained / args.seconds)
    plan = BatchPlan(train.lengths(), ft.batch_size, cfg.seed, ft.bucket_by_length)
    model.train()
    codes = inputs.codes
    fmt = OBJECTIVES[objective]
    points = [{"train_seconds": 0.0, "steps": 0, "samples": 0, "targets": 0,
               **score(model, tok, codes, fmt, ft.code_softmax, *sample, args.beams, args.eval_batch)}]
    print(f"{variant:>12} {0:>7.0f}s {0:>6} steps HR@10 {points[-1]['HR@10']:.4f} "
          f"NDCG@10 {points[-1]['NDCG@10']:.4f}", flush=True)
    step = samples = targets = tokens = padded = 0
    next_eval = args.eval_every
    while trained < args.seconds:
        batch = encode_batch(tok, train, plan.micro_batch(step, 0, 1, 0, 1), ft.max_seq_len)
        t0 = time.perf_counter()
        loss = optimizer_step(model, [batch], opt, sched, params, ft.grad_clip, bf16, torch.device("cpu"),
                              loss_fn)
        trained += time.perf_counter() - t0
        step += 1
        samples += len(batch["input_ids"])
        targets += int(torch.isin(batch["labels"], code_set).sum()) // cfg.tokenize.levels  # items taught
        tokens += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
        if trained >= next_eval or trained >= args.seconds:
            next_eval += args.eval_every
            points.append({"train_seconds": trained, "steps": step, "samples": samples, "targets": targets,
                           "tokens": tokens, "padding": 1 - tokens / padded, "loss": loss,
                           **score(model, tok, codes, fmt, ft.code_softmax, *sample, args.beams, args.eval_batch)})
            print(f"{variant:>12} {trained:>7.0f}s {step:>6} steps HR@10 {points[-1]['HR@10']:.4f} "
                  f"NDCG@10 {points[-1]['NDCG@10']:.4f} loss {loss:.3f} {tokens / trained:.0f} tok/s "
                  f"{targets / trained:.2f} targets/s", flush=True)
    return {"variant": variant, "objective": objective, "method": method, "lr": lr, "prompt_format": fmt,
            "code_softmax": ft.code_softmax, "train_rows": len(train), "points": points}


def at(points: list[dict], seconds: float) -> dict:
    """The point nearest ``seconds`` of training (evaluations land a step after their mark)."""
    return min(points, key=lambda p: abs(p["train_seconds"] - seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--run-dir", help="a run dir with prepare/embed/tokenize done (default: build one)")
    ap.add_argument("--variants", default="prompt,history",
                    help="objectives (prompt, history), each optionally ':full' for full fine-tuning")
    ap.add_argument("--full-lr", type=float, default=1e-4, help="LR of the ':full' variants")
    ap.add_argument("--seconds", type=float, default=1200, help="training seconds per objective")
    ap.add_argument("--eval-every", type=float, default=300)
    ap.add_argument("--users", type=int, default=500, help="valid users scored at each point")
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--demo-seconds", type=float, default=None,
                    help="the demo's fine-tune seconds, marked on the curves (default: --seconds)")
    ap.add_argument("--quick", action="store_true", help="180 s per variant, 3 points, 150 users")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.eval_every, args.users = 180, 90, 150
    torch.set_num_threads(torch.get_num_threads())
    tmp = None
    if args.run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="semconv-curve-")
        args.run_dir = tmp.name
    cfg = load_config(args.config, [f"run_dir={args.run_dir}"])
    run_pipeline(cfg, ["prepare", "embed", "tokenize", "tasks"])  # tasks: sa_init.json for SA-Init
    run = RunDir(cfg.run_dir)
    bf16 = cfg.finetune.bf16 and cpu_bf16_supported()
    sample = valid_sample(run, args.users, cfg.seed)
    curves = [curve(cfg, run, v, args, sample, bf16) for v in args.variants.split(",")]
    mark = args.demo_seconds or args.seconds
    machine = machine_info()
    print(f"\nCPU: {machine['cpu']}, {machine['torch_threads']} threads, bf16 {'on' if bf16 else 'off'}; "
          f"{len(sample[0])} valid users, beam {args.beams}")
    print(f"{'variant':>12} {'seconds':>8} {'steps':>6} {'targets':>8} {'tok/target':>10} {'padding':>8} "
          f"{'HR@10':>7} {'NDCG@10':>8}")
    for c in curves:
        for p in c["points"]:
            per = p.get("tokens", 0) / max(p["targets"], 1)
            print(f"{c['variant']:>12} {p['train_seconds']:>8.0f} {p['steps']:>6} {p['targets']:>8} {per:>10.1f} "
                  f"{p.get('padding', 0):>8.1%} {p['HR@10']:>7.4f} {p['NDCG@10']:>8.4f}")
    summary = {c["variant"]: at(c["points"], mark) for c in curves}
    if {"prompt", "history"} <= set(summary):
        h, p = summary["history"], summary["prompt"]
        print(f"at {mark:.0f}s: history HR@10 {h['HR@10']:.4f} vs prompt {p['HR@10']:.4f}; "
              f"targets/s {h['targets'] / max(h['train_seconds'], 1e-9):.2f} vs "
              f"{p['targets'] / max(p['train_seconds'], 1e-9):.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {**machine, "bf16": bf16},
            "config": {"seconds": args.seconds, "eval_every": args.eval_every, "users": len(sample[0]),
                       "beams": args.beams, "demo_seconds": mark},
            "curves": curves, "at_demo_budget": summary,
        }, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

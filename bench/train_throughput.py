"""Fine-tuning throughput: training tokens per second of the demo's step before and after, in one run.

``baseline`` is the step the demo took before packing: batches of 8 rows padded to the longest
(bucketed by characters), the peft model's own forward (its trainable code rows rebuild the whole
embedding matrix per call), logits of the whole vocabulary on the label positions, LoRA dropout
0.05, the full-depth base. ``current`` is the package's step with ``configs/demo.yaml``'s ``finetune`` settings
(:func:`semconv.finetune.recipe.train` runs exactly this step): rows packed into ``pack_len``
sequences, the code rows read directly and scored by their level, ``num_layers`` of the base.
``current-full-depth`` is the same step on every layer, to separate what the step gained from
what the shallower model saves. Every mode trains on the same ``sft/`` rows of a demo run
directory (``--run-dir``, built with ``prepare,embed,tokenize,tasks`` when missing), steps
interleaved mode by mode so the machine's load hits all alike.

For each mode: training tokens per second (real tokens, padding not counted), the model's FLOPs
per second (forward + backward of the decoder's matmuls: 4 x its non-embedding parameters per
token under LoRA, 6 x for full fine-tuning; attention scores and the label-position head left
out) against the rate of a plain matmul of the model's shapes measured in the same run
(``fraction_of_matmul``), and held-out loss after the timed steps per training token seen.

    python bench/train_throughput.py --quick --json /tmp/train_throughput.json
    python bench/train_throughput.py --profile      # torch.profiler table of one current step
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.finetune.data import IGNORE_INDEX, split_examples
from semconv.finetune.lm import PackedLM
from semconv.finetune.optim import build_optimizer
from semconv.finetune.packing import PackPlan, collate_packs, encode_rows
from semconv.finetune.recipe import build_model
from semconv.finetune.stage import read_sa_init, recipe_of
from semconv.finetune.step import optimizer_step
from semconv.hardware import cpu_bf16_supported, machine_info
from semconv.finetune.model import resolve_base
from semconv.pipeline import run_pipeline

BASELINE_ROWS = 8  # rows per step of the demo before packing
BASELINE_DROPOUT = 0.05  # its LoRA dropout (finetune.lora_dropout's default)


def padded_batches(rows, n_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The baseline's batches: 8 rows a batch, bucketed by characters in windows of 32 batches
    (as the demo sorted them), right-padded to the longest row."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))[: n_batches * BASELINE_ROWS * 4]
    chunk = order[np.argsort(rows.lengths()[order], kind="stable")]
    batches = [chunk[i : i + BASELINE_ROWS] for i in range(0, len(chunk), BASELINE_ROWS)]
    batches = [batches[i] for i in rng.permutation(len(batches))[:n_batches]]
    out = []
    for b in batches:
        width = max(len(rows.ids[i]) for i in b)
        ids = torch.full((len(b), width), 0, dtype=torch.long)
        labels = torch.full((len(b), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        for r, i in enumerate(b):
            n = len(rows.ids[i])
            ids[r, :n], labels[r, :n], mask[r, :n] = (torch.from_numpy(rows.ids[i]),
                                                      torch.from_numpy(rows.labels[i]), 1)
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


class BaselineLM(torch.nn.Module):
    """The old loss: the peft model's own forward with ``logits_to_keep`` on the label positions
    (the whole vocabulary projected there), then the level softmax over the code tokens."""

    def __init__(self, lm: PackedLM):
        super().__init__()
        self.lm = lm
        self.table = torch.tensor(lm.code_ids).view(lm.levels, -1)

    def forward(self, input_ids, attention_mask, labels):
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        logits = self.lm.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
        targets = labels[:, 1:][keep[:, :-1]]
        first, k = int(self.table[0, 0]), self.table.shape[1]
        slot = targets - first
        code = (slot >= 0) & (slot < self.table.numel())
        total = logits.new_zeros((), dtype=torch.float32)
        if code.any():
            rows = self.table[slot[code] // k]
            total = total + torch.nn.functional.cross_entropy(logits[code].gather(1, rows).float(), slot[code] % k,
                                                              reduction="sum")
        if not code.all():
            total = total + torch.nn.functional.cross_entropy(logits[~code].float(), targets[~code], reduction="sum")
        return total


def baseline_step(model, batch, optimizer, params):
    n = max(1, int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
    loss = model(**batch)
    (loss / n).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()) / n


def body_params(model) -> int:
    """Parameters of the decoder's matmuls (embeddings and norms excluded)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if p.ndim == 2 and "embed" not in n and "lm_head" not in n and "lora_" not in n
               and "trainable_tokens" not in n)


def matmul_rate(rows: int, hidden: int, inter: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """GFLOP/s of ``(rows, hidden) @ (hidden, inter)``, the decoder's widest matmul, best of ``repeats``."""
    a, b = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, inter, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * rows * hidden * inter / best / 1e9


def ensure_run(run_dir: Path, config: Path):
    cfg = load_config(config, [f"run_dir={run_dir}"])
    if not RunDir(run_dir).is_complete("sft"):
        run_pipeline(cfg, stages=["prepare", "embed", "tokenize", "tasks"])
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/bench-train")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 timed steps per mode")
    ap.add_argument("--modes", default="baseline,current,current-full-depth")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of a current step")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    steps = 4 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    cfg = ensure_run(Path(args.run_dir), Path(args.config))
    rd = RunDir(args.run_dir)
    table = rd.read_table("sft", columns=["task", "prompt", "label", "split"])
    train = split_examples(table, "train")
    base = resolve_base(cfg.finetune.base_model)
    sa_init = read_sa_init(rd) if cfg.tasks.sa_init else None
    demo = recipe_of(cfg, base, sa_init)
    bf16 = bool(demo.bf16 and cpu_bf16_supported())

    modes = {}
    for mode in args.modes.split(","):
        recipe = dataclasses.replace(demo, num_layers=None) if mode != "current" else demo
        if mode == "baseline":  # the step before: LoRA dropout at the config's default on every input
            recipe = dataclasses.replace(recipe, lora=dataclasses.replace(recipe.lora, dropout=BASELINE_DROPOUT))
        lm, tok = build_model(recipe)
        lm.train()
        rows = encode_rows(tok, train, recipe.pack_len)
        opt = build_optimizer(lm.named_parameters(), recipe.lr, 0.0, recipe.code_token_lr_scale)
        params = [p for p in lm.parameters() if p.requires_grad]
        if mode == "baseline":
            model = BaselineLM(lm)
            batches = padded_batches(rows, steps + 1, 0)
            tokens = [int(b["attention_mask"].sum()) for b in batches]
            run = lambda b, m=model, o=opt, p=params: baseline_step(m, b, o, p)  # noqa: E731
        else:
            plan = PackPlan(rows.lengths(), recipe.pack_len, 0)
            packs = [plan.micro_batch(s, 0, 1, 0, 1, recipe.batch_size) for s in range(steps + 1)]
            batches = [collate_packs(rows, p, recipe.pack_len, tok.pad_token_id) for p in packs]
            tokens = [sum(len(rows.ids[i]) for pack in p for i in pack) for p in packs]
            run = lambda b, m=lm, o=opt, p=params: optimizer_step(m, [b], o, p, 1.0, bf16, torch.device("cpu"))[0]  # noqa: E731
        cfg_m = lm.model.config
        modes[mode] = {"run": run, "batches": batches, "tokens": tokens, "times": [], "cpu": [], "losses": [],
                       "layers": cfg_m.num_hidden_layers, "body_params": body_params(lm.model),
                       "flops_per_token": (6 if recipe.method == "full" else 4) * body_params(lm.model),
                       "hidden": cfg_m.hidden_size, "inter": cfg_m.intermediate_size}
    for i in range(steps + 1):  # step 0 warms up; modes alternate order step by step
        for name in (list(modes) if i % 2 == 0 else list(modes)[::-1]):
            m = modes[name]
            t, c = time.perf_counter(), time.process_time()
            loss = m["run"](m["batches"][i])
            if i:
                m["times"].append(time.perf_counter() - t)
                m["cpu"].append(time.process_time() - c)
                m["losses"].append(loss)
    if args.profile and "current" in modes:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            modes["current"]["run"](modes["current"]["batches"][0])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    results = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "steps": steps,
               "threads": torch.get_num_threads(), "bf16": bf16, "modes": {}}
    print(f"machine: {results['machine']}")
    print(f"{'mode':<20}{'layers':>7}{'tokens/step':>12}{'s/step':>9}{'tokens/s':>10}{'model GF/s':>11}"
          f"{'matmul GF/s':>12}{'of matmul':>10}{'tokens/cpu-s':>13}")
    for name, m in modes.items():
        tok_step = statistics.mean(m["tokens"][1:])
        step_s = statistics.median(m["times"])
        tps = sum(m["tokens"][1:]) / sum(m["times"])
        rate = matmul_rate(int(tok_step), m["hidden"], m["inter"], torch.bfloat16 if bf16 else torch.float32)
        model_gf = tps * m["flops_per_token"] / 1e9
        row = {"layers": m["layers"], "tokens_per_step": tok_step, "step_s": step_s, "tokens_per_s": tps,
               "cpu_s_per_step": statistics.median(m["cpu"]),
               "tokens_per_cpu_s": sum(m["tokens"][1:]) / sum(m["cpu"]),
               "model_gflops_per_s": model_gf, "matmul_gflops_per_s": rate, "fraction_of_matmul": model_gf / rate,
               "flops_per_token": m["flops_per_token"], "losses": m["losses"], "steps_s": m["times"]}
        results["modes"][name] = row
        print(f"{name:<20}{m['layers']:>7}{tok_step:>12.0f}{step_s:>9.2f}{tps:>10.0f}{model_gf:>11.1f}"
              f"{rate:>12.1f}{row['fraction_of_matmul']:>10.2f}{row['tokens_per_cpu_s']:>13.0f}")
    if "baseline" in results["modes"] and "current" in results["modes"]:
        results["baseline"], results["current"] = results["modes"]["baseline"], results["modes"]["current"]
        results["speedup"] = results["current"]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
        results["speedup_cpu"] = results["current"]["tokens_per_cpu_s"] / results["baseline"]["tokens_per_cpu_s"]
        print(f"speedup (current / baseline tokens per second): {results['speedup']:.2f}x "
              f"(per CPU-second: {results['speedup_cpu']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

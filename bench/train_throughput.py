"""Fine-tuning throughput: samples/s and step time, bf16 autocast vs fp32 in one run (CPU or GPU).

A third mode, ``bf16-full-logits``, takes the loss the plain Hugging Face way (``labels=``:
the vocabulary projection over every prompt token) to measure what ``label_loss`` saves.

Builds the real fine-tuning model (base LLM + L x K code tokens + LoRA on q,k,v,o,gate,up,down,
code rows trainable) and times optimizer steps on sequential-alignment prompts shaped like the
demo's (5-20 history items, LC-Rec wording). fp32 is the baseline; bf16 is reported as a ratio.
Both modes run the same batches, interleaved step by step, so the only difference is the dtype.

    python bench/train_throughput.py --quick --json /tmp/train_throughput.json
    python bench/train_throughput.py --device cuda --batch-size 32 --steps 20   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from semconv.finetune.data import SftExamples, encode_batch
from semconv.finetune.model import build_finetune_model, resolve_base
from semconv.finetune.optim import build_optimizer, build_scheduler
from semconv.finetune.train import optimizer_step
from semconv.hardware import cpu_bf16_supported
from semconv.codes import item_tokens
from semconv.prompts import sequential_prompt


def demo_like_examples(n: int, levels: int, k: int, seed: int = 0) -> SftExamples:
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for _ in range(n):
        hist = [tuple(rng.integers(k, size=levels)) for _ in range(int(rng.integers(5, 21)))]
        prompts.append(sequential_prompt(hist))
        labels.append(item_tokens(tuple(rng.integers(k, size=levels))))
    return SftExamples(prompts, labels)


FULL = "bf16-full-logits"


def full_logits_loss(model, batch, device):
    """Hugging Face's own loss: logits for every token, then the masked mean."""
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a step's wall time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    model, tok, examples, batches, params, warmup: int, device: torch.device
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds per optimizer step, fp32 and bf16 interleaved step by step.

    Interleaving (fp32, bf16, bf16, fp32, ...) pairs the two modes under the same host load, which
    matters on a shared machine; CPU time shows the cost independent of waiting for a core.
    """
    out: dict[str, tuple[list[float], list[float]]] = {"fp32": ([], []), "bf16": ([], []), FULL: ([], [])}
    opt = {m: build_optimizer(params, 1e-4, 0.0) for m in out}
    sched = {m: build_scheduler(opt[m], 0, 1000) for m in out}
    for i, idx in enumerate(batches):
        batch = encode_batch(tok, examples, idx, 192)
        for mode in (list(out) if i % 2 == 0 else list(out)[::-1]):
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            optimizer_step(model, [batch], opt[mode], sched[mode], params, 1.0, mode != "fp32", device,
                           loss_fn=full_logits_loss if mode == FULL else None)
            sync(device)
            if i >= warmup:
                out[mode][0].append(time.perf_counter() - t)
                out[mode][1].append(time.process_time() - c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="bundled name or HF directory")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="3 timed steps per mode")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    steps = 3 if args.quick else args.steps
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    t = time.perf_counter()
    model, tok, code_ids = build_finetune_model(resolve_base(args.model), 4, 256, lora={"r": 16, "alpha": 32})
    load_s = time.perf_counter() - t
    device = torch.device(args.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    examples = demo_like_examples(args.batch_size * (steps + 1), 4, 256)
    order = np.argsort(examples.lengths())  # length-bucketed, as in training
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    tokens = [int(encode_batch(tok, examples, b, 192)["attention_mask"].sum()) for b in batches[1:]]

    results = {"tokens_per_batch": statistics.mean(tokens), "model": args.model, "batch_size": args.batch_size, "timed_steps": steps,
               "threads": torch.get_num_threads(), "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cpu_bf16": cpu_bf16_supported(), "load_s": load_s,
               "trainable_params": sum(p.numel() for p in params), "modes": {}}
    timed = time_steps(model, tok, examples, batches, params, warmup=1, device=device)
    for mode, (times, cpu) in timed.items():
        step = statistics.median(times)
        results["modes"][mode] = {"step_s": step, "samples_per_s": args.batch_size / step,
                                  "tokens_per_s": statistics.mean(tokens) / step, "steps_s": times,
                                  "cpu_s_per_step": statistics.median(cpu)}
    base = results["modes"]["fp32"]["step_s"]
    for m in results["modes"].values():
        m["speedup_vs_fp32"] = base / m["step_s"]
    results["label_loss_speedup"] = results["modes"][FULL]["step_s"] / results["modes"]["bf16"]["step_s"]

    print(f"model {args.model}  trainable {results['trainable_params']:,}  device {results['gpu'] or 'cpu'}  "
          f"threads {results['threads']}  batch {args.batch_size}  cpu bf16 {results['cpu_bf16']}  load {load_s:.1f}s")
    print(f"tokens per batch (mean) {statistics.mean(tokens):.0f}")
    print(f"{'mode':<18}{'step s':>10}{'cpu s':>10}{'samples/s':>12}{'tokens/s':>12}{'vs fp32':>10}")
    for mode, m in results["modes"].items():
        print(f"{mode:<18}{m['step_s']:>10.2f}{m['cpu_s_per_step']:>10.2f}{m['samples_per_s']:>12.2f}"
              f"{m['tokens_per_s']:>12.0f}{m['speedup_vs_fp32']:>9.2f}x")
    print(f"label-position loss vs full logits (bf16): {results['label_loss_speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

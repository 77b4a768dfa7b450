"""The ``finetune`` stage: ``sft/`` -> ``model/`` (LoRA adapter + tokenizer + training metrics).

Ray sits only here: the harness (:func:`semconv.training.run_on_ray`) runs
:func:`semconv.finetune.recipe.train_func` on ``num_workers`` workers, checkpoints to
``<run_dir>/_checkpoints/finetune-<lineage fingerprint>`` and restarts failed workers from the
latest checkpoint (``FailureConfig``). Re-running the stage after a crash resumes the same Ray
Train run; a changed config or a rebuilt ``sft/`` has another fingerprint (:mod:`semconv.lineage`)
and starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from semconv.artifacts import RunDir
from semconv.codes import code_token, code_tokens_in
from semconv.config import PipelineConfig
from semconv.finetune.checkpoint import FINAL
from semconv.finetune.data import split_examples
from semconv.finetune.model import resolve_base
from semconv.finetune.optim import TrainBudget
from semconv.finetune.recipe import FinetuneData, LoraSettings, Recipe, train_func
from semconv.decoding import Decoding
from semconv.finetune.optim import deepspeed_config
from semconv.lineage import checkpoint_name, stage_run
from semconv.plots import plot_training


class FinetuneInputError(ValueError):
    """``sft/`` or ``sa_init.json`` that does not fit the configured code tokens."""


CHECK_ROWS = 65_536  # rows scanned per join: the check never holds a column as Python strings


def check_code_tokens_fit(table: Any, levels: int, codes_per_level: int) -> None:
    """Every code token in the prompts and labels exists in the configured L x K vocabulary."""
    for column in ("label", "prompt"):
        col = table.column(column)
        for start in range(0, len(col), CHECK_ROWS):
            texts = [t or "" for t in col.slice(start, CHECK_ROWS).to_pylist()]
            used = code_tokens_in("\n".join(texts))  # one scan of the chunk; rows only on error
            bad = sorted(code_token(l, c) for l, c in used if l >= levels or c >= codes_per_level)
            if bad:
                row = start + next(i for i, t in enumerate(texts) if bad[0] in t)
                raise FinetuneInputError(
                    f"sft/ row {row} {column} uses {bad[0]}, outside tokenize.levels={levels} x "
                    f"tokenize.codes_per_level={codes_per_level}; sft/ was built for another codebook"
                )


def read_sa_init(rd: RunDir) -> dict[str, list[str]]:
    """``sft/sa_init.json`` ({code token: [keywords]}), required when ``tasks.sa_init`` is on."""
    path = rd.file("sft", "sa_init.json")
    if rd.fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FinetuneInputError(f"tasks.sa_init is true but {path} does not exist; re-run the tasks stage")
    with rd.fs.open_input_stream(path) as f:
        data = json.loads(f.read().decode())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise FinetuneInputError(f"{path} must map each code token to a list of keywords")
    return data


def sft_prompt_format(sft_manifest: dict[str, Any]) -> str:
    """The inference prompt format the ``sft/`` rows teach: ``history`` for the history-level
    objective, ``instruction`` for per-prompt sequential rows (and for sft/ built before the
    objective was a choice)."""
    tasks = sft_manifest.get("tasks_config") or {}
    return "history" if tasks.get("sequential_objective") == "history" else "instruction"


def recipe_of(cfg: PipelineConfig, base_path: Path, sa_init: dict[str, list[str]] | None) -> Recipe:
    """The :class:`~semconv.finetune.recipe.Recipe` that ``finetune`` describes (nothing Ray)."""
    ft = cfg.finetune
    ds = None
    if ft.use_gpu and ft.deepspeed_config:
        ds = deepspeed_config(ft.deepspeed_config, ft.batch_size, ft.grad_accum, ft.num_workers, ft.grad_clip)
    return Recipe(
        base_path=str(base_path), levels=cfg.tokenize.levels, codes_per_level=cfg.tokenize.codes_per_level,
        seed=cfg.seed, method=ft.method, num_layers=ft.num_layers, sa_init=sa_init,
        lora=LoraSettings(ft.lora_r, ft.lora_alpha, ft.lora_dropout, tuple(ft.target_modules)),
        code_softmax=ft.code_softmax, pack_len=ft.pack_len, batch_size=ft.batch_size, grad_accum=ft.grad_accum,
        lr=ft.lr, code_token_lr_scale=ft.code_token_lr_scale, code_rows_first=ft.code_rows_first,
        weight_decay=ft.weight_decay, grad_clip=ft.grad_clip,
        budget=TrainBudget(ft.max_steps, ft.max_minutes * 60 if ft.max_minutes else None, ft.warmup_steps,
                           ft.lr_schedule, ft.min_lr_ratio),
        eval_every=ft.eval_every, eval_samples=ft.eval_samples, bf16=ft.bf16, use_gpu=ft.use_gpu,
        deepspeed=ds, threads=ft.cpus_per_worker,
    )


def read_data(rd: RunDir, levels: int, codes_per_level: int) -> FinetuneData:
    """``sft/``'s train and held-out rows (read once, kept columnar), checked against the
    codebook's vocabulary."""
    table = rd.read_table("sft", columns=["task", "prompt", "label", "split"])
    check_code_tokens_fit(table, levels, codes_per_level)
    return FinetuneData(split_examples(table, "train"), split_examples(table, "valid"))


def train_on_ray(recipe: Recipe, data: FinetuneData, cfg: PipelineConfig, storage: str, name: str) -> Any:
    """Run :func:`~semconv.finetune.recipe.train_func` on ``finetune.num_workers`` Ray Train workers
    (:func:`semconv.training.run_on_ray`); returns the Ray Train ``Result``."""
    import ray

    from semconv import training
    from semconv.ray_env import init_ray

    ft = cfg.finetune
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    cpus = ft.cpus_per_worker or max(1, int(ray.cluster_resources().get("CPU", 1)) // ft.num_workers)
    recipe = dataclasses.replace(recipe, threads=recipe.threads or cpus)
    return training.run_on_ray(
        train_func, {"recipe": recipe, "data": data}, name=name, storage_path=storage, num_workers=ft.num_workers,
        checkpoint_every=ft.checkpoint_every, report_every=ft.log_every,
        use_gpu=ft.use_gpu, cpus_per_worker=cpus, max_failures=ft.max_failures,
    )


def run_finetune(cfg: PipelineConfig) -> dict[str, str]:
    """LoRA fine-tune on ``sft/`` and publish ``model/``; skips when ``model/`` is complete."""
    rd = stage_run(cfg, "finetune")
    if rd.is_complete("model"):
        return {"model": rd.path("model")}
    rd.require("sft")
    data = read_data(rd, cfg.tokenize.levels, cfg.tokenize.codes_per_level)
    sa_init = read_sa_init(rd) if cfg.tasks.sa_init else None
    base_path = resolve_base(cfg.finetune.base_model)
    recipe = recipe_of(cfg, base_path, sa_init)
    result = train_on_ray(recipe, data, cfg, rd.checkpoint_root, checkpoint_name(rd, "finetune"))
    with result.checkpoint.as_directory() as ckpt_dir:
        final = Path(ckpt_dir) / FINAL
        if not final.exists():
            raise RuntimeError(f"the last checkpoint {result.checkpoint.path} has no {FINAL}/ payload")
        metrics = json.loads((final / "train_metrics.json").read_text())
        decoding = Decoding(sft_prompt_format(rd.manifest("sft")), cfg.finetune.code_softmax)
        manifest = {
            "base_model": cfg.finetune.base_model, "base_path": str(base_path), **asdict(decoding),
            "levels": cfg.tokenize.levels, "codes_per_level": cfg.tokenize.codes_per_level,
            "steps": metrics["steps"], "final_train_loss": metrics["train_loss"][-1],
            "final_eval_loss": metrics["eval_loss"][-1] if metrics["eval_loss"] else None,
            "sa_init": sa_init is not None, "merged": cfg.finetune.merge, "num_layers": cfg.finetune.num_layers,
            "method": cfg.finetune.method, "epochs": metrics.get("epochs"),
        }
        with rd.writing("model", manifest) as tmp:
            for item in final.iterdir():
                if item.is_file() and item.name != "README.md":
                    shutil.copy2(item, tmp / item.name)
            plot_training(metrics, tmp / "train_curve.png")  # the report draws the same curve
            decoding.save(tmp)
            if cfg.finetune.merge and not recipe.whole_model:  # a whole model/ is already merged
                _save_merged(tmp, base_path)
    eval_loss = f", eval loss {manifest['final_eval_loss']:.3f}" if manifest["final_eval_loss"] is not None else ""
    print(f"finetune: {metrics['steps']} steps ({metrics.get('epochs') or 0:.2f} epochs) in "
          f"{metrics['train_time_s']:.0f}s at {metrics['tokens_per_s'] or 0:.0f} tokens/s, "
          f"train loss {manifest['final_train_loss']:.3f}{eval_loss}", flush=True)
    return {"model": rd.path("model")}


def _save_merged(model_dir: Path, base_path: Path) -> None:
    """``model/merged/``: a full Hugging Face model with LoRA and code rows folded in."""
    from semconv.finetune.model import load_for_inference

    model, tokenizer = load_for_inference(model_dir, base_path)
    model.save_pretrained(model_dir / "merged")
    tokenizer.save_pretrained(model_dir / "merged")

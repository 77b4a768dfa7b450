"""The ``finetune`` stage: ``sft/`` -> ``model/`` (LoRA adapter + tokenizer + training metrics).

Ray sits only here: the harness (:func:`semconv.training.fit`) runs
:func:`semconv.finetune.train.train_func` on ``num_workers`` workers, checkpoints to
``<run_dir>/_checkpoints/finetune-<lineage fingerprint>`` and restarts failed workers from the
latest checkpoint (``FailureConfig``). Re-running the stage after a crash resumes the same Ray
Train run; a changed config or a rebuilt ``sft/`` has another fingerprint (:mod:`semconv.lineage`)
and starts afresh.
"""

from __future__ import annotations

from dataclasses import asdict
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from semconv.artifacts import RunDir
from semconv.codes import code_token, code_tokens_in
from semconv.config import PipelineConfig
from semconv.finetune.checkpoint import FINAL
from semconv.finetune.model import resolve_base
from semconv.decoding import Decoding
from semconv.evaluate.report import plot_training
from semconv.finetune.optim import deepspeed_config
from semconv.lineage import checkpoint_name, stage_run


class FinetuneInputError(ValueError):
    """``sft/`` or ``sa_init.json`` that does not fit the configured code tokens."""


def check_code_tokens_fit(table: Any, levels: int, codes_per_level: int) -> None:
    """Every code token in the prompts and labels exists in the configured L x K vocabulary."""
    for column in ("label", "prompt"):
        texts = [t or "" for t in table.column(column).to_pylist()]
        used = code_tokens_in("\n".join(texts))  # one scan of the column; rows only on error
        bad = sorted(code_token(l, c) for l, c in used if l >= levels or c >= codes_per_level)
        if bad:
            row = next(i for i, t in enumerate(texts) if bad[0] in t)
            raise FinetuneInputError(
                f"sft/ row {row} {column} uses {bad[0]}, outside tokenize.levels={levels} x "
                f"tokenize.codes_per_level={codes_per_level}; sft/ was built for another codebook"
            )


def read_sa_init(rd: RunDir) -> dict[str, list[str]]:
    """``sft/sa_init.json`` ({code token: [keywords]}), required when ``tasks.sa_init`` is on."""
    path = f"{rd.path('sft')}/sa_init.json"
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


def train_config(cfg: PipelineConfig, base_path: Path, sa_init: dict[str, list[str]] | None) -> dict[str, Any]:
    """The plain dict that ``train_func`` receives (everything a worker needs, nothing Ray)."""
    ft = cfg.finetune
    ds = None
    if ft.use_gpu and ft.deepspeed_config:
        ds = deepspeed_config(ft.deepspeed_config, ft.batch_size, ft.grad_accum, ft.num_workers, ft.grad_clip)
    return {
        "run_dir": cfg.run_dir, "base_path": str(base_path), "seed": cfg.seed,
        "levels": cfg.tokenize.levels, "codes_per_level": cfg.tokenize.codes_per_level,
        "lora": {"r": ft.lora_r, "alpha": ft.lora_alpha, "dropout": ft.lora_dropout,
                 "target_modules": list(ft.target_modules)},
        "sa_init": sa_init, "deepspeed": ds, "use_gpu": ft.use_gpu, "bf16": ft.bf16,
        "threads": ft.cpus_per_worker,
        "max_train_seconds": ft.max_minutes * 60 if ft.max_minutes else None,
        **{k: getattr(ft, k) for k in (
            "max_steps", "batch_size", "grad_accum", "lr", "code_token_lr_scale", "code_softmax", "weight_decay",
            "warmup_steps", "lr_schedule",
            "min_lr_ratio", "grad_clip", "max_seq_len", "bucket_by_length", "eval_every", "eval_samples")},
    }


def fit(config: dict[str, Any], cfg: PipelineConfig, storage: str, name: str) -> Any:
    """Run ``train_func`` on ``finetune.num_workers`` Ray Train workers (:func:`semconv.training.fit`);
    returns the Ray Train ``Result``."""
    import ray

    from semconv import training
    from semconv.finetune.train import train_func
    from semconv.ray_env import init_ray

    ft = cfg.finetune
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    cpus = ft.cpus_per_worker or max(1, int(ray.cluster_resources().get("CPU", 1)) // ft.num_workers)
    config = {**config, "threads": config.get("threads") or cpus}
    return training.fit(
        train_func, config, name=name, storage_path=storage, num_workers=ft.num_workers,
        checkpoint_every=ft.checkpoint_every, report_every=ft.log_every,
        use_gpu=ft.use_gpu, cpus_per_worker=cpus, max_failures=ft.max_failures,
    )


def run_finetune(cfg: PipelineConfig) -> dict[str, str]:
    """LoRA fine-tune on ``sft/`` and publish ``model/``; skips when ``model/`` is complete."""
    rd = stage_run(cfg, "finetune")
    if rd.is_complete("model"):
        return {"model": rd.path("model")}
    rd.require("sft")
    table = rd.read_table("sft", columns=["prompt", "label", "split"])
    check_code_tokens_fit(table, cfg.tokenize.levels, cfg.tokenize.codes_per_level)
    sa_init = read_sa_init(rd) if cfg.tasks.sa_init else None
    base_path = resolve_base(cfg.finetune.base_model)
    config = train_config(cfg, base_path, sa_init)
    result = fit(config, cfg, rd.checkpoint_root, checkpoint_name(rd, "finetune"))
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
            "sa_init": sa_init is not None, "merged": cfg.finetune.merge,
        }
        with rd.writing("model", manifest) as tmp:
            for item in final.iterdir():
                if item.is_file() and item.name != "README.md":
                    shutil.copy2(item, tmp / item.name)
            plot_training(metrics, tmp / "train_curve.png")  # the report's plot of the same curve
            decoding.save(tmp)
            if cfg.finetune.merge:
                _save_merged(tmp, base_path)
    return {"model": rd.path("model")}


def _save_merged(model_dir: Path, base_path: Path) -> None:
    """``model/merged/``: a full Hugging Face model with LoRA and code rows folded in."""
    from semconv.finetune.model import load_for_inference

    model, tokenizer = load_for_inference(model_dir, base_path)
    model.save_pretrained(model_dir / "merged")
    tokenizer.save_pretrained(model_dir / "merged")

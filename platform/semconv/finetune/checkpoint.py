"""Resume points of a fine-tuning run: trainable weights, optimizer, schedule, loss history.

Only the weights that learn are saved (LoRA + code-token rows, a few MB), never the frozen
base, so checkpointing every few dozen steps is cheap. The final checkpoint also holds the
``model/`` payload (peft adapter, tokenizer, metrics) that the stage publishes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from semconv.finetune.model import save_recommender, trainable_state

STATE = "train_state.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
FINAL = "final"
DEEPSPEED_TAG = "deepspeed"


def new_history() -> dict[str, Any]:
    """Everything the run accumulates, in step order; survives restarts via checkpoints."""
    return {"step": 0, "train_loss": [], "train_steps": [], "lr": [], "eval_loss": [], "eval_steps": [],
            "samples": 0, "tokens": 0, "train_time_s": 0.0, "resumed_from_step": []}


def save_state(path: Path, model: Any, optimizer: Any) -> None:
    """Write the trainable weights and optimizer of the plain (DDP) path into ``path`` (the LR is
    a function of the step and the training time, which the history holds)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(path / TRAINABLE))
    torch.save({"optimizer": optimizer.state_dict()}, path / OPTIMIZER)


def load_state(path: Path, model: Any, optimizer: Any) -> None:
    """Restore what :func:`save_state` wrote. The optimizer file holds only tensors and plain
    values, so it loads with ``weights_only=True`` (no pickled code runs from a checkpoint)."""
    weights = load_file(str(path / TRAINABLE))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise RuntimeError(f"checkpoint {path} holds weights the model lacks, e.g. {unknown[0]!r}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True)["optimizer"])


def write_history(path: Path, history: dict[str, Any]) -> None:
    (path / STATE).write_text(json.dumps(history))


def read_history(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text())


def save_final(path: Path, model: Any, tokenizer: Any, metrics: dict[str, Any], whole: bool = False) -> None:
    """The ``model/`` payload: peft adapter (code rows included, full vocab not), tokenizer, metrics;
    with ``whole`` (a shallower base, full fine-tuning) the merged model instead
    (:func:`semconv.finetune.model.save_recommender`).

    It loads with plain Hugging Face calls, into the model that was trained::

        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained("<run_dir>/model")  # base + code rows + LoRA
        tokenizer = AutoTokenizer.from_pretrained("<run_dir>/model")         # with <a_0>..<d_255>
        model = model.merge_and_unload()  # optional: plain weights, what load_for_inference returns

    ``AutoPeftModelForCausalLM`` loads the base named by ``base_model_name_or_path`` in
    ``adapter_config.json`` (saved as an absolute path: the base directory training used, e.g.
    ``~/.cache/semconv/models/smollm2-135m`` for the bundled model, which
    ``semconv.models.resolve("smollm2-135m")`` rebuilds on another machine). Because this directory
    holds a tokenizer larger than the base's vocabulary, it resizes the base's embeddings to
    ``len(tokenizer)`` before loading the adapter, and the adapter's trainable-token rows then
    overwrite the new rows. With the base elsewhere, do the same by hand: ``base =
    AutoModelForCausalLM.from_pretrained(base_dir)``, ``base.resize_token_embeddings(len(tokenizer))``,
    ``PeftModel.from_pretrained(base, "<run_dir>/model")``. ``AutoModelForCausalLM.from_pretrained``
    on this directory does not resize (an ``IndexError``); it loads ``model/merged/``, which the
    stage writes when ``finetune.merge`` is on.

    ``save_embedding_layers=False``: the resized embedding matrix is not stored, only the code
    rows, so the adapter stays small (SmolLM2-135M, 1,024 codes, LoRA r=16: 22 MB; with the
    embedding and lm_head matrices it would be 256 MB).
    """
    save_recommender(path, model, tokenizer, whole)
    (path / "train_metrics.json").write_text(json.dumps(metrics, indent=2))

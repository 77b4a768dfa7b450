"""What a fine-tuning checkpoint holds beyond the harness's parts: the run's history and, in the
final checkpoint, the ``model/`` payload (peft adapter, tokenizer, metrics) that the stage publishes.

The resume point itself is written by :func:`semconv.training.save_checkpoint`: only the weights
that learn (LoRA + code-token rows, a few MB), never the frozen base, so checkpointing every few
dozen steps is cheap; the history is its trainer state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semconv.finetune.model import save_recommender

FINAL = "final"
DEEPSPEED_TAG = "deepspeed"


def new_history() -> dict[str, Any]:
    """Everything the run accumulates, in step order; survives restarts via checkpoints."""
    return {"step": 0, "train_loss": [], "train_steps": [], "lr": [], "eval_loss": [], "eval_steps": [],
            "samples": 0, "tokens": 0, "train_time_s": 0.0, "resumed_from_step": []}


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

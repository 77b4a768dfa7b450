"""The fine-tuned recommender: base causal LM + code tokens + LoRA (Alignment Tasks, stage 2).

Only two kinds of weights learn: the LoRA matrices on the attention and MLP projections, and
the embedding rows of the new code tokens (peft ``trainable_token_indices``). The pretrained
vocabulary stays frozen, so the LLM keeps its language while it learns the item "words"; with
tied input/output embeddings the same new rows also serve as the output projection.

SA-Init (TS-Rec): a code token starts at the mean input embedding of keywords describing the
items that share it, instead of the generic mean-of-vocabulary init of ``resize_token_embeddings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from semconv.finetune.tokenizer import add_code_tokens

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def resolve_base(name_or_path: str | os.PathLike[str]) -> Path:
    """A Hugging Face directory for a config's ``base_model`` (bundled name or path)."""
    from semconv.models import resolve

    return Path(resolve(name_or_path))


def load_base(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load any causal LM directory and its tokenizer (never runs remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    return model, tokenizer


def resize_for_code_tokens(model: Any, tokenizer: Any) -> None:
    """Grow the embedding (and tied output) matrix to the tokenizer's size; mean init."""
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def sa_init_embeddings(model: Any, tokenizer: Any, keywords: Mapping[str, Sequence[str]]) -> int:
    """Set each code token's row to the mean input embedding of its keywords' tokens.

    Keywords are encoded with a leading space (how they appear mid-sentence). Tokens whose
    keywords yield no ids keep their default init. Returns how many rows were set.
    """
    emb = model.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    done = 0
    with torch.no_grad():
        for token, words in keywords.items():
            if token not in vocab:
                raise ValueError(f"sa_init.json names {token!r}, which is not a code token")
            ids = [i for w in words if w.strip()
                   for i in tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"]]
            ids = [i for i in ids if i < emb.shape[0] and i != vocab[token]]
            if ids:
                emb[vocab[token]] = emb[torch.tensor(ids)].float().mean(0).to(emb.dtype)
                done += 1
    return done


def apply_lora(
    model: Any,
    code_ids: Sequence[int],
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
) -> Any:
    """Wrap ``model`` with LoRA; only LoRA weights and the code-token rows are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        trainable_token_indices=list(code_ids),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def build_finetune_model(
    base_path: str | os.PathLike[str],
    levels: int,
    codes_per_level: int,
    lora: Mapping[str, Any] | None = None,
    sa_init: Mapping[str, Sequence[str]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any, list[int]]:
    """Base LM + code tokens (+ SA-Init) + LoRA, ready to train: ``(peft_model, tokenizer, ids)``."""
    model, tokenizer = load_base(base_path, dtype)
    code_ids = add_code_tokens(tokenizer, levels, codes_per_level)
    resize_for_code_tokens(model, tokenizer)
    if sa_init:
        sa_init_embeddings(model, tokenizer, sa_init)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_model = apply_lora(model, code_ids, **dict(lora or {}))
    return peft_model, tokenizer, code_ids


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes (LoRA + code-token rows), by parameter name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_for_inference(
    model_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Load the fine-tuned model for decoding: base + code tokens + adapter, merged.

    ``model_dir`` is the ``model/`` artifact. Merging (``merge_and_unload``) folds LoRA and the
    code-token rows into plain weights, so decoding pays no adapter overhead. The same model as
    ``peft.AutoPeftModelForCausalLM.from_pretrained(model_dir).merge_and_unload()`` when the base
    recorded in ``adapter_config.json`` is reachable (see ``checkpoint.save_final``); this one
    takes the base explicitly.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{model_dir} has no adapter_config.json: not a finetune model/ artifact")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    base, _ = load_base(resolve_base(base_model), dtype)
    resize_for_code_tokens(base, tokenizer)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, model_dir, torch_dtype=dtype)
    model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


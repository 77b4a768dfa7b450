"""The fine-tuned recommender: base causal LM + code tokens + LoRA (Alignment Tasks, stage 2).

With LoRA (``finetune.method: lora``, the default) only two kinds of weights learn: the LoRA
matrices on the attention and MLP projections, and the embedding rows of the new code tokens
(peft ``trainable_token_indices``). The pretrained vocabulary stays frozen, so the LLM keeps its
language while it learns the item "words"; with tied input/output embeddings the same new rows
also serve as the output projection. ``full`` trains every weight.

``finetune.num_layers`` keeps the base's first N transformer layers: a step costs about N / depth
of the full model's, so a CPU budget buys that many more epochs. A shallower (or fully trained)
model is not the base plus an adapter, so ``model/`` then holds the whole merged model, which
plain ``AutoModelForCausalLM.from_pretrained`` loads (:func:`save_recommender`).

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


def load_base(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
              num_layers: int | None = None) -> tuple[Any, Any]:
    """Load any causal LM directory and its tokenizer (never runs remote code), keeping its first
    ``num_layers`` transformer layers when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
    if num_layers is not None:
        keep_layers(model, num_layers)
    return model, tokenizer


def keep_layers(model: Any, num_layers: int) -> None:
    """Cut a causal LM to its first ``num_layers`` decoder layers, config included, so that
    ``save_pretrained`` / ``from_pretrained`` round-trip the shallower model."""
    decoder = getattr(model, model.base_model_prefix)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"finetune.num_layers: {type(model).__name__} has no .layers to cut")
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"finetune.num_layers must be between 1 and the base's {len(layers)} layers, "
                         f"not {num_layers}")
    decoder.layers = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:num_layers]


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
    num_layers: int | None = None,
    method: str = "lora",
) -> tuple[Any, Any, list[int]]:
    """Base LM (its first ``num_layers`` layers) + code tokens (+ SA-Init), then LoRA (``method``
    ``lora``: a peft model) or every weight trainable (``full``): ``(model, tokenizer, code ids)``."""
    model, tokenizer = load_base(base_path, dtype, num_layers)
    code_ids = add_code_tokens(tokenizer, levels, codes_per_level)
    resize_for_code_tokens(model, tokenizer)
    if sa_init:
        sa_init_embeddings(model, tokenizer, sa_init)
    model.config.pad_token_id = tokenizer.pad_token_id
    if method == "full":  # code rows as peft trainable tokens (their own LR), every other weight as well
        from peft import TrainableTokensConfig, get_peft_model

        model = get_peft_model(model, TrainableTokensConfig(token_indices=list(code_ids)))
        for p in model.parameters():
            p.requires_grad_(True)
        return model, tokenizer, code_ids
    if method != "lora":
        raise ValueError(f"finetune.method must be 'lora' or 'full', not {method!r}")
    return apply_lora(model, code_ids, **dict(lora or {})), tokenizer, code_ids


def is_adapter(model: Any) -> bool:
    """Whether ``model`` is a peft model (saved as an adapter over its base)."""
    return hasattr(model, "peft_config")


def merged_copy(model: Any) -> Any:
    """A plain causal LM with LoRA and the code rows folded in (``model`` is left as it is)."""
    import copy

    return copy.deepcopy(model).merge_and_unload() if is_adapter(model) else model


def save_recommender(path: str | os.PathLike[str], model: Any, tokenizer: Any, whole: bool) -> None:
    """``model/``'s weights and tokenizer. A peft adapter over the full base (``whole`` False)
    is saved as the adapter (a few MB; see ``checkpoint.save_final``); a shallower base or a
    fully trained model (``whole``) as the whole merged model, which plain
    ``AutoModelForCausalLM.from_pretrained(path)`` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if whole or not is_adapter(model):
        merged_copy(model).save_pretrained(str(path))
    else:
        pin_base_path(model)
        model.save_pretrained(str(path), save_embedding_layers=False)
    tokenizer.save_pretrained(str(path))


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes (LoRA + code-token rows), by parameter name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_for_inference(
    model_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Load the fine-tuned model for decoding: base + code tokens + adapter, merged.

    ``model_dir`` is the ``model/`` artifact: a whole model (``config.json``: a shallower base or
    full fine-tuning, loaded as it is) or an adapter over ``base_model``. Merging
    (``merge_and_unload``) folds LoRA and the code-token rows into plain weights, so decoding pays
    no adapter overhead. The same model as
    ``peft.AutoPeftModelForCausalLM.from_pretrained(model_dir).merge_and_unload()`` when the base
    recorded in ``adapter_config.json`` is reachable (see ``checkpoint.save_final``); this one
    takes the base explicitly.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        if (model_dir / "config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False)
            return model.eval(), tokenizer
        raise FileNotFoundError(f"{model_dir} has neither adapter_config.json nor config.json: not a "
                                "finetune model/ artifact")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    base, _ = load_base(resolve_base(base_model), dtype)
    resize_for_code_tokens(base, tokenizer)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, model_dir, torch_dtype=dtype)
    model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def pin_base_path(model: Any) -> None:
    """A base named by a relative path is recorded absolute, so the adapter finds it from any
    working directory (a hub id, or a directory that does not exist here, is left as it is)."""
    for config in model.peft_config.values():
        name = config.base_model_name_or_path
        if name and Path(name).expanduser().is_dir():
            config.base_model_name_or_path = os.path.abspath(Path(name).expanduser())


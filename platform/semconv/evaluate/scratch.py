"""The ``scratch`` baseline: our generative recommender without the pretrained LLM.

The same item codes, the same ``sft/`` rows, the same fine-tune loop
(:func:`semconv.finetune.recipe.train`, every weight trained) and the same constrained beam search
as ours, but the decoder is a small Llama initialised at random (TIGER-style: a few layers,
hidden 128) instead of the pretrained base. Its row in the report is what is left of ours when
the LLM's pretraining is taken away, so the report shows what the LLM adds (the paper's central
claim) instead of assuming it. It keeps the base's tokenizer, so prompts tokenize exactly as
ours do; only the weights differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semconv.artifacts import RunDir
from semconv.evaluate.protocol import SplitRows

if TYPE_CHECKING:
    from semconv.config import PipelineConfig
    from semconv.evaluate.config import ScratchConfig


def random_decoder(tokenizer_dir: str | Path, out: Path, cfg: ScratchConfig, seed: int) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` of ``cfg``'s size with the tokenizer of
    ``tokenizer_dir`` into ``out``: a base that the fine-tune loads like any other."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_scratch(cfg: PipelineConfig, data: Any, base_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the random decoder in ``base_dir`` on ``data`` (a
    :class:`~semconv.finetune.recipe.FinetuneData`) with the package's loop, in this process:
    ``(merged model, tokenizer, training info)``."""
    from semconv.finetune.model import merged_copy
    from semconv.finetune.optim import TrainBudget
    from semconv.finetune.recipe import Recipe, train
    from semconv.training import Session

    sc = cfg.evaluate.scratch
    minutes = sc.max_minutes if sc.max_minutes is not None else cfg.finetune.max_minutes
    recipe = Recipe(
        base_path=str(base_dir), levels=cfg.tokenize.levels, codes_per_level=cfg.tokenize.codes_per_level,
        seed=cfg.seed, method="full", code_softmax=cfg.finetune.code_softmax, pack_len=cfg.finetune.pack_len,
        batch_size=sc.batch_size, lr=sc.lr, weight_decay=0.0, grad_clip=1.0,
        budget=TrainBudget(sc.max_steps or cfg.finetune.max_steps, minutes * 60 if minutes else None,
                           sc.warmup_steps, "cosine", 0.1),
        eval_every=10**9, bf16=False, threads=sc.num_threads, name="scratch",
    )
    trained = train(recipe, data, Session(checkpoint_every=10**9))
    h = trained.history
    info = {"steps": h["step"], "train_seconds": round(h["train_time_s"], 1), "tokens": h["tokens"],
            "final_train_loss": h["train_loss"][-1] if h["train_loss"] else None,
            "max_minutes": minutes, "hidden": sc.hidden, "layers": sc.layers,
            "parameters": sum(p.numel() for p in trained.model.parameters())}
    return merged_copy(trained.model).eval(), trained.tokenizer, info


def rank_scratch(
    cfg: PipelineConfig, run: RunDir, rows: dict[str, SplitRows], k: int, exclude_history: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train the scratch decoder on the run's ``sft/`` and rank every non-train split's users
    with the constrained beam search of ours (same beams, prompts and exclusion)."""
    import tempfile

    from semconv.codes import read_item_codes
    from semconv.decoding import Decoding
    from semconv.finetune.data import split_examples
    from semconv.finetune.model import resolve_base
    from semconv.finetune.recipe import FinetuneData
    from semconv.finetune.stage import sft_prompt_format
    from semconv.inference.ranker import GenerativeRanker

    from semconv.evaluate.baselines import BaselineUnavailable

    if not run.is_complete("sft"):
        raise BaselineUnavailable("sft/ is missing, so there is nothing to train the scratch decoder on")
    table = run.read_table("sft", columns=["task", "prompt", "label", "split"])
    data = FinetuneData(split_examples(table, "train"), split_examples(table, "valid"))
    sc = cfg.evaluate.scratch
    with tempfile.TemporaryDirectory(prefix="semconv-scratch-") as tmp:
        base = random_decoder(resolve_base(cfg.finetune.base_model), Path(tmp) / "base", sc, cfg.seed)
        model, tokenizer, info = train_scratch(cfg, data, base)
    item_ids, codes = read_item_codes(run)
    decoding = Decoding(sft_prompt_format(run.manifest("sft")), cfg.finetune.code_softmax)
    ranker = GenerativeRanker(model, tokenizer, codes, num_beams=sc.num_beams or cfg.precache.num_beams,
                              top_k=k, batch_size=cfg.precache.batch_size, item_ids=item_ids,
                              decoding=decoding, max_len=cfg.prepare.max_len)
    start = time.perf_counter()
    # the whole history before the target, as the precache ranks: the prompt keeps its last
    # max_len items, exclusion masks all of it (semconv.protocol)
    out = {name: ranker.rank([list(h) for h in r.seen], exclude_history)[0]
           for name, r in rows.items() if len(r)}
    info["rank_seconds"] = round(time.perf_counter() - start, 1)
    return out, info

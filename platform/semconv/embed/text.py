"""LLM text embeddings: each item's mean input-layer token embedding of its title + description.

The paper's LLM alignment loss pulls every codebook level towards the item's position in the
LLM's *input* space, defined as the mean of the input-embedding rows of the item's text tokens:
no forward pass, so it costs one tokenizer call and a gather per item. Only the embedding matrix
is needed, so we read just that tensor from the model's safetensors (113 of SmolLM2's 517 MiB in
fp32; about 0.5 of a 7B model's 27 GB) and fall back to loading the whole model when the
matrix cannot be found by name (e.g. ``pytorch_model.bin`` checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from semconv.embed.supplied import embedding_table


class TextEmbeddingError(ValueError):
    """A model directory whose tokenizer and input embeddings do not fit together."""


def item_text(title: str | None, description: str | None) -> str:
    """The text whose tokens are averaged: title and description, stripped, space-joined."""
    return " ".join(p for p in ((title or "").strip(), (description or "").strip()) if p)


def _safetensors_weight_map(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.exists():
        return {}
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def load_input_embeddings(model_dir: str | Path) -> torch.Tensor:
    """The causal LM's input embedding matrix ``(vocab, hidden)`` as float32.

    The parameter's name comes from ``get_input_embeddings()`` of the architecture built on the
    meta device (no memory), so this works for any Hugging Face causal LM, not only Llama.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    module = skeleton.get_input_embeddings()
    name = next(n for n, m in skeleton.named_modules() if m is module) + ".weight"
    weight_map = _safetensors_weight_map(model_dir)
    parts = name.split(".")
    for cand in (".".join(parts[i:]) for i in range(len(parts) - 1)):  # saved keys may drop a prefix
        if cand in weight_map:
            with safe_open(str(weight_map[cand]), framework="pt") as f:
                return f.get_tensor(cand).to(torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, dtype=torch.float32)
    return model.get_input_embeddings().weight.detach().to(torch.float32)


def mean_token_embeddings(token_ids: list[list[int]], table: torch.Tensor) -> np.ndarray:
    """Mean of ``table`` rows per token list; an empty list gets the mean of all rows."""
    lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
    flat = torch.tensor([i for t in token_ids for i in t], dtype=torch.int64)
    if flat.numel() and int(flat.max()) >= table.shape[0]:
        raise TextEmbeddingError(
            f"token id {int(flat.max())} is outside the input embeddings ({table.shape[0]} rows): "
            "the tokenizer does not belong to this model"
        )
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    out = torch.nn.functional.embedding_bag(flat, table, offsets, mode="mean")
    empty = lengths == 0
    if empty.any():
        out[empty] = table.mean(0)
    return out.numpy()


class TextEmbedder:
    """Ray Data actor: loads the tokenizer and the embedding matrix once, embeds item batches."""

    def __init__(self, model_dir: str, max_tokens: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        self.table = load_input_embeddings(model_dir)
        self.max_tokens = max_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [
            item_text(t, d)
            for t, d in zip(batch.column("title").to_pylist(), batch.column("description").to_pylist())
        ]
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_tokens)
        vecs = mean_token_embeddings(ids["input_ids"], self.table)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), vecs.shape[1])
        return pa.table({"item_id": batch.column("item_id"), "embedding": emb,
                         "num_tokens": pa.array([len(t) for t in ids["input_ids"]], pa.int32())})


def embed_item_texts(
    items: pa.Table, model_dir: str | Path, max_tokens: int, batch_size: int, actors: int = 1
) -> tuple[pa.Table, dict[str, Any]]:
    """Ray Data ``map_batches`` over ``items`` -> (``item_id``, ``embedding``) sorted by item_id.

    Also returns stats for the manifest (dimension, empty texts, texts cut at ``max_tokens``).
    """
    import ray.data

    cols = items.select(["item_id", "title", "description"])
    step = batch_size * 8  # several blocks, so that more than one actor gets work
    ds = ray.data.from_arrow([cols.slice(s, step) for s in range(0, max(cols.num_rows, 1), step)])
    out = ds.map_batches(
        TextEmbedder,
        fn_constructor_kwargs={"model_dir": str(model_dir), "max_tokens": max_tokens},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
    parts = list(out.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(parts).sort_by("item_id") if parts else None
    if table is None or table.num_rows != items.num_rows:
        raise RuntimeError(f"text embedding returned {0 if table is None else table.num_rows} rows "
                           f"for {items.num_rows} items")
    ids = table.column("item_id").to_numpy()
    if not np.array_equal(ids, np.arange(items.num_rows)):
        raise ValueError("items/: item_id must be dense 0..N-1 (prepare writes it so)")
    vecs = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    ntok = table.column("num_tokens").to_numpy()
    stats = {"dim": int(vecs.shape[1]), "empty_texts": int((ntok == 0).sum()),
             "texts_at_max_tokens": int((ntok >= max_tokens).sum()), "mean_tokens": float(ntok.mean())}
    return embedding_table(vecs), stats

"""A serving run directory with a real (tiny) fine-tuned ``model/`` and its precache, for the
online generation tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from .serve_fixtures import LEVELS, N_ITEMS, N_USERS, V1, Catalogue, make_run_dir

from semconv.artifacts import RunDir
from semconv.decoding import Decoding

CODES = 4  # serve_fixtures' item codes: ids // 16, (ids // 4) % 4, ids % 4 (3 levels x 4)
BEAMS, TOP_K, MAX_LEN = 12, 5, 6


def user_histories(seed: int = 0) -> dict[int, list[int]]:
    """Distinct-item test histories of 1..MAX_LEN items (the splits' cut), one per user."""
    rng = np.random.default_rng(seed)
    return {u: rng.choice(N_ITEMS, size=int(rng.integers(1, MAX_LEN + 1)), replace=False).tolist()
            for u in range(N_USERS)}


def write_model(rd: RunDir, base_dir: Path, prompt_format: str = "history", seed: int = 1) -> None:
    """``model/`` as the finetune stage writes it (adapter + tokenizer + recommender.json), with
    code-token rows drawn at the scale of the text rows and random LoRA B weights (from ``seed``),
    so items get clearly different scores (a fresh mean-initialised model ties them all)."""
    from semconv.finetune.model import apply_lora, load_base, resize_for_code_tokens
    from semconv.finetune.tokenizer import add_code_tokens

    model, tok = load_base(base_dir, torch.float32)
    ids = add_code_tokens(tok, LEVELS, CODES)
    resize_for_code_tokens(model, tok)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=gen) * emb[: min(ids)].std() * 3
    model.config.pad_token_id = tok.pad_token_id
    model = apply_lora(model, ids, r=2, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    with rd.writing("model", {"base_model": str(base_dir)}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        Decoding(prompt_format, "vocabulary").save(tmp)


def write_model_precache(rd: RunDir, histories: dict[int, list[int]], dtype: str = "float32",
                         version: str = "p1") -> None:
    """``precache/`` from the precache's own row function (:func:`rank_batch`) over the test
    histories, ranked in ``dtype`` on any CPU (as ``precache.bf16=true/false``) and recording it,
    with the stage's manifest keys; users 0, 2, 4, ... only."""
    from semconv.inference.precache import rank_batch
    from semconv.inference.run_ranker import load_run_ranker, resolve_settings

    settings = replace(resolve_settings(rd, bf16=dtype == "bfloat16"), num_beams=BEAMS, top_k=TOP_K)
    assert settings.dtype == dtype, (settings.dtype, dtype)
    ranker, _ = load_run_ranker(rd, settings)
    users = sorted(u for u in histories if u % 2 == 0)
    table = rank_batch(ranker, pa.table({"user_id": pa.array(users, pa.int64()),
                                         "history": [histories[u] for u in users]}), exclude_history=True)
    rd.write_table("precache", table, manifest={
        "top_k": TOP_K, "num_beams": BEAMS, "exclude_history": True, "dtype": dtype,
        "base_model": settings.base_model, "users": len(users), "version": version})


def make_generation_run(root: Path, base_dir: Path, dtype: str = "float32", catalogue: Catalogue = V1,
                        seed: int = 1, version: str = "p1") -> RunDir:
    """serve_fixtures' run directory of ``catalogue`` + varied test histories, a tiny model/
    (LoRA weights from ``seed``) and its precache ``version`` (ranked in ``dtype``)."""
    rd = make_run_dir(root, catalogue, max_len=MAX_LEN)
    histories = {u: [catalogue.item_ids[x] for x in h] for u, h in user_histories().items()}
    write_model(rd, base_dir, seed=seed)
    write_model_precache(rd, histories, dtype, version)
    return rd

"""A planted preference makes a new item come out of constrained decoding after a refresh.

The planted rule of ``tests/finetune/conftest.py`` (16 items, codes ``(a, b, 2a-b, 3a-2b) mod 4``,
next item = every code one higher) is taught to a tiny LoRA model in the history prompt format.
The run's catalogue holds 15 items; item 15 (codes 3,3,3,3, the rule's successor of item 10) is
missing, so nobody can be recommended it. A refresh adds it (with an embedding whose nearest codes
are exactly its planted codes) and a new user whose one interaction is item 10: constrained
decoding over the new trie then ranks item 15 first for that user.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.codes import item_codes_table, item_tokens
from semconv.config import PipelineConfig
from semconv.data.prepare import ITEMS_SCHEMA
from semconv.protocol import split_bounds
from semconv.decoding import Decoding
from semconv.prompts import history_prompt
from tests.conftest import build_tiny_lm
from tests.finetune.conftest import K, LEVELS, N_ITEMS, item_codes, next_item, planted_rows, train_planted

from .conftest import write_jsonl

NEW = 15  # planted codes (3, 3, 3, 3); next_item(10) == 15
SCALES = (8.0, 4.0, 2.0, 1.0)


def _codebook_vectors() -> np.ndarray:
    """Level l, code c -> SCALES[l] * e_{4l+c}: an item's vector is the sum over its codes, and its
    nearest codes are exactly those codes."""
    books = np.zeros((LEVELS, K, LEVELS * K), np.float32)
    for l in range(LEVELS):
        for c in range(K):
            books[l, c, l * K + c] = SCALES[l]
    return books


def _vector(i: int) -> np.ndarray:
    return _codebook_vectors()[np.arange(LEVELS), list(item_codes(i))].sum(0)


def _history_sft(n: int) -> pa.Table:
    rows = planted_rows(n, seed=0, max_history=1)
    return pa.table({"task": ["sequential"] * n,
                     "prompt": [history_prompt([item_codes(h) for h in hist]) for hist, _ in rows],
                     "label": [item_tokens(item_codes(t)) for _, t in rows], "split": ["train"] * n,
                     "user_id": pa.array(range(n), pa.int64()), "item_id": pa.array([t for _, t in rows], pa.int64())})


def _build(run_dir, lm_dir) -> None:
    from semconv.embed.supplied import embedding_table
    from semconv.finetune.data import split_examples
    from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook

    run = RunDir(run_dir)
    old = [i for i in range(N_ITEMS) if i != NEW]
    run.write_table("items", pa.table({
        "item_id": pa.array(old, pa.int64()), "source_id": [f"i{i}" for i in old],
        "title": [f"item {i}" for i in old], "description": [""] * len(old), "brand": [""] * len(old),
        "categories": [""] * len(old)}, schema=ITEMS_SCHEMA))
    starts = [i for i in old if all(x != NEW for x in (i, next_item(i), next_item(next_item(i))))]
    hist = [[s, next_item(s), next_item(next_item(s))] for s in starts]
    seqs = pa.table({"user_id": pa.array(range(len(hist)), pa.int64()),
                     "source_user_id": [f"u{s}" for s in starts], "history": pa.array(hist, pa.list_(pa.int64()))})
    run.write_table("sequences", seqs)
    run.write_table("splits", split_bounds(seqs), manifest={"max_len": 20})
    run.write_table("item_emb", embedding_table(np.stack([_vector(i) for i in old])))
    book = ResidualCodebook(CodebookConfig(dim=LEVELS * K, levels=LEVELS, codes_per_level=K))
    with torch.no_grad():
        book.codebooks.copy_(torch.from_numpy(_codebook_vectors()))
        book.initialized.fill_(True)
    with run.writing("codebook", {"levels": LEVELS}) as tmp:
        book.save_pretrained(tmp)
    run.write_table("item_codes", item_codes_table(np.array(old), np.array([item_codes(i) for i in old])))
    trained = train_planted(lm_dir, split_examples(_history_sft(512), "train"), steps=400, pack_len=40,
                            code_softmax="vocabulary", batch_size=8)  # ~2 rows a pack
    losses, model, tok = trained.history["train_loss"], trained.model, trained.tokenizer
    assert np.mean(losses[-20:]) < np.mean(losses[:5]) / 3
    with run.writing("model", {"base_model": str(lm_dir)}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        Decoding(prompt_format="history").save(tmp)


@pytest.mark.slow
def test_a_planted_preference_brings_the_new_item_out_of_constrained_decoding(tmp_path, _ray_session_teardown):
    import ray

    from semconv.inference.stage import run_precache
    from semconv.refresh.stage import run_refresh

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm = build_tiny_lm(tmp_path / "lm", hidden=96, layers=2)
        run_dir = tmp_path / "run"
        _build(run_dir, lm)
        inter = write_jsonl(tmp_path / "inter.jsonl", [{"user_id": "fresh", "item_id": "i10"}])
        items = write_jsonl(tmp_path / "items.jsonl", [
            {"item_id": "i15", "title": "item 15", "description": "", "embedding": _vector(NEW).tolist()}])
        cfg = PipelineConfig.model_validate({
            "run_dir": str(run_dir), "finetune": {"base_model": str(lm)},
            "precache": {"bf16": False, "num_beams": 8, "top_k": 3, "batch_size": 8, "exclude_history": True,
                         "threads_per_actor": 1},
            "refresh": {"interactions": inter, "items": items}})
        run_precache(cfg)
        before = RunDir(run_dir).read_table("precache")
        assert NEW not in {i for row in before["items"].to_pylist() for i in row}  # not in the trie
        version = RunDir(run_refresh(cfg)["version"])
        codes = dict(zip(*[version.read_table("item_codes")[c].to_pylist() for c in ("item_id", "codes")]))
        assert tuple(codes[NEW]) == item_codes(NEW)  # its nearest codes, free, kept
        lists = dict(zip(*[version.read_table("precache")[c].to_pylist() for c in ("user_id", "items")]))
        fresh = RunDir(run_dir).read_table("sequences").num_rows  # a user new to the run: the next id
        assert lists[fresh][0] == NEW  # their history is item 10, whose successor is the new item
    finally:
        torch.set_num_threads(threads)

"""A tiny finished run (30 items, 120 users in 4 sequence files, L=3 x K=4 codes, tiny LM, 3
precache shards) built once per session, copied per test, and helpers to write a delta."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig

LEVELS, CODES, DIM = 3, 4, 8
NUM_ITEMS, NUM_USERS = 30, 120


def _behaviour(n: int, seed: int) -> np.ndarray:
    """Item vectors around 4 cluster centres, so codes carry structure a map can learn."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, DIM)) * 3
    return (centres[np.arange(n) % 4] + rng.normal(size=(n, DIM)) * 0.3).astype(np.float32)


def build_run(path: Path, lm_dir: Path, max_len: int = 20) -> None:
    from semconv.data.prepare import ITEMS_SCHEMA
    from semconv.protocol import split_bounds
    from semconv.embed.supplied import embedding_table
    from semconv.embed.text import TextEmbedder
    from semconv.finetune.model import build_finetune_model
    from semconv.inference.stage import run_precache
    from semconv.codes import item_codes_table
    from semconv.tokenize.assign import assign_codes
    from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook
    from semconv.tokenize.collisions import resolve_collisions

    run = RunDir(path)
    words = ["glove", "tape", "pump", "meter"]
    items = pa.table({
        "item_id": pa.array(np.arange(NUM_ITEMS), pa.int64()),
        "source_id": [f"i{i}" for i in range(NUM_ITEMS)],
        "title": [f"{words[i % 4]} {i}" for i in range(NUM_ITEMS)],
        "description": [f"a {words[i % 4]}" for i in range(NUM_ITEMS)],
        "brand": [""] * NUM_ITEMS, "categories": [""] * NUM_ITEMS}, schema=ITEMS_SCHEMA)
    run.write_table("items", items)
    rng = np.random.default_rng(0)
    hist = [rng.choice(NUM_ITEMS, size=rng.integers(3, 9), replace=False).tolist() for _ in range(NUM_USERS)]
    seqs = pa.table({"user_id": pa.array(np.arange(NUM_USERS), pa.int64()),
                     "source_user_id": [f"u{u}" for u in range(NUM_USERS)],
                     "history": pa.array(hist, pa.list_(pa.int64()))})
    run.write_table("sequences", seqs, num_shards=4)  # users 0-29, 30-59, 60-89, 90-119
    run.write_table("splits", split_bounds(seqs), num_shards=2, manifest={"max_len": max_len})
    emb = _behaviour(NUM_ITEMS, 1)
    run.write_table("item_emb", embedding_table(emb))
    text = TextEmbedder(str(lm_dir), 32)(items.select(["item_id", "title", "description"]))
    run.write_table("item_text_emb", text.select(["item_id", "embedding"]))
    torch.manual_seed(0)
    book = ResidualCodebook(CodebookConfig(dim=DIM, levels=LEVELS, codes_per_level=CODES))
    book.kmeans_init(emb)
    with run.writing("codebook", {"levels": LEVELS, "codes_per_level": CODES}) as tmp:
        book.save_pretrained(tmp)
    books = book.codebook_vectors()
    raw, _ = assign_codes(book.embed(emb), books)
    codes = resolve_collisions(book.embed(emb), books, raw).codes
    run.write_table("item_codes", item_codes_table(np.arange(NUM_ITEMS), codes))
    model, tok, _ = build_finetune_model(lm_dir, LEVELS, CODES, lora={"r": 2, "target_modules": ["q_proj"]})
    with run.writing("model", {"base_model": str(lm_dir)}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    run_precache(config(path, lm_dir, max_len=max_len))


def config(run_dir: Path, lm_dir: Path, max_len: int = 20, **refresh) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "run_dir": str(run_dir), "finetune": {"base_model": str(lm_dir)}, "prepare": {"max_len": max_len},
        "embed": {"text_model": str(lm_dir), "text_max_tokens": 32},
        "precache": {"bf16": False, "num_beams": 8, "top_k": 5, "users_per_shard": 50, "batch_size": 8,
                     "sort_window": 2, "exclude_history": True},
        "refresh": refresh})


def finished_run_at(path: Path, lm_dir: Path, max_len: int = 20) -> Path:
    """:func:`build_run` on the test session's local Ray (started here if none runs yet)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    build_run(path, lm_dir, max_len=max_len)
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_lm_dir, _ray_session_teardown):
    return finished_run_at(tmp_path_factory.mktemp("refresh") / "run", tiny_lm_dir)


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """See ``tests/conftest.py::one_thread``."""

"""run_precache: each test user's whole history before the target in, one ranked row per test user out,
published atomically."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import ArtifactError, RunDir
from semconv.config import PipelineConfig
from semconv.inference.stage import PARTIAL, PRECACHE, run_precache
from semconv.protocol import split_bounds

from .conftest import CODES, LEVELS, random_item_codes

NUM_ITEMS, NUM_USERS, MAX_LEN = 30, 120, 4  # histories of 2..10 items before the target


def _make_run_dir(path, base_dir) -> RunDir:
    from semconv.finetune.model import build_finetune_model

    run = RunDir(path)
    rng = np.random.default_rng(0)
    codes = random_item_codes(NUM_ITEMS, seed=21)
    run.write_table("item_codes", pa.table({
        "item_id": pa.array(np.arange(NUM_ITEMS), pa.int64()),
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel().astype(np.int16)), LEVELS),
    }))
    seqs = pa.table({"user_id": pa.array(np.arange(NUM_USERS), pa.int64()),  # like prepare: users in order
                     "history": [rng.choice(NUM_ITEMS, size=rng.integers(3, 12), replace=False).tolist()
                                 for _ in range(NUM_USERS)]})
    run.write_table("sequences", seqs, num_shards=3)
    run.write_table("splits", split_bounds(seqs), num_shards=3, manifest={"max_len": MAX_LEN})
    model, tok, _ = build_finetune_model(base_dir, LEVELS, CODES, lora={"r": 2, "target_modules": ["q_proj"]})
    with run.writing("model", {"base_model": str(base_dir)}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return run


def test_run_precache_ranks_every_test_user_once_and_then_skips(ray_local, tiny_lm_dir, tmp_path):
    run = _make_run_dir(tmp_path / "run", tiny_lm_dir)
    cfg = PipelineConfig(run_dir=str(tmp_path / "run"), finetune={"base_model": str(tiny_lm_dir)},
                         prepare={"max_len": MAX_LEN},
                         precache={"bf16": False, "num_beams": 8, "top_k": 5, "users_per_shard": 50,
                                   "batch_size": 8, "sort_window": 2, "exclude_history": True})
    out = run_precache(cfg)
    assert out == {PRECACHE: run.path(PRECACHE)}
    manifest = run.manifest(PRECACHE)
    assert manifest["users"] == NUM_USERS and manifest["top_k"] == 5 and manifest["shards"] == 3
    assert manifest["model"].endswith("model") and manifest["item_codes"].endswith("item_codes")
    assert (manifest["max_len"], manifest["exclude_history"], manifest["num_beams"]) == (MAX_LEN, True, 8)
    table = run.read_table(PRECACHE)
    assert table.schema.field("items").type == pa.list_(pa.int64())
    assert table.schema.field("scores").type == pa.list_(pa.float32())
    assert sorted(table["user_id"].to_pylist()) == list(range(NUM_USERS))
    # ranked from everything before the test item: all of it excluded, not only the last MAX_LEN
    seen = {r["user_id"]: r["history"][:-1] for r in run.read_table("sequences").to_pylist()}
    assert max(len(h) for h in seen.values()) > MAX_LEN
    for row in table.to_pylist():
        assert len(set(row["items"])) == 5 and not set(row["items"]) & set(seen[row["user_id"]])
    assert not (tmp_path / "run" / PARTIAL).exists()
    created = manifest["created_at"]
    run_precache(cfg)  # complete: skipped, not rewritten
    assert run.manifest(PRECACHE)["created_at"] == created


def test_run_precache_names_the_missing_input(tmp_path):
    cfg = PipelineConfig(run_dir=str(tmp_path / "empty"))
    with pytest.raises(ArtifactError, match="sequences"):
        run_precache(cfg)


def test_cpu_actors_must_leave_a_cpu_for_reading_users():
    from semconv.config import load_config
    from semconv.inference.precache import PrecacheError
    from semconv.inference.stage import check_actor_budget

    cfg = load_config(None, ["precache.num_actors=2"]).precache
    with pytest.raises(PrecacheError, match=r"precache.num_actors x precache.cpus_per_actor = 2 CPUs"):
        check_actor_budget(cfg, 2.0)
    check_actor_budget(cfg, 3.0)
    check_actor_budget(load_config(None, ["precache.num_actors=8", "precache.use_gpu=true"]).precache, 2.0)


@pytest.mark.slow  # a second precache run and an evaluate: ~40 s on 2 cores
def test_max_users_precaches_a_seeded_sample_and_evaluate_scores_that_sample(ray_local, tiny_lm_dir, tmp_path):
    from semconv.evaluate.stage import evaluate_systems

    run = _make_run_dir(tmp_path / "run", tiny_lm_dir)
    cfg = PipelineConfig(run_dir=str(tmp_path / "run"), finetune={"base_model": str(tiny_lm_dir)},
                         precache={"bf16": False, "num_beams": 8, "top_k": 5, "users_per_shard": 50,
                                   "batch_size": 8, "max_users": 30},
                         evaluate={"baselines": ["popularity"], "ks": [1, 5]})
    run_precache(cfg)
    manifest = run.manifest(PRECACHE)
    assert manifest["users"] == 30 and manifest["test_users"] == NUM_USERS and manifest["sampled"]
    users = run.read_table(PRECACHE)["user_id"].to_pylist()
    assert len(set(users)) == 30 and set(users) <= set(range(NUM_USERS))
    run.write_table("items", pa.table({"item_id": pa.array(range(NUM_ITEMS), pa.int64())}))
    payload = evaluate_systems(cfg, run)
    assert payload["users"] == 30 and payload["missing_users"]["semconv"] == 0
    assert payload["protocol"]["users"].startswith("a seeded sample")

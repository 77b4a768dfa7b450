"""run_embed: item_emb/ (LightGCN trained with Ray Train on 2 workers, or user-supplied) and
item_text_emb/ (Ray Data) with the artifact schemas; complete artifacts are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig
from semconv.embed.cf import normalized_adjacency, recommend_topk, train_pairs
from semconv.embed.stage import cf_model_dir, run_embed
from semconv.embed.supplied import ItemEmbeddingError
from semconv.embed.text import TextEmbedder
from semconv.embed.train import train_func

from .conftest import write_planted

CF = {"dim": 16, "layers": 2, "epochs": 30, "batch_size": 256, "lr": 1e-2, "weight_decay": 1e-4,
      "checkpoint_every": 10}


def config(run_dir: Path, tiny_lm_dir: Path, **embed) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "run_dir": str(run_dir), "seed": 0,
        "embed": {"text_model": str(tiny_lm_dir), "text_batch_size": 32, "cf": {**CF, "num_workers": 2},
                  **embed},
    })


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, planted, tiny_lm_dir, ray_local) -> tuple[PipelineConfig, dict[str, str]]:
    run = write_planted(RunDir(tmp_path_factory.mktemp("embed") / "run"), planted)
    cfg = config(Path(run.root), tiny_lm_dir)
    return cfg, run_embed(cfg)


@pytest.mark.slow  # Ray Train + Ray Data start-up: 1-3 min on the shared 2-core box
def test_item_emb_has_one_vector_per_item_and_the_cf_training_log(embedded, planted):
    cfg, out = embedded
    run = RunDir(cfg.run_dir)
    table = run.read_table("item_emb")
    assert table.schema.field("item_id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert table.column("item_id").to_pylist() == list(range(planted[0].num_rows))
    metrics = json.loads((Path(out["item_emb"]) / "metrics.json").read_text())
    assert len(metrics["train_loss"]) == CF["epochs"]
    assert "test" not in metrics  # the CF model is scored once, as the evaluate stage's CF baseline
    assert list((Path(run.root) / "_checkpoints").glob("embed-*/checkpoint_*"))


@pytest.mark.slow  # Ray Train + Ray Data start-up: 1-3 min on the shared 2-core box
def test_two_ray_train_workers_follow_the_single_process_trajectory(embedded, planted, cf_train_config):
    cfg, _ = embedded
    user_ids, users, items = train_pairs(*planted[1:])
    model, _ = train_func(cf_train_config(users, items, len(user_ids), planted[0].num_rows,
                                          **CF, seed=cfg.seed))
    with torch.no_grad():
        _, item_e = model(normalized_adjacency(users, items, len(user_ids), planted[0].num_rows))
    saved = np.array(RunDir(cfg.run_dir).read_table("item_emb").column("embedding").to_pylist())
    np.testing.assert_allclose(saved, item_e.numpy(), atol=1e-4)


@pytest.mark.slow  # Ray Train + Ray Data start-up: 1-3 min on the shared 2-core box
def test_cf_model_in_the_artifact_is_a_baseline_recommender(embedded, planted):
    cfg, _ = embedded
    model_dir = cf_model_dir(cfg.run_dir)
    top = recommend_topk(model_dir, np.array([0, 199]), k=10)
    assert top.shape == (2, 10)
    assert (top[0] // 25 == 0).all() and (top[1] // 25 == 3).all()  # each user's own community


@pytest.mark.slow  # Ray Train + Ray Data start-up: 1-3 min on the shared 2-core box
def test_item_text_emb_is_the_mean_input_embedding_per_item(embedded, planted, tiny_lm_dir):
    cfg, _ = embedded
    table = RunDir(cfg.run_dir).read_table("item_text_emb")
    assert table.column("item_id").to_pylist() == list(range(planted[0].num_rows))
    direct = TextEmbedder(str(tiny_lm_dir), cfg.embed.text_max_tokens)(planted[0])
    assert table.schema.field("embedding").type == direct.schema.field("embedding").type
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()),
                               np.array(direct.column("embedding").to_pylist()), rtol=1e-6)


@pytest.mark.slow  # Ray Train + Ray Data start-up: 1-3 min on the shared 2-core box
def test_second_call_is_a_no_op(embedded):
    cfg, out = embedded
    stamps = {name: (Path(p) / "_SUCCESS").stat().st_mtime_ns for name, p in out.items()}
    assert run_embed(cfg) == out
    assert {name: (Path(p) / "_SUCCESS").stat().st_mtime_ns for name, p in out.items()} == stamps


def test_supplied_embeddings_are_written_without_training_and_rerun_is_a_no_op(planted, tmp_path, tiny_lm_dir):
    run = RunDir(tmp_path / "run")
    run.write_table("items", planted[0])
    # item_text_emb/ already complete (written here without Ray), so run_embed only does item_emb/.
    run.write_table("item_text_emb", TextEmbedder(str(tiny_lm_dir), 256)(planted[0]).drop(["num_tokens"]))
    vectors = np.random.default_rng(0).normal(size=(planted[0].num_rows, 5))
    # the dataset's own ids (items/ source_id), listed newest item first: joined on the id, not the row
    pq.write_table(pa.table({"item_id": [f"s{i}" for i in range(len(vectors))][::-1],
                             "embedding": list(vectors[::-1])}), tmp_path / "mine.parquet")
    cfg = config(Path(run.root), tiny_lm_dir, item_embeddings=str(tmp_path / "mine.parquet"))
    out = run_embed(cfg)  # no splits/ here: training would fail
    table = run.read_table("item_emb")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 5)
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), vectors, rtol=1e-6)
    assert run.manifest("item_emb")["source"] == "supplied"
    stamps = {name: (Path(p) / "_SUCCESS").stat().st_mtime_ns for name, p in out.items()}
    (tmp_path / "mine.parquet").unlink()  # a second call must not even read the input
    assert run_embed(cfg) == out
    assert {name: (Path(p) / "_SUCCESS").stat().st_mtime_ns for name, p in out.items()} == stamps
    with pytest.raises(FileNotFoundError, match="supplied by the user"):
        cf_model_dir(cfg.run_dir)


def test_bad_supplied_embeddings_leave_no_artifact(planted, tmp_path, tiny_lm_dir):
    run = RunDir(tmp_path / "run")
    run.write_table("items", planted[0])
    pq.write_table(pa.table({"item_id": ["s0"], "embedding": [[1.0, 2.0]]}), tmp_path / "few.parquet")
    cfg = config(Path(run.root), tiny_lm_dir, item_embeddings=str(tmp_path / "few.parquet"))
    with pytest.raises(ItemEmbeddingError, match="99 of 100 items have no embedding"):
        run_embed(cfg)
    assert not run.is_complete("item_emb")
    assert not any(p.name.startswith("item_emb") for p in Path(run.root).iterdir())

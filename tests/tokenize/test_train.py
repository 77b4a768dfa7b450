"""Codebook training's worker loop: equal shards per worker, and checkpoints written and resumed
through the harness (its cadence, resume and killed-worker rules: ``tests/test_training.py``)."""

from __future__ import annotations

import numpy as np
import torch

from semconv import training
from semconv.tokenize.codebook import ResidualCodebook
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.train import shard_indices, train_func
from semconv.training import Session

from .tokenize_helpers import planted


def test_shards_cover_every_item_with_equal_lengths():
    shards = [shard_indices(11, r, 3, seed=0) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards).tolist()) == set(range(11))


def test_checkpoints_go_through_the_harness_and_resume_where_they_stopped(tmp_path):
    data = planted(n=200, seed=11)
    cfg = TokenizeConfig(levels=2, codes_per_level=8, epochs=2, batch_size=100, kmeans_iters=5)
    config = {"tokenize": cfg.model_dump(), "seed": 0, "embeddings": data.embeddings}
    train_func(config, Session(checkpoint_dir=tmp_path / "full"))
    full = tmp_path / "full" / "checkpoint_000002"
    assert {p.name for p in full.iterdir()} == {  # the codebook's save_pretrained + the harness's parts
        "config.json", training.WEIGHTS, training.OPTIMIZER, training.STATE, training.PROGRESS}

    model, history = train_func(config, Session(checkpoint_dir=tmp_path / "resumed",
                                                restored=tmp_path / "full" / "checkpoint_000001"))
    assert [h["start_epoch"] for h in history] == [0, 1]  # epoch 1 from the checkpoint, epoch 2 run again
    assert [h["loss"] for h in history] == [h["loss"] for h in training.load_state(full)["history"]]
    torch.testing.assert_close(model.state_dict(), ResidualCodebook.from_pretrained(full).state_dict(),
                               rtol=0, atol=0)

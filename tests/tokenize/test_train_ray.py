"""Codebook training's worker loop: checkpoints and resume in one process, then 2 DDP workers under
Ray Train resuming after a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semconv import training
from semconv.tokenize.assign import assign_codes
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.train import load_checkpoint, shard_indices, train_codebook, train_func
from semconv.training import Session

from .tokenize_helpers import planted


def test_shards_cover_every_item_with_equal_lengths():
    shards = [shard_indices(11, r, 3, seed=0) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards).tolist()) == set(range(11))


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    data = planted(n=400, seed=11)
    cfg = TokenizeConfig(levels=2, codes_per_level=8, epochs=4, batch_size=100, kmeans_iters=5)
    config = {"tokenize": cfg.model_dump(), "seed": 0, "embeddings": data.embeddings}
    train_func(config, Session(checkpoint_every=2, checkpoint_dir=tmp_path / "full"))
    full, _, full_history = load_checkpoint(tmp_path / "full" / "checkpoint_000004")
    for pt in (tmp_path / "full").glob("*/*.pt"):  # tensors and numbers only: no code unpickled
        torch.load(pt, weights_only=True)

    train_func(config, Session(checkpoint_dir=tmp_path / "resumed",
                               restored=tmp_path / "full" / "checkpoint_000002"))
    resumed, _, history = load_checkpoint(tmp_path / "resumed" / "checkpoint_000004")
    assert [h["start_epoch"] for h in history] == [0, 0, 2, 2]
    assert [h["loss"] for h in history] == [h["loss"] for h in full_history]
    torch.testing.assert_close(resumed.state_dict(), full.state_dict(), rtol=0, atol=0)


@pytest.mark.slow  # about 2.5 minutes on the shared 2-core machine (two worker-group starts)
def test_two_workers_resume_from_checkpoint_after_a_worker_dies(ray_local, tmp_path, kill_worker_once):
    data = planted(n=400, seed=11)
    cfg = TokenizeConfig(levels=2, codes_per_level=8, epochs=4, batch_size=100, kmeans_iters=5,
                         num_workers=2, checkpoint_every=2, max_failures=2)
    kill, marker = kill_worker_once(step=3, rank=1)
    with training.callbacks(kill):
        model, history = train_codebook(
            cfg, str(tmp_path / "_checkpoints"), "tokenize-test",
            embeddings=data.embeddings, text_embeddings=data.text,
        )
    assert marker.exists()  # worker 1 really died after epoch 3 (checkpoint at epoch 2)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # epochs 1-2 ran in the first attempt; the restarted group resumed at epoch 2, not 0
    # (the first attempt's epoch-3 work was lost with the worker and redone)
    assert [h["start_epoch"] for h in history] == [0, 0, 2, 2]
    assert (tmp_path / "_checkpoints" / "tokenize-test").is_dir()
    codes, _ = assign_codes(data.embeddings, model.codebook_vectors())
    for c in np.unique(data.labels):  # and the trained codebook is a real one
        assert np.bincount(codes[data.labels == c, 0]).max() / (data.labels == c).sum() >= 0.9

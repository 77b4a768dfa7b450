"""Distributed codebook training under Ray Train: 2 DDP workers, checkpoints, resume after a crash."""

from __future__ import annotations

import numpy as np
import pytest

from semconv.tokenize.assign import assign_codes
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.train import shard_indices, train_codebook

from tokenize_helpers import planted


def test_shards_cover_every_item_with_equal_lengths():
    shards = [shard_indices(11, r, 3, seed=0) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards).tolist()) == set(range(11))


@pytest.mark.slow  # about 2.5 minutes on the shared 2-core machine (two worker-group starts)
def test_two_workers_resume_from_checkpoint_after_a_worker_dies(ray_local, tmp_path):
    data = planted(n=400, seed=11)
    cfg = TokenizeConfig(levels=2, codes_per_level=8, epochs=4, batch_size=100, kmeans_iters=5,
                         num_workers=2, checkpoint_every=2, max_failures=2)
    marker = tmp_path / "killed-once"
    model, history = train_codebook(
        cfg, str(tmp_path / "_checkpoints"), "tokenize-test",
        embeddings=data.embeddings, text_embeddings=data.text,
        crash_once={"after_epoch": 3, "marker": str(marker), "rank": 1},
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

"""The codebook on a GPU worker (``tokenize.use_gpu``). Skipped without CUDA; run on a GPU
machine with ``pytest -m gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semconv.tokenize.assign import assign_codes
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.train import train_codebook

from .tokenize_helpers import planted

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_codebook_trains_on_a_gpu_worker_and_recovers_planted_clusters(ray_local, tmp_path):
    data = planted(n=1200, seed=3)
    cfg = TokenizeConfig(levels=3, codes_per_level=8, epochs=3, batch_size=256, kmeans_iters=20,
                         num_workers=1, use_gpu=True)
    model, history = train_codebook(cfg, str(tmp_path), "gpu", embeddings=data.embeddings,
                                    text_embeddings=data.text)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    codes, residual = assign_codes(data.embeddings, model.codebook_vectors(), use_gpu=True)
    assert np.linalg.norm(residual, axis=1).mean() < np.linalg.norm(data.embeddings, axis=1).mean() / 4
    for c in np.unique(data.labels):
        level1 = codes[data.labels == c, 0]
        assert np.bincount(level1).max() / len(level1) >= 0.9, f"planted cluster {c} is split"

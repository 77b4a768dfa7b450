"""ResidualCodebook: quantizer maths, losses, k-means init, re-seeding, persistence, training."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch

from semconv.tokenize.assign import assign_codes
from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook, kmeans_plus_plus
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.losses import behavior_loss, llm_alignment_loss, total_loss
from semconv.tokenize.quality import text_alignment_distance

from .tokenize_helpers import train_in_process


def hand_codebook(d_llm: int = 0) -> ResidualCodebook:
    """Level 1 codes (0,0), (4,0); level 2 codes (0,1), (0,-1)."""
    model = ResidualCodebook(CodebookConfig(dim=2, levels=2, codes_per_level=2, d_llm=d_llm))
    with torch.no_grad():
        model.codebooks.copy_(torch.tensor([[[0.0, 0.0], [4.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]]))
    return model


def test_residual_quantization_by_hand():
    q = hand_codebook()(torch.tensor([[3.5, 0.8]]))
    assert q.codes.tolist() == [[1, 0]]
    assert torch.allclose(q.residuals[0], torch.tensor([[3.5, 0.8], [-0.5, 0.8]]))
    assert torch.allclose(q.z_hat, torch.tensor([[4.0, 1.0]]))


def test_behavior_loss_and_its_gradient_by_hand():
    model = hand_codebook()
    q = model(torch.tensor([[3.5, 0.8]]))
    # level 1: ||(3.5,.8)-(4,0)||^2 = .89; level 2: ||(-.5,.8)-(0,1)||^2 = .29; times (1 + beta)
    loss = behavior_loss(q, "l2", commitment_weight=0.25)
    assert loss.item() == pytest.approx((0.89 + 0.29) * 1.25)
    loss.backward()
    # only the selected codes move, towards their inputs: d/de ||r - e||^2 = 2 (e - r)
    expected = torch.tensor([[[0.0, 0.0], [1.0, -1.6]], [[1.0, 0.4], [0.0, 0.0]]])
    assert torch.allclose(model.codebooks.grad, expected, atol=1e-6)


def test_cosine_behavior_distance_by_hand():
    q = hand_codebook()(torch.tensor([[3.5, 0.8]]))
    cos1 = 3.5 * 4 / (math.hypot(3.5, 0.8) * 4)
    cos2 = 0.8 / math.hypot(0.5, 0.8)
    loss = behavior_loss(q, "cosine", commitment_weight=0.0)
    assert loss.item() == pytest.approx((1 - cos1) + (1 - cos2), rel=1e-5)


def test_llm_alignment_loss_aligns_every_code_prefix():
    model = hand_codebook(d_llm=2)
    with torch.no_grad():
        model.llm_projection.weight.copy_(torch.eye(2))
        model.llm_projection.bias.zero_()
    q = model(torch.tensor([[3.5, 0.8]]))
    # prefixes (4,0) and (4,1); text (4,1): 1 - cos((4,0),(4,1)) + 0
    loss = llm_alignment_loss(q, torch.tensor([[4.0, 1.0]]), model.llm_projection, "cosine")
    assert loss.item() == pytest.approx(1 - 4 / math.sqrt(17), rel=1e-5)
    loss.backward()
    assert model.codebooks.grad.abs().sum() > 0 and model.llm_projection.weight.grad is not None


def test_kmeans_init_is_faiss_kmeans_from_kmeanspp_seeds(planted_data):
    x = planted_data.embeddings
    model = ResidualCodebook(CodebookConfig(dim=x.shape[1], levels=2, codes_per_level=8))
    model.kmeans_init(x, iters=10, seed=3)
    books = model.codebook_vectors()
    km = faiss.Kmeans(x.shape[1], 8, niter=10, seed=3, verbose=False)
    km.train(x, init_centroids=kmeans_plus_plus(x, 8, 3))
    np.testing.assert_array_equal(books[0], km.centroids)
    _, a = km.index.search(x, 1)
    residual = x - km.centroids[a[:, 0]]
    km2 = faiss.Kmeans(x.shape[1], 8, niter=10, seed=4, verbose=False)
    km2.train(residual, init_centroids=kmeans_plus_plus(residual, 8, 4))
    np.testing.assert_allclose(books[1], km2.centroids, rtol=1e-5, atol=1e-5)
    assert bool(model.initialized)


def test_kmeans_needs_at_least_k_items():
    model = ResidualCodebook(CodebookConfig(dim=4, levels=1, codes_per_level=16))
    with pytest.raises(ValueError, match="codes_per_level=16"):
        model.kmeans_init(np.zeros((10, 4), np.float32))


def test_residual_norms_shrink_level_by_level(planted_data):
    x = planted_data.embeddings
    model = ResidualCodebook(CodebookConfig(dim=x.shape[1], levels=4, codes_per_level=16))
    model.kmeans_init(x, iters=10)
    with torch.no_grad():
        q = model(torch.as_tensor(x))
    norms = q.residuals.norm(dim=-1).mean(0).tolist()
    final = (q.z - q.z_hat).norm(dim=-1).mean().item()
    assert all(a > b for a, b in zip(norms, norms[1:] + [final])), norms + [final]


def test_dead_codes_are_reseeded_from_highest_error_residuals():
    model = hand_codebook()
    usage = torch.tensor([[5, 0], [3, 2]])  # level-1 code 1 unused
    candidates = torch.tensor([[[9.0, 9.0], [7.0, 7.0]], [[1.0, 1.0], [2.0, 2.0]]])
    errors = torch.tensor([[1.0, 3.0], [0.5, 0.1]])
    assert model.reseed_dead_codes(usage, candidates, errors) == 1
    assert model.codebooks[0, 1].tolist() == [7.0, 7.0]  # the highest-error candidate
    assert model.codebooks[1].tolist() == [[0.0, 1.0], [0.0, -1.0]]  # level 2 untouched


def test_training_reseeds_an_unused_code(planted_data):
    cfg = TokenizeConfig(levels=1, codes_per_level=8, epochs=2, batch_size=400, kmeans_iters=5)
    x = planted_data.embeddings
    model = ResidualCodebook(CodebookConfig(dim=x.shape[1], levels=1, codes_per_level=8))
    model.kmeans_init(x, iters=5)
    with torch.no_grad():
        model.codebooks[0, 3] = 1e4  # far from every item: nobody uses it
    from semconv.tokenize.train import run_epoch

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    metrics = run_epoch(model, opt, torch.as_tensor(x), None, cfg, epoch=0, seed=0)
    assert metrics["reseeded"] >= 1
    codes, _ = assign_codes(x, model.codebook_vectors())
    assert 3 in set(codes[:, 0].tolist())


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = ResidualCodebook(CodebookConfig(dim=6, levels=3, codes_per_level=4, d_llm=5,
                                            encoder_decoder=True, hidden_dim=8, latent_dim=3))
    torch.nn.init.normal_(model.codebooks)
    model.save_pretrained(tmp_path / "cb")
    assert {p.name for p in (tmp_path / "cb").iterdir()} == {"config.json", "model.safetensors"}
    loaded = ResidualCodebook.from_pretrained(tmp_path / "cb")
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileNotFoundError, match="config.json"):
        ResidualCodebook.from_pretrained(tmp_path / "missing")


def test_planted_clusters_share_their_level1_code(planted_data):
    cfg = TokenizeConfig(levels=3, codes_per_level=8, epochs=3, batch_size=256, kmeans_iters=20)
    model, _ = train_in_process(cfg, planted_data.embeddings, planted_data.text)
    codes, _ = assign_codes(planted_data.embeddings, model.codebook_vectors())
    dominant = []
    for c in np.unique(planted_data.labels):
        level1 = codes[planted_data.labels == c, 0]
        counts = np.bincount(level1)
        assert counts.max() / len(level1) >= 0.9, f"cluster {c} is split: {counts}"
        dominant.append(counts.argmax())
    assert len(set(dominant)) == len(dominant)  # and no two clusters merged


def _text_per_cluster_data(seed: int = 0):
    """16 behaviour clusters in 4-D, each with its own random text embedding (12-D)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 16, 800)
    x = rng.normal(size=(16, 4))[labels] * 6 + 0.5 * rng.normal(size=(800, 4))
    text = rng.normal(size=(16, 12))[labels] + 0.2 * rng.normal(size=(800, 12))
    return x.astype(np.float32), text.astype(np.float32)


def test_llm_alignment_brings_codes_closer_to_the_text():
    x, text = _text_per_cluster_data()
    distances = {}
    for on in (False, True):
        cfg = TokenizeConfig(levels=2, codes_per_level=16, epochs=20, batch_size=100, lr=0.05,
                             kmeans_iters=20, llm_alignment=on, llm_alignment_weight=1.0)
        model, history = train_in_process(cfg, x, text)
        assert ("llm_alignment" in history[-1]) is on
        codes, _ = assign_codes(x, model.codebook_vectors())
        distances[on] = text_alignment_distance(model.codebook_vectors(), codes, text)
    assert distances[True] < 0.95 * distances[False], distances


def test_encoder_decoder_ablation_trains_encoder_and_decoder(planted_data):
    # without re-seeding: a re-seeded code moves the latent targets, and the reconstruction error
    # jumps for an epoch or two (at some seeds above the first epoch's), which is not what this tests
    cfg = TokenizeConfig(levels=2, codes_per_level=8, epochs=6, batch_size=200, lr=1e-2, kmeans_iters=5,
                         encoder_decoder=True, ed_hidden_dim=32, ed_latent_dim=8, reseed_dead_codes=False)
    model, history = train_in_process(cfg, planted_data.embeddings, planted_data.text)
    assert model.encoder is not None and model.codebooks.shape == (2, 8, 8)
    assert history[-1]["reconstruction"] < history[0]["reconstruction"]
    x = torch.as_tensor(planted_data.embeddings[:64])
    model.zero_grad()
    loss, parts = total_loss(model, x, torch.as_tensor(planted_data.text[:64]), 0.1)
    loss.backward()
    assert set(parts) == {"behavior", "llm_alignment", "reconstruction"}
    assert model.encoder[0].weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert model.decoder[0].weight.grad.abs().sum() > 0

"""LightGCN on the train split: graph construction, learning a planted structure, determinism,
and the saved model as a top-K recommender."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from semconv.embed.cf import (
    CFRecommender,
    UnknownUserError,
    normalized_adjacency,
    recommend_topk,
    train_pairs,
)
from semconv import training
from semconv.embed.stage import epoch_batch
from semconv.embed.train import train_func
from semconv.metrics import ranking_metrics
from semconv.protocol import popularity, popularity_topk, split_bounds, split_rows
from semconv.training import Session


@pytest.fixture
def trained(cf_train_config):
    return lambda planted, **over: _trained(cf_train_config, planted, **over)


def _trained(cf_train_config, planted, **over) -> tuple[CFRecommender, np.ndarray]:
    num_items = planted[0].num_rows
    user_ids, users, items = train_pairs(*planted[1:])
    model, _ = train_func(cf_train_config(users, items, len(user_ids), num_items, **over))
    with torch.no_grad():
        ue, ie = model(normalized_adjacency(users, items, len(user_ids), num_items))
    return CFRecommender(user_ids, ue.numpy(), ie.numpy()), items


def held_out_rows(planted) -> pa.Table:
    return split_rows(planted[1], planted[2], 100, ("test",))


def test_train_pairs_are_the_train_interactions_and_index_every_user():
    sequences = pa.table({"user_id": pa.array([10, 20, 30], pa.int64()),
                          "history": pa.array([[5, 6, 7, 8, 9], [4], [1, 2, 3]], pa.list_(pa.int64()))})
    user_ids, users, items = train_pairs(sequences, split_bounds(sequences))
    assert user_ids.tolist() == [10, 30]  # user 30 has no train row but keeps a row; 20 has no row
    # 8, 9 and 2, 3 are held out; user 30's train part is its valid history
    assert sorted(zip(users.tolist(), items.tolist())) == [(0, 5), (0, 6), (0, 7), (1, 1)]


def test_normalized_adjacency_is_symmetric_d_half_a_d_half():
    adj = normalized_adjacency(np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2).to_dense()
    torch.testing.assert_close(adj, adj.T)
    # user 0 has degree 2, item 1 degree 2 -> 1/sqrt(2*2); user 1 (deg 1) - item 0 absent -> 0
    assert adj[0, 3].item() == pytest.approx(0.5)
    assert adj[1, 2].item() == 0.0
    assert adj[1, 3].item() == pytest.approx(1 / np.sqrt(2))


def test_lightgcn_learns_planted_communities_far_above_popularity(planted, trained):
    items_table = planted[0]
    rec, _ = trained(planted)
    test = held_out_rows(planted)
    hist = [np.asarray(h) for h in test.column("history").to_pylist()]
    targets = test.column("target").to_numpy()
    got = ranking_metrics(rec.recommend(test.column("user_id").to_numpy(), 10, hist), targets, (10,))
    counts = popularity(*planted[1:], items_table.num_rows)
    pop = ranking_metrics(popularity_topk(counts, test.num_rows, 10, hist), targets, (10,))
    # Knowing only the community gives 10/18 ~ 0.56 (18 unseen items of 25); random over all
    # 93 unseen items gives ~0.11.
    assert got["HR@10"] > 0.4
    assert got["HR@10"] > 3 * pop["HR@10"]
    assert got["NDCG@10"] > 3 * pop["NDCG@10"]
    # Top-10 lists stay inside the user's community.
    top = rec.recommend(test.column("user_id").to_numpy(), 10)
    community = test.column("user_id").to_numpy() // 50
    assert (top // 25 == community[:, None]).mean() > 0.95



def test_a_step_cap_raises_the_batch_and_still_learns_the_planted_communities(planted, trained):
    """At scale an epoch of fixed batches costs edges x edges (each step propagates the whole
    graph); a step cap makes it edges x cap. The bigger batch must still learn."""
    assert epoch_batch(1_000, 256, None) == 256 and epoch_batch(1_000, 256, 10) == 256
    assert epoch_batch(1_000_001, 2048, 100) == 10_001
    edges = len(train_pairs(*planted[1:])[1])
    batch = epoch_batch(edges, 64, 4)
    assert batch > 64 and -(-edges // batch) <= 4
    rec, _ = trained(planted, batch_size=batch, epochs=60, lr=3e-2)
    test = held_out_rows(planted)
    top = rec.recommend(test.column("user_id").to_numpy(), 10)
    assert (top // 25 == (test.column("user_id").to_numpy() // 50)[:, None]).mean() > 0.9

def test_training_is_deterministic_given_the_seed(planted, trained):
    a, _ = trained(planted, epochs=3)
    b, _ = trained(planted, epochs=3)
    c, _ = trained(planted, epochs=3, seed=1)
    np.testing.assert_array_equal(a.item_embedding, b.item_embedding)
    assert not np.allclose(a.item_embedding, c.item_embedding)


def test_checkpoints_go_through_the_harness_and_resume_where_they_stopped(planted, tmp_path, cf_train_config):
    user_ids, users, items = train_pairs(*planted[1:])
    config = cf_train_config(users, items, len(user_ids), planted[0].num_rows, epochs=2)
    full, full_losses = train_func(config, Session(checkpoint_dir=tmp_path))
    assert {p.name for p in (tmp_path / "checkpoint_000002").iterdir()} == {
        training.WEIGHTS, training.OPTIMIZER, training.STATE, training.PROGRESS}

    resumed, losses = train_func(config, Session(restored=tmp_path / "checkpoint_000001"))
    assert losses == full_losses  # epoch 1 from the checkpoint, epoch 2 recomputed bit for bit
    torch.testing.assert_close(resumed.embedding, full.embedding, rtol=0, atol=0)


def test_saved_model_recommends_the_same_top_k_and_excludes_history(planted, tmp_path, trained):
    rec, _ = trained(planted, epochs=5)
    rec.config = {"dim": 16, "exclude_history": True}
    rec.save_pretrained(tmp_path / "cf")
    loaded = CFRecommender.from_pretrained(tmp_path / "cf")
    assert loaded.config == rec.config
    users = np.array([3, 120, 0])
    hist = [np.array(h) for h in held_out_rows(planted).column("history").to_pylist()]
    hist = [hist[3], hist[120], hist[0]]
    top = recommend_topk(tmp_path / "cf", users, k=5, histories=hist)
    assert top.shape == (3, 5)
    np.testing.assert_array_equal(top, rec.recommend(users, 5, hist))
    for row, h in zip(top, hist):
        assert not set(row.tolist()) & set(h.tolist())
    scores = rec.user_embedding[rec.user_rows(users)] @ rec.item_embedding.T
    assert top[0, 0] == max(set(range(100)) - set(hist[0].tolist()), key=lambda i: scores[0, i])
    with pytest.raises(UnknownUserError, match="user_id 999"):
        recommend_topk(tmp_path / "cf", np.array([999]), k=5)

"""SASRec learns sequential structure that popularity cannot see."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semconv.config import load_config
from semconv.evaluate.protocol import evaluate_rankings
from semconv.evaluate.sasrec import SASRec, sasrec_backward, sasrec_topk, shifted_ids, train_sasrec, training_pairs
from semconv.protocol import popularity, popularity_topk


def planted_cycle(n_users: int, n_items: int, seed: int) -> dict[int, list[int]]:
    """Every user walks the same cycle ``i -> i + 1 (mod n_items)`` from a random start."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in range(n_users):
        start, length = int(rng.integers(n_items)), int(rng.integers(5, 11))
        out[u] = [(start + j) % n_items for j in range(length)]
    return out


def test_sasrec_learns_a_planted_sequential_pattern(build):
    n_items = 40
    seqs = planted_cycle(300, n_items, seed=0)
    rows = {s: build.split(seqs, s, max_len=10) for s in ("valid", "test")}
    cfg = load_config(None, ["evaluate.sasrec.dropout=0.2", "evaluate.sasrec.epochs=12",
                             "evaluate.sasrec.batch_size=64", "evaluate.sasrec.lr=0.005",
                             "evaluate.sasrec.patience=2"]).evaluate.sasrec
    model, log = train_sasrec(rows["valid"].histories, rows["valid"], n_items, cfg, max_len=10, seed=0)
    test = rows["test"]
    sasrec = evaluate_rankings(sasrec_topk(model, test.histories, 10), test, [1, 10])
    counts = popularity(build.sequences_table(seqs), build.splits_table(seqs), n_items)
    popular = evaluate_rankings(popularity_topk(counts, len(test), 10), test, [1, 10])
    assert sasrec["HR@10"] > 0.9 and sasrec["HR@1"] > 0.5
    assert sasrec["HR@10"] > popular["HR@10"] + 0.5
    assert log["best_epoch"] >= 1 and log["valid"] and log["train_loss"][-1] < log["train_loss"][0]


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_both_objectives_reduce_the_loss(build, loss):
    valid = build.split(planted_cycle(100, 20, seed=1), "valid", max_len=10)
    cfg = load_config(None, [f"evaluate.sasrec.loss={loss}", "evaluate.sasrec.epochs=6",
                             "evaluate.sasrec.eval_every=3", "evaluate.sasrec.lr=0.005"]).evaluate.sasrec
    _, log = train_sasrec(valid.histories, valid, 20, cfg, max_len=10, seed=0)
    assert log["epochs_run"] == 6 and log["train_loss"][-1] < log["train_loss"][0]



def test_a_budget_shorter_than_an_epoch_ends_inside_it_and_early_stopping_ranks_a_sample(build, monkeypatch):
    from semconv.evaluate import sasrec as sasrec_module

    valid = build.split(planted_cycle(400, 30, seed=2), "valid", max_len=10)
    ranked, steps = [], []
    real, real_step = sasrec_module.sasrec_topk, sasrec_module.sasrec_backward
    monkeypatch.setattr(sasrec_module, "sasrec_topk", lambda m, h, *a, **k: ranked.append(len(h)) or real(m, h, *a, **k))
    monkeypatch.setattr(sasrec_module, "sasrec_backward", lambda *a: steps.append(1) or real_step(*a))
    cfg = load_config(None, ["evaluate.sasrec.epochs=3", "evaluate.sasrec.batch_size=8",
                             "evaluate.sasrec.max_seconds=0.01", "evaluate.sasrec.valid_users=50"]).evaluate.sasrec
    _, log = train_sasrec(valid.histories, valid, 30, cfg, max_len=10, seed=0)
    assert log["stopped"] == "max_seconds" and log["epochs_run"] == 1
    assert len(steps) < 10  # an epoch is 50 batches: the budget ended it inside the first
    assert ranked == [50]  # the one validation pass ranked the seeded sample, not all 400 users


@pytest.mark.parametrize("max_logits", [30, 95, 1000])
def test_full_softmax_in_chunks_gives_the_same_loss_and_gradients(max_logits):
    from semconv.evaluate.sasrec import sasrec_backward

    torch.manual_seed(0)
    model = SASRec(num_items=30, max_len=8, hidden=16, blocks=2, heads=1, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 31, (6, 8))
    y = torch.where(x > 0, torch.randint(1, 31, (6, 8)), 0)

    def grads(budget):
        model.zero_grad()
        loss = sasrec_backward(model, x, y, "ce", gen, max_logits=budget)
        return loss, [p.grad.clone() for p in model.parameters()]

    whole_loss, whole = grads(10**9)
    loss, chunked = grads(max_logits)  # 1, 3 or all positions' logits at a time
    assert loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

def test_scores_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = SASRec(num_items=30, max_len=12, hidden=16, blocks=2, heads=2, dropout=0.3).eval()
    short, long = [4, 7, 9], list(range(12))
    with torch.no_grad():
        alone = model(torch.from_numpy(shifted_ids([short], 12)))[0, -1]
        trimmed = model(torch.from_numpy(shifted_ids([short], 12))[:, -3:])[0, -1]
        batched = model(torch.from_numpy(shifted_ids([short, long], 12)))[0, -1]
    torch.testing.assert_close(alone, trimmed)
    torch.testing.assert_close(alone, batched)
    # An empty history still gives finite scores (all-padding rows must not produce NaN).
    assert np.isfinite(sasrec_topk(model, [[], short], 5)).all()


def test_training_pairs_shift_by_one_and_mark_padding():
    inputs, labels = training_pairs([[3, 5, 8], [2]], max_len=4)
    assert inputs.tolist() == [[0, 0, 4, 6]]  # item + 1; the one-item sequence has no pair
    assert labels.tolist() == [[0, 0, 6, 9]]
    assert inputs.dtype == labels.dtype == np.int32  # half the memory of int64 at millions of users


def test_training_pairs_equal_the_per_row_construction_and_cut_to_max_len():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, size=n).tolist() for n in rng.integers(0, 15, size=200)]
    inputs, labels = training_pairs(seqs, max_len=6)

    def naive(rows):
        out = np.zeros((len(rows), 6), dtype=np.int64)
        for r, h in enumerate(rows):
            h = np.asarray(h[-6:], dtype=np.int64)
            if len(h):
                out[r, 6 - len(h):] = h + 1
        return out

    long_enough = [s for s in seqs if len(s) >= 2]
    np.testing.assert_array_equal(inputs, naive([s[:-1] for s in long_enough]))
    np.testing.assert_array_equal(labels, naive([s[1:] for s in long_enough]))


def test_int32_training_pairs_train_like_int64():
    """The loss widens int32 labels: one step from either dtype gives the same gradients."""
    inputs, labels = training_pairs([[3, 5, 8, 1], [2, 4, 6]], max_len=4)
    grads = []
    for dtype in (torch.int32, torch.int64):
        torch.manual_seed(0)
        model = SASRec(num_items=10, max_len=4, hidden=8, blocks=1, dropout=0.0)
        sasrec_backward(model, torch.from_numpy(inputs).to(dtype), torch.from_numpy(labels).to(dtype), "ce",
                        torch.Generator().manual_seed(0))
        grads.append(model.item_emb.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_history_can_be_excluded_from_the_ranking():
    torch.manual_seed(0)
    model = SASRec(num_items=10, max_len=5, hidden=8, blocks=1).eval()
    top = sasrec_topk(model, [[1, 2, 3]], 10, exclude=[[1, 2, 3]])
    assert set(top[0, :7].tolist()) == set(range(10)) - {1, 2, 3}


def test_topk_of_tensor_scores_matches_a_stable_full_sort_including_ties():
    from semconv.metrics import topk_from_scores

    def exact_topk(scores, k):  # how sasrec_topk ranks: logits as float32 numpy
        return topk_from_scores(scores.float().numpy(), k)

    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 30), generator=gen).float()  # many ties, also at the cut-off
    scores[0, :] = 1.0
    scores[1, 3:] = -math.inf
    expected = torch.sort(-scores, dim=1, stable=True).indices[:, :7].numpy()
    expected[1, 3:] = -1  # masked (-inf) columns never fill a slot: the row is padded instead
    np.testing.assert_array_equal(exact_topk(scores, 7), expected)
    cont = torch.randn(20, 40, generator=gen)
    np.testing.assert_array_equal(exact_topk(cont, 10), torch.sort(-cont, dim=1, stable=True).indices[:, :10].numpy())


def test_baselines_scored_on_a_user_sample_learn_from_every_user(build):
    """A demo precache scores a user sample; popularity and SASRec still fit on all users."""
    from semconv.evaluate.baselines import rank_popularity, rank_sasrec

    seqs = planted_cycle(60, 20, seed=2)
    seqs.update({100 + u: [19, 18, 19, 18, 19] for u in range(40)})  # 40 users outside the sample
    sequences, bounds = build.sequences_table(seqs), build.splits_table(seqs)
    full = {s: build.split(seqs, s, max_len=10) for s in ("valid", "test")}
    sample_ids = full["test"].user_ids[full["test"].user_ids < 10]
    sample = {s: r.restrict(sample_ids) for s, r in full.items()}

    ranked, info = rank_popularity(sample, sequences, bounds, 20, 5, False)
    assert len(ranked["test"]) == len(sample_ids)
    assert sorted(ranked["test"][0][:2].tolist()) == [18, 19]  # outside users dominate the counts
    assert info["train_interactions"] == int(popularity(sequences, bounds, 20).sum())

    cfg = load_config(None, ["evaluate.sasrec.epochs=1"]).evaluate.sasrec
    ranked, log = rank_sasrec(sample, 20, 5, False, cfg, max_len=10, seed=0, train_rows=full)
    assert log["sequences"] == len(full["valid"]) > len(sample["valid"])
    assert len(ranked["test"]) == len(sample_ids) and len(ranked["valid"]) == len(sample["valid"])

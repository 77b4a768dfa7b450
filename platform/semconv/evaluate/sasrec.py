"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention next-item model, as a baseline.

Item ``i`` is embedded at index ``i + 1`` (0 is padding); sequences are left-padded to
``max_len``. Every position predicts the next item (causal attention), so one pass over a user's
train sequence trains on all its prefixes, like the paper's "every prefix -> next item" samples.
Scores are dot products with the shared item embeddings. Training stops early when valid
NDCG@10 has not improved for ``patience`` evaluations; the best weights are kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from semconv.evaluate.config import SASRecConfig
from semconv.evaluate.protocol import RaggedIds, SplitRows, evaluate_rankings, history_exclusions
from semconv.metrics import topk_from_scores

logger = logging.getLogger(__name__)


class SASRecBlock(nn.Module):
    """Pre-norm self-attention + point-wise feed-forward, both residual."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q = self.attn_norm(x)
        x = q + self.attn(q, x, x, attn_mask=causal, need_weights=False)[0]
        x = x + self.ffn(self.ffn_norm(x))
        return x * keep


class SASRec(nn.Module):
    def __init__(self, num_items: int, max_len: int, hidden: int = 64, blocks: int = 2,
                 heads: int = 1, dropout: float = 0.5):
        super().__init__()
        self.num_items, self.max_len, self.heads = num_items, max_len, heads
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)
        nn.init.xavier_normal_(self.item_emb.weight[1:])
        nn.init.xavier_normal_(self.pos_emb.weight)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, T, H)`` for left-padded shifted item ids ``(B, T)``."""
        keep = (seqs > 0).unsqueeze(-1).float()
        # Positions count from the left of a max_len window, so a batch trimmed of its leading
        # padding (see :func:`length_batches`) keeps every item's position.
        pos = torch.arange(self.max_len - seqs.shape[1], self.max_len, device=seqs.device)
        x = self.item_emb(seqs) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(pos)
        x = self.emb_dropout(x) * keep
        # Attend to earlier real items only (padding is masked, not merely zero), so a row's
        # output does not depend on how much padding it carries; a position always sees itself,
        # which keeps padding rows finite.
        t = seqs.shape[1]
        blocked = self.causal[:t, :t] | (seqs == 0)[:, None, :]
        blocked = blocked & ~torch.eye(t, dtype=torch.bool, device=seqs.device)
        blocked = blocked.repeat_interleave(self.heads, dim=0)
        for block in self.blocks:
            x = block(x, blocked, keep)
        return self.final_norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item (column ``i`` = item ``i``)."""
        return hidden @ self.item_emb.weight[1:].T


def shifted_ids(histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """SASRec's input rows: the last ``max_len`` items as shifted ids (item + 1, so 0 is padding),
    left-padded with 0."""
    return RaggedIds.from_lists(histories).right_aligned(max_len, offset=1)


def training_pairs(train_seqs: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``seq[:-1]`` and next-item labels ``seq[1:]`` (shifted ids, 0 = no label).

    int32 (the embedding takes it; the loss widens a batch's labels): at 1.6M users x 50 the two
    matrices are 0.66 GB instead of 1.3."""
    seqs = RaggedIds.from_lists(train_seqs)
    seqs = seqs.take(seqs.lengths >= 2)
    return (seqs.trim(tail=1).right_aligned(max_len, 1, np.int32),
            seqs.trim(head=1).right_aligned(max_len, 1, np.int32))


def length_batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length, so each batch can drop its common left padding.

    Rows are shuffled, grouped into pools of 32 batches, sorted by length inside a pool and cut
    into batches; the batch order is shuffled again. Most users are short, so this removes most
    padding work without making batches deterministic.
    """
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    pool = batch_size * 32
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), pool):
        part = perm[start:start + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def trim(seqs: torch.Tensor, *more: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the columns of left padding every row shares (at least one column is kept)."""
    width = int((seqs > 0).sum(1).max().clamp(min=1))
    return tuple(t[:, -width:] for t in (seqs, *more))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block and restore the previous setting after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


LOGITS_PER_CHUNK = 1 << 24  # 64 MB of float32 full-softmax logits at a time


def sasrec_backward(model: SASRec, inputs: torch.Tensor, labels: torch.Tensor, kind: str,
                    gen: torch.Generator, max_logits: int = LOGITS_PER_CHUNK) -> float:
    """One batch's loss, its gradients accumulated into the model; returns the loss.

    The full softmax (``"ce"``) scores every item at every position: with 100k items a batch's
    logits and their gradient held ~3 GB, growing with the catalogue. So they are formed
    ``max_logits`` at a time against a detached copy of the hidden states, each chunk's backward
    runs at once (item-embedding gradients accumulate), and the encoder's backward runs once from
    the summed hidden-state gradient: the same gradients, memory bounded by ``max_logits``.
    """
    h = model(inputs)
    mask = labels > 0
    h, pos = h[mask], labels[mask].long()
    if kind != "ce":
        neg = torch.randint(1, model.num_items + 1, pos.shape, generator=gen)
        neg = torch.where(neg == pos, neg % model.num_items + 1, neg)  # never the positive
        pos_logit = (h * model.item_emb(pos)).sum(-1)
        neg_logit = (h * model.item_emb(neg)).sum(-1)
        loss = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
            F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
        loss.backward()
        return loss.item()
    rows = max(1, max_logits // model.num_items)
    if len(h) <= rows:
        loss = F.cross_entropy(model.item_logits(h), pos - 1)
        loss.backward()
        return loss.item()
    hd = h.detach().requires_grad_()
    total = 0.0
    for s in range(0, len(h), rows):
        part = F.cross_entropy(model.item_logits(hd[s:s + rows]), pos[s:s + rows] - 1, reduction="sum") / len(h)
        part.backward()
        total += part.item()
    h.backward(hd.grad)
    return total


@torch.no_grad()
def sasrec_topk(model: SASRec, histories: Sequence[Sequence[int]], k: int,
                exclude: Sequence[Sequence[int]] | None = None, batch_size: int = 512) -> np.ndarray:
    """Top-``k`` items per history over the full item set (best first; ties: lower id)."""
    model.eval()
    k = min(k, model.num_items)
    out = np.empty((len(histories), k), dtype=np.int64)
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        (seqs,) = trim(torch.from_numpy(shifted_ids(chunk, model.max_len)))
        scores = model.item_logits(model(seqs)[:, -1]).float()
        out[start:start + len(chunk)] = topk_from_scores(
            scores, k, None if exclude is None else exclude[start:start + batch_size], overwrite=True)
    return out


def train_sasrec(
    train_seqs: Sequence[Sequence[int]], valid: SplitRows, num_items: int, cfg: SASRecConfig,
    max_len: int, seed: int = 0, exclude_history: bool = False,
) -> tuple[SASRec, dict[str, Any]]:
    """Train on per-user train sequences; early-stop on valid NDCG@10 (HR@10 breaks ties).

    Returns the best model (eval mode) and a log: per-evaluation valid metrics, train loss per
    epoch, best epoch, epochs run, seconds, and why training stopped.
    """
    with torch_threads(cfg.num_threads):
        return _train_sasrec(train_seqs, valid, num_items, cfg, max_len, seed, exclude_history)


def _train_sasrec(
    train_seqs: Sequence[Sequence[int]], valid: SplitRows, num_items: int, cfg: SASRecConfig,
    max_len: int, seed: int, exclude_history: bool,
) -> tuple[SASRec, dict[str, Any]]:
    inputs, labels = training_pairs(train_seqs, max_len)
    if len(inputs) == 0:
        raise ValueError("SASRec needs at least one train sequence of two or more items")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SASRec(num_items, max_len, cfg.hidden, cfg.blocks, cfg.heads, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                           weight_decay=cfg.weight_decay)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(labels)
    lengths = (inputs > 0).sum(1)
    if cfg.valid_users is not None and len(valid) > cfg.valid_users:  # millions of users: a sample
        valid = valid.restrict(np.random.default_rng(seed).choice(valid.user_ids, cfg.valid_users, replace=False))
    exclude = history_exclusions(valid, exclude_history)
    log: dict[str, Any] = {"train_loss": [], "valid": [], "sequences": len(inputs), "stopped": "epochs"}
    best, best_key, best_state, bad = -1, (-1.0, -1.0), None, 0
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, batches, over_time = 0.0, 0, False
        for idx in length_batches(lengths, cfg.batch_size, gen):
            x, y = trim(x_all[idx], y_all[idx])
            opt.zero_grad()
            loss = sasrec_backward(model, x, y, cfg.loss, gen)
            opt.step()
            total, batches = total + loss, batches + 1
            over_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
            if over_time:
                break  # a budget shorter than an epoch (millions of users) ends inside it
        log["train_loss"].append(total / batches)
        if epoch % cfg.eval_every and epoch != cfg.epochs and not over_time:
            continue
        ranked = sasrec_topk(model, valid.histories, 10, exclude)
        m = evaluate_rankings(ranked, valid, [10])
        log["valid"].append({"epoch": epoch, **m})
        logger.info("sasrec epoch %d loss %.4f valid HR@10 %.4f NDCG@10 %.4f (%.0f s)", epoch,
                    log["train_loss"][-1], m["HR@10"], m["NDCG@10"], time.perf_counter() - t0)
        key = (m["NDCG@10"], m["HR@10"])
        if key > best_key:
            best, best_key, bad = epoch, key, 0
            best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        else:
            bad += 1
        if bad >= cfg.patience:
            log["stopped"] = "early_stopping"
            break
        if over_time:
            log["stopped"] = "max_seconds"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log.update(best_epoch=best, epochs_run=epoch, train_seconds=time.perf_counter() - t0,
               best_valid={"NDCG@10": best_key[0], "HR@10": best_key[1]})
    return model, log

"""LightGCN: the collaborative-filtering model whose item vectors feed the codebook.

The paper takes its behaviour embeddings from DCCF (Ren et al., SIGIR 2023). DCCF *is* LightGCN's
graph propagation plus disentangled intent prototypes and two adaptive-augmentation contrastive
(InfoNCE) losses over all users/items in the batch. We implement LightGCN (He et al., SIGIR 2020)
instead because (1) it is the backbone DCCF extends, so its item vectors live in the same kind of
space (layer-averaged propagated ID embeddings, dot-product scores) that the codebook consumes;
(2) it has two hyper-parameters (layers, L2) where DCCF adds the number of intents, an InfoNCE
temperature and the weights of its contrastive and intent terms, all of which need re-tuning per
dataset; (3) it trains the 8k-user demo in about 8 CPU-seconds, where DCCF adds in-batch
contrastive terms to every step. Any stronger recommender's
vectors can still be supplied through ``embed.item_embeddings``.

The maths (one file, no framework): the user-item bipartite graph from the *train* split,
symmetrically normalised ``Â = D^-1/2 A D^-1/2``; ``E^(k+1) = Â E^(k)``; final embedding = mean of
``E^(0..K)``; score = dot(user, item); loss = BPR with one uniform negative per positive plus L2 on
the batch's layer-0 vectors. Negatives are not rejected against the user's positives: with
thousands of items a collision is rare (about 1 in 900 on the demo) and rejection would make the
sampler sequential.

The model is evaluated as a recommender by the evaluate stage (:func:`recommend_topk`, the CF
baseline), under the same protocol and exclusion as every other system.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from semconv.metrics import topk_from_scores
from semconv.protocol import train_interactions
from semconv.training import unwrap

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class UnknownUserError(ValueError):
    """A user id the CF model was not trained with."""


def train_pairs(sequences: pa.Table, bounds: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's edges: the train interactions (:func:`semconv.protocol.train_interactions`).

    Returns ``(user_ids, users, items)``: ``user_ids`` are the sorted distinct users with any
    split row (two or more items, so valid/test users without train rows still get a row),
    ``users`` index into it.
    """
    lengths = pc.list_value_length(sequences.column("history")).fill_null(0).to_numpy(zero_copy_only=False)
    user_ids = np.unique(sequences.column("user_id").to_numpy()[lengths >= 2]).astype(np.int64)
    pair_users, items = train_interactions(sequences, bounds)
    if len(items) == 0:
        raise ValueError("sequences/: no train interactions to train the CF model on")
    return user_ids, np.searchsorted(user_ids, pair_users).astype(np.int64), items


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph as a sparse CSR matrix, users first."""
    n = num_users + num_items
    u = torch.as_tensor(users, dtype=torch.int64)
    i = torch.as_tensor(items, dtype=torch.int64) + num_users
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    deg = torch.bincount(rows, minlength=n).to(torch.float32)
    inv = deg.clamp(min=1).pow(-0.5)
    vals = inv[rows] * inv[cols]
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are not
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=True)
        return coo.coalesce().to_sparse_csr()


class _SymmetricPropagate(torch.autograd.Function):
    """``Â @ E`` whose backward reuses ``Â`` (it is symmetric): torch's generic sparse backward
    builds ``Â^T`` on every step, which made a training step three times slower."""

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ e

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


class LightGCN(nn.Module):
    """Layer-0 ID embeddings (users then items); ``forward(adj)`` propagates and layer-averages."""

    def __init__(self, num_users: int, num_items: int, dim: int, layers: int, seed: int = 0):
        super().__init__()
        self.num_users, self.num_items, self.layers = num_users, num_items, layers
        gen = torch.Generator().manual_seed(seed)
        self.embedding = nn.Parameter(torch.randn(num_users + num_items, dim, generator=gen) * 0.1)

    def forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embedding
        acc = e
        for _ in range(self.layers):
            e = _SymmetricPropagate.apply(adj, e)
            acc = acc + e
        final = acc / (self.layers + 1)
        return final[: self.num_users], final[self.num_users :]


def bpr_loss(
    model: nn.Module, adj: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
    reg: float, denom: int,
) -> torch.Tensor:
    """Sum over the given triples of BPR + L2, divided by ``denom`` (the global batch size)."""
    user_e, item_e = model(adj)
    u, p, n = user_e[users], item_e[pos], item_e[neg]
    bpr = nn.functional.softplus((u * n).sum(-1) - (u * p).sum(-1)).sum()
    base = unwrap(model).embedding
    nu = base.shape[0] - item_e.shape[0]
    l2 = (base[users].square().sum() + base[nu + pos].square().sum() + base[nu + neg].square().sum()) / 2
    return (bpr + reg * l2) / denom


@dataclass
class CFRecommender:
    """The trained CF model for inference: final user and item vectors, scores by dot product."""

    user_ids: np.ndarray
    user_embedding: np.ndarray
    item_embedding: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "user_ids": torch.as_tensor(self.user_ids, dtype=torch.int64),
                "user_embedding": torch.as_tensor(self.user_embedding, dtype=torch.float32),
                "item_embedding": torch.as_tensor(self.item_embedding, dtype=torch.float32),
            },
            str(path / WEIGHTS_NAME),
        )
        (path / CONFIG_NAME).write_text(json.dumps({"model_type": "lightgcn", **self.config}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CFRecommender:
        path = Path(path)
        if not (path / WEIGHTS_NAME).exists():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}; not a saved CF model")
        t = load_file(str(path / WEIGHTS_NAME))
        config = json.loads((path / CONFIG_NAME).read_text())
        config.pop("model_type", None)
        return cls(t["user_ids"].numpy(), t["user_embedding"].numpy(), t["item_embedding"].numpy(), config)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        rows = np.searchsorted(self.user_ids, user_ids).clip(max=len(self.user_ids) - 1)
        bad = self.user_ids[rows] != user_ids
        if bad.any():
            raise UnknownUserError(f"user_id {int(user_ids[bad][0])} is not a user of the CF model's splits")
        return rows

    def recommend(
        self, user_ids: np.ndarray, k: int, exclude: list[np.ndarray] | None = None, chunk: int = 1024
    ) -> np.ndarray:
        """Top-``k`` item ids per user, best first; ``exclude[j]`` masks items for user ``j``."""
        rows = self.user_rows(user_ids)
        out = [
            topk_from_scores(self.user_embedding[rows[s : s + chunk]] @ self.item_embedding.T, k,
                  None if exclude is None else exclude[s : s + chunk], overwrite=True)
            for s in range(0, len(rows), chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def recommend_topk(
    model_dir: str | Path, user_ids: np.ndarray, k: int, histories: list[np.ndarray] | None = None
) -> np.ndarray:
    """Load a saved CF model and return ``(len(user_ids), k)`` top item ids, best first;
    ``histories[j]`` (the protocol's exclusion for user ``j``) are masked."""
    return CFRecommender.from_pretrained(model_dir).recommend(np.asarray(user_ids), k, histories)


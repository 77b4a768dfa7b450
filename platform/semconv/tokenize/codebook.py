"""The residual codebook: L levels x K codes that turn an item embedding into L code tokens.

Notation (one item; every loss is a mean over the batch):

- ``x`` in R^d: the item's behaviour (collaborative) embedding; ``t`` in R^{d_llm}: its LLM text
  embedding (mean of the LLM input-layer token embeddings of title + description).
- ``z = x`` (the paper's method), or ``z = Enc(x)`` in the ``encoder_decoder`` ("ED") ablation.
- ``C_l`` in R^{K x d_z}: level ``l``'s codes, ``l = 1..L``.
- Residual quantization: ``r_1 = z``; ``k_l = argmin_k ||r_l - C_l[k]||^2`` (always squared L2:
  that is what makes residuals shrink level by level, and what faiss ``IndexFlatL2`` searches);
  ``e_l = C_l[k_l]``; ``r_{l+1} = r_l - sg(e_l)``; ``z_hat = sum_l e_l``.

Losses (``semconv.tokenize.losses``)::

    behavior_loss     = sum_l [ d(sg(r_l), e_l) + beta * d(r_l, sg(e_l)) ]
    llm_alignment_loss = sum_l d_llm(W (e_1 + ... + e_l) + b, t)
    total             = behavior_loss + lambda * llm_alignment_loss   [+ ||x - Dec(z_q)||^2 in ED]

with ``d(a, b) = ||a - b||^2 / s`` (``distance: l2``; ``s`` = mean ``||z||^2`` of the k-means
data, a fixed buffer ``input_scale``, so that ``lambda`` means the same whatever the embedding
scale) or ``d(a, b) = 1 - cos(a, b)`` (``distance: cosine``); ``d_llm(p, t) = 1 - cos(p, t)``
(default) or ``||p - t||^2``; ``beta = commitment_weight``; ``lambda = llm_alignment_weight``;
``W: R^{d_z} -> R^{d_llm}``, ``b`` a learned linear projection (``llm_projection``) applied to
every code *prefix* sum: each prefix names a coarser group of items, and aligning every prefix
with the text keeps every level near the LLM input space. Gradients of the LLM term reach the
selected codes and ``W``; since assignment reads the behaviour embedding only, the text shapes
where codes sit (and through that, which items share them), not the lookup itself.

The first behaviour term moves codes towards their inputs (online k-means); the commitment term
moves the input towards its code and only has a gradient with an encoder (residuals use
``sg(e_l)``, so without ED the inputs are constants). In ED, the decoder reads the
straight-through ``z_q = z + sg(z_hat - z)`` so the reconstruction gradient reaches the encoder.

Each level starts from faiss k-means (k-means++ seeds) over that level's inputs
(``kmeans_init``); codes nobody uses are re-seeded from the highest-error residuals at epoch
ends (``reseed_dead_codes``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "semconv.ResidualCodebook"


@dataclass
class CodebookConfig:
    """Shape and loss choices of a :class:`ResidualCodebook` (saved as ``config.json``)."""

    dim: int
    levels: int = 4
    codes_per_level: int = 256
    distance: str = "l2"
    commitment_weight: float = 0.25
    d_llm: int = 0  # 0: no LLM projection (the "w/o LA" ablation)
    llm_distance: str = "cosine"
    encoder_decoder: bool = False
    hidden_dim: int = 256
    latent_dim: int | None = None

    def __post_init__(self) -> None:
        if self.distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be 'l2' or 'cosine', got {self.distance!r}")
        if self.llm_distance not in ("l2", "cosine"):
            raise ValueError(f"llm_distance must be 'l2' or 'cosine', got {self.llm_distance!r}")
        if self.dim < 1 or self.levels < 1 or self.codes_per_level < 2:
            raise ValueError(f"bad codebook shape: {self}")

    @property
    def code_dim(self) -> int:
        if self.encoder_decoder and self.latent_dim:
            return self.latent_dim
        return self.dim


class Quantized(NamedTuple):
    """One forward pass: codes ``(n, L)``, selected codes ``e`` and level inputs ``r`` ``(n, L, d_z)``."""

    codes: torch.Tensor
    selected: torch.Tensor
    residuals: torch.Tensor
    z: torch.Tensor

    @property
    def z_hat(self) -> torch.Tensor:
        return self.selected.sum(dim=1)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int = 0, max_points: int = 16384) -> np.ndarray:
    """Greedy k-means++ seeds (seeded D^2 sampling, best of ``2 + log k`` candidates per seed).

    faiss' own random seeding often merges well-separated clusters; these seeds are handed to
    ``faiss.Kmeans.train(init_centroids=...)``, which then runs on all points. Seeds come from a
    sample of at most ``max_points`` (cost ``k * (2 + log k) * max_points * d``).
    """
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
    x = np.ascontiguousarray(x, dtype=np.float32)
    x2 = np.einsum("ij,ij->i", x, x)
    trials = 2 + int(np.log(k))
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            cand = rng.integers(len(x), size=trials)
        else:
            cand = np.searchsorted(np.cumsum(d2), rng.random(trials) * total).clip(0, len(x) - 1)
        dist = (x2[None, :] - 2 * (x[cand] @ x.T) + x2[cand][:, None]).clip(min=0)
        new = np.minimum(d2[None, :], dist)
        best = int(np.argmin(new.sum(1)))
        centres.append(x[cand[best]])
        d2 = new[best]
    return np.ascontiguousarray(np.stack(centres), dtype=np.float32)


def nearest(residual: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared L2) for each row; ties go to the lower index."""
    dist = (
        residual.pow(2).sum(-1, keepdim=True)
        - 2 * residual @ codes.T
        + codes.pow(2).sum(-1)[None, :]
    )
    return dist.argmin(dim=1)


class ResidualCodebook(nn.Module):
    """L codebooks of K vectors, an LLM projection and (ED ablation only) an encoder/decoder."""

    def __init__(self, config: CodebookConfig):
        super().__init__()
        self.config = config
        d_z = config.code_dim
        self.codebooks = nn.Parameter(torch.zeros(config.levels, config.codes_per_level, d_z))
        self.llm_projection = nn.Linear(d_z, config.d_llm) if config.d_llm > 0 else None
        if config.encoder_decoder:
            self.encoder = _mlp(config.dim, config.hidden_dim, d_z)
            self.decoder = _mlp(d_z, config.hidden_dim, config.dim)
        else:
            self.encoder = self.decoder = None
        self.register_buffer("initialized", torch.tensor(False))
        # mean ||z||^2 of the k-means data: the L2 behaviour distance is measured relative to it,
        # so llm_alignment_weight means the same whatever the embedding scale
        self.register_buffer("input_scale", torch.tensor(1.0))

    # ---- quantization -----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) if self.encoder is not None else x

    def forward(self, x: torch.Tensor) -> Quantized:
        """Residual-quantize a batch; gradients reach the selected codes (and the encoder)."""
        z = self.encode(x)
        r = z
        codes, selected, residuals = [], [], []
        for l in range(self.config.levels):
            book = self.codebooks[l]
            with torch.no_grad():
                k = nearest(r.detach(), book.detach())
            e = book[k]
            codes.append(k)
            selected.append(e)
            residuals.append(r)
            r = r - e.detach()
        return Quantized(torch.stack(codes, 1), torch.stack(selected, 1), torch.stack(residuals, 1), z)

    def decode(self, q: Quantized) -> torch.Tensor:
        """ED ablation: reconstruct ``x`` from the straight-through quantized latent."""
        if self.decoder is None:
            raise RuntimeError("decode() needs encoder_decoder=True")
        z_q = q.z + (q.z_hat - q.z).detach()
        return self.decoder(z_q)

    @torch.no_grad()
    def embed(self, x: np.ndarray, block: int = 4096) -> np.ndarray:
        """The code-space input ``z`` of raw embeddings as float32 numpy (identity without ED).

        ED only: the encoder runs on zero-padded blocks of ``block`` rows, so an item's ``z``
        (and its codes) does not depend on the batch it came in (cold start = batch).
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.encoder is None:
            return x.copy()
        out = np.empty((len(x), self.config.code_dim), dtype=np.float32)
        dev = self.codebooks.device
        for s in range(0, len(x), block):
            part = np.zeros((block, x.shape[1]), np.float32)
            part[: len(x[s : s + block])] = x[s : s + block]
            z = self.encode(torch.from_numpy(part).to(dev)).float().cpu().numpy()
            out[s : s + block] = z[: len(x[s : s + block])]
        return out

    def codebook_vectors(self) -> np.ndarray:
        """``(L, K, d_z)`` float32 copy of the codes (what assignment and cold start search)."""
        return self.codebooks.detach().float().cpu().numpy().copy()

    # ---- initialisation and maintenance -----------------------------------------------
    @torch.no_grad()
    def kmeans_init(
        self, x: np.ndarray, iters: int = 25, seed: int = 0, max_points: int | None = None,
        use_gpu: bool = False,
    ) -> None:
        """Set each level's codes to faiss k-means centroids of that level's inputs.

        Level ``l`` runs ``faiss.Kmeans(niter=iters, seed=seed + l)`` from k-means++ seeds
        (:func:`kmeans_plus_plus` with the same seed) on the residuals left by levels ``< l``, on
        a seeded sample of ``max_points`` items when there are more (so the init costs the same
        for a million items as for ``max_points``).
        """
        import faiss

        k = self.config.codes_per_level
        if len(x) < k:
            raise ValueError(
                f"k-means init needs at least codes_per_level={k} items, got {len(x)}; "
                "lower tokenize.codes_per_level"
            )
        if max_points is not None and len(x) > max_points:  # sample first: embed only the sample
            idx = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
            x = np.asarray(x)[np.sort(idx)]
        z = self.embed(x)
        gpu = bool(use_gpu and hasattr(faiss, "StandardGpuResources"))
        r = np.ascontiguousarray(z, dtype=np.float32)
        self.input_scale.fill_(max(float((r.astype(np.float64) ** 2).sum(1).mean()), 1e-12))
        books = []
        for level in range(self.config.levels):
            km = faiss.Kmeans(r.shape[1], k, niter=iters, seed=seed + level, gpu=gpu,
                              verbose=False, min_points_per_centroid=1)
            km.train(r, init_centroids=kmeans_plus_plus(r, k, seed + level))
            centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
            _, assigned = km.index.search(r, 1)
            r = r - centroids[assigned[:, 0]]
            books.append(centroids)
        self.codebooks.copy_(torch.from_numpy(np.stack(books)).to(self.codebooks))
        self.initialized.fill_(True)

    @torch.no_grad()
    def reseed_dead_codes(
        self, usage: torch.Tensor, candidates: torch.Tensor, errors: torch.Tensor
    ) -> int:
        """Move codes with zero ``usage[l]`` onto the highest-error residuals ``candidates[l]``.

        ``usage``: ``(L, K)`` counts; ``candidates``: ``(L, M, d_z)`` residuals with their
        ``errors`` ``(L, M)`` (distance to their nearest code). Deterministic: dead codes in index
        order take candidates in decreasing error (stable). Returns how many codes moved.
        """
        moved = 0
        for l in range(self.config.levels):
            dead = torch.nonzero(usage[l] == 0).flatten()
            if dead.numel() == 0:
                continue
            order = torch.sort(errors[l], descending=True, stable=True).indices
            order = order[torch.isfinite(errors[l][order])][: dead.numel()]
            self.codebooks[l, dead[: order.numel()]] = candidates[l, order].to(self.codebooks)
            moved += int(order.numel())
        return moved

    # ---- Hugging Face-style persistence -------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT})
        meta = {"format": FORMAT, **asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> ResidualCodebook:
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found: not a saved ResidualCodebook directory")
        meta = json.loads(cfg_path.read_text())
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{cfg_path}: not a {FORMAT} config")
        model = cls(CodebookConfig(**meta))
        model.load_state_dict(load_file(str(w_path), device=device))
        return model.to(device)

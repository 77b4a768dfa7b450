"""The code trie: every valid item code tuple, as per-level lookup tables for tensor decoding.

Constrained beam search must only ever extend a beam with a code that leads to a real item.
Instead of walking a Python dict per beam per step, the trie is stored level by level as dense
tables: ``children[l][node, code]`` is the id of the child node at level ``l + 1`` (at the last
level: the item id) or ``-1`` when ``code`` does not continue the prefix ``node``. One gather
``children[l][beam_nodes]`` gives every beam's allowed-code mask and next node at once.

Nodes at level ``l`` are the distinct code prefixes of length ``l`` (level 0 has one node, the
root), so table ``l`` holds ``n_prefixes(l) x codes_per_level(l)`` int32 entries: a few MB for
tens of thousands of items with 256 codes per level.

For history exclusion the trie also keeps each item's path (the node it reaches at every level)
and how many items lie under each node: :meth:`CodeTrie.dead_nodes` then finds, per user, the
nodes whose items are *all* excluded by counting the excluded items under each node
(``np.unique`` over their paths), with no walk of the tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch


class CodeTrieError(ValueError):
    """Item codes that cannot form a trie (wrong shape, negative or duplicate codes)."""


class CodeTrie:
    """Per-level trie tables over the code tuples of items ``0..N-1`` (row ``i`` = item ``i``).

    ``token_ids[l][c]`` is the LLM vocabulary id of code ``c`` at level ``l`` (from the tokenizer),
    so decoding gathers the logits of exactly the code tokens of each level.
    """

    def __init__(
        self,
        codes: np.ndarray | Sequence[Sequence[int]],
        token_ids: Sequence[Sequence[int]] | None = None,
        item_ids: Sequence[int] | np.ndarray | None = None,
    ):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise CodeTrieError(f"codes must be a non-empty (items, levels) array, got shape {codes.shape}")
        if (codes < 0).any():
            row = int(np.argwhere(codes < 0)[0, 0])
            raise CodeTrieError(f"negative code in row {row}: {codes[row].tolist()}")
        items = np.arange(len(codes)) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
        if items.shape != (len(codes),):
            raise CodeTrieError(f"item_ids has shape {items.shape}, expected ({len(codes)},)")
        self.num_items = len(codes)
        self.max_item_id = int(items.max())
        self.levels = codes.shape[1]
        self.codes_per_level = [int(codes[:, l].max()) + 1 for l in range(self.levels)]
        if token_ids is not None:
            if len(token_ids) != self.levels:
                raise CodeTrieError(f"token_ids has {len(token_ids)} levels, codes have {self.levels}")
            for l, ids in enumerate(token_ids):
                if len(ids) < self.codes_per_level[l]:
                    raise CodeTrieError(
                        f"level {l} uses code {self.codes_per_level[l] - 1} but token_ids has only "
                        f"{len(ids)} ids: the tokenizer lacks code tokens of that level"
                    )
            self.codes_per_level = [len(ids) for ids in token_ids]
            self.token_ids = [torch.as_tensor(list(ids), dtype=torch.long) for ids in token_ids]
        else:
            self.token_ids = []

        self.children: list[torch.Tensor] = []
        # paths[i, l]: the node item row i reaches after level l's code (the item id at the last
        # level); leaf_counts[l][n]: how many items lie under node n of level l + 1
        self.paths = np.zeros((len(codes), self.levels), dtype=np.int64)
        self.leaf_counts: list[np.ndarray] = []
        order = np.argsort(items, kind="stable")
        self._sorted_ids, self._id_rows = items[order], order  # item id -> row, by searchsorted
        node = np.zeros(len(codes), dtype=np.int64)  # every item starts at the root
        for l in range(self.levels):
            k = self.codes_per_level[l]
            n_nodes = int(node.max()) + 1
            if l == self.levels - 1:
                key = node * k + codes[:, l]
                if len(np.unique(key)) != len(key):
                    _, first, counts = np.unique(key, return_index=True, return_counts=True)
                    dup = int(np.flatnonzero(key == key[first[counts > 1][0]])[0])
                    raise CodeTrieError(
                        f"duplicate code tuple {codes[dup].tolist()} (items must have unique codes)"
                    )
                nxt = items
            else:
                key = node * k + codes[:, l]
                uniq, nxt = np.unique(key, return_inverse=True)
            table = np.full((n_nodes, k), -1, dtype=np.int64)
            table[node, codes[:, l]] = nxt
            self.children.append(torch.from_numpy(table.astype(np.int32 if table.max() < 2**31 else np.int64)))
            self.paths[:, l] = nxt
            if l < self.levels - 1:
                self.leaf_counts.append(np.bincount(nxt, minlength=len(uniq)))
            node = nxt

    def next_size(self, level: int) -> int:
        """Size of the id space ``children[level]`` points into: the node count of level
        ``level + 1``, or ``max_item_id + 1`` at the last level."""
        return self.max_item_id + 1 if level == self.levels - 1 else len(self.leaf_counts[level])

    def dead_nodes(self, exclude: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per level ``l``, the sorted keys ``user * next_size(l) + node`` of the nodes that
        ``children[l]`` leads to and whose items are all in ``exclude[user]`` (at the last level:
        the excluded items themselves).

        A node is dead for a user when the number of their distinct excluded items under it
        equals its item count; ids not in the trie (or repeated) change nothing. Cost: one sort
        of the users' excluded items per level, independent of the catalogue's size.
        """
        lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
        flat = np.fromiter(itertools.chain.from_iterable(exclude), dtype=np.int64, count=int(lens.sum()))
        user = np.repeat(np.arange(len(exclude), dtype=np.int64), lens)
        pos = np.minimum(np.searchsorted(self._sorted_ids, flat), len(self._sorted_ids) - 1)
        known = self._sorted_ids[pos] == flat
        pair = np.unique(user[known] * self.num_items + self._id_rows[pos[known]])  # distinct (user, row)
        user, rows = pair // self.num_items, pair % self.num_items
        dead = []
        for l in range(self.levels):
            size = self.next_size(l)
            key = user * size + self.paths[rows, l]
            if l == self.levels - 1:  # an item is its own only leaf
                dead.append(np.sort(key))
            else:
                uniq, count = np.unique(key, return_counts=True)
                dead.append(uniq[count == self.leaf_counts[l][uniq % size]])
        return dead

    def to(self, device: torch.device | str) -> CodeTrie:
        """Move the tables to ``device`` (in place; returns self)."""
        self.children = [t.to(device) for t in self.children]
        self.token_ids = [t.to(device) for t in self.token_ids]
        return self

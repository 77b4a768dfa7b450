"""The fine-tune's losses: next-token cross-entropy on label tokens, summed (callers normalise).

* :func:`level_softmax_loss` (``finetune.code_softmax: level``): a code-token target competes only
  with the K code tokens of its level, the choice the constrained beam search makes at that
  position, so training shapes exactly the distribution decoding reads (:mod:`semconv.decoding`);
  any other target (EOS, a title's words) keeps the full-vocabulary softmax.
* :func:`vocabulary_loss` (``vocabulary``): the LLM's own softmax for every target.

``rows`` is the model's :class:`~semconv.finetune.lm.CodeRows`; ``h`` the final hidden states at
the positions that predict ``targets``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from semconv.finetune.lm import CodeRows


def level_softmax_loss(rows: CodeRows, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy, a code target normalised over its level's codes only."""
    slot = targets - rows.first
    code = (slot >= 0) & (slot < rows.count)
    total = h.new_zeros((), dtype=torch.float32)
    for level in range(rows.levels):
        at = code & (slot // rows.per_level == level)
        if at.any():
            total = total + F.cross_entropy(rows.level_logits(h[at], level).float(),
                                            slot[at] % rows.per_level, reduction="sum")
    if not code.all():
        total = total + vocabulary_loss(rows, h[~code], targets[~code])
    return total


def vocabulary_loss(rows: CodeRows, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy under the whole vocabulary's softmax."""
    return F.cross_entropy(rows.vocab_logits(h).float(), targets, reduction="sum")

"""Score tolerances that follow the dtype a model decoded in, so no test assumes this machine's CPU.

A code-sequence log-probability summed over the levels agrees to ~1e-6 in float32 whatever the
batch (padding, batch mates, shared-prefix KV). In bf16 the same query in another batch can move
by up to ~1e-2 (0.002-0.004 measured on a CPU with native bf16, 0.0098 with emulated bf16 on
this repo's CPU), so near-ties may swap there.
"""

from __future__ import annotations

import numpy as np

SCORE_ATOL = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 5e-3}


def score_atol(dtype: str) -> float:
    """How far two decodes of one history in ``dtype`` may put the same item's score apart."""
    return SCORE_ATOL[dtype]


def assert_same_ranking(items, scores, want_items, want_scores, dtype: str) -> None:
    """Two top-K lists of one history decoded in ``dtype`` agree: scores (best first) within its
    tolerance, and the same items, except that in a low-precision dtype items whose scores lie
    within twice the tolerance of another's (or of the K-th) may trade places."""
    items, scores = np.asarray(items), np.asarray(scores, dtype=np.float64)
    want_items, want_scores = np.asarray(want_items), np.asarray(want_scores, dtype=np.float64)
    atol = score_atol(dtype)
    assert items.shape == want_items.shape, (items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=atol)
    if dtype == "float32":
        assert items.tolist() == want_items.tolist()
        return
    # a rank whose score is clear of every other listed score and of the K-th (so of every item
    # left out too) cannot move when each score moves by at most atol
    for r, s in enumerate(want_scores):
        clear = (np.abs(np.delete(want_scores, r) - s) > 2 * atol).all() and s > want_scores[-1] + 2 * atol
        if np.isfinite(s) and clear:
            assert items[r] == want_items[r], (r, items, want_items, scores, want_scores)

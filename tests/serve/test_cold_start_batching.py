"""Batched cold-start encoding gives each request exactly what it would get alone."""

from __future__ import annotations

import numpy as np
from .serve_fixtures import code_embedding

from serve_app.service import encode_requests


def tokenizer(run_dir):
    from semconv.tokenize.cold_start import CodebookTokenizer

    return CodebookTokenizer.from_pretrained(run_dir.local("codebook"), item_codes=run_dir.local("item_codes"))


def test_new_codes_come_from_the_saved_codebook(run_dir):
    tok = tokenizer(run_dir)
    emb = np.array([code_embedding((3, 3, 3)), code_embedding((3, 0, 2))], np.float32)
    ((codes, clash),) = encode_requests(tok, [(emb, None)])
    assert codes.tolist() == [[3, 3, 3], [3, 0, 2]] and clash.tolist() == [-1, -1]


def test_batched_requests_match_one_request_at_a_time(run_dir):
    tok = tokenizer(run_dir)
    requests = [
        (np.array([code_embedding((3, 1, 1))], np.float32), None),
        (np.array([code_embedding((0, 0, 1)), code_embedding((3, 2, 2))], np.float32), ["a", "b"]),  # item 1's codes
        (np.array([code_embedding((3, 2, 2))] * 2, np.float32), None),  # a duplicate inside one request
    ]
    batched = encode_requests(tok, requests)
    for (emb, texts), (codes, clash) in zip(requests, batched):
        alone_codes, alone_clash = tok.tokenize_unique(emb, texts)
        assert codes.tolist() == alone_codes.tolist() and clash.tolist() == alone_clash.tolist()
    assert batched[1][1].tolist() == [1, -1]  # collides with existing item 1 ...
    assert batched[1][0][0].tolist() != [0, 0, 1]  # ... so it gets a free tuple instead
    assert batched[2][0][0].tolist() != batched[2][0][1].tolist()


class Poisoned:
    """The real tokenizer, except that a search over any row holding 666 raises (an input
    validation did not foresee, like faiss's -1 on an overflowing norm)."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, emb, texts=None):
        if (np.asarray(emb) == 666).any():
            raise IndexError("index -1 is out of bounds")
        return self.tok(emb, texts)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_failing_request_fails_alone_not_its_whole_batch(run_dir):
    from serve_app.service import InvalidInput, encode_isolated

    tok = Poisoned(tokenizer(run_dir))
    good = [(np.array([code_embedding((3, 1, a))], np.float32), None) for a in range(3)]
    bad = (np.array([[666, 0, 0, 0]], np.float32), None)
    out = encode_isolated(tok, [good[0], bad, good[1], good[2]])
    assert isinstance(out[1], InvalidInput) and "cannot be tokenized" in out[1].msg
    assert [o[0].tolist() for i, o in enumerate(out) if i != 1] == [[[3, 1, a]] for a in range(3)]
    (alone,) = encode_isolated(tok, [bad])
    assert isinstance(alone, InvalidInput)

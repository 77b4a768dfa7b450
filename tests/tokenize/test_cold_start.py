"""Cold start: codes for new items from a saved codebook, equal to batch assignment."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.tokenize.assign import assign_codes
from semconv.tokenize.cold_start import CodebookTokenizer
from semconv.tokenize.collisions import resolve_collisions
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.inputs import TokenizeInputError

from .tokenize_helpers import train_in_process


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained ED-free codebook saved to disk, plus its batch codes and an item_codes table."""
    from .tokenize_helpers import planted

    data = planted(n=600, seed=7)
    cfg = TokenizeConfig(levels=3, codes_per_level=16, epochs=2, batch_size=200, kmeans_iters=5)
    model, _ = train_in_process(cfg, data.embeddings, data.text)
    root = tmp_path_factory.mktemp("cold")
    model.save_pretrained(root / "codebook")
    books = model.codebook_vectors()
    raw, _ = assign_codes(data.embeddings, books)
    final = resolve_collisions(data.embeddings, books, raw).codes
    rd = RunDir(root / "run")
    col = pa.FixedSizeListArray.from_arrays(pa.array(final.astype(np.int16).ravel()), 3)
    rd.write_table("item_codes", pa.table({"item_id": pa.array(np.arange(600) + 1000), "codes": col}))
    return root, data, raw, final


def test_cold_start_equals_batch_assignment_before_resolution(saved):
    root, data, raw, _ = saved
    tok = CodebookTokenizer.from_pretrained(root / "codebook")
    np.testing.assert_array_equal(tok(data.embeddings), raw)
    for i in (0, 17, 599):  # one item at a time too
        np.testing.assert_array_equal(tok(data.embeddings[i : i + 1]), raw[i : i + 1])
    assert tok(np.zeros((0, 16), np.float32)).shape == (0, 3)


def test_new_item_colliding_with_an_existing_one_gets_a_free_tuple(saved):
    root, data, raw, final = saved
    tok = CodebookTokenizer.from_pretrained(root / "codebook", item_codes=root / "run" / "item_codes")
    new = np.stack([data.embeddings[5], data.embeddings[5] + 1e-4, data.embeddings[5] * 50])
    codes, clash = tok.tokenize_unique(new)
    owner = 1000 + int(np.flatnonzero((final == raw[5]).all(1))[0])
    assert clash[:2].tolist() == [owner, owner]  # both new items land on an existing tuple
    existing = {tuple(r) for r in final.tolist()}
    assert len({tuple(r) for r in codes.tolist()}) == 3  # unique within the batch
    assert not {tuple(r) for r in codes.tolist()} & existing  # and against the catalogue
    assert clash[2] == -1 and (codes[2] == tok(new[2:])[0]).all()  # a free raw tuple is kept
    # the nearest free tuple keeps the coarse levels of the colliding tuple here
    assert codes[0, 0] == raw[5, 0]


def test_cold_start_rejects_bad_embeddings(saved):
    root, data, _, _ = saved
    tok = CodebookTokenizer.from_pretrained(root / "codebook")
    with pytest.raises(TokenizeInputError, match="expected dimension 16, got 15"):
        tok(data.embeddings[:3, :15])
    bad = data.embeddings[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(TokenizeInputError, match="NaN"):
        tok(bad)
    with pytest.raises(TokenizeInputError, match="texts: 1 entries for 3"):
        tok(data.embeddings[:3], texts=["only one"])


def test_cold_start_equals_batch_for_the_encoder_decoder_ablation(tmp_path):
    from .tokenize_helpers import planted

    data = planted(n=600, seed=8)
    cfg = TokenizeConfig(levels=3, codes_per_level=16, epochs=1, batch_size=200, kmeans_iters=5,
                         encoder_decoder=True, ed_hidden_dim=32, ed_latent_dim=8)
    model, _ = train_in_process(cfg, data.embeddings, data.text)
    model.save_pretrained(tmp_path / "cb")
    batch, _ = assign_codes(model.embed(data.embeddings), model.codebook_vectors())
    tok = CodebookTokenizer.from_pretrained(tmp_path / "cb")
    np.testing.assert_array_equal(tok(data.embeddings), batch)
    np.testing.assert_array_equal(np.concatenate([tok(data.embeddings[i : i + 1]) for i in range(20)]),
                                  batch[:20])

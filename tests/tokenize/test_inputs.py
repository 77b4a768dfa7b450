"""Bad tokenize inputs get a clear error naming the artifact, the item and what to do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import ArtifactError, RunDir
from semconv.tokenize.inputs import TokenizeInputError, align, load_inputs

from .tokenize_helpers import emb_table, planted, write_inputs


def test_load_inputs_aligns_rows_by_item_id(tmp_path):
    data = planted(n=50, seed=1)
    rd = RunDir(tmp_path)
    ids = np.arange(50)
    rd.write_table("item_emb", emb_table(ids[::-1], data.embeddings[::-1]))  # reversed order
    rd.write_table("item_text_emb", emb_table(ids, data.text))
    inputs = load_inputs(rd)
    np.testing.assert_array_equal(inputs.item_ids, ids)
    np.testing.assert_array_equal(inputs.embeddings, data.embeddings)
    np.testing.assert_array_equal(inputs.text_embeddings, data.text)


def test_missing_artifact_names_it(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_table("item_emb", emb_table(np.arange(3), np.zeros((3, 4), np.float32)))
    with pytest.raises(ArtifactError, match="item_text_emb"):
        load_inputs(rd)
    assert load_inputs(rd, need_text=False).text_embeddings is None


def test_nan_embedding_names_the_item(tmp_path):
    data = planted(n=20, seed=2)
    data.embeddings[7, 3] = np.nan
    rd = write_inputs(tmp_path, data, ids=np.arange(20) + 100)
    with pytest.raises(TokenizeInputError, match=r"item_emb: 1 embeddings contain NaN.*item_id \[107\]"):
        load_inputs(rd)


def test_items_missing_from_either_table_are_named():
    beh, text = np.zeros((4, 3), np.float32), np.zeros((3, 5), np.float32)
    with pytest.raises(TokenizeInputError, match=r"item_text_emb: 1 items are missing \(item_id \[3\]"):
        align(np.arange(4), beh, np.arange(3), text)
    with pytest.raises(TokenizeInputError, match=r"item_emb: 1 items are missing \(item_id \[9\]"):
        align(np.arange(3), beh[:3], np.array([0, 1, 2, 9]), np.zeros((4, 5), np.float32))


def test_items_of_the_catalogue_without_embedding_are_named(tmp_path):
    data = planted(n=10, seed=3)
    rd = write_inputs(tmp_path, data)
    rd.write_table("items", pa.table({"item_id": pa.array(np.arange(12), pa.int64())}))
    with pytest.raises(TokenizeInputError, match=r"items of items/ have no behaviour embedding \(item_id \[10, 11\]"):
        load_inputs(rd)


def test_duplicate_ids_and_ragged_or_null_embeddings_are_errors(tmp_path):
    with pytest.raises(TokenizeInputError, match=r"duplicate item_id \[2\]"):
        align(np.array([1, 2, 2]), np.zeros((3, 2), np.float32))
    rd = RunDir(tmp_path)
    ragged = pa.table({"item_id": pa.array([0, 1], pa.int64()),
                       "embedding": pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))})
    rd.write_table("item_emb", ragged)
    with pytest.raises(TokenizeInputError, match="different lengths"):
        load_inputs(rd, need_text=False)
    nulls = pa.table({"item_id": pa.array([0, 1], pa.int64()),
                      "embedding": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))})
    rd.write_table("item_emb", nulls)
    with pytest.raises(TokenizeInputError, match="null embedding"):
        load_inputs(rd, need_text=False)

"""User-supplied item embeddings: accepted when they cover every item once with finite vectors of
one size; otherwise a clear error naming the file, row, item and field."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.embed.supplied import ItemEmbeddingError, embedding_table, load_item_embeddings


def ids(n: int) -> list[str]:
    """``items/`` source ids that equal the dense ids (the dataset numbers its items 0..n-1)."""
    return [str(i) for i in range(n)]


def write(path, ids, vectors) -> str:
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()),
                             "embedding": pa.array(vectors, pa.list_(pa.float64()))}), path)
    return str(path)


def test_accepts_a_directory_in_any_order_and_returns_rows_by_item_id(tmp_path):
    d = tmp_path / "emb"
    d.mkdir()
    write(d / "b.parquet", [2, 0], [[2.0, 2.5], [0.0, 0.5]])
    write(d / "a.parquet", [1], [[1.0, 1.5]])
    out = load_item_embeddings(str(d), source_ids=ids(3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]])


def test_rows_follow_the_datasets_own_ids_not_their_position(tmp_path):
    # items/ lists the dataset's ids 30, 10, 20 as dense items 0, 1, 2; the file lists 10, 20, 30
    f = write(tmp_path / "e.parquet", [10, 20, 30], [[1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(load_item_embeddings(f, ["30", "10", "20"]), [[3.0], [1.0], [2.0]])
    # string ids (e.g. ASINs) join the same way
    pq.write_table(pa.table({"item_id": ["B02", "A01"], "embedding": [[2.0], [1.0]]}), tmp_path / "s.parquet")
    np.testing.assert_array_equal(load_item_embeddings(str(tmp_path / "s.parquet"), ["A01", "B02"]), [[1.0], [2.0]])


def test_embedding_table_schema_is_the_item_emb_contract():
    t = embedding_table(np.arange(6, dtype=np.float64).reshape(3, 2))
    assert t.schema.field("item_id").type == pa.int64()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert t.column("embedding").to_pylist()[2] == [4.0, 5.0]


def test_missing_item_is_named(tmp_path):
    f = write(tmp_path / "e.parquet", [0, 2], [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ItemEmbeddingError, match=r"1 of 3 items have no embedding \(item_id \['1'\]\)"):
        load_item_embeddings(f, source_ids=ids(3))


def test_wrong_dimension_names_file_row_item_and_field(tmp_path):
    f = write(tmp_path / "e.parquet", [0, 1, 2], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0, 7.0]])
    with pytest.raises(ItemEmbeddingError) as err:
        load_item_embeddings(f, source_ids=ids(3))
    msg = str(err.value)
    assert "e.parquet: row 2 (item_id 2)" in msg
    assert "field 'embedding' has dimension 3, expected 2" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected(tmp_path, bad):
    f = write(tmp_path / "e.parquet", [0, 1], [[1.0, 2.0], [3.0, bad]])
    with pytest.raises(ItemEmbeddingError, match=r"row 1 \(item_id 1\): field 'embedding' has a "
                                                 r"non-finite value .* at index 1"):
        load_item_embeddings(f, source_ids=ids(2))


def test_duplicate_ids_name_both_places_even_across_files(tmp_path):
    d = tmp_path / "emb"
    d.mkdir()
    write(d / "a.parquet", [0, 1], [[1.0], [2.0]])
    write(d / "b.parquet", [2, 1], [[3.0], [4.0]])
    with pytest.raises(ItemEmbeddingError) as err:
        load_item_embeddings(str(d), source_ids=ids(3))
    msg = str(err.value)
    assert "b.parquet: row 1 (item_id 1): duplicate item_id" in msg
    assert "a.parquet: row 1" in msg


def test_unknown_item_null_vector_and_missing_column(tmp_path):
    f = write(tmp_path / "unknown.parquet", [0, 7], [[1.0], [2.0]])
    with pytest.raises(ItemEmbeddingError, match=r"row 1 \(item_id 7\): field 'item_id' is not an item"):
        load_item_embeddings(f, source_ids=ids(2))
    f = write(tmp_path / "null.parquet", [0, 1], [[1.0], None])
    with pytest.raises(ItemEmbeddingError, match=r"row 1 \(item_id 1\): field 'embedding' is null"):
        load_item_embeddings(f, source_ids=ids(2))
    pq.write_table(pa.table({"item_id": [0], "vector": [[1.0]]}), tmp_path / "col.parquet")
    with pytest.raises(ItemEmbeddingError, match=r"col.parquet: missing column 'embedding'"):
        load_item_embeddings(str(tmp_path / "col.parquet"), source_ids=ids(1))


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(ItemEmbeddingError, match="does not exist"):
        load_item_embeddings(str(tmp_path / "nope.parquet"), source_ids=ids(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ItemEmbeddingError, match="no .parquet files"):
        load_item_embeddings(str(tmp_path / "empty"), source_ids=ids(1))

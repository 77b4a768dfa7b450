"""User-supplied behaviour embeddings: an existing recommender's item vectors, validated.

The paper takes its item embeddings from a trained recommender (DCCF). A user who already has one
hands us a Parquet file (or a directory of them) with ``item_id`` and ``embedding``, where
``item_id`` is the dataset's own item id (``items/``'s ``source_id``: what the interactions file
calls the item, integer or string), never the pipeline's internal dense id, so a file listing its
items in any order lands on the right rows. Everything
downstream (codebook training, code assignment) assumes one finite vector of one size per item,
so a bad file must fail here, naming the file, row, item and field, not as a shape error later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.artifacts import filesystem


class ItemEmbeddingError(ValueError):
    """User-supplied item embeddings that do not cover the items exactly once with finite vectors."""


def _parquet_files(path: str) -> tuple[pafs.FileSystem, list[str]]:
    fs, root, _ = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ItemEmbeddingError(f"embed.item_embeddings: {path} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [root]
    files = sorted(
        f.path
        for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        and not Path(f.path).name.startswith((".", "_"))
    )
    if not files:
        raise ItemEmbeddingError(f"embed.item_embeddings: no .parquet files in directory {path}")
    return fs, files


def _read_one(fs: pafs.FileSystem, file: str) -> tuple[list[str], list[np.ndarray | None]]:
    try:
        table = pq.read_table(file, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise ItemEmbeddingError(f"{file}: not a readable Parquet file ({err})") from None
    for col in ("item_id", "embedding"):
        if col not in table.column_names:
            raise ItemEmbeddingError(
                f"{file}: missing column {col!r} (has {table.column_names}); expected item_id, embedding"
            )
    ids_col, emb_col = table.column("item_id"), table.column("embedding")
    if not (pa.types.is_integer(ids_col.type) or pa.types.is_string(ids_col.type)
            or pa.types.is_large_string(ids_col.type)):
        raise ItemEmbeddingError(f"{file}: field 'item_id' must be an integer or a string, got {ids_col.type}")
    if not (pa.types.is_list(emb_col.type) or pa.types.is_large_list(emb_col.type)
            or pa.types.is_fixed_size_list(emb_col.type)):
        raise ItemEmbeddingError(f"{file}: field 'embedding' must be a list of floats, got {emb_col.type}")
    value_type = emb_col.type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise ItemEmbeddingError(f"{file}: field 'embedding' must hold numbers, got {emb_col.type}")
    if ids_col.null_count:
        row = int(pc.index(pc.is_null(ids_col), True).as_py())
        raise ItemEmbeddingError(f"{file}: row {row}: field 'item_id' is null")
    ids = [str(i) for i in ids_col.to_pylist()]
    vecs: list[np.ndarray | None] = [
        None if v is None else np.asarray(v, dtype=np.float64) for v in emb_col.to_pylist()
    ]
    return ids, vecs


def load_item_embeddings(path: str, source_ids: Sequence[str]) -> np.ndarray:
    """Read and validate supplied embeddings; row ``i`` is the item whose dataset id is
    ``source_ids[i]`` (``items/``'s ``source_id`` in dense-id order).

    Ids are matched as text, so an integer ``item_id`` column matches the string ids ``prepare``
    keeps. Raises :class:`ItemEmbeddingError` for an unknown, duplicate or missing item, a null
    or empty vector, a dimension that differs from the first row's, or a NaN/inf value.
    """
    fs, files = _parquet_files(path)
    dense = {str(s): i for i, s in enumerate(source_ids)}
    num_items = len(dense)
    where: dict[str, str] = {}
    out: np.ndarray | None = None
    dim = None
    for file in files:
        ids, vecs = _read_one(fs, file)
        for row, (item, vec) in enumerate(zip(ids, vecs)):
            at = f"{file}: row {row} (item_id {item})"
            if item not in dense:
                raise ItemEmbeddingError(
                    f"{at}: field 'item_id' is not an item of items/ (no item has this id in the dataset)"
                )
            if item in where:
                raise ItemEmbeddingError(f"{at}: duplicate item_id, first seen at {where[item]}")
            where[item] = f"{file}: row {row}"
            if vec is None or vec.size == 0:
                raise ItemEmbeddingError(f"{at}: field 'embedding' is null or empty")
            if dim is None:
                dim = vec.size
                out = np.zeros((num_items, dim), dtype=np.float32)
            if vec.size != dim:
                raise ItemEmbeddingError(
                    f"{at}: field 'embedding' has dimension {vec.size}, expected {dim} "
                    f"(the first row's)"
                )
            if not np.isfinite(vec).all():
                bad = int(np.flatnonzero(~np.isfinite(vec))[0])
                raise ItemEmbeddingError(
                    f"{at}: field 'embedding' has a non-finite value ({vec[bad]}) at index {bad}"
                )
            out[dense[item]] = vec
    missing = [s for s in dense if s not in where]
    if missing:
        raise ItemEmbeddingError(
            f"{path}: {len(missing)} of {num_items} items have no embedding "
            f"(item_id {missing[:10]}{' ...' if len(missing) > 10 else ''})"
        )
    if out is None:
        raise ItemEmbeddingError(f"{path}: no rows")
    return out


def embedding_table(vectors: np.ndarray) -> pa.Table:
    """``item_id: int64``, ``embedding: fixed_size_list<float32>[d]`` for rows 0..N-1."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d)
    return pa.table({"item_id": pa.array(np.arange(n, dtype=np.int64)), "embedding": emb})

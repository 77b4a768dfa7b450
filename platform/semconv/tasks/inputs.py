"""Read and check the tasks stage's inputs: ``items/``, ``sequences/``, ``splits/``, ``item_codes/``.

Every prompt refers to items by their codes, so a single unknown item or an item without codes
would silently produce a wrong row; we check everything up front and name the offender.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.artifacts import RunDir
from semconv.codes import code_arrays
from semconv.protocol import split_rows, train_rows

INPUTS = ("items", "sequences", "splits", "item_codes")


class TaskInputError(ValueError):
    """Inputs of the tasks stage that do not fit together (unknown items, missing codes)."""


@dataclass(frozen=True)
class TaskInputs:
    items: pa.Table  # sorted by item_id, ids dense 0..N-1
    codes: np.ndarray  # (N, L) int64; row i = codes of item i
    sequences: pa.Table
    splits: pa.Table  # splits/: each user's valid / test positions
    max_len: int | None = None  # prepare.max_len: the longest history a prompt lists

    @property
    def num_items(self) -> int:
        return self.items.num_rows

    @property
    def context(self) -> int:
        """The longest history a prompt lists (``max_len``, else the longest history)."""
        lengths = pc.list_value_length(self.sequences.column("history"))
        return self.max_len or int(pc.max(lengths).as_py() or 1)

    def rows(self, split: str, keep: np.ndarray | None = None) -> pa.Table:
        """The protocol's ``split`` rows (:func:`semconv.protocol.split_rows`; ``keep``: a mask
        over them), derived here."""
        return split_rows(self.sequences, self.splits, self.context, (split,), keep)

    def num_train_rows(self) -> int:
        return int(train_rows(self.sequences, self.splits).sum())


def _require_columns(table: pa.Table, name: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TaskInputError(f"{name}/ lacks column(s) {missing}; it has {table.column_names}")


def _list_values(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat int64 values, parent row of each value) of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    return values, parents


def code_matrix(item_codes: pa.Table, num_items: int) -> np.ndarray:
    """The (N, L) code matrix; every item 0..N-1 must have exactly one code tuple of length L."""
    _require_columns(item_codes, "item_codes", ("item_id", "codes"))
    try:
        ids, rows = code_arrays(item_codes)
    except ValueError as err:
        raise TaskInputError(str(err)) from None
    if len(ids) and rows.shape[1] < 1:
        raise TaskInputError("item_codes/: empty code tuples")
    unknown = ids[(ids < 0) | (ids >= num_items)]
    if len(unknown):
        raise TaskInputError(
            f"item_codes/ has codes for item_id(s) {unknown[:5].tolist()} not in items/ "
            f"(item ids are 0..{num_items - 1}); re-run the tokenize stage"
        )
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise TaskInputError(f"item_codes/ lists item_id(s) {uniq[counts > 1][:5].tolist()} twice")
    if len(uniq) != num_items:
        missing = np.setdiff1d(np.arange(num_items), uniq)
        raise TaskInputError(
            f"item_codes/ lacks codes for {len(missing)} of {num_items} items "
            f"(e.g. item_id {missing[:5].tolist()}); re-run the tokenize stage"
        )
    codes = np.empty((num_items, rows.shape[1]), dtype=np.int64)
    codes[ids] = rows
    _, first, dup = np.unique(codes, axis=0, return_index=True, return_counts=True)
    if (dup > 1).any():
        row = first[np.argmax(dup > 1)]
        raise TaskInputError(
            f"item_codes/: {int((dup > 1).sum())} code tuple(s) are shared by several items "
            f"(e.g. {codes[row].tolist()}); codes must be unique per item"
        )
    return codes


def check_item_refs(table: pa.Table, name: str, column: str, num_items: int) -> None:
    """Every item id in ``table[column]`` (a list or int column) must be in 0..N-1."""
    col = table.column(column)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        values, parents = _list_values(col)
    else:
        values = col.to_numpy(zero_copy_only=False).astype(np.int64)
        parents = np.arange(len(values))
    bad = np.flatnonzero((values < 0) | (values >= num_items))
    if len(bad):
        row = int(parents[bad[0]])
        user = table.column("user_id")[row].as_py() if "user_id" in table.column_names else "?"
        raise TaskInputError(
            f"{name}/ row {row} (user_id {user}): {column} references item_id "
            f"{int(values[bad[0]])}, which is not in items/ (0..{num_items - 1}); "
            f"{len(bad)} such reference(s) in all"
        )


def validate_inputs(
    items: pa.Table, item_codes: pa.Table, sequences: pa.Table, splits: pa.Table
) -> TaskInputs:
    """Check the four tables against each other and return them ready for the task builders."""
    _require_columns(items, "items", ("item_id", "title", "description"))
    _require_columns(sequences, "sequences", ("user_id", "history"))
    _require_columns(splits, "splits", ("user_id", "valid", "test"))
    items = items.sort_by("item_id")
    ids = items.column("item_id").to_numpy().astype(np.int64)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise TaskInputError("items/: item_id must be dense 0..N-1 (see the prepare stage)")
    n = len(ids)
    codes = code_matrix(item_codes, n)
    check_item_refs(sequences, "sequences", "history", n)
    if "reviews" in sequences.column_names:
        h = pc.list_value_length(sequences.column("history").combine_chunks())
        r = pc.list_value_length(sequences.column("reviews").combine_chunks())
        bad = np.flatnonzero(h.to_numpy(zero_copy_only=False) != r.fill_null(-1).to_numpy(zero_copy_only=False))
        if len(bad):
            raise TaskInputError(
                f"sequences/ row {int(bad[0])} (user_id "
                f"{sequences.column('user_id')[int(bad[0])].as_py()}): reviews has a different "
                "length than history; reviews must be aligned with history"
            )
    seq_users = sequences.column("user_id").to_numpy().astype(np.int64)
    if len(np.unique(seq_users)) != len(seq_users):
        raise TaskInputError("sequences/ has more than one row for some user_id")
    split_users = np.unique(splits.column("user_id").to_numpy().astype(np.int64))
    missing = np.setdiff1d(split_users, seq_users)
    if len(missing):
        raise TaskInputError(
            f"splits/ has user_id(s) {missing[:5].tolist()} that are not in sequences/"
        )
    try:
        train_rows(sequences, splits)  # the held-out positions fit every history
    except ValueError as err:
        raise TaskInputError(str(err)) from None
    return TaskInputs(items=items, codes=codes, sequences=sequences, splits=splits)


def load_inputs(run: RunDir) -> TaskInputs:
    run.require(*INPUTS)
    inputs = validate_inputs(
        run.read_table("items"), run.read_table("item_codes"),
        run.read_table("sequences"), run.read_table("splits"),
    )
    return dataclasses.replace(inputs, max_len=run.manifest("splits").get("max_len"))


def full_histories(inputs: TaskInputs, user_ids: np.ndarray) -> pa.Array:
    """Each given user's full history (from ``sequences/``), aligned with ``user_ids``."""
    seq_users = inputs.sequences.column("user_id").to_numpy().astype(np.int64)
    order = np.argsort(seq_users, kind="stable")
    pos = order[np.searchsorted(seq_users[order], user_ids)]
    return inputs.sequences.column("history").combine_chunks().take(pa.array(pos))

"""New interactions extend histories: the delta users' rows of the next ``sequences/``.

Only the touched users' rows are rebuilt (old history, then their delta items in order); rows of
other users passed in go through unchanged. A delta pair the user already has in their history is
dropped, as ``prepare`` drops repeats. Their ``splits/`` rows are :func:`split_bounds` of the new
histories; :mod:`semconv.refresh.user_files` writes both tables with only these rows replaced.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def extend_sequences(sequences: pa.Table, user_ids: np.ndarray, item_ids: np.ndarray,
                     timestamps: np.ndarray | None, new_users: pa.Table) -> tuple[pa.Table, np.ndarray, int]:
    """``(the rows of ``sequences``, the touched users' extended, sorted by user_id; touched user
    ids; repeats dropped)``. ``sequences`` holds at least the delta's known users.

    ``user_ids``/``item_ids`` come grouped by user, chronological inside a user (``Delta``).
    """
    touched = np.unique(user_ids)
    mask = pc.is_in(sequences.column("user_id"), value_set=pa.array(touched, pa.int64()))
    keep = sequences.filter(pc.invert(mask))
    old = sequences.filter(mask)
    if new_users.num_rows:
        pad = {c: pa.nulls(new_users.num_rows, old.schema.field(c).type)
               for c in old.column_names if c not in ("user_id", "source_user_id")}
        old = pa.concat_tables([old, pa.table({**new_users.to_pydict(), **pad}).select(old.column_names)
                                .cast(old.schema)])
    old = old.sort_by("user_id")
    cols = {c: old.column(c).to_pylist() for c in old.column_names}
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(user_ids) else np.zeros(0, np.int64)
    bounds = dict(zip(user_ids[starts].tolist(), zip(starts.tolist(), np.r_[starts[1:], len(user_ids)].tolist())))
    dropped = 0
    for r, uid in enumerate(cols["user_id"]):
        a, b = bounds[uid]
        hist = list(cols["history"][r] or [])
        seen = set(hist)
        adds = [(i, k) for i, k in zip(item_ids[a:b].tolist(), range(a, b)) if i not in seen]
        dropped += (b - a) - len(adds)
        cols["history"][r] = hist + [i for i, _ in adds]
        if "timestamps" in cols:
            ts = [None if timestamps is None or np.isnan(timestamps[k]) else int(timestamps[k]) for _, k in adds]
            cols["timestamps"][r] = list(cols["timestamps"][r] or []) + ts
        if "reviews" in cols:
            cols["reviews"][r] = list(cols["reviews"][r] or []) + [""] * len(adds)
    rebuilt = pa.table(cols, schema=old.schema)
    return pa.concat_tables([keep, rebuilt]).sort_by("user_id"), touched, dropped

"""The raw interactions and catalogue as Ray Datasets of validated blocks (sharded ``prepare``).

Generic files are read in pieces (:mod:`semconv.data.chunks`) and validated by the whole-file
readers' own column rules (:func:`~semconv.data.readers.canonical_interactions`,
:func:`~semconv.data.readers.canonical_items`), so a piece fails or skips exactly the rows the
whole file would. Tasks cannot raise mid-stream without leaving the order of errors to chance,
so each piece files what it skipped, the first error it met and the columns it saw with a
:class:`Tally` actor, keyed by piece (a retried task overwrites its own entry); the driver then
raises the first error in file order. LC-Rec files are single JSON objects: the driver parses
them (:func:`~semconv.data.readers.read_lcrec`) and hands them over in blocks.

Every block carries ``row`` (the file's row, for errors) and ``pos`` (file order, see
:mod:`semconv.data.chunks`); catalogue blocks also ``text`` (the item has a title or description).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from semconv.data.chunks import POS_SHIFT, Piece, count_rows, plan, read_piece, with_pos, with_row_bases
from semconv.data.config import PrepareConfig
from semconv.data.readers import DataError, ReadReport, canonical_interactions, canonical_items, has_text, read_lcrec

OPTIONAL = ("timestamp", "review")  # interaction columns that sequences/ carries when the data has them


class Tally:
    """What each piece reported, by key; the driver reads it after the pass."""

    def __init__(self) -> None:
        self.entries: dict[Any, dict] = {}

    def put(self, key: Any, entry: dict) -> None:
        self.entries[key] = entry

    def get(self) -> dict[Any, dict]:
        return self.entries


def new_tally():
    import ray

    return ray.remote(num_cpus=0)(Tally).remote()


@dataclass
class Source:
    """One raw table: its blocks, where its rows come from (``files[pos >> 40]``), and the
    tally key under which its pieces report."""

    name: str  # "interactions" | "items"
    uri: str  # as configured (for messages about the whole table)
    files: list[str]
    ds: Any  # ray.data.Dataset
    lcrec: bool = False


def _text_flags(items: pa.Table) -> pa.Table:
    flags = [has_text(t) or has_text(d) for t, d in zip(items.column("title").to_pylist(),
                                                         items.column("description").to_pylist())]
    return items.append_column("text", pa.array(flags, pa.bool_()))


def _read_pieces(batch: pa.Table, name: str, on_bad_rows: str, tally: Any) -> Iterator[pa.Table]:
    """Ray Data task: read and validate the pieces of ``batch`` (one per row), filing reports."""
    import ray

    for index, spec in zip(batch.column("index").to_pylist(), batch.column("piece").to_pylist()):
        piece = Piece.from_json(spec)
        report, error, columns = ReadReport(), None, set()
        try:
            for raw in read_piece(piece, on_bad_rows, report):
                if name == "interactions":
                    t = canonical_interactions(raw, piece.uri, on_bad_rows, report)
                else:
                    t = _text_flags(canonical_items(raw, piece.uri, on_bad_rows, report)[0])
                columns |= set(t.column_names)
                yield with_pos(t, piece.file)
        except DataError as err:
            error = str(err)
        ray.get(tally.put.remote((name, index), {"skipped": report.skipped, "error": error,
                                                 "columns": sorted(columns)}))


def _generic(name: str, uri: str, cfg: PrepareConfig, block_bytes: int, tally: Any) -> Source:
    import ray

    pieces = plan(uri, block_bytes)
    text = [i for i, p in enumerate(pieces) if p.kind != "parquet"]
    if text:  # row numbers of text pieces: count each piece's rows first, in parallel
        counts = ray.get([ray.remote(count_rows).remote(pieces[i]) for i in text])
        based = with_row_bases([pieces[i] for i in text], counts)
        for i, p in zip(text, based):
            pieces[i] = p
    files = sorted({p.file: p.uri for p in pieces}.items())
    ds = ray.data.from_items([{"index": i, "piece": p.to_json()} for i, p in enumerate(pieces)],
                             override_num_blocks=len(pieces))
    ds = ds.map_batches(_read_pieces, batch_format="pyarrow", batch_size=1,
                        fn_kwargs={"name": name, "on_bad_rows": cfg.on_bad_rows, "tally": tally})
    return Source(name, uri, [f for _, f in files], ds)


def _lcrec(cfg: PrepareConfig, blocks: int) -> tuple[Source, Source]:
    import ray

    name = cfg.name or cfg.dataset.rstrip("/").split("/")[-1]
    inter_uri, items_uri = f"{cfg.dataset}/{name}.inter.json", f"{cfg.dataset}/{name}.item.json"
    inter, items = read_lcrec(cfg.dataset, name)
    # a user's items share their row (the user's place in the file): pos is the flat position
    inter = inter.append_column("pos", pa.array(np.arange(inter.num_rows, dtype=np.int64)))
    rows = np.arange(1, items.num_rows + 1, dtype=np.int64)
    items = _text_flags(items).append_column("row", pa.array(rows)).append_column("pos", pa.array(rows))

    def split(t: pa.Table) -> list[pa.Table]:
        step = max(1, -(-t.num_rows // blocks))
        return [t.slice(i, step) for i in range(0, t.num_rows, step)] or [t]

    return (Source("interactions", inter_uri, [inter_uri], ray.data.from_arrow(split(inter)), lcrec=True),
            Source("items", items_uri, [items_uri], ray.data.from_arrow(split(items)), lcrec=True))


def open_sources(cfg: PrepareConfig, blocks: int, block_bytes: int, tally: Any) -> tuple[Source, Source]:
    """``(interactions, items)`` for ``cfg`` (LC-Rec or generic files)."""
    if cfg.format == "lcrec":
        return _lcrec(cfg, blocks)
    if not cfg.interactions or not cfg.items:
        raise DataError("prepare.format=generic needs prepare.interactions and prepare.items (paths or URIs)")
    return (_generic("interactions", cfg.interactions, cfg, block_bytes, tally),
            _generic("items", cfg.items, cfg, block_bytes, tally))


def reports(entries: dict[Any, dict], name: str, report: ReadReport) -> set[str]:
    """Raise the first error the pieces of ``name`` met (in file order), else add what they
    skipped to ``report``; returns the columns they read."""
    mine = sorted((k[1], v) for k, v in entries.items() if isinstance(k, tuple) and k[0] == name)
    for _, entry in mine:
        if entry["error"]:
            raise DataError(entry["error"])
    columns: set[str] = set()
    for _, entry in mine:
        for reason, n in entry["skipped"].items():
            report.skip(reason, n)
        columns |= set(entry["columns"])
    return columns


def file_of(source: Source, pos: int) -> str:
    return source.files[pos >> POS_SHIFT]

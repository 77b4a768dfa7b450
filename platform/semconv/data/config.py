"""Config of the ``prepare`` stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semconv.schema import Section


class PrepareConfig(Section):
    """Where the raw data is and how to turn it into ``items/``, ``sequences/``, ``splits/``.

    ``format="lcrec"`` reads ``<dataset>/<name>.inter.json`` + ``<dataset>/<name>.item.json``;
    ``format="generic"`` reads ``interactions`` and ``items`` (Parquet, CSV or JSON Lines, by
    extension), local paths or any ``pyarrow.fs`` URI. The lineage fingerprint identifies the raw
    files by their paths: after replacing a file in place, delete ``items/`` to rebuild.

    Not in the lineage fingerprint (they change how the stage runs, not what it writes):
    ``num_shards`` (the same rows in more files).
    """

    format: Literal["lcrec", "generic"] = "lcrec"
    dataset: str = "data/Scientific"
    name: str | None = Field(None, description="LC-Rec file stem; defaults to the folder name")
    interactions: str | None = None
    items: str | None = None
    k_core: int = Field(0, ge=0, description="iterative k-core filter; 0 keeps everything")
    max_len: int = Field(20, ge=1, description="histories keep their last max_len items")
    on_bad_rows: Literal["error", "skip"] = "error"
    num_shards: int = Field(1, ge=1, description="Parquet files per table")
    long_history: int = Field(20, ge=1, description="a history this long counts as long in the stats")

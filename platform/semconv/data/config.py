"""Config of the ``prepare`` stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from semconv.schema import Section


class PrepareConfig(Section):
    """Where the raw data is and how to turn it into ``items/``, ``sequences/``, ``splits/``.

    ``format="lcrec"`` reads ``<dataset>/<name>.inter.json`` + ``<dataset>/<name>.item.json``;
    ``format="generic"`` reads ``interactions`` and ``items`` (Parquet, CSV or JSON Lines, by
    extension), local paths or any ``pyarrow.fs`` URI. The lineage fingerprint identifies the raw
    files by their paths: after replacing a file in place, delete ``items/`` to rebuild.

    Large inputs run on Ray Data (:mod:`semconv.data.sharded`): no process holds all the rows, and
    the tables are the same as in memory. ``ray_data="auto"`` picks it from ``ray_min_mb`` of raw
    files (an in-memory run needs ~0.3 GB per million interactions); ``num_blocks`` sets how many
    pieces the files are read in and how many partitions users are hashed into.

    Not in the lineage fingerprint (they change how the stage runs, not what it writes):
    ``num_shards`` (the same rows in more files), ``ray_data``, ``ray_min_mb``, ``num_blocks``.
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
    ray_data: Literal["auto", "on", "off"] = Field("auto", description="the sharded Ray Data path; auto: "
                                                   "for ray_min_mb of raw input or more")
    ray_min_mb: int = Field(64, ge=0, description="auto shards inputs of this many MiB on disk or more")
    num_blocks: int | None = Field(None, ge=1, description="sharded: read pieces and user partitions "
                                   "(None: one per 16 MiB of input, at least 2 per CPU)")

    @field_validator("ray_data", mode="before")
    @classmethod
    def _yaml_bool(cls, v: object) -> object:
        """YAML reads a bare ``on`` / ``off`` (``prepare.ray_data=off``) as a boolean."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

"""Config of the ``refresh`` job (``semconv refresh``, ``jobs/refresh.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semconv.schema import Section


class RefreshConfig(Section):
    """Where the delta is and how much to re-decode.

    ``interactions``: ``user_id``, ``item_id`` (the dataset's own ids), optional ``timestamp``;
    ``items``: ``item_id``, ``title``, ``description``, optional ``embedding`` (a list of floats,
    the behaviour-embedding dimension; in CSV a JSON list). Parquet, CSV or JSON Lines, local
    paths or ``pyarrow.fs`` URIs; either may be omitted.
    """

    interactions: str | None = None
    items: str | None = None
    users: Literal["touched", "all"] = Field(
        "touched", description="touched: re-decode only users with new interactions; all: everyone "
                               "(new items can then enter every list)")
    version: str | None = Field(None, description="name of the new version (default: v0001, v0002, ...)")
    on_bad_rows: Literal["error", "skip"] = "error"
    holdout: float = Field(0.1, gt=0, lt=1, description="share of existing items held back to measure "
                                                       "the text-to-behaviour map's code agreement")
    ridge: float = Field(1.0, gt=0, description="L2 weight of the fold-in map")
    text_neighbours: int = Field(5, ge=1, description="existing items averaged by the text map")
    map_users: int = Field(100_000, ge=1, description="existing users (a seeded sample when there are "
                                                      "more) whose histories teach the fold-in map")

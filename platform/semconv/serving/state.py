"""Everything one serving version needs, loaded fully before it is published.

A replica holds exactly one :class:`ServingState` reference. A reload builds a new state on the
side and swaps the reference, so a request (which reads the reference once) sees one whole
version: never a mix of two precaches, never a half-loaded one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semconv.artifacts import RunDir
from semconv.serving.catalog import ItemCatalog, SourceUserIndex
from semconv.serving.fallback import popularity_top_k
from semconv.serving.precache_store import PrecacheStore, load_precache


@dataclass(frozen=True, eq=False)
class ServingState:
    store: PrecacheStore
    catalog: ItemCatalog
    fallback_items: np.ndarray | None  # None when the fallback is off
    fallback_scores: np.ndarray | None
    source_users: SourceUserIndex | None
    load_s: float

    @property
    def version(self) -> str:
        return self.store.version


def load_catalog(run_dir: str | Path) -> tuple[ItemCatalog, SourceUserIndex | None]:
    rd = RunDir(run_dir)
    codes = rd.read_table("item_codes", columns=["item_id", "codes"]) if rd.is_complete("item_codes") else None
    catalog = ItemCatalog.from_tables(rd.read_table("items", columns=["item_id", "source_id", "title"]), codes)
    users = None
    if rd.is_complete("sequences"):
        users = SourceUserIndex.from_table(rd.read_table("sequences", columns=["user_id", "source_user_id"]))
    return catalog, users


def load_state(
    run_dir: str | Path,
    precache: str | Path | None = None,
    fallback: bool = True,
    cache_dir: str | Path | None = None,
    reuse: ServingState | None = None,
) -> ServingState:
    """Load the precache version at ``precache`` (default ``<run_dir>/precache``) and the catalog.

    ``reuse`` passes an earlier state whose catalog and source-user index are kept (a precache
    reload in the same run directory does not re-read the items).
    """
    t0 = time.perf_counter()
    rd = RunDir(run_dir)
    store = load_precache(precache if precache is not None else rd.local("precache"), cache_dir)
    if reuse is not None:
        catalog, users = reuse.catalog, reuse.source_users
    else:
        catalog, users = load_catalog(run_dir)
    fb_items = fb_scores = None
    if fallback:
        if reuse is not None and reuse.fallback_items is not None and reuse.store.k == store.k:
            fb_items, fb_scores = reuse.fallback_items, reuse.fallback_scores
        else:
            splits = rd.read_table("splits", columns=["split", "target"])
            fb_items, fb_scores = popularity_top_k(splits, store.k)
    return ServingState(store, catalog, fb_items, fb_scores, users, time.perf_counter() - t0)

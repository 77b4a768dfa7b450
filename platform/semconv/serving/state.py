"""Everything one serving version needs, loaded fully and checked before it is published.

A replica holds exactly one :class:`ServingState` reference. A reload builds a new state on the
side and swaps the reference, so a request (which reads the reference once) sees one whole
version: never a mix of two precaches, never a half-loaded one. A version is a run directory's
catalogue (``items/``, ``item_codes/``, ``sequences/``), its fallback (``splits/``) and one
precache built from them: a precache whose manifest records other inputs than the run
directory holds is refused, so the catalogue and the lists can never disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semconv.artifacts import RunDir
from semconv.serving.catalog import ItemCatalog, SourceUserIndex
from semconv.serving.fallback import popularity_top_k
from semconv.serving.precache_store import PrecacheError, PrecacheStore, load_precache
from semconv.serving.remote_cache import fetch_uri

CATALOG_INPUTS = ("items", "item_codes", "sequences")
CHECKED_INPUTS = ("splits", "item_codes")  # what the precache stage records in manifest["inputs"]


@dataclass(frozen=True, eq=False)
class ServingState:
    store: PrecacheStore
    catalog: ItemCatalog
    fallback_items: np.ndarray | None  # None when the fallback is off
    fallback_scores: np.ndarray | None
    source_users: SourceUserIndex | None
    load_s: float
    run_dir: str = ""
    stamps: dict = field(default_factory=dict)  # artifact -> created_at + manifest mtime (reuse key)

    @property
    def version(self) -> str:
        return self.store.version

    @property
    def created_at(self) -> str | None:
        """When the precache was published (its manifest's ``created_at``)."""
        return self.store.manifest.get("created_at")


def load_catalog(run_dir: str | Path) -> tuple[ItemCatalog, SourceUserIndex | None]:
    rd = RunDir(run_dir)
    codes = rd.read_table("item_codes", columns=["item_id", "codes"]) if rd.is_complete("item_codes") else None
    catalog = ItemCatalog.from_tables(rd.read_table("items", columns=["item_id", "source_id", "title"]), codes)
    users = None
    if rd.is_complete("sequences"):
        users = SourceUserIndex.from_table(rd.read_table("sequences", columns=["user_id", "source_user_id"]))
    return catalog, users


def local_precache(rd: RunDir, precache: str | Path | None) -> Path:
    """The precache as a local directory: ``<run_dir>/precache``, a local path, or a URI
    (``s3://.../precache`` or its ``_SUCCESS``) fetched into the versioned cache."""
    if precache is None:
        return rd.local("precache")
    text = str(precache)
    if "://" in text and not text.startswith("file://"):
        return fetch_uri(text)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def check_inputs(store: PrecacheStore, inputs: dict) -> None:
    """Refuse a precache built from other ``splits/`` / ``item_codes/`` than the run dir's."""
    recorded = store.manifest.get("inputs") or {}
    for name in CHECKED_INPUTS:
        if name in recorded and recorded[name] != inputs.get(name):
            raise PrecacheError(f"precache version {store.version} was built from {name}/ of "
                                f"{recorded[name]}, the run directory's is {inputs.get(name)}: "
                                "serve it with the run directory it was built from")


def load_state(
    run_dir: str | Path,
    precache: str | Path | None = None,
    fallback: bool = True,
    cache_dir: str | Path | None = None,
    reuse: ServingState | None = None,
) -> ServingState:
    """Load and check one version: the precache at ``precache`` (default ``<run_dir>/precache``)
    with ``run_dir``'s catalogue and fallback.

    ``reuse`` passes the state now serving: its catalogue and fallback are kept when the run
    directory's artifacts are the very ones it was built from (re-checked here on every reload).
    """
    t0 = time.perf_counter()
    rd = RunDir(run_dir)
    names = CATALOG_INPUTS + ("splits",)
    present = [n for n in names if rd.is_complete(n)]
    inputs = {n: rd.manifest(n).get("created_at") for n in present}
    # created_at has 1 s resolution: the manifest's mtime tells apart two publishes in one second
    stamps = {n: f"{inputs[n]}@{rd.fs.get_file_info(f'{rd.path(n)}/_SUCCESS').mtime_ns}" for n in present}
    store = load_precache(local_precache(rd, precache), cache_dir)
    check_inputs(store, inputs)
    same = reuse is not None and reuse.run_dir == rd.uri
    if same and all(reuse.stamps.get(n) == stamps.get(n) for n in CATALOG_INPUTS):
        catalog, users = reuse.catalog, reuse.source_users
    else:
        catalog, users = load_catalog(run_dir)
    fb_items = fb_scores = None
    if fallback:
        if (same and reuse.fallback_items is not None and reuse.store.k == store.k
                and reuse.stamps.get("splits") == stamps.get("splits")):
            fb_items, fb_scores = reuse.fallback_items, reuse.fallback_scores
        else:
            splits = rd.read_table("splits", columns=["split", "user_id", "history", "target"])
            fb_items, fb_scores = popularity_top_k(splits, store.k)
    return ServingState(store, catalog, fb_items, fb_scores, users, time.perf_counter() - t0,
                        run_dir=rd.uri, stamps=stamps)

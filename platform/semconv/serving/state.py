"""Everything one serving version needs, loaded fully and checked before it is published.

A replica serves a :class:`ServingState` per version, built whole on the side, so a request
(which reads one state) sees one whole version: never a mix of two precaches, never a
half-loaded one. A version (:class:`semconv.serving.version.Target`) is a run directory's
catalogue (``items/``, ``item_codes/``, ``sequences/``), its fallback (``sequences/`` under ``splits/``) and one
precache built from them: a precache whose manifest records other inputs than the run
directory holds is refused, so the catalogue and the lists can never disagree. What is reused
from the state served before is decided by the artifacts' ``build`` ids, nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semconv.artifacts import RunDir
from semconv.serving.catalog import ItemCatalog, SourceIdIndex
from semconv.serving.fallback import popularity_top_k
from semconv.serving.precache_store import PrecacheError, PrecacheStore, load_precache
from semconv.serving.version import Target, version_builds, version_id
from semconv.remote_cache import fetch_uri

CATALOG_INPUTS = ("items", "item_codes", "sequences")
CHECKED_INPUTS = ("splits", "item_codes")  # what the precache stage records it was built from


@dataclass(frozen=True, eq=False)
class ServingState:
    store: PrecacheStore
    catalog: ItemCatalog
    fallback_items: np.ndarray | None  # None when the fallback is off
    fallback_scores: np.ndarray | None
    source_users: SourceIdIndex | None  # sequences/ source_user_id -> user_id
    load_s: float
    version_id: str = ""  # semconv.serving.version.version_id: the same on every deployment
    builds: dict = field(default_factory=dict)  # artifact -> build id (what a reload may reuse)

    @property
    def version(self) -> str:
        """The precache's version (its manifest's ``version``), named in every lookup answer."""
        return self.store.version

    @property
    def created_at(self) -> str | None:
        """When the precache was published (its manifest's ``created_at``)."""
        return self.store.manifest.get("created_at")


def load_catalog(run_dir: str | Path) -> tuple[ItemCatalog, SourceIdIndex | None]:
    """The catalogue and the source user index, both checked (duplicates are load errors)."""
    rd = RunDir(run_dir)
    codes = rd.read_table("item_codes", columns=["item_id", "codes"]) if rd.is_complete("item_codes") else None
    catalog = ItemCatalog.from_tables(rd.read_table("items", columns=["item_id", "source_id", "title"]), codes)
    users = None
    if rd.is_complete("sequences"):
        users = SourceIdIndex.from_sequences(rd.read_table("sequences", columns=["user_id", "source_user_id"]))
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


def built_from(manifest: dict, name: str) -> str | None:
    """Which build of input ``name`` a precache says it was built from: the build in its
    ``lineage`` (pipeline runs), else its ``inputs`` record (builds; ``created_at`` in older runs)."""
    lineage = ((manifest.get("lineage") or {}).get("inputs") or {}).get(name)
    if lineage:
        return lineage.rsplit("@", 1)[-1]
    return (manifest.get("inputs") or {}).get(name)


def check_inputs(store: PrecacheStore, manifests: dict[str, dict]) -> None:
    """Refuse a precache built from other ``splits/`` / ``item_codes/`` than the run dir's."""
    for name in CHECKED_INPUTS:
        recorded, have = built_from(store.manifest, name), manifests.get(name) or {}
        if recorded is not None and recorded not in (have.get("build"), have.get("created_at")):
            raise PrecacheError(f"precache version {store.version} was built from {name}/ {recorded}, the run "
                                f"directory's is build {have.get('build')}: serve it with the run directory "
                                "it was built from")


def load_state(
    run_dir: str | Path,
    precache: str | Path | None = None,
    fallback: bool = True,
    cache_dir: str | Path | None = None,
    reuse: ServingState | None = None,
    builds: dict[str, str] | None = None,
) -> ServingState:
    """Load and check one version: the precache at ``precache`` (default ``<run_dir>/precache``)
    with ``run_dir``'s catalogue and fallback.

    ``reuse`` passes a state already loaded: its catalogue and fallback are kept when they were
    built from the very builds this version has. ``builds`` (:func:`version_builds`, read by the
    caller before loading) names the version; read here when not given.
    """
    t0 = time.perf_counter()
    target = Target(str(run_dir), None if precache is None else str(precache), fallback)
    builds = version_builds(target) if builds is None else builds
    rd = RunDir(run_dir)
    store = load_precache(local_precache(rd, precache), cache_dir)
    check_inputs(store, {n: rd.manifest(n) for n in CHECKED_INPUTS if rd.is_complete(n)})

    def same(*names: str) -> bool:
        return reuse is not None and all(reuse.builds.get(n) == builds.get(n) for n in names)

    catalog, users = (reuse.catalog, reuse.source_users) if same(*CATALOG_INPUTS) else load_catalog(run_dir)
    fb_items = fb_scores = None
    if fallback:
        if same("sequences", "splits") and reuse.fallback_items is not None and reuse.store.k == store.k:
            fb_items, fb_scores = reuse.fallback_items, reuse.fallback_scores
        else:
            fb_items, fb_scores = popularity_top_k(rd.read_table("sequences", columns=["user_id", "history"]),
                                                   rd.read_table("splits"), store.k)
    return ServingState(store, catalog, fb_items, fb_scores, users, time.perf_counter() - t0,
                        version_id(target, builds), builds)

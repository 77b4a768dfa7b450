"""Catalog, popularity fallback and the whole serving state, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from .serve_fixtures import N_ITEMS

from semconv.serving.catalog import CatalogError, ItemCatalog, SourceUserIndex
from semconv.serving.fallback import popularity_top_k
from semconv.serving.state import load_state


def test_fallback_is_train_popularity_and_ignores_test_targets(run_dir):
    items, scores = popularity_top_k(run_dir.read_table("splits"), 3)
    assert items[:2].tolist() == [7, 3]  # 7: every user, 3: every third user
    assert 39 not in items[:2]  # the most common test target does not leak
    assert items[2] == 10  # ties among once-seen items break by smaller id
    assert scores[0] > scores[1] > 0 and scores.dtype == np.float32


def test_catalog_describes_items_and_their_codes(run_dir):
    cat = ItemCatalog.from_tables(run_dir.read_table("items"), run_dir.read_table("item_codes"))
    assert cat.num_items == N_ITEMS and cat.levels == 3
    rec = cat.item(21)
    assert rec == {"item_id": 21, "source_id": "B0021", "title": "Item 21", "codes": [1, 1, 1], "tokens": "<a_1><b_1><c_1>"}
    assert cat.item(N_ITEMS) is None
    src, titles = cat.describe(np.array([2, 999, 0]))
    assert src == ["B0002", "", "B0000"] and titles == ["Item 2", "", "Item 0"]


def test_catalog_rejects_codes_for_unknown_items(run_dir):
    codes = pa.table({"item_id": pa.array([N_ITEMS + 1], pa.int64()),
                      "codes": pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3], pa.int16()), 3)})
    with pytest.raises(CatalogError, match=f"item_id {N_ITEMS + 1} is not in items/"):
        ItemCatalog.from_tables(run_dir.read_table("items"), codes)


def test_source_user_index_maps_dataset_ids(run_dir):
    idx = SourceUserIndex.from_table(run_dir.read_table("sequences"))
    assert idx.user_id("U12") == 12 and idx.user_id("U1") == 1
    assert idx.user_id("nobody") is None and idx.user_id("U1\0") is None and idx.user_id("x" * 500) is None


def test_state_loads_everything_and_a_reload_reuses_the_catalog(run_dir, tmp_path):
    state = load_state(run_dir.uri, cache_dir=tmp_path / "cache")
    assert state.version == "v1" and state.fallback_items[0] == 7
    assert state.source_users is not None and state.catalog.num_items == N_ITEMS
    no_fb = load_state(run_dir.uri, fallback=False, cache_dir=tmp_path / "cache", reuse=state)
    assert no_fb.fallback_items is None and no_fb.catalog is state.catalog


def test_a_precache_built_from_other_item_codes_is_refused(run_dir, tmp_path):
    from semconv.serving.precache_store import PrecacheError
    from .serve_fixtures import write_precache

    write_precache(run_dir, "precache_old", offset=1, version="v0",
                   inputs={"item_codes": "2020-01-01T00:00:00Z"})
    with pytest.raises(PrecacheError, match="built from item_codes/"):
        load_state(run_dir.uri, precache=run_dir.path("precache_old"), cache_dir=tmp_path / "c")


def test_a_reload_rereads_a_catalogue_republished_in_the_same_run_dir(run_dir, tmp_path):
    state = load_state(run_dir.uri, cache_dir=tmp_path / "cache")
    items = run_dir.read_table("items")
    run_dir.write_table("items", items.set_column(2, "title", pa.array([f"New {i}" for i in range(N_ITEMS)])))
    again = load_state(run_dir.uri, cache_dir=tmp_path / "cache", reuse=state)
    assert again.catalog is not state.catalog and again.catalog.item(3)["title"] == "New 3"
    assert again.stamps["items"] != state.stamps["items"]
    same = load_state(run_dir.uri, cache_dir=tmp_path / "cache", reuse=again)
    assert same.catalog is again.catalog and same.fallback_items is again.fallback_items  # unchanged: reused


def test_a_precache_uri_is_fetched_through_the_versioned_cache(run_dir, tmp_path, monkeypatch):
    import semconv.serving.state as state_mod

    fetched = []

    def fake_fetch(uri):  # what fetch_uri returns: the local copy of that manifest version
        fetched.append(uri)
        return run_dir.local("precache_v2")

    from .serve_fixtures import write_precache

    write_precache(run_dir, "precache_v2", offset=5, version="v2")
    monkeypatch.setattr(state_mod, "fetch_uri", fake_fetch)
    state = load_state(run_dir.uri, precache="s3://bucket/run/precache_v2/_SUCCESS", cache_dir=tmp_path / "c")
    assert fetched == ["s3://bucket/run/precache_v2/_SUCCESS"] and state.version == "v2"
    assert load_state(run_dir.uri, precache=f"file://{run_dir.path('precache')}", cache_dir=tmp_path / "c").version == "v1"

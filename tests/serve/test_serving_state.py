"""Catalog, popularity fallback and the whole serving state, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from .serve_fixtures import N_ITEMS

from semconv.serving.catalog import CatalogError, ItemCatalog, SourceIdIndex
from semconv.serving.fallback import popularity_top_k
from semconv.serving.state import load_state


def test_fallback_is_train_popularity_and_ignores_test_targets(run_dir):
    items, scores = popularity_top_k(run_dir.read_table("sequences"), run_dir.read_table("splits"), 3)
    assert items[:2].tolist() == [7, 3]  # 7: every user, 3: every third user
    assert not {38, 39} & set(items.tolist())  # the most common held-out items do not leak
    assert items[2] == 8  # ties among once-seen items break by smaller id
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


def test_source_id_indexes_map_dataset_ids_of_users_and_items(run_dir):
    users = SourceIdIndex.from_sequences(run_dir.read_table("sequences"))
    assert users.lookup("U12") == 12 and users.lookup("U1") == 1
    assert users.lookup("nobody") is None and users.lookup("U1\0") is None and users.lookup("x" * 500) is None
    assert users.lookup("") is None
    items = ItemCatalog.from_tables(run_dir.read_table("items"), None).by_source
    assert items.lookup("B0017") == 17 and items.lookup("U17") is None


def test_a_duplicated_source_id_is_a_load_error_naming_every_duplicate(run_dir, tmp_path):
    items = run_dir.read_table("items")
    source = [f"B{i:04d}" for i in range(N_ITEMS)]
    source[5], source[9], source[30], source[31] = "B0001", "B0001", "dup", "dup"
    run_dir.write_table("items", items.set_column(1, "source_id", pa.array(source)))
    with pytest.raises(CatalogError, match=r"items/ source_id: 2 id\(s\) appear more than once: 'B0001', 'dup'"):
        load_state(run_dir.uri, cache_dir=tmp_path / "cache")
    with pytest.raises(CatalogError, match=r"sequences/ source_user_id: 1 id\(s\) appear more than once: 'U3'"):
        SourceIdIndex.from_sequences(pa.table({"user_id": [1, 2, 3], "source_user_id": ["U3", "U2", "U3"]}))
    nulls = ItemCatalog.from_tables(pa.table({"item_id": [1, 2, 3], "source_id": [None, None, "B3"],
                                              "title": ["a", "b", "c"]}), None)
    assert nulls.by_source.lookup("B3") == 3 and nulls.by_source.lookup("") is None  # nulls are not ids


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
    assert again.builds["items"] == run_dir.manifest("items")["build"] != state.builds["items"]
    assert again.version_id != state.version_id  # a new build is a new version
    same = load_state(run_dir.uri, cache_dir=tmp_path / "cache", reuse=again)
    assert same.catalog is again.catalog and same.fallback_items is again.fallback_items  # unchanged: reused
    assert same.version_id == again.version_id


def test_a_precache_uri_is_fetched_through_the_versioned_cache(run_dir, tmp_path, monkeypatch):
    import semconv.serving.state as state_mod
    import semconv.serving.version as version_mod

    fetched = []

    def fake_fetch(uri):  # what fetch_uri returns: the local copy of that manifest version
        fetched.append(uri)
        return run_dir.local("precache_v2")

    from .serve_fixtures import write_precache

    write_precache(run_dir, "precache_v2", offset=5, version="v2")
    monkeypatch.setattr(state_mod, "fetch_uri", fake_fetch)
    monkeypatch.setattr(version_mod, "precache_manifest", lambda uri: run_dir.manifest("precache_v2"))
    state = load_state(run_dir.uri, precache="s3://bucket/run/precache_v2/_SUCCESS", cache_dir=tmp_path / "c")
    assert fetched == ["s3://bucket/run/precache_v2/_SUCCESS"] and state.version == "v2"
    assert load_state(run_dir.uri, precache=f"file://{run_dir.path('precache')}", cache_dir=tmp_path / "c").version == "v1"


def test_a_precache_recording_another_build_of_its_inputs_is_refused(run_dir, tmp_path):
    """Lineage names builds: a precache of an item_codes/ republished since (even within the same
    second, with the same created_at) is refused; one naming the run dir's build is served."""
    from semconv.serving.precache_store import PrecacheError
    from .serve_fixtures import precache_table

    users = np.arange(0, 30, 2)

    def write(name: str, codes_build: str) -> None:
        run_dir.write_table(name, precache_table(users, 8, 0), manifest={
            "users": len(users), "version": name,
            "lineage": {"inputs": {"item_codes": f"fp@{codes_build}", "splits": "fp@" + run_dir.manifest("splits")["build"]}}})

    write("precache_other", "0123456789ab")
    with pytest.raises(PrecacheError, match="built from item_codes/ 0123456789ab.*run directory's is build"):
        load_state(run_dir.uri, precache=run_dir.path("precache_other"), cache_dir=tmp_path / "c")
    write("precache_same", run_dir.manifest("item_codes")["build"])
    assert load_state(run_dir.uri, precache=run_dir.path("precache_same"), cache_dir=tmp_path / "c").version == "precache_same"


def test_every_deployment_derives_one_version_id_from_the_target_and_its_builds(run_dir):
    from semconv.serving.version import Target, version_builds, version_id
    from .serve_fixtures import write_codebook, write_precache

    write_precache(run_dir, "precache_v2", offset=5, version="v2")
    target = Target(run_dir.uri)
    builds = version_builds(target)
    assert builds == {n: run_dir.manifest(n)["build"] for n in ("items", "item_codes", "sequences", "splits",
                                                                "codebook", "precache")}
    vid = version_id(target, builds)
    assert version_id(Target(run_dir.uri), version_builds(Target(run_dir.uri))) == vid  # another replica
    other = Target(run_dir.uri, f"{run_dir.path('precache_v2')}/_SUCCESS")
    assert version_builds(other)["precache"] == run_dir.manifest("precache_v2")["build"]
    assert version_id(other, version_builds(other)) != vid
    assert version_id(Target(run_dir.uri, fallback=False), builds) != vid
    write_codebook(run_dir)  # republished in place: a new version, whatever the clock says
    assert version_id(target, version_builds(target)) != vid

"""run_refresh: new items get unique codes and join a new version; only touched users re-decode."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import RunDir
from semconv.protocol import split_bounds
from semconv.refresh.stage import run_refresh

from ..dtypes import score_atol
from .conftest import NUM_ITEMS, NUM_USERS, config, write_jsonl

NEW_ITEMS = [{"item_id": f"n{j}", "title": f"new glove {j}", "description": "a glove"} for j in range(4)]


def _delta(tmp, users=(3, 70, 71), items=NEW_ITEMS, with_inter=("n0", "n1")) -> tuple[str, str]:
    inter = []
    for u in users:
        inter.append({"user_id": f"u{u}", "item_id": "i5"})
        inter += [{"user_id": f"u{u}", "item_id": n} for n in with_inter]
    return write_jsonl(tmp / "inter.jsonl", inter), write_jsonl(tmp / "items.jsonl", list(items))


def _lists(path) -> dict[int, tuple]:
    t = pq.read_table(path)
    return {u: (tuple(i), tuple(s)) for u, i, s in zip(t["user_id"].to_pylist(), t["items"].to_pylist(),
                                                    t["scores"].to_pylist())}


@pytest.fixture(scope="module")
def refreshed(finished_run, tiny_lm_dir, tmp_path_factory):
    """One refresh of a copy of the finished run: (run dir, version dir, config)."""
    tmp = tmp_path_factory.mktemp("refreshed")
    run_copy = tmp / "run"
    shutil.copytree(finished_run, run_copy)
    inter, items = _delta(tmp)
    cfg = config(run_copy, tiny_lm_dir, interactions=inter, items=items)
    return run_copy, run_refresh(cfg)["version"], cfg


@pytest.mark.slow
def test_new_items_and_touched_users_make_a_complete_new_version(refreshed):
    run_copy, out, _ = refreshed
    version = RunDir(out)
    manifest = RunDir(run_copy).manifest("versions/v0001")
    # new items: dense ids after the catalogue, unique codes, in catalogue, codes and trie inputs
    new = manifest["new_items"]
    assert new["item_ids"] == list(range(NUM_ITEMS, NUM_ITEMS + 4))
    assert new["embedding_source"] == {"supplied": 0, "fold_in": 2, "text": 2}
    assert set(new["maps"]) == {"fold_in", "text"}
    codes = version.read_table("item_codes")["codes"].to_pylist()
    assert len(codes) == NUM_ITEMS + 4 and len({tuple(c) for c in codes}) == NUM_ITEMS + 4
    old_codes = RunDir(run_copy).read_table("item_codes")["codes"].to_pylist()
    assert codes[:NUM_ITEMS] == old_codes  # existing codes never change
    items_t = version.read_table("items")
    assert items_t["source_id"].to_pylist()[NUM_ITEMS:] == ["n0", "n1", "n2", "n3"]
    # histories: touched users extended in order, everyone else unchanged
    old_seq = {r["user_id"]: r["history"] for r in RunDir(run_copy).read_table("sequences").to_pylist()}
    new_seq = {r["user_id"]: r["history"] for r in version.read_table("sequences").to_pylist()}
    for u in range(NUM_USERS):
        if u in (3, 70, 71):
            added = [i for i in [5, NUM_ITEMS, NUM_ITEMS + 1] if i not in old_seq[u]]
            assert new_seq[u] == old_seq[u] + added
        else:
            assert new_seq[u] == old_seq[u]
    # ... written file by file: the files of users 0-29 and 60-89 rewritten, the others the base's bytes
    assert manifest["user_tables"]["sequences"] == {"files_carried_over": 2, "files_rewritten": 2, "files_added": 0}
    for part in ("part-00001.parquet", "part-00003.parquet"):
        assert os.stat(version.path(f"sequences/{part}")).st_ino == os.stat(RunDir(run_copy).path(f"sequences/{part}")).st_ino
    assert version.read_table("splits").equals(split_bounds(version.read_table("sequences")))
    # precache: only touched users re-decoded, the rest byte-identical, shards 0 and 1 dirty
    assert manifest["users"]["ids"] == [3, 70, 71] and manifest["users"]["reasons"]["new_interactions"] == 3
    old = {}
    for s in range(3):
        old.update(_lists(RunDir(run_copy).path(f"precache/shard-{s:05d}.parquet")))
    newl = {}
    for s in range(3):
        newl.update(_lists(version.path(f"precache/shard-{s:05d}.parquet")))
    assert set(newl) == set(old)
    assert all(newl[u] == old[u] for u in old if u not in (3, 70, 71))
    assert manifest["precache"] == {"shards_carried_over": 1, "shards_rewritten": 2, "users": NUM_USERS, "shards": 3}
    carried = version.path("precache/shard-00002.parquet")
    assert open(carried, "rb").read() == open(RunDir(run_copy).path("precache/shard-00002.parquet"), "rb").read()
    for u in (3, 70, 71):  # the whole new history is excluded, new items included
        assert not set(newl[u][0]) & set(new_seq[u])
    assert not (run_copy / "versions" / "v0001.partial").exists()


@pytest.mark.slow
def test_the_version_serves_the_new_items_and_the_touched_users_new_lists(refreshed):
    from semconv.serving.state import load_state
    from serve_app import service

    run_copy, out, _ = refreshed
    before = load_state(str(run_copy), fallback=False)
    with pytest.raises(service.NotFound):
        service.item(before, NUM_ITEMS)
    after = load_state(out, fallback=True)  # the whole version: catalogue, codes and precache
    got = service.item(after, NUM_ITEMS + 1)
    codes = RunDir(out).read_table("item_codes")["codes"].to_pylist()[NUM_ITEMS + 1]
    assert got["title"] == "new glove 1" and got["source_id"] == "n1" and got["codes"] == codes
    version_lists = _lists(RunDir(out).path("precache/shard-00001.parquet"))
    rec = service.recommendations(after, 70, 5)
    assert rec["item_ids"] == list(version_lists[70][0]) and not rec["fallback"]


@pytest.mark.slow
def test_rerunning_a_finished_refresh_changes_nothing(refreshed):
    run_copy, out, cfg = refreshed
    created = RunDir(run_copy).manifest("versions/v0001")["created_at"]
    assert run_refresh(cfg)["version"] == out
    assert RunDir(run_copy).manifest("versions/v0001")["created_at"] == created
    assert not (run_copy / "versions" / "v0002").exists()


def test_a_refresh_needs_a_finished_run(tmp_path, tiny_lm_dir):
    from semconv.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match="codebook"):
        run_refresh(config(tmp_path / "empty", tiny_lm_dir, items="x.jsonl"))


@pytest.mark.slow  # the finished run it copies takes ~16 s to build
def test_more_precache_actors_than_the_cluster_can_hold_is_refused_not_a_hang(run_copy, tiny_lm_dir, tmp_path):
    from semconv.inference.precache import PrecacheError

    inter, items = _delta(tmp_path)
    cfg = config(run_copy, tiny_lm_dir, interactions=inter, items=items)
    cfg.precache.num_actors = 4  # 4 CPUs of actors on a 2-CPU Ray: Ray Data's reads would never run
    with pytest.raises(PrecacheError, match=r"precache.num_actors x precache.cpus_per_actor = 4"):
        run_refresh(cfg)
    assert not RunDir(run_copy).is_complete("versions/v0001")


@pytest.mark.slow
def test_the_version_carries_the_model_so_online_generation_ranks_like_its_precache(refreshed):
    """A version is served alone (run_dir=<version>), online generation included: its model/ is
    the run's, and ranking a touched user's new history gives the version's precached list."""
    from semconv.inference.run_ranker import load_run_ranker

    run_copy, out, _ = refreshed
    model, base = RunDir(out).local("model"), RunDir(run_copy).local("model")
    files = sorted(f.name for f in base.iterdir() if f.name != "_SUCCESS")
    assert files and sorted(f.name for f in model.iterdir() if f.name != "_SUCCESS") == files
    assert all((model / f).read_bytes() == (base / f).read_bytes() for f in files)
    ranker, settings = load_run_ranker(out)
    # the dtype the version's precache recorded (the one its users were re-ranked in), on any CPU
    assert settings.dtype == settings.precache_dtype == RunDir(out).manifest("precache")["dtype"]
    history = {r["user_id"]: r["history"] for r in RunDir(out).read_table("sequences").to_pylist()}[70]
    items, scores = ranker.rank([history], exclude_history=settings.exclude_history)
    cached_items, cached_scores = _lists(RunDir(out).path("precache/shard-00001.parquet"))[70]
    atol = score_atol(settings.dtype)
    np.testing.assert_allclose(scores[0], cached_scores, rtol=0, atol=atol)
    clear = scores[0] > scores[0][-1] + 2 * atol  # items above the K-th score: no ties at the cut
    assert set(items[0][clear]) == {i for i, c in zip(cached_items, clear) if c}


@pytest.mark.slow  # two refreshes of a copy of the finished run
def test_a_refresh_re_ranks_in_its_base_precaches_dtype_unless_told_otherwise(run_copy, tiny_lm_dir, tmp_path,
                                                                               simulate_cpu):
    """On a CPU with native bf16 (simulated) ``precache.bf16=auto`` would pick bf16; a refresh
    re-ranks in the float32 its base precache recorded instead, so re-ranked and carried-over users
    (and online generation of the version) agree. An explicit ``precache.bf16=true`` is obeyed
    and recorded, with the carried-over lists' dtype beside it."""
    from semconv.inference.run_ranker import resolve_settings

    simulate_cpu(True)
    assert RunDir(run_copy).manifest("precache")["dtype"] == "float32"
    (tmp_path / "a").mkdir()
    inter, items = _delta(tmp_path / "a", users=(3,))
    cfg = config(run_copy, tiny_lm_dir, interactions=inter, items=items)
    cfg.precache.bf16 = "auto"
    first = RunDir(run_refresh(cfg)["version"])
    meta = first.manifest("precache")
    assert (meta["dtype"], meta["dtype_reason"]) == ("float32", "auto: the precache's dtype (float32)")
    assert "dtype_carried_over" not in meta and resolve_settings(first).dtype == "float32"
    (tmp_path / "b").mkdir()
    more = [{"item_id": "m0", "title": "new tape 0", "description": "a tape"}]
    inter, items = _delta(tmp_path / "b", users=(71,), items=more, with_inter=("m0",))
    cfg = config(run_copy, tiny_lm_dir, interactions=inter, items=items)
    cfg.precache.bf16 = True
    second = RunDir(run_refresh(cfg)["version"])
    meta = second.manifest("precache")
    assert (meta["dtype"], meta["dtype_reason"], meta["dtype_carried_over"]) == (
        "bfloat16", "precache.bf16=true", "float32")
    assert resolve_settings(second).dtype == "bfloat16"  # online generation follows the re-ranked users

"""One history, one list: a history longer than ``max_len`` gets the same top-K from the precache,
from a refresh that re-decodes it and from online generation (on the run and on the version).

The three paths share the ranker spec (:func:`semconv.inference.run_ranker.resolve_settings`) and
the exclusion scope of :mod:`semconv.protocol`: the prompt keeps the last ``max_len`` items, and
the whole history is excluded. The users checked include some whose list would change if only
the last ``max_len`` items were excluded, so the scope itself is under test.
"""

from __future__ import annotations

import pytest

from semconv.artifacts import RunDir
from semconv.inference.run_ranker import load_run_ranker
from semconv.refresh.stage import run_refresh
from semconv.serving.generation import Query, rank_queries

from ..dtypes import assert_same_ranking
from .conftest import config, finished_run_at, write_jsonl

MAX_LEN = 3  # the run's histories hold 3..8 items, so most are longer than the prompt


def _lists(run: RunDir) -> dict[int, tuple[list[int], list[float]]]:
    t = run.read_table("precache")
    return {u: (i, s) for u, i, s in zip(t["user_id"].to_pylist(), t["items"].to_pylist(), t["scores"].to_pylist())}


@pytest.fixture(scope="module")
def short_prompt_run(tmp_path_factory, tiny_lm_dir, _ray_session_teardown):
    return finished_run_at(tmp_path_factory.mktemp("one_list") / "run", tiny_lm_dir, max_len=MAX_LEN)


@pytest.mark.slow  # a finished run, a precache and a refresh on Ray: ~1-2 min on 2 cores
def test_a_long_history_gets_one_list_from_precache_refresh_and_online_generation(short_prompt_run, tiny_lm_dir,
                                                                                   tmp_path):
    run = RunDir(short_prompt_run)
    assert run.manifest("precache")["max_len"] == MAX_LEN
    sequences = {r["user_id"]: r["history"] for r in run.read_table("sequences").to_pylist()}
    precached = _lists(run)
    ranker, spec = load_run_ranker(run)  # online generation's ranker, as the Serve app loads it
    assert (spec.max_len, spec.exclude_history, spec.dtype) == (MAX_LEN, True, "float32")

    # users ranked from more than MAX_LEN items, and among them those the scope decides: their
    # list, were only the prompt's items excluded, would hold an older item of their history
    long = [u for u, h in sequences.items() if len(h) - 1 > MAX_LEN]
    scope_matters = []
    for u in long:
        history = sequences[u][:-1]
        (cut, _), = rank_queries(ranker, [Query(tuple(history[-MAX_LEN:]), spec.top_k, spec.num_beams)], True)
        if set(cut.tolist()) & set(history[:-MAX_LEN]):
            scope_matters.append(u)
    assert scope_matters, "no user's list depends on the exclusion scope: the test would prove nothing"
    users = scope_matters[:4] + [u for u in long if u not in scope_matters][:2]

    # the refresh: a new user per checked user, whose whole history is that user's test history
    inter = [{"user_id": f"copy-of-{u}", "item_id": f"i{i}"} for u in users for i in sequences[u][:-1]]
    cfg = config(short_prompt_run, tiny_lm_dir, max_len=MAX_LEN, interactions=write_jsonl(tmp_path / "d.jsonl", inter))
    version = RunDir(run_refresh(cfg)["version"])
    copies = {r["source_user_id"]: r["user_id"] for r in version.read_table("sequences").to_pylist()}
    refreshed = _lists(version)
    version_ranker, version_spec = load_run_ranker(version)  # the version served alone
    assert version_spec.record() == spec.record()

    for u in users:
        history = sequences[u][:-1]
        query = [Query(tuple(history), spec.top_k, spec.num_beams)]
        want_items, want_scores = precached[u]
        assert not set(want_items) & set(history) and len(want_items) == spec.top_k
        for items, scores in (refreshed[copies[f"copy-of-{u}"]],
                              rank_queries(ranker, query, spec.exclude_history)[0],
                              rank_queries(version_ranker, query, version_spec.exclude_history)[0]):
            assert_same_ranking(items, scores, want_items, want_scores, spec.dtype)

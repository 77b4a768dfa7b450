"""Online generation without Ray: the run's ranker (local and pyarrow-URI run dirs), request
checks, batching, history cap and exclusion, and the precached users' lists."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.fs as pafs
import pytest
from .generation_fixtures import BEAMS, MAX_LEN, TOP_K, make_generation_run, user_histories
from .serve_fixtures import N_ITEMS
from .test_handles import FakeResponse
from ..dtypes import assert_same_ranking

from semconv.artifacts import RunDir
from semconv.inference.run_ranker import load_run_ranker, resolve_settings
from semconv.serving.generation import (
    GenerationInputError,
    GenerationLimits,
    Query,
    check_query,
    rank_queries,
    resolve_history,
)
from semconv.serving.state import load_catalog, load_state
from serve_app import service
from serve_app.generation import AnswerSpacing, BatchStats, GenerationClient, set_thread_cpu_priority
from serve_app.generation_schemas import GenerationArgs


@pytest.fixture(scope="module")
def run(tiny_lm_dir, tmp_path_factory) -> RunDir:
    return make_generation_run(tmp_path_factory.mktemp("gen") / "run", tiny_lm_dir)


@pytest.fixture(scope="module")
def loaded(run):
    import torch

    torch.set_num_threads(1)
    return load_run_ranker(run)


@pytest.fixture(scope="module")
def catalog(run):
    return load_catalog(run.uri)[0]


@pytest.fixture(scope="module")
def state(run, tmp_path_factory):
    return load_state(run.uri, cache_dir=tmp_path_factory.mktemp("gen_cache"))


LIMITS = GenerationLimits("m1", num_beams=BEAMS, max_num_beams=16, top_k=TOP_K, max_len=MAX_LEN,
                          exclude_history=True, dtype="float32")


def _dtype_of(ranker) -> str:
    return str(next(ranker.model.parameters()).dtype).removeprefix("torch.")


def test_settings_are_the_precaches(run, loaded):
    ranker, settings = loaded
    assert (settings.num_beams, settings.top_k, settings.exclude_history) == (BEAMS, TOP_K, True)
    assert settings.max_len == MAX_LEN and ranker.max_len == MAX_LEN
    # the dtype the precache recorded (the fixture ranks in float32 on any CPU), not this CPU's pick
    assert settings.dtype == settings.precache_dtype == run.manifest("precache")["dtype"] == "float32"
    assert settings.dtype_reason == "auto: the precache's dtype (float32)" and _dtype_of(ranker) == "float32"
    assert settings.model_version.startswith("model-") and ranker.decoding.prompt_format == "history"
    assert resolve_settings(run, max_len=3).max_len == 3


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_online_generation_decodes_in_the_precaches_dtype_on_either_cpu(run, simulate_cpu, native_bf16):
    """The machine rule (``auto``) would pick bf16 on a CPU with native bf16; online generation
    must answer like the float32 precache instead. Only an explicit setting changes the dtype."""
    from serve_app.generation import load_model

    simulate_cpu(native_bf16)
    auto = resolve_settings(run)
    assert (auto.dtype, auto.precache_dtype, auto.dtype_warning) == ("float32", "float32", None)
    assert resolve_settings(run, bf16=True).dtype == "bfloat16"  # explicitly configured otherwise
    assert bool(resolve_settings(run, bf16=True).dtype_warning) == (not native_bf16)
    assert resolve_settings(run, bf16=False).dtype == "float32"
    assert resolve_settings(run, use_gpu=True).dtype == "float32"  # a GPU too matches the precache
    model = load_model(run.uri, GenerationArgs(), use_gpu=False)  # the Serve deployment's loader
    assert model.limits.dtype == "float32" and _dtype_of(model.ranker) == "float32"


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_without_a_precache_auto_is_the_machines_dtype(run, tmp_path, simulate_cpu, native_bf16):
    bare = RunDir(tmp_path / "bare")
    pafs.copy_files(run.root, bare.root)
    import shutil

    shutil.rmtree(bare.root + "/precache")
    simulate_cpu(native_bf16)
    settings = resolve_settings(bare)
    assert settings.precache_dtype is None
    assert settings.dtype == ("bfloat16" if native_bf16 else "float32")
    assert settings.dtype_reason.endswith("(no precache dtype recorded)")


def test_precached_users_get_their_precached_lists(run, loaded):
    ranker, settings = loaded
    histories = user_histories()
    table = run.read_table("precache").to_pylist()
    queries = [Query(tuple(histories[r["user_id"]]), TOP_K, BEAMS) for r in table]
    for row, (items, scores) in zip(table, rank_queries(ranker, queries, settings.exclude_history)):
        assert_same_ranking(items, scores, row["items"], row["scores"], settings.dtype)


def _batch_vs_alone(ranker, dtype: str) -> None:
    rng = np.random.default_rng(3)
    queries = [Query(tuple(rng.choice(N_ITEMS, size=int(rng.integers(1, 10)), replace=False).tolist()),
                     k=int(rng.integers(1, 9)), num_beams=int(rng.choice([8, BEAMS])))
               for _ in range(10)]
    together = rank_queries(ranker, queries, exclude_history=True)
    for q, (items, scores) in zip(queries, together):
        alone_items, alone_scores = rank_queries(ranker, [q], exclude_history=True)[0]
        assert len(items) == q.k
        assert_same_ranking(items, scores, alone_items, alone_scores, dtype)


def test_a_batch_answers_each_query_as_it_alone_would(loaded):
    ranker, settings = loaded
    _batch_vs_alone(ranker, settings.dtype)


@pytest.fixture(scope="module")
def bf16_run(tiny_lm_dir, tmp_path_factory) -> RunDir:
    """The same run with its precache ranked (and recorded) in bfloat16."""
    return make_generation_run(tmp_path_factory.mktemp("gen_bf16") / "run", tiny_lm_dir, dtype="bfloat16")


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_a_bf16_precache_is_matched_in_bf16_within_bf16_tolerance(bf16_run, simulate_cpu, native_bf16):
    """A precache recorded in bf16 (e.g. on a GPU or a native-bf16 CPU) is answered in bf16 on
    either CPU (slow where bf16 is emulated: the settings say so); its users get their lists
    within bf16's tolerance, and a batch answers as each query alone would."""
    simulate_cpu(native_bf16)
    ranker, settings = load_run_ranker(bf16_run)
    assert settings.dtype == settings.precache_dtype == _dtype_of(ranker) == "bfloat16"
    assert settings.dtype_reason == "auto: the precache's dtype (bfloat16)"
    assert bool(settings.dtype_warning) == (not native_bf16)
    histories = user_histories()
    table = bf16_run.read_table("precache").to_pylist()
    queries = [Query(tuple(histories[r["user_id"]]), TOP_K, BEAMS) for r in table]
    for row, (items, scores) in zip(table, rank_queries(ranker, queries, settings.exclude_history)):
        assert_same_ranking(items, scores, row["items"], row["scores"], "bfloat16")
    _batch_vs_alone(ranker, "bfloat16")


def test_prompt_keeps_the_last_max_len_items_and_exclusion_covers_the_whole_history(loaded):
    ranker, _ = loaded
    recent = [3, 9, 14, 22, 27, 31]  # MAX_LEN items
    older = [0, 1, 2, 5]
    assert len(recent) == MAX_LEN
    [(long_items, long_scores), (short_items, _)] = rank_queries(
        ranker, [Query(tuple(older + recent), 10, 16), Query(tuple(recent), 10, 16)], exclude_history=False)
    assert long_items.tolist() == short_items.tolist()  # same prompt
    excluded, _ = rank_queries(ranker, [Query(tuple(older + recent), 10, 16)], exclude_history=True)[0]
    assert not set(excluded.tolist()) & set(older + recent) and len(excluded) == 10
    allowed = [i for i in long_items.tolist() if i not in older + recent]
    assert excluded.tolist()[: len(allowed)] == allowed  # the rest keep their order


def test_a_long_posted_history_gets_exactly_k_items_while_k_remain(loaded):
    """A history of all but a few items (longer than max_len: the prompt keeps its last items,
    exclusion all of them) still gets exactly k new items, with a beam no wider than k; one that
    leaves fewer than k gets every item left."""
    ranker, _ = loaded
    rng = np.random.default_rng(4)
    queries, keeps = [], []
    for n_left, k, beams in [(5, 5, 5), (6, 5, 5), (7, 5, 6), (8, 8, 8), (9, 5, 5), (12, 10, BEAMS), (3, 5, 5)]:
        keep = set(rng.choice(N_ITEMS, size=n_left, replace=False).tolist())
        history = rng.permutation([i for i in range(N_ITEMS) if i not in keep]).tolist()
        queries.append(Query(tuple(history), k, beams))
        keeps.append(keep)
    for q, keep, (items, scores) in zip(queries, keeps, rank_queries(ranker, queries, exclude_history=True)):
        assert len(items) == len(set(items.tolist())) == min(q.k, len(keep)), (q.k, q.num_beams, keep, items)
        assert set(items.tolist()) <= keep and np.isfinite(scores).all() and (np.diff(scores) <= 0).all()
    assert set(rank_queries(ranker, [queries[-1]], exclude_history=True)[0][0].tolist()) == keeps[-1]


def test_history_ids_and_source_ids_resolve_and_unknown_ones_are_named(catalog):
    assert resolve_history(catalog, [3, 7, 3], None) == (3, 7, 3)
    assert resolve_history(catalog, None, ["B0003", "B0007"]) == (3, 7)
    with pytest.raises(GenerationInputError, match=r"unknown item ids.*40, 99") as err:
        resolve_history(catalog, [3, 40, 99, 40], None)
    assert err.value.loc == ["body", "history"]
    with pytest.raises(GenerationInputError, match=r"unknown source item ids.*'nope'") as err:
        resolve_history(catalog, None, ["B0001", "nope"])
    assert err.value.loc == ["body", "source_history"]
    with pytest.raises(GenerationInputError, match="exactly one"):
        resolve_history(catalog, [1], ["B0001"])
    with pytest.raises(GenerationInputError, match="exactly one"):
        resolve_history(catalog, None, None)


def test_k_and_num_beams_limits():
    assert check_query((1,), None, None, LIMITS) == Query((1,), min(10, BEAMS), BEAMS)
    assert check_query((1,), 16, 16, LIMITS) == Query((1,), 16, 16)
    assert check_query((1,), None, 4, LIMITS).k == 4  # k defaults to at most the beam width
    with pytest.raises(GenerationInputError, match=r"k must be between 1 and the beam width 12, got 13") as err:
        check_query((1,), 13, None, LIMITS)
    assert err.value.loc == ["body", "k"]
    with pytest.raises(GenerationInputError, match=r"num_beams must be between 1 and 16, got 17") as err:
        check_query((1,), 5, 17, LIMITS)
    assert err.value.loc == ["body", "num_beams"]
    with pytest.raises(GenerationInputError, match=r"without semantic codes in this model's item_codes/: 5, 9"):
        check_query((1, 5, 9, 5), None, None, LIMITS, known_items=np.array([1, 2, 3]))


def test_the_ranker_loads_from_a_pyarrow_filesystem_uri(run, loaded):
    """The same run directory on pyarrow's in-memory mock filesystem: model/ is fetched to a local
    cache, item_codes/ and the manifests are read through the filesystem."""
    remote = RunDir("mock:///runs/gen")
    pafs.copy_files(run.root, remote.root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=remote.fs)
    ranker, settings = load_run_ranker(remote)
    assert not remote.is_local and settings.record() == loaded[1].record()  # model/ read from a local copy
    assert settings.model_version == loaded[1].model_version
    q = [Query((1, 2, 3), 5, BEAMS)]
    assert rank_queries(ranker, q, True)[0][0].tolist() == rank_queries(loaded[0], q, True)[0][0].tolist()


class _Handle:
    """A stand-in DeploymentHandle whose ``generate`` records its arguments and waits, raises or
    answers as told."""

    def __init__(self, behave):
        self.generate = self
        self.behave, self.calls = behave, []

    def remote(self, *args):
        self.calls.append(args)
        return FakeResponse(self.behave)


def test_the_ingress_client_maps_a_full_queue_and_timeouts_to_429_and_503(state):
    from ray.serve.exceptions import BackPressureError

    body = b'{"history": [1, 2]}'

    async def slow():
        await asyncio.sleep(5)

    async def full():
        raise BackPressureError(num_queued_requests=64, max_queued_requests=64)

    with pytest.raises(service.Unavailable, match="did not answer within 0.05 s"):
        asyncio.run(GenerationClient(_Handle(slow), GenerationArgs(timeout_s=0.05)).recommend(state, body))
    with pytest.raises(service.Overloaded, match="generation is at capacity"):
        asyncio.run(GenerationClient(_Handle(full), GenerationArgs()).recommend(state, body))

    async def two_at_once():
        client = GenerationClient(_Handle(slow), GenerationArgs(max_inflight=1, timeout_s=0.5))
        first = asyncio.create_task(client.recommend(state, body))
        while not client.handle.calls:  # the first is waiting on the model
            await asyncio.sleep(0.001)
        with pytest.raises(service.Overloaded, match="1 generation requests in flight"):
            await client.recommend(state, body)
        with pytest.raises(service.Unavailable):
            await first
        assert client._inflight == 0

    asyncio.run(two_at_once())


def test_the_ingress_client_resolves_against_one_version_and_names_it_to_the_model(state):
    """The history is resolved against the request's state, the model is asked for that state's
    version, and the answer is named from the same catalogue; the model's errors come back as
    the client's 422 / 503."""
    async def answer():
        return {"status": 200, "body": {"k": 2, "version": "model-x", "num_beams": 4, "history_used": 2,
                                        "items": [5, 9], "scores": [-1.0, -2.0]}}

    handle = _Handle(answer)
    out = asyncio.run(GenerationClient(handle, GenerationArgs()).recommend(state, b'{"source_history": ["B0003", "B0017"], "k": 2}'))
    assert handle.calls == [(state.version_id, (3, 17), 2, None)]
    assert out["titles"] == ["Item 5", "Item 9"] and out["source_ids"] == ["B0005", "B0009"]

    async def not_held():
        return {"status": 503, "detail": f"version {state.version_id} is not loaded on this model replica yet"}

    async def bad_k():
        return {"status": 422, "detail": [{"loc": ["body", "k"], "msg": "k must be between 1 and 4", "type": "value_error"}]}

    with pytest.raises(service.Unavailable, match="is not loaded on this model replica yet"):
        asyncio.run(GenerationClient(_Handle(not_held), GenerationArgs()).recommend(state, b'{"history": [1]}'))
    with pytest.raises(service.InvalidInput, match="k must be between 1 and 4") as err:
        asyncio.run(GenerationClient(_Handle(bad_k), GenerationArgs()).recommend(state, b'{"history": [1]}'))
    assert err.value.loc == ["body", "k"]


@pytest.mark.parametrize("body, loc, needle", [
    (b"not json", ["body"], "Invalid JSON"),
    (b'{"history": [1], "user": 3}', ["body", "user"], "Extra inputs"),
    (b'{"history": []}', ["body", "history"], "at least 1"),
    (b'{"source_history": ["B0001", "nope"]}', ["body", "source_history"], "unknown source item ids"),
    (b'{"history": [3, 40]}', ["body", "history"], "unknown item ids"),
])
def test_a_generation_body_is_parsed_and_resolved_into_a_422_naming_the_field(catalog, body, loc, needle):
    from serve_app.generation import parse_request

    with pytest.raises(service.InvalidInput, match=needle) as err:
        parse_request(catalog, body)
    assert err.value.loc[: len(loc)] == loc


class _Poisoned:
    """The real ranker, except that a batch holding a history with item 13 raises."""

    def __init__(self, ranker):
        self.ranker = ranker

    def rank(self, histories, *args, **kw):
        if any(13 in h for h in histories):
            raise IndexError("index -1 is out of bounds")
        return self.ranker.rank(histories, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.ranker, name)


def test_a_failing_query_answers_503_alone_or_in_a_batch_and_its_batch_mates_are_answered(loaded):
    from serve_app.generation import LoadedModel, rank_isolated

    model = LoadedModel(_Poisoned(loaded[0]), LIMITS, np.arange(N_ITEMS), {})
    good = [Query((1, 2), 3, BEAMS), Query((4,), 3, BEAMS)]
    bad = Query((13, 2), 3, BEAMS)
    together = rank_isolated(model, [good[0], bad, good[1]])
    alone = rank_isolated(model, [bad])
    assert together[1] == alone[0] == {"status": 503, "detail": "generation failed for this history (IndexError)"}
    for q, a in zip(good, (together[0], together[2])):
        (items, _), = rank_queries(loaded[0], [q], True)
        assert a["items"] == items.tolist() and len(a["items"]) == 3


def test_batch_stats_tell_what_the_batches_between_two_snapshots_held():
    stats = BatchStats()
    stats.add(1, 0.5)
    before = stats.snapshot()
    for size, seconds in ((16, 2.0), (16, 2.0), (3, 1.0)):
        stats.add(size, seconds)
    after = stats.snapshot()
    assert after["batches"] == 4 and after["requests"] == 36 and after["sizes"] == {"1": 1, "3": 1, "16": 2}
    d = BatchStats.between(before, after)
    assert d["batches"] == 3 and d["mean_batch"] == pytest.approx(35 / 3)
    assert d["sizes"] == {"3": 1, "16": 2} and d["busy_s"] == pytest.approx(5.0)
    assert BatchStats.between(after, after)["mean_batch"] is None


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_cpu_priority_holds_for_the_threads_the_model_replica_starts_after_setting_it():
    def in_fresh_thread(priority: str) -> tuple[tuple[int, int], tuple[int, int]]:
        def setter():
            set_thread_cpu_priority(priority)
            with ThreadPoolExecutor(1) as later:  # as asyncio.to_thread's executor, started afterwards
                child = later.submit(lambda: (os.sched_getscheduler(0), os.nice(0))).result()
            return (os.sched_getscheduler(0), os.nice(0)), child

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(setter).result()

    mine = (os.sched_getscheduler(0), os.nice(0))
    own, child = in_fresh_thread("idle")
    assert own[0] == child[0] == os.SCHED_IDLE
    own, child = in_fresh_thread("low")
    assert own == child == (os.SCHED_OTHER, 19)
    assert in_fresh_thread("normal") == (mine, mine)
    assert (os.sched_getscheduler(0), os.nice(0)) == mine  # per thread: the caller's own is untouched


def test_answers_of_one_batch_leave_spaced_and_a_lone_answer_at_once():
    async def release(spacing: AnswerSpacing, n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one() -> float:
            await spacing.wait()
            return loop.time() - t0

        return sorted(await asyncio.gather(*(one() for _ in range(n))))

    async def go():
        spacing = AnswerSpacing(0.2)
        burst = await release(spacing, 4)  # a batch's four answers, set at the same moment
        await asyncio.sleep(0.5)  # idle longer than the spacing
        lone = await release(spacing, 1)
        spacing.spacing_s = 0  # user_config answer_spacing_s: 0 (from the next slot on)
        await asyncio.sleep(0.3)
        together = await release(spacing, 4)
        return burst, lone, together

    burst, lone, together = asyncio.run(go())
    # the i-th answer never leaves before its slot, 200 ms after the one before (a loaded machine
    # can only wake a sleeper late, so this holds however busy the cores are)
    assert all(t >= i * 0.2 - 1e-3 for i, t in enumerate(burst))
    assert burst[0] < 0.2  # the first leaves at once, before the second's slot
    assert lone[0] < 0.1  # no wait after an idle spell
    assert together[-1] < 0.1


def test_bad_batching_and_priority_settings_are_refused_naming_the_field():
    from pydantic import ValidationError

    from serve_app.generation import GeneratorUserConfig

    with pytest.raises(ValidationError, match="answer_spacing_s"):
        GeneratorUserConfig.model_validate({"answer_spacing_s": -0.01})
    with pytest.raises(ValidationError, match="batch_wait_timeout_s"):
        GeneratorUserConfig.model_validate({"batch_wait_timeout_s": 11})
    with pytest.raises(ValidationError, match="cpu_priority"):
        GenerationArgs.model_validate({"cpu_priority": "realtime"})
    assert GeneratorUserConfig().answer_spacing_s == 0.02 and GenerationArgs().cpu_priority == "idle"

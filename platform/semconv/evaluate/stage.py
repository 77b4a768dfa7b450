"""The ``evaluate`` stage: ``precache/`` + ``splits/`` -> ``report/`` (ours vs baselines).

Protocol (the paper's, :mod:`semconv.protocol`): leave-last-out, the test row's target is each
user's last item, every system ranks all items, HR@K and NDCG@K for K in ``evaluate.ks``; with
``precache.exclude_history`` every system masks the user's whole history before the target
(``sequences/``). Ours is read from ``precache/`` (ranked from that history); a test user the
precache lacks is a miss and is counted. The baselines are computed here on the same splits and
scored by the same code, so the table compares like with like. Valid-split metrics are added for
every baseline (the precache ranks test users only, so ours has none). With ``item_codes/``, each
system's test lists are also scored level by level (:func:`semconv.metrics.prefix_hit_rates`):
where a generative ranker's lists lose the target.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from semconv.artifacts import RunDir
from semconv.codes import read_item_codes
from semconv.console import progress
from semconv.evaluate.baselines import BaselineUnavailable, rank_cf, rank_popularity, rank_sasrec
from semconv.evaluate.protocol import evaluate_rankings, rankings_from_precache, read_split
from semconv.evaluate.report import write_report
from semconv.lineage import stage_run
from semconv.metrics import prefix_hit_rates

if TYPE_CHECKING:
    from semconv.config import PipelineConfig

REPORT = "report"
PRECACHE = "precache"
ITEM_CODES = "item_codes"

log = logging.getLogger(__name__)


def read_artifact_json(run: RunDir, name: str, filename: str) -> Any | None:
    """A JSON file inside a *complete* artifact, or None when either is missing."""
    if not run.is_complete(name):
        return None
    path = run.file(name, filename)
    try:
        with run.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None


def _num_items(run: RunDir) -> int:
    ids = run.read_table("items", columns=["item_id"]).column("item_id").to_numpy()
    if len(ids) and (ids.min() != 0 or ids.max() != len(ids) - 1):
        raise ValueError(f"items/: item_id must be dense 0..{len(ids) - 1}, got {ids.min()}..{ids.max()}")
    return len(ids)


def _codes_by_item(run: RunDir, num_items: int) -> np.ndarray | None:
    """``(items, L)`` codes with row = item id, for the code-prefix hit rates; None where the run
    has no complete ``item_codes/`` (a baselines-only run) or it leaves an item without codes."""
    if not run.is_complete(ITEM_CODES):
        return None
    ids, codes = read_item_codes(run)
    inside = (ids >= 0) & (ids < num_items)
    covered = len(np.unique(ids[inside]))
    if covered != num_items:
        log.warning("item_codes/ covers %d of %d items: no code-prefix hit rates", covered, num_items)
        return None
    by_item = np.empty((num_items, codes.shape[1]), dtype=np.int64)
    by_item[ids[inside]] = codes[inside]
    return by_item


def evaluate_systems(cfg: PipelineConfig, run: RunDir, include_semconv: bool = True) -> dict[str, Any]:
    """Metrics of ours (from the precache) and of every configured baseline, per split.

    Returns the ``report/metrics.json`` payload. ``include_semconv=False`` scores the baselines
    alone (a run directory with only ``items/`` and ``splits/``).
    """
    ev = cfg.evaluate
    ks = sorted(set(ev.ks))
    num_items = _num_items(run)
    bounds = run.read_table("splits")
    sequences = run.read_table("sequences", columns=["user_id", "history"])
    max_len = run.manifest("splits").get("max_len", cfg.prepare.max_len)
    rows = {s: read_split(sequences, bounds, s, max_len) for s in ("valid", "test")}
    if len(rows["test"]) == 0:
        raise ValueError(f"{run.path('splits')}: no test rows to evaluate")
    precache = run.manifest(PRECACHE) if include_semconv else {}
    exclude = bool(precache.get("exclude_history", cfg.precache.exclude_history))
    sampled = bool(precache.get("sampled"))
    train_rows = rows  # baselines learn from every user, whatever sample is scored
    if sampled:  # a demo precache of a user sample: score every system on the same users
        cached = run.read_table(PRECACHE, columns=["user_id"]).column("user_id").to_numpy()
        rows = {s: r.restrict(cached) for s, r in rows.items()}
    out: dict[str, Any] = {
        split: {"users": len(rows[split]), "systems": {}, "missing_users": {}}
        for split in ("test", "valid")
    }
    seconds: dict[str, float] = {}
    codes = _codes_by_item(run, num_items)
    prefix_hits: dict[str, list[float]] = {}

    def score(name: str, split: str, ranking) -> None:
        out[split]["systems"][name] = evaluate_rankings(ranking, rows[split], ks)
        if split == "test" and codes is not None:
            prefix_hits[name] = prefix_hit_rates(ranking, rows[split].targets, codes, max(ks))

    if include_semconv:
        table = run.read_table(PRECACHE, columns=["user_id", "items"])
        rankings, out["test"]["missing_users"]["semconv"] = rankings_from_precache(
            table, rows["test"].user_ids, max(ks))
        score("semconv", "test", rankings)
    baselines: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    bar = progress("evaluate", len(ev.baselines), "baseline")
    for name in ev.baselines:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            if name == "popularity":
                ranked, info = rank_popularity(rows, sequences, bounds, num_items, max(ks), exclude)
            elif name == "scratch":
                from semconv.evaluate.scratch import rank_scratch

                ranked, info = rank_scratch(cfg, run, rows, max(ks), exclude)
            elif name == "sasrec":
                max_len = ev.sasrec.max_len or cfg.prepare.max_len
                ranked, info = rank_sasrec(rows, num_items, max(ks), exclude, ev.sasrec, max_len, cfg.seed,
                                           train_rows)
            else:
                ranked, info = rank_cf(run, rows, max(ks), exclude)
        except BaselineUnavailable as err:
            log.warning("baseline %s skipped: %s", name, err)
            skipped[name] = str(err)
            continue
        finally:
            bar.update()
        seconds[name] = round(time.perf_counter() - start, 2)
        log.info("baseline %s ranked in %.1f s", name, seconds[name])
        baselines[name] = info
        for split, ranking in ranked.items():
            if len(rows[split]):  # a split can be empty (e.g. no valid rows in a tiny sample)
                score(name, split, ranking)
    bar.close()
    test = out["test"]
    payload: dict[str, Any] = {
        "config_hash": cfg.config_hash(),
        "split": "test",
        "users": test["users"],
        "items": num_items,
        "ks": ks,
        "protocol": {"split": "leave-last-out", "ranking": "all items",
                     "exclude_history": exclude, "missing_users": "count as misses",
                     "users": "a seeded sample (precache.max_users)" if sampled else "every test user"},
        "systems": test["systems"],
        "missing_users": test["missing_users"],
        "baselines": baselines,
        "skipped": skipped,
        "seconds": seconds,
    }
    if prefix_hits:
        payload["code_prefix_hits"] = {"k": max(ks), "systems": prefix_hits}
    if ev.valid and out["valid"]["systems"]:
        payload["valid"] = out["valid"]
    if include_semconv:
        payload["precache"] = {k: v for k, v in precache.items() if not isinstance(v, (dict, list))}
    return payload


def _upstream(run: RunDir) -> dict[str, Any]:
    """Optional inputs of the report: codebook quality, training curves."""
    found: dict[str, Any] = {}
    codebook = read_artifact_json(run, "codebook", "metrics.json")
    if isinstance(codebook, dict):
        found["codebook"] = codebook
    train = read_artifact_json(run, "model", "train_metrics.json")
    if isinstance(train, dict):
        found["training"] = train
    return found


def run_evaluate(cfg: PipelineConfig) -> dict[str, str]:
    """Score ``precache/`` and the baselines on the test split and write ``report/``."""
    run = stage_run(cfg, "evaluate")
    if run.is_complete(REPORT):
        return {REPORT: run.path(REPORT)}
    run.require("items", "sequences", "splits", PRECACHE)
    payload = evaluate_systems(cfg, run)
    write_report(run, payload, _upstream(run), plots=cfg.evaluate.plots)
    print(f"evaluate: {len(payload['systems'])} systems scored on {payload['users']:,} test users ("
          + ", ".join([f"{n} {t:.0f}s" for n, t in payload["seconds"].items()]
                      + [f"{n} skipped" for n in payload["skipped"]]) + ")", flush=True)
    return {REPORT: run.path(REPORT)}

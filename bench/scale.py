"""Benchmark: the pipeline at scale on synthetic data, every stage in a fresh process.

Data (``bench/synthetic.py``, cached per size under ``--work``): N interactions in the generic
format, Zipf-like item popularity over max(1000, N/100) items, Amazon-like history lengths
(median 6, long tail), titles of a few words, timestamps increasing per user. Each stage runs as
``jobs/pipeline.py --config configs/demo.yaml --stages <stage>`` (its own local Ray, or the
cluster of ``--nodes``) with a tiny random Llama and its ~400-token tokenizer
(``bench/common.py``) as ``embed.text_model`` and ``finetune.base_model``, and bounded work:
5-core filter, LightGCN 1 epoch of at most 100 steps, codebook 2 epochs, 20 fine-tune steps, precache of a seeded
100k-user sample (evaluate scores every system on it), SASRec capped at 60 s, no scratch
baseline (its ranking would decode the sample a second time in one process) (``--quick``: less,
see ``OVERRIDES``); then a refresh of 1,000 precached
users' and 100 new users' interactions (its rate is the dataset's interactions per second: a
refresh should cost the same at every size). A stage that fails or passes
``--stage-timeout`` is recorded with the tail of its log, and the stages that need its artifacts
are marked skipped; the benchmark goes on with the next size.

Per stage: seconds (the stage's own, from ``<run_dir>/pipeline.json``: Ray start included,
interpreter start not; ``wall_s`` is the whole process), interactions per second, and peaks
sampled every 0.2 s from ``/proc`` (``bench/common.py``'s ``Memory``) of the stage's driver and
of the largest Ray worker. ``peak_rss_gb`` holds **private** memory (``RssAnon``): RSS also counts
the object-store pages a process maps (shared, zero-copy blocks, counted again in every process
that reads them; a driver that streams output blocks maps them all), so it overstates what a
process holds; RSS is kept beside it as ``peak_vmrss_gb``. ``--nodes 2`` runs on a
``ray.cluster_utils.Cluster`` of two 1-CPU nodes and counts each stage's finished Ray tasks per
node (``ray.util.state.list_tasks``).

    python bench/scale.py --quick --json /tmp/scale-quick.json            # 200k, a few minutes
    python bench/scale.py --interactions 1000000 10000000 30000000 --json scale.json
    python bench/scale.py --prepare-only 100000000 --prepare-variants sharded --json prep.json
    python bench/scale.py --prepare-only 1000000 --prepare-variants memory,sharded   # old prepare_scale.py
    python bench/scale.py --tokenize-items 100000 1000000 --json tok.json  # tokenize alone, random embeddings
    python bench/scale.py --quick --nodes 2 --json /tmp/scale-2nodes.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "platform"))

from common import Memory, machine, save_tiny_llama  # noqa: E402
from synthetic import make_data  # noqa: E402

STAGES = ("prepare", "embed", "tokenize", "tasks", "finetune", "precache", "evaluate", "refresh")
DELTA_USERS, DELTA_NEW_USERS = 1000, 100  # the refresh's delta: precached users' new items, new users
OVERRIDES = {  # bounded work per stage: (full sizes, --quick)
    "embed.cf.epochs": (1, 1),
    "embed.cf.max_steps_per_epoch": (100, 50),  # an epoch's cost linear in the interactions
    "tokenize.epochs": (2, 1),
    "finetune.max_steps": (20, 10),
    "finetune.max_minutes": (600, 600),  # the step count ends the fine-tune, not the clock
    "finetune.eval_every": (10, 5),
    "finetune.checkpoint_every": (10, 5),
    "precache.max_users": (100_000, 1000),
    "evaluate.sasrec.max_seconds": (60, 10),
    # the scratch baseline ranks every sampled user a second time, in one process: a second
    # precache, not a scale measurement of its own (it runs on the demo)
    "evaluate.baselines": ("[popularity,sasrec,cf]", "[popularity,sasrec,cf]"),
}
TWO_NODES = ["embed.cf.num_workers=2", "tokenize.num_workers=2", "finetune.num_workers=2",
             "finetune.cpus_per_worker=1", "precache.num_actors=1", "precache.threads_per_actor=1"]
TEXT_DIM = 64  # the tiny Llama's hidden size: its input embeddings are the text embeddings


# ---- one stage in a fresh process ------------------------------------------------------------------
def _kill_tree(pid: int) -> None:
    """SIGTERM, then SIGKILL, the stage process and every process it started (its local Ray)."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _tail(log: Path, chars: int = 1500) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-chars:]


def _result_line(log: Path, stage: str) -> str | None:
    """The stage's one-line result (``tokenize: 2000 items, ...``), when it printed one."""
    lines = [ln for ln in _tail(log, 200_000).splitlines() if ln.startswith(f"{stage}: ")]
    return lines[-1][:300] if lines else None


def run_stage(stage: str, run_dir: Path, overrides: list[str], n: int, timeout: float,
              extra_roots: list[int], log: Path, max_memory_gb: float | None = None) -> dict:
    """Run one stage as ``jobs/pipeline.py --stages <stage>`` (``refresh``: ``jobs/refresh.py``);
    its seconds, rate and memory. The stage is stopped after ``timeout`` s, or when its processes'
    private memory passes ``max_memory_gb`` (the machine is shared: better a recorded failure than
    the OOM killer)."""
    job = ["refresh.py"] if stage == "refresh" else ["pipeline.py", "--stages", stage]
    cmd = [sys.executable, str(REPO / "jobs" / job[0]), *job[1:], "--config", str(REPO / "configs" / "demo.yaml"),
           f"run_dir={run_dir}", *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        with Memory(driver=proc.pid, roots=[proc.pid, *extra_roots]) as mem:
            while (rc := proc.poll()) is None:
                if time.perf_counter() - t0 > timeout:
                    rc = "timeout"
                elif max_memory_gb and mem.tree_now > max_memory_gb * 2**30:
                    rc = "memory"
                else:
                    time.sleep(0.5)
                    continue
                _kill_tree(proc.pid)
                proc.wait()
                break
    wall = time.perf_counter() - t0
    record = {}
    if (run_dir / "pipeline.json").exists():
        record = json.loads((run_dir / "pipeline.json").read_text()).get("stages", {}).get(stage, {})
    seconds = record.get("seconds") if rc == 0 and record else wall
    peak = mem.gib()
    out = {"seconds": round(seconds, 1), "wall_s": round(wall, 1), "rows_per_s": round(n / max(seconds, 1e-9)),
           "peak_rss_gb": {"driver": peak["driver_anon"], "worker": peak["worker_anon"]},
           "peak_vmrss_gb": {"driver": peak["driver_rss"], "worker": peak["worker_rss"]},
           "workers_private_sum_gb": peak["workers_anon_sum"], "tree_private_gb": peak["tree_anon"],
           "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "log": str(log)}
    if rc != 0:
        why = {"timeout": f"stopped after {timeout:.0f} s (--stage-timeout)",
               "memory": f"stopped at {max_memory_gb} GB of private memory (--max-memory-gb)"}
        why = why.get(rc, f"exit code {rc}")
        out["failed"] = {"why": why, "error_tail": _tail(log)}
        out["rows_per_s"] = None
    elif record.get("skipped"):
        out["skipped_current"] = True
    if (line := _result_line(log, stage)) is not None:
        out["result"] = line
    return out


def _needs(stage: str, failed: set[str]) -> str | None:
    """The failed stage whose artifacts ``stage`` reads (directly or not), or None."""
    from semconv.stages import producer, stage as stage_of

    reads = ("precache",) if stage == "refresh" else stage_of(stage).reads
    for artifact in reads:
        if producer(artifact).name in failed:
            return producer(artifact).name
    return None


# ---- the 2-node cluster ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    """A ``ray.cluster_utils.Cluster`` of two 1-CPU nodes in this process; stages join it."""

    def __enter__(self) -> TwoNodes:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_port": _free_port()})
        self.cluster.add_node(num_cpus=1)
        ray.init(address=self.cluster.address, log_to_driver=False)
        self.nodes = {n["NodeID"]: f"node{i}" for i, n in enumerate(sorted(ray.nodes(), key=lambda n: n["NodeID"]))}
        return self

    def finished_tasks(self) -> dict[str, int]:
        """Finished Ray tasks (actor methods included) per node so far (the state API's 10,000 most
        recent: a stage's count is the difference of two calls)."""
        from ray.util.state import list_tasks

        counts = dict.fromkeys(self.nodes.values(), 0)
        for t in list_tasks(filters=[("state", "=", "FINISHED")], limit=10_000, detail=True,
                            raise_on_missing_output=False):
            name = self.nodes.get(t.node_id)
            if name is not None:
                counts[name] += 1
        return counts

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


# ---- modes -----------------------------------------------------------------------------------------
def tiny_model(work: Path) -> Path:
    d = work / "tiny-llama"
    if not (d / "config.json").exists():
        save_tiny_llama(d)
    return d


def _supply_embeddings(run_dir: Path, dim: int = 32) -> str:
    """Random behaviour embeddings for exactly the items ``prepare`` kept (``embed.item_embeddings``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semconv.artifacts import RunDir

    ids = RunDir(run_dir).read_table("items", columns=["source_id"]).column("source_id")
    emb = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    path = run_dir.parent / f"{run_dir.name}-item-emb.parquet"
    pq.write_table(pa.table({"item_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(emb.ravel()), dim)}), path)
    return str(path)


def write_delta(run_dir: Path) -> str:
    """New interactions for the refresh: 2 random items each (a repeat is dropped, as prepare
    drops it) for ``DELTA_USERS`` precached users and ``DELTA_NEW_USERS`` users new to the run
    (Parquet, the dataset's own ids)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from semconv.artifacts import RunDir

    run = RunDir(run_dir)
    rng = np.random.default_rng(1)
    cached = run.read_table("precache", columns=["user_id"]).column("user_id").to_numpy()
    pick = pa.array(np.sort(rng.choice(cached, min(DELTA_USERS, len(cached)), replace=False)), pa.int64())
    users = []
    for path in run.parquet_files("sequences"):  # one file at a time: the bench holds no table either
        t = pq.read_table(path, columns=["user_id", "source_user_id"])
        users += t.filter(pc.is_in(t.column("user_id"), value_set=pick)).column("source_user_id").to_pylist()
    users += [f"new-user-{i}" for i in range(DELTA_NEW_USERS)]
    items = run.read_table("items", columns=["source_id"]).column("source_id")
    rows = len(users) * 2
    path = run_dir.parent / f"{run_dir.name}-delta.parquet"
    pq.write_table(pa.table({
        "user_id": np.repeat(users, 2).tolist(),
        "item_id": items.take(pa.array(rng.integers(0, len(items), rows))),
        "timestamp": pa.array(np.full(rows, 4_000_000_000, np.int64) + np.arange(rows)),
    }), path)
    return str(path)


def pipeline_run(n: int, args, work: Path, cluster: TwoNodes | None) -> dict:
    """Every stage of ``args.stages`` at ``n`` interactions."""
    data = make_data(n, work / "data")
    tiny = tiny_model(work)
    nodes = 2 if cluster else 1
    run_dir = work / f"run-n{n}-nodes{nodes}"
    if not args.reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    pick = 1 if args.quick else 0
    overrides = ["prepare.format=generic", f"prepare.interactions={data['interactions_file']}",
                 f"prepare.items={data['items_file']}", "prepare.k_core=5", f"embed.text_model={tiny}",
                 f"finetune.base_model={tiny}", "finetune.num_layers=null",
                 *(f"{k}={v[pick]}" for k, v in OVERRIDES.items()), *args.set]
    if cluster:
        overrides += [f"ray.address={cluster.cluster.address}", *TWO_NODES]
    run = {"interactions": n, "nodes": nodes, "mode": "pipeline", "data": data, "run_dir": str(run_dir),
           "embeddings": args.embeddings, "overrides": overrides, "stages": {}}
    failed: set[str] = set()
    for stage in args.stages:
        if (need := _needs(stage, failed)) is not None:
            run["stages"][stage] = {"seconds": None, "peak_rss_gb": {"driver": None, "worker": None},
                                    "skipped": f"needs the artifacts of {need}, which failed"}
            failed.add(stage)
            print(f"  n={n:,} {stage}: skipped (needs {need})", flush=True)
            continue
        if stage == "embed" and args.embeddings == "supplied":
            overrides.append(f"embed.item_embeddings={_supply_embeddings(run_dir)}")
        if stage == "refresh":
            overrides.append(f"refresh.interactions={write_delta(run_dir)}")
        before = cluster.finished_tasks() if cluster else None
        rec = run_stage(stage, run_dir, overrides, n, args.stage_timeout, [os.getpid()] if cluster else [],
                        work / "logs" / f"n{n}-nodes{nodes}-{stage}.log", args.max_memory_gb)
        if cluster:
            after = cluster.finished_tasks()
            rec["finished_tasks_per_node"] = {k: after[k] - before.get(k, 0) for k in after}
        run["stages"][stage] = rec
        if "failed" in rec:
            failed.add(stage)
        _print_progress(n, stage, rec)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return run


def prepare_run(n: int, variant: str, args, work: Path) -> dict:
    """``prepare`` alone; ``variant``: memory (``prepare.ray_data=off``), sharded (``on``) or auto."""
    data = make_data(n, work / "data")
    run_dir = work / f"prepare-n{n}-{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    flag = {"memory": "off", "sharded": "on", "auto": "auto"}[variant]
    overrides = ["prepare.format=generic", f"prepare.interactions={data['interactions_file']}",
                 f"prepare.items={data['items_file']}", "prepare.k_core=5", f"prepare.ray_data={flag}", *args.set]
    rec = run_stage("prepare", run_dir, overrides, n, args.stage_timeout, [],
                    work / "logs" / f"prepare-n{n}-{variant}.log", args.max_memory_gb)
    _print_progress(n, f"prepare ({variant})", rec)
    run = {"interactions": n, "nodes": 1, "mode": "prepare", "variant": variant, "data": data,
           "overrides": overrides, "stages": {"prepare": rec}}
    if "failed" not in rec:
        from semconv.artifacts import RunDir

        run["kept"] = RunDir(run_dir).manifest("sequences").get("stats")
    shutil.rmtree(run_dir, ignore_errors=True)
    return run


def tokenize_run(items: int, args, work: Path) -> dict:
    """``tokenize`` alone on ``items`` random behaviour (d=32, a 4,096-cluster mixture) and text
    (d=64) embeddings: the catalogue-size path (k-means sample, batched assignment and collision
    resolution, chunked metrics)."""
    import numpy as np
    import pyarrow as pa

    from semconv.artifacts import RunDir

    run_dir = work / f"tokenize-{items}"
    shutil.rmtree(run_dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    rd = RunDir(run_dir)
    for name, dim in (("item_emb", 32), ("item_text_emb", TEXT_DIM)):
        centres = rng.normal(size=(4096, dim)).astype(np.float32) * 2
        emb = centres[rng.integers(0, 4096, items)] + rng.normal(size=(items, dim)).astype(np.float32)
        rd.write_table(name, pa.table({"item_id": pa.array(np.arange(items), pa.int64()),
                                       "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim)}))
        del emb
    epochs = OVERRIDES["tokenize.epochs"][1 if args.quick else 0]
    overrides = [f"tokenize.epochs={epochs}", *args.set]
    rec = run_stage("tokenize", run_dir, overrides, items, args.stage_timeout, [],
                    work / "logs" / f"tokenize-{items}.log", args.max_memory_gb)
    rec["items_per_s"] = rec.pop("rows_per_s")
    _print_progress(items, "tokenize", rec)
    run = {"interactions": 0, "items": items, "nodes": 1, "mode": "tokenize", "overrides": overrides,
           "stages": {"tokenize": rec}}
    if "failed" not in rec:
        metrics = json.loads((run_dir / "codebook" / "metrics.json").read_text())
        run["codebook"] = {k: metrics[k] for k in ("collision_rate", "reassigned_items", "fallback_items",
                                                   "duplicates_after_resolution") if k in metrics}
    shutil.rmtree(run_dir, ignore_errors=True)
    return run


# ---- report ----------------------------------------------------------------------------------------
def add_scaling(runs: list[dict]) -> None:
    """Per stage, seconds per row against the smallest run of the same mode and node count
    (``per_row_vs_smallest``: 1.0 = linear, 2.0 = each row costs twice as much as there)."""
    def size(r):
        return r["interactions"] or r.get("items", 0)

    for r in runs:
        base = min((b for b in runs if (b["mode"], b["nodes"], b.get("variant")) == (r["mode"], r["nodes"],
                                                                                     r.get("variant"))), key=size)
        for stage, s in r["stages"].items():
            s0 = base["stages"].get(stage, {})
            if stage == "embed" and r.get("embeddings", "cf") != base.get("embeddings", "cf"):
                continue  # supplied vectors against LightGCN training: not the same work
            if base is not r and s.get("seconds") and s0.get("seconds") and "failed" not in s and "failed" not in s0:
                s["per_row_vs_smallest"] = round((s["seconds"] / s0["seconds"]) / (size(r) / size(base)), 2)


def _print_progress(n: int, stage: str, rec: dict) -> None:
    state = f"FAILED ({rec['failed']['why']})" if "failed" in rec else f"{rec['seconds']} s"
    print(f"  n={n:,} {stage}: {state}; private peak driver {rec['peak_rss_gb']['driver']} GB, "
          f"worker {rec['peak_rss_gb']['worker']} GB; load {rec['load_before']}->{rec['load_after']}", flush=True)


def print_table(runs: list[dict]) -> None:
    print("\nPeaks in GB, private (RssAnon) / RSS (object-store pages mapped included); rate = interactions "
          "(items for tokenize-only runs) per second of the stage.\n")
    print("| size | nodes | mode | stage | seconds | rate /s | driver private / RSS | largest worker private / RSS "
          "| workers' private, summed | load avg before/after | note |")
    print("| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in runs:
        size = r["interactions"] or r.get("items")
        mode = r["mode"] + (f" ({r['variant']})" if "variant" in r else "")
        for stage, s in r["stages"].items():
            if "skipped" in s:
                print(f"| {size:,} | {r['nodes']} | {mode} | {stage} | | | | | | | skipped: {s['skipped']} |")
                continue
            note = s["failed"]["why"] if "failed" in s else ""
            if "per_row_vs_smallest" in s:
                note += f" {s['per_row_vs_smallest']}x the smallest size's time per row"
            if "finished_tasks_per_node" in s:
                note += " tasks per node " + json.dumps(s["finished_tasks_per_node"])
            rate = s.get("rows_per_s", s.get("items_per_s"))
            rate = "" if rate is None else f"{rate:,}"
            p, v = s["peak_rss_gb"], s["peak_vmrss_gb"]
            print(f"| {size:,} | {r['nodes']} | {mode} | {stage} | {s['seconds']} | {rate} | {p['driver']} / "
                  f"{v['driver']} | {p['worker']} / {v['worker']} | {s['workers_private_sum_gb']} | "
                  f"{s['load_before']} / {s['load_after']} | {note.strip()} |")
    for r in runs:
        for stage, s in r["stages"].items():
            if "failed" in s:
                print(f"\n{stage} at {r['interactions'] or r.get('items'):,} ({s['failed']['why']}), log {s['log']}, "
                      f"last lines:\n{s['failed']['error_tail'][-800:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small size (200k interactions), a few minutes")
    ap.add_argument("--interactions", type=int, nargs="+", default=[1_000_000, 10_000_000, 30_000_000],
                    help="sizes of the whole-pipeline runs")
    ap.add_argument("--prepare-only", type=int, nargs="+", default=[], metavar="N",
                    help="run prepare alone at these sizes (instead of the pipeline runs)")
    ap.add_argument("--prepare-variants", default="auto", help="comma-separated: memory, sharded, auto")
    ap.add_argument("--tokenize-items", type=int, nargs="+", default=[], metavar="N",
                    help="run tokenize alone on N random items (instead of the pipeline runs)")
    ap.add_argument("--nodes", type=int, choices=[1, 2], default=1, help="2: a 2-node local Ray cluster")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in pipeline order")
    ap.add_argument("--embeddings", choices=["cf", "supplied"], default="cf",
                    help="supplied: random item embeddings as embed.item_embeddings instead of LightGCN")
    ap.add_argument("--stage-timeout", type=float, default=3600.0, help="seconds before a stage is stopped")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="stop a stage whose processes hold more private memory (default: 70%% of the machine's)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "semconv-scale",
                    help="data (cached per size), run directories and logs")
    ap.add_argument("--reuse", action="store_true", help="keep the run directory (current stages skip) and add "
                    "this command's stages to the --json file's runs: a run split over several commands")
    ap.add_argument("--keep", action="store_true", help="keep run directories afterwards")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.stages = [s for s in STAGES if s in args.stages.split(",")]
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    info = machine()
    if args.max_memory_gb is None:
        args.max_memory_gb = round(0.7 * info["memory_gib"], 1)
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; load {info['load_average']}; "
          f"{info['date']}", flush=True)
    runs = []
    if args.prepare_only or args.tokenize_items:
        for n in args.prepare_only:
            for variant in args.prepare_variants.split(","):
                runs.append(prepare_run(n, variant.strip(), args, args.work))
        for items in args.tokenize_items:
            runs.append(tokenize_run(items, args, args.work))
    else:
        sizes = [200_000] if args.quick else args.interactions
        if args.nodes == 2:
            with TwoNodes() as cluster:
                runs = [pipeline_run(n, args, args.work, cluster) for n in sizes]
        else:
            runs = [pipeline_run(n, args, args.work, None) for n in sizes]
    if args.json and args.reuse and args.json.exists():  # a run split over several commands: one record
        runs = merge_runs(json.loads(args.json.read_text()).get("runs", []), runs)
    add_scaling(runs)
    print_table(runs)
    end = machine()
    result = {"runs": runs, "machine": info, "load_average_at_end": end["load_average"], "finished": end["date"],
              "command": sys.argv, "peak_rss_gb": "private memory (RssAnon) of the stage's driver process and of "
              "its largest Ray worker; RSS (which also counts mapped object-store pages) is peak_vmrss_gb"}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def merge_runs(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the stages of each ``new`` run of the same mode, size and nodes added."""
    key = lambda r: (r["mode"], r["interactions"], r.get("items"), r["nodes"], r.get("variant"))  # noqa: E731
    out = {key(r): r for r in old}
    for r in new:
        if key(r) in out:
            out[key(r)]["stages"].update(r["stages"])
        else:
            out[key(r)] = r
    return list(out.values())


if __name__ == "__main__":
    main()

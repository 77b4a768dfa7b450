"""``run_refresh``: an existing run + a delta -> ``<run_dir>/versions/<name>/`` (README "Refresh").

1. Base: the newest complete version, else the run itself; a version already built from the same
   delta on the same base is returned as is (a rerun of a finished refresh does nothing).
2. Tables (:mod:`semconv.refresh.build`): new items get behaviour vectors and unique codes from
   the saved codebook; new interactions extend ``sequences/`` and ``splits/``.
3. Decoding (:mod:`semconv.refresh.decode`): ``refresh.users=touched`` re-ranks the users named in
   the delta, ``all`` every cached user as well; rank shards are written exactly once into
   ``versions/<name>.partial/rank/`` (resumable), then merged with the carried-over shards.
4. Publish: every artifact of the version in one atomic rename, manifest last; the partial
   directory is removed.

A re-decoded user is ranked from their whole updated history with the base precache's
:class:`~semconv.inference.run_ranker.RankerSpec` (its beams, K, ``max_len``, exclusion and
dtype), exactly as online generation ranks a posted history: the prompt keeps the last ``max_len``
items, and the whole history, new items included, is excluded (:mod:`semconv.protocol`). This is
serving, not evaluation: the precache ranked from everything before the held-out last item.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.artifacts import RunDir, link_or_copy
from semconv.codes import code_arrays
from semconv.inference.run_ranker import RankerSpec, resolve_settings
from semconv.refresh.build import NewVersion, build_version
from semconv.refresh.decode import merge_shards, plan_refresh, rank_users
from semconv.refresh.user_files import read_users, user_files, write_replaced
from semconv.refresh.version import VERSIONS, base_of, file_digest, find_applied, next_name

INPUTS = ("items", "sequences", "splits", "item_emb", "item_codes", "precache")


def _fingerprint(cfg, run: RunDir, base: RunDir, base_name: str | None, spec: RankerSpec) -> dict:
    rc = cfg.refresh
    return {
        "base": base_name or ".", "base_precache": base.manifest("precache").get("build"),
        "model": run.manifest("model").get("build"), "codebook": run.manifest("codebook").get("build"),
        "interactions": file_digest(rc.interactions), "items": file_digest(rc.items),
        "users": rc.users, "on_bad_rows": rc.on_bad_rows, "holdout": rc.holdout, "ridge": rc.ridge, "text_neighbours": rc.text_neighbours,
        "map_users": rc.map_users,
        "max_len": cfg.prepare.max_len, "seed": cfg.seed, "top_k": spec.top_k, "num_beams": spec.num_beams,
        "prompt_max_len": spec.max_len, "exclude_history": spec.exclude_history,
    }


def redecode_users(new: NewVersion, base: RunDir, mode: str) -> tuple[np.ndarray, dict]:
    """The users to re-rank and why: delta users always; with ``all`` every cached user too."""
    users = new.touched
    reasons = {"new_interactions": int(len(new.touched) - len(new.new_users)), "new_user": int(len(new.new_users))}
    if mode == "all":
        cached = base.read_table("precache", columns=["user_id"])["user_id"].to_numpy()
        users = np.union1d(users, cached)
        reasons["refresh.users=all"] = int(len(users) - len(new.touched))
    return np.asarray(users, np.int64), reasons


def histories(new: NewVersion, users: np.ndarray) -> pa.Table:
    """``user_id``, ``history`` of ``users`` in the new version: the touched users' new rows, the
    others' read from the base's files (only with ``refresh.users=all``)."""
    rest = np.setdiff1d(users, new.touched)
    parts = [new.sequences.select(["user_id", "history"])]
    if len(rest):
        parts.append(read_users(new.base_sequences, rest, ["user_id", "history"]))
    return pa.concat_tables([p.cast(parts[0].schema) for p in parts]).sort_by("user_id")


def _users_table(users: np.ndarray, new: NewVersion, mode: str) -> pa.Table:
    reason = np.full(len(users), "refresh.users=all" if mode == "all" else "", dtype=object)
    reason[np.isin(users, new.touched)] = "new_interactions"
    reason[np.isin(users, new.new_users)] = "new_user"
    return pa.table({"user_id": pa.array(users, pa.int64()), "reason": pa.array(reason.tolist(), pa.string())})


def run_refresh(cfg) -> dict[str, str]:
    """Build the next serving version from ``cfg.refresh``'s delta; returns ``{"version": path}``."""
    import ray

    from semconv.inference.stage import check_actor_budget
    from semconv.ray_env import init_ray

    t0 = time.perf_counter()
    run = RunDir(cfg.run_dir)
    run.require("codebook", "model")
    base, base_name = base_of(run)
    base.require(*INPUTS)
    # the base precache's spec: re-ranked users are ranked as the carried-over ones were and as
    # online generation of this version will rank them, on any machine (precache.bf16=auto)
    spec = resolve_settings(run, cfg=cfg, base=base)
    fingerprint = _fingerprint(cfg, run, base, base_name, spec)
    if (done := find_applied(run, fingerprint)) is not None:
        print(f"refresh: version {done} was already built from this delta; nothing to do", flush=True)
        return {"version": run.path(f"{VERSIONS}/{done}")}
    name = cfg.refresh.version or next_name(run)
    if run.is_complete(f"{VERSIONS}/{name}"):
        raise ValueError(f"version {name!r} already exists in {run.uri} (built from another delta or "
                         "base); choose another refresh.version")
    new = build_version(cfg, run, base)
    t_build = time.perf_counter() - t0

    users, reasons = redecode_users(new, base, cfg.refresh.users)
    pc_cfg = cfg.precache
    plan = plan_refresh(base.fs, base.files_path("precache"), users, pc_cfg.users_per_shard)
    if spec.dtype_warning:
        print(f"warning: {spec.dtype_warning}", flush=True)
    item_ids, codes = code_arrays(new.item_codes)
    partial = run.path(f"{VERSIONS}/{name}.partial")
    rank_fp = {**fingerprint, "version": name, "users_hash": _hash(users), "codes_hash": _hash(codes),
               **spec.record()}
    stats: dict = {"shards_written": 0, "users_written": 0, "rank_shards": 0}
    if len(users):
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
        check_actor_budget(pc_cfg, ray.cluster_resources().get("CPU", 0))  # else the reads never run
        stats = rank_users(
            histories(new, users), users, plan, run.fs, f"{partial}/rank", rank_fp, spec, codes, item_ids,
            batch_size=pc_cfg.batch_size, sort_window=pc_cfg.sort_window, num_actors=pc_cfg.num_actors,
            use_gpu=pc_cfg.use_gpu, cpus_per_actor=pc_cfg.cpus_per_actor,
            threads_per_actor=pc_cfg.threads_per_actor, share_prefix=pc_cfg.share_prefix)
    t_decode = time.perf_counter() - t0 - t_build
    path = publish(run, base, name, new, plan, partial, users, reasons, fingerprint, cfg,
                   {"build_seconds": round(t_build, 3), "decode_seconds": round(t_decode, 3), "rank": stats},
                   t0, spec)
    print(f"refresh: version {name}: {new.new_items['count']} new items "
          f"({new.new_items['embedding_source']}), {len(users)} users re-decoded ({reasons}), "
          f"{len(plan.old_shards) - len(plan.dirty & set(range(len(plan.old_shards))))} of "
          f"{len(plan.old_shards)} precache shards carried over; {time.perf_counter() - t0:.1f}s", flush=True)
    return {"version": path}


def _carry_over(run: RunDir, artifact: str, view: RunDir) -> None:
    """``artifact`` of the run, unchanged, into the version (hard links where it can)."""
    with view.writing(artifact, dict(run.manifest(artifact))) as tmp:
        for f in Path(run.local(artifact)).iterdir():
            if f.is_file() and f.name != "_SUCCESS":
                link_or_copy(pafs.LocalFileSystem(), str(f), tmp / f.name)


def _hash(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def publish(run: RunDir, base: RunDir, name: str, new: NewVersion, plan, partial: str, users: np.ndarray,
            reasons: dict, fingerprint: dict, cfg, timing: dict, t0: float, spec: RankerSpec) -> str:
    """Write the whole version atomically (``RunDir.writing``), then drop the partial directory.

    The manifests are filled inside their ``writing`` blocks: ``RunDir`` writes them on exit.
    The version's precache records ``spec``, what the re-ranked users ran with (online generation
    of the version follows it); when its dtype is not the base's, ``dtype_carried_over`` names the
    dtype of the carried-over lists (nobody re-ranked: every list, and the dtype, is the base's).
    """
    old_precache = base.manifest("precache")
    manifest: dict = {"version": name}
    with run.writing(f"{VERSIONS}/{name}", manifest) as tmp:
        view = RunDir(tmp)
        tables = {"items": new.items, "item_codes": new.item_codes, "item_emb": new.item_emb}
        if new.item_text_emb is not None:
            tables["item_text_emb"] = new.item_text_emb
        for art, table in tables.items():
            view.write_table(art, table, manifest={"version": name})
        cut = {"max_len": base.manifest("splits").get("max_len")}  # the prompts' cut, as the base's
        user_tables = {}
        for art, rows in (("sequences", new.sequences), ("splits", new.splits)):
            meta = {"version": name, "schema": str(rows.schema), **(cut if art == "splits" else {})}
            with view.writing(art, meta) as utmp:
                files = new.base_sequences if art == "sequences" else user_files(base, art)
                user_tables[art] = write_replaced(files, rows, utmp)
                meta["rows"] = user_tables[art].pop("rows")
        tables.update(dict.fromkeys(user_tables))
        for art in ("codebook", "model"):  # the version serves lookups and online generation alone
            _carry_over(run, art, view)
        pmeta = {"model": old_precache.get("model"), "codebook": old_precache.get("codebook"), **spec.record()}
        if not len(users):
            pmeta.update(dtype=old_precache.get("dtype"), dtype_reason=old_precache.get("dtype_reason"))
        elif spec.dtype != old_precache.get("dtype"):
            pmeta["dtype_carried_over"] = old_precache.get("dtype")
        pmeta.update(version=name, shards=plan.num_shards,  # serving checks "inputs" against the version
                     inputs={a: view.manifest(a)["build"] for a in ("splits", "item_codes")})
        with view.writing("precache", pmeta) as ptmp:
            merged = merge_shards(run.fs, plan, f"{partial}/rank", ptmp)
            pmeta["users"] = sum(pq.ParquetFile(p).metadata.num_rows for p in ptmp.glob("shard-*.parquet"))
        pq.write_table(_users_table(users, new, cfg.refresh.users), tmp / "redecoded_users.parquet")
        manifest.update({
            "base": fingerprint["base"], "fingerprint": fingerprint,
            "delta": {"interactions": cfg.refresh.interactions, "items": cfg.refresh.items,
                      "skipped": new.skipped},
            "new_items": new.new_items,
            "users": {"mode": cfg.refresh.users, "redecoded": int(len(users)), "reasons": reasons,
                      "touched": int(len(new.touched)), "new_users": int(len(new.new_users)),
                      "list": "redecoded_users.parquet",
                      "ids": users.tolist() if len(users) <= 10_000 else None,
                      "history": f"the whole updated history (prompt: its last {spec.max_len} items)"},
            "precache": {**merged, "users": pmeta["users"], "shards": plan.num_shards},
            "user_tables": user_tables,
            "artifacts": {a: view.manifest(a).get("created_at") for a in (*tables, "codebook", "precache")},
            **timing, "seconds": round(time.perf_counter() - t0, 3),
        })
    if run.fs.get_file_info(partial).type != pafs.FileType.NotFound:
        run.fs.delete_dir(partial)
    return run.path(f"{VERSIONS}/{name}")

"""A run directory on a real S3 server (moto): every stage of the pipeline, then a refresh, then
the version served from ``s3://`` (lookup, tokenize, online generation), reading only committed
builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from semconv.artifacts import RunDir, join_uri
from semconv.config import load_config

pytestmark = pytest.mark.slow

USERS, ITEMS = 40, 24


def tiny_lcrec(root: Path) -> Path:
    """User u walks items u, u+1, ... (mod ITEMS), 6 steps: a rule the models can learn."""
    d = root / "Tiny"
    d.mkdir(parents=True)
    inter = {str(u): [(u + j) % ITEMS for j in range(6)] for u in range(USERS)}
    meta = {str(i): {"title": f"Item {i} relay kit.", "description": f"Lab glass {i}.", "brand": "Acme",
                     "categories": "Lab,Glass"} for i in range(ITEMS)}
    (d / "Tiny.inter.json").write_text(json.dumps(inter))
    (d / "Tiny.item.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def s3_run(s3_server, tiny_lm_dir, tmp_path_factory, ray_local):
    """The whole pipeline with ``run_dir=s3://...``, then a refresh: (config, version URI)."""
    from semconv.pipeline import run_pipeline
    from semconv.refresh.stage import run_refresh

    tmp = tmp_path_factory.mktemp("s3run")
    data = tiny_lcrec(tmp)
    uri = s3_server("pipeline/run")
    overrides = [
        f"run_dir={uri}", f"prepare.dataset={data}", "prepare.format=lcrec",
        f"embed.text_model={tiny_lm_dir}", "embed.text_max_tokens=16", "embed.cf.epochs=2", "embed.cf.dim=8",
        "tokenize.levels=2", "tokenize.codes_per_level=8", "tokenize.epochs=2", "tokenize.kmeans_iters=3",
        "tasks.query=false", f"finetune.base_model={tiny_lm_dir}", "finetune.max_steps=4",
        "finetune.eval_every=2", "finetune.checkpoint_every=2", "finetune.pack_len=64", "finetune.batch_size=2",
        "finetune.max_minutes=null", "precache.num_beams=4", "precache.top_k=3", "precache.bf16=false",
        "precache.max_users=null", "evaluate.ks=[1,3]", "evaluate.baselines=[popularity]",
        "evaluate.plots=false",
    ]
    cfg = load_config(None, overrides)
    run_pipeline(cfg)
    inter = tmp / "delta.jsonl"
    inter.write_text("".join(json.dumps({"user_id": str(u), "item_id": str((u + 7) % ITEMS)}) + "\n"
                             for u in (3, 5)))
    items = tmp / "items.jsonl"
    items.write_text(json.dumps({"item_id": "new1", "title": "Item new relay kit.", "description": "x"}) + "\n")
    refresh_cfg = load_config(None, overrides + [f"refresh.interactions={inter}", f"refresh.items={items}"])
    version = run_refresh(refresh_cfg)["version"]
    return cfg, refresh_cfg, version


def test_every_stage_commits_its_artifacts_to_s3(s3_run):
    cfg, _, _ = s3_run
    run = RunDir(cfg.run_dir)
    assert not run.is_local
    for name in ("items", "sequences", "splits", "item_emb", "item_text_emb", "codebook", "item_codes", "sft",
                 "model", "precache", "report"):
        meta = run.manifest(name)
        assert meta["root"].startswith("_builds/") and meta["files"], name
        for rel, f in meta["files"].items():  # every listed file is there, with its size
            assert run.fs.get_file_info(run.file(name, rel, meta)).size == f["bytes"], (name, rel)
    metrics = json.loads(run.fs.open_input_stream(run.file("report", "metrics.json")).read())
    assert {"semconv", "popularity"} <= set(metrics["systems"])


def test_a_refresh_on_s3_publishes_a_version_whose_artifacts_are_complete(s3_run):
    cfg, refresh_cfg, version_uri = s3_run
    from semconv.refresh.stage import run_refresh

    run = RunDir(cfg.run_dir)
    assert run.is_complete("versions/v0001") and version_uri == run.path("versions/v0001")
    version = RunDir(join_uri(cfg.run_dir, "versions/v0001"))
    for name in ("items", "item_codes", "item_emb", "sequences", "splits", "codebook", "model", "precache"):
        assert version.is_complete(name), name
    assert version.read_table("items").num_rows == ITEMS + 1
    assert run_refresh(refresh_cfg)["version"] == version_uri  # the rerun finds its version whole


def test_the_s3_version_serves_lookups_tokenize_and_online_generation(s3_run, tmp_path):
    from semconv.inference.run_ranker import load_run_ranker
    from semconv.serving.state import load_state
    from serve_app import service
    from serve_app.tokenizer import load_tokenizer

    cfg, _, _ = s3_run
    uri = join_uri(cfg.run_dir, "versions/v0001")
    state = load_state(uri, cache_dir=tmp_path / "cache")
    rec = service.recommendations(state, 3, 3)
    assert len(rec["item_ids"]) == 3 and not rec["fallback"]
    assert service.item(state, ITEMS)["source_id"] == "new1"  # the refresh's new item
    version = RunDir(uri)
    emb = version.read_table("item_emb")
    tok = load_tokenizer(uri)
    vec = np.asarray(emb["embedding"][0].as_py(), np.float32)
    codes, clash = tok.tokenizer.tokenize_unique(vec[None])  # item 0's own vector: it collides with item 0
    assert codes.shape == (1, 2) and tok.tokenizer.collides_with(tok.tokenizer(vec[None]))[0] >= 0
    ranker, settings = load_run_ranker(uri)
    history = version.read_table("sequences")["history"][3].as_py()
    items, scores = ranker.rank([history], exclude_history=settings.exclude_history)
    assert items.shape == (1, 3)
    np.testing.assert_allclose(scores[0], rec["scores"], rtol=0, atol=1e-4)  # the precache, online


def test_nothing_but_committed_builds_and_their_predecessors_remain_on_s3(s3_run):
    cfg, _, _ = s3_run
    run = RunDir(cfg.run_dir)
    infos = run.fs.get_file_info(pafs.FileSelector(run.root, recursive=True))
    leftovers = [i.path for i in infos if ".tmp-" in i.path or ".partial" in i.path]
    assert not leftovers

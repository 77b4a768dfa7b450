"""Lineage: a changed key rebuilds its stage and everything downstream, nothing else.

The per-stage tests run the real registry and the real pipeline runner, with each stage's work
replaced by writing its declared artifacts through ``stage_run`` (what every real stage does), so
all seven stages are covered in a second; ``test_real_stages_...`` runs prepare, tokenize and
tasks for real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from semconv import cli
from semconv.artifacts import RunDir
from semconv.config import PipelineConfig, load_config
from semconv.lineage import StaleArtifactError, checkpoint_name, config_values, stage_run
from semconv.pipeline import RECORD, run_pipeline
from semconv.stages import NAMES, STAGES, Stage, downstream, stage, stage_table

REPO = Path(__file__).resolve().parents[1]

# stage -> (a key in its fingerprint, a new value, a key it ignores, a new value)
CHANGES = {
    "prepare": ("prepare.max_len", 7, "prepare.num_shards", 3),
    "embed": ("embed.cf.dim", 16, "embed.text_actors", 2),
    "tokenize": ("tokenize.levels", 3, "tokenize.checkpoint_every", 2),
    "tasks": ("tasks.negative_ratio", 1, "tasks.rows_per_shard", 2),
    "finetune": ("finetune.lora_r", 4, "finetune.log_every", 1),
    "precache": ("precache.top_k", 5, "precache.num_actors", 2),
    "evaluate": ("evaluate.ks", [1, 5], "evaluate.sasrec.num_threads", 2),
}


@pytest.fixture
def fake(monkeypatch):
    """Each stage writes its declared artifacts via ``stage_run``; returns the calls, and for each
    call the artifacts downstream of the stage that were still complete when it started."""
    calls: list[str] = []
    leftovers: dict[str, list[str]] = {}

    def function(self: Stage):
        def run_it(cfg: PipelineConfig) -> dict[str, str]:
            calls.append(self.name)
            run = stage_run(cfg, self.name)
            run.require(*self.reads)
            leftovers[self.name] = [a for n in downstream(self.name) for a in stage(n).writes
                                    if run.is_complete(a)]
            for a in self.writes:
                with run.writing(a) as tmp:
                    (tmp / "data.json").write_text(json.dumps(config_values(cfg, self)))
            return {a: run.path(a) for a in self.writes}
        return run_it

    monkeypatch.setattr(Stage, "function", function)
    return calls, leftovers


def stamps(run_dir: Path) -> dict[str, int]:
    """Artifact -> its manifest's mtime (ns), for every complete artifact."""
    return {a: (run_dir / a / "_SUCCESS").stat().st_mtime_ns
            for s in STAGES for a in s.writes if (run_dir / a / "_SUCCESS").exists()}


def override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"


def test_each_changed_key_and_ignored_key_is_declared_where_the_tests_say():
    default = PipelineConfig()
    for name, (key, _, ignored, _) in CHANGES.items():
        values = config_values(default, stage(name))
        assert key in values and ignored not in values, name
    prepare = config_values(default, stage("prepare"))  # the sharded path writes the same tables
    assert not {"prepare.ray_data", "prepare.ray_min_mb", "prepare.num_blocks"} & set(prepare)


@pytest.mark.parametrize("name", NAMES)
def test_a_changed_key_rebuilds_its_stage_and_downstream_and_leaves_upstream(tmp_path, fake, name, capsys):
    calls, leftovers = fake
    key, value, ignored, other = CHANGES[name]
    base = [f"run_dir={tmp_path}"]
    run_pipeline(load_config(None, base))
    assert calls == list(NAMES)
    before = stamps(tmp_path)
    assert len(before) == sum(len(s.writes) for s in STAGES)

    calls.clear()
    run_pipeline(load_config(None, base + [override(ignored, other)]))
    assert calls == [] and stamps(tmp_path) == before  # outside the fingerprint: nothing rebuilt

    capsys.readouterr()
    run_pipeline(load_config(None, base + [override(key, value)]))
    rebuilt = [name, *downstream(name)]
    assert calls == rebuilt
    assert all(leftovers[n] == [] for n in rebuilt)  # no stale downstream left complete meanwhile
    after = stamps(tmp_path)
    assert set(after) == set(before)
    for s in STAGES:
        for a in s.writes:
            assert (after[a] != before[a]) == (s.name in rebuilt), a
    old = config_values(PipelineConfig(), stage(name))[key]
    why = f"{key} was {json.dumps(old)} when {stage(name).writes[0]}/ was built, now {json.dumps(value)}"
    assert f"== {name}: {why}; rebuilding {', '.join(rebuilt)} ==" in capsys.readouterr().out
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["stages"][name]["rebuilt"] == why
    assert all(record["stages"][n]["skipped"] for n in NAMES if n not in rebuilt)

    calls.clear()
    run_pipeline(load_config(None, base + [override(key, value)]))
    assert calls == []  # current again


def test_on_change_error_names_the_stage_the_key_and_both_values(tmp_path, fake):
    calls, _ = fake
    base = [f"run_dir={tmp_path}"]
    run_pipeline(load_config(None, base), ["prepare", "embed", "tokenize"])
    before = stamps(tmp_path)
    calls.clear()
    with pytest.raises(StaleArtifactError) as err:
        run_pipeline(load_config(None, base + ["tokenize.levels=3"]), on_change="error")
    assert str(err.value) == (
        "stage tokenize is stale: tokenize.levels was 4 when codebook/ was built, now 3. Rerun with "
        "--on-change rebuild (config on_change: rebuild) to rebuild tokenize, tasks, finetune, "
        "precache, evaluate")
    assert calls == [] and stamps(tmp_path) == before  # refused before touching anything
    with pytest.raises(StaleArtifactError, match="tokenize.levels was 4"):
        run_pipeline(load_config(None, base + ["tokenize.levels=3", "on_change=error"]))


def test_cli_on_change_error_exits_3_with_the_message(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setattr(cli, "init_ray", lambda *a: None)
    assert cli.main([f"run_dir={tmp_path}", "--stages", "prepare,embed,tokenize"], stage="pipeline") == 0
    capsys.readouterr()
    code = cli.main([f"run_dir={tmp_path}", "--on-change", "error", "tokenize.codes_per_level=8"],
                    stage="tokenize")
    assert code == 3
    err = capsys.readouterr().err
    assert "stage tokenize is stale: tokenize.codes_per_level was 256 when codebook/ was built, now 8" in err


def test_an_input_rebuilt_elsewhere_makes_the_reader_stale(tmp_path, fake):
    calls, _ = fake
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    run_pipeline(cfg, ["prepare", "embed", "tokenize"])
    # item_emb/ rewritten behind the pipeline's back (another fingerprint, same config)
    run = stage_run(cfg, "embed")
    run.lineage = {**run.lineage, "fingerprint": "elsewhere"}
    with run.writing("item_emb"):
        pass
    calls.clear()
    with pytest.raises(StaleArtifactError, match="its input item_emb/ was rebuilt since"):
        run_pipeline(cfg, ["tokenize"], on_change="error")


def test_artifacts_without_lineage_are_stale(tmp_path, fake):
    calls, _ = fake
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    RunDir(tmp_path).write_table("items", pa.table({"item_id": [0]}))  # no lineage in its manifest
    with pytest.raises(StaleArtifactError, match="items/ was built before manifests recorded lineage"):
        run_pipeline(cfg, ["prepare"], on_change="error")
    run_pipeline(cfg, ["prepare"])
    assert calls == ["prepare"] and "lineage" in RunDir(tmp_path).manifest("items")


def test_checkpoint_name_is_the_fingerprint_and_drops_other_runs_of_the_stage(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    run = stage_run(cfg, "tokenize")
    root = Path(run.checkpoint_root)
    for d in ("tokenize-stale", f"tokenize-{run.lineage['fingerprint']}", "embed-other"):
        (root / d).mkdir(parents=True)
    name = checkpoint_name(run, "tokenize")
    assert name == f"tokenize-{run.lineage['fingerprint']}"
    assert sorted(p.name for p in root.iterdir()) == sorted(["embed-other", name])
    changed = stage_run(load_config(None, [f"run_dir={tmp_path}", "tokenize.epochs=3"]), "tokenize")
    assert checkpoint_name(changed, "tokenize") != name and not (root / name).exists()
    assert checkpoint_name(stage_run(cfg, "tokenize"), "tokenize") == name  # same config: same name


def test_the_pipeline_doc_stage_table_is_the_registry():
    doc = (REPO / "docs" / "pipeline.md").read_text()
    assert "\n".join(stage_table()) in doc


def test_every_ignored_key_is_named_in_its_config_docstring():
    for s in STAGES:
        for key in s.ignore:
            *path, leaf = key.split(".")
            section: type = PipelineConfig
            for part in path:
                section = section.model_fields[part].annotation
            assert f"``{leaf}``" in (section.__doc__ or ""), f"{key}: not in {section.__name__}'s docstring"


# ---- real stages ------------------------------------------------------------------------------
N_ITEMS, N_USERS = 24, 30


@pytest.fixture
def real_cfg(tmp_path, monkeypatch):
    """prepare, tokenize and tasks run for real on 30 users x 24 items; embed writes planted
    vectors (its real run needs Ray and a language model, covered in tests/embed)."""
    rng = np.random.default_rng(0)
    inter, items = tmp_path / "inter.jsonl", tmp_path / "items.jsonl"
    inter.write_text("".join(
        json.dumps({"user_id": f"u{u}", "item_id": f"i{int(i)}", "timestamp": t}) + "\n"
        for u in range(N_USERS) for t, i in enumerate(rng.choice(N_ITEMS, 6, replace=False))))
    items.write_text("".join(json.dumps({"item_id": f"i{i}", "title": f"lab glove {i}"}) + "\n"
                             for i in range(N_ITEMS)))
    real = Stage.function

    def function(self: Stage):
        if self.name != "embed":
            return real(self)

        def embed(cfg):
            run = stage_run(cfg, "embed")
            ids = run.read_table("items", columns=["item_id"]).column("item_id")
            for name, dim in (("item_emb", 8), ("item_text_emb", 6)):
                vectors = np.random.default_rng(dim).normal(size=(len(ids), dim)).astype(np.float32)
                run.write_table(name, pa.table({"item_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel()), dim)}))
            return {"item_emb": run.path("item_emb"), "item_text_emb": run.path("item_text_emb")}
        return embed

    monkeypatch.setattr(Stage, "function", function)
    return [f"run_dir={tmp_path / 'run'}", "prepare.format=generic", f"prepare.interactions={inter}",
            f"prepare.items={items}", "tokenize.levels=2", "tokenize.codes_per_level=6",
            "tokenize.epochs=2", "tokenize.num_workers=0", "tokenize.kmeans_iters=3",
            "tasks.query=false"]


def test_real_stages_rebuild_the_codebook_and_tasks_for_new_levels_and_keep_the_splits(real_cfg):
    stages = ["prepare", "embed", "tokenize", "tasks"]
    run_pipeline(load_config(None, real_cfg), stages)
    run = RunDir(load_config(None, real_cfg).run_dir)
    root = Path(run.root)
    assert run.read_table("item_codes").schema.field("codes").type.list_size == 2
    before = stamps(root)
    splits_mtime = (root / "splits" / "part-00000.parquet").stat().st_mtime_ns

    run_pipeline(load_config(None, real_cfg + ["tokenize.checkpoint_every=1", "tasks.rows_per_shard=1000"]), stages)
    assert stamps(root) == before  # keys outside every fingerprint: nothing rebuilt

    run_pipeline(load_config(None, real_cfg + ["tokenize.levels=3"]), stages)
    after = stamps(root)
    assert run.read_table("item_codes").schema.field("codes").type.list_size == 3
    assert json.loads((root / "codebook" / "config.json").read_text())["levels"] == 3
    assert run.manifest("sft")["code_levels"] == 3
    for a in ("items", "sequences", "splits", "item_emb", "item_text_emb"):
        assert after[a] == before[a], a
    for a in ("codebook", "item_codes", "sft"):
        assert after[a] != before[a], a
    assert (root / "splits" / "part-00000.parquet").stat().st_mtime_ns == splits_mtime

    # an interrupted stage (same fingerprint) resumes: the complete codebook/ is kept, not
    # retrained; sft/ read the item_codes/ build that is gone, so it is rebuilt
    shutil.rmtree(root / "item_codes")
    run_pipeline(load_config(None, real_cfg + ["tokenize.levels=3"]), stages)
    resumed = stamps(root)
    assert resumed["codebook"] == after["codebook"] and resumed["sft"] != after["sft"]
    assert run.read_table("item_codes").schema.field("codes").type.list_size == 3


def test_a_key_set_inside_a_mapping_is_named_alone(tmp_path, fake):
    base = [f"run_dir={tmp_path}"]
    run_pipeline(load_config(None, base), ["prepare", "embed", "tokenize", "tasks"])
    with pytest.raises(StaleArtifactError, match=r"stage tasks is stale: tasks.weights.history was unset "
                                                 r"when sft/ was built, now 2.0\. Rerun"):
        run_pipeline(load_config(None, base + ["tasks.weights={history: 2}"]), on_change="error")


def test_a_stage_whose_format_changed_rebuilds_older_builds_and_says_why(tmp_path, fake, monkeypatch, capsys):
    import dataclasses
    import hashlib

    from semconv import stages
    from semconv.lineage import record

    calls, _ = fake
    base = [f"run_dir={tmp_path}"]
    run_pipeline(load_config(None, base))
    cfg = load_config(None, base)
    want = record(cfg, "tokenize")  # format 1 stays out of the hash: older run dirs stay current
    blob = json.dumps({k: want[k] for k in ("stage", "config", "inputs")}, sort_keys=True)
    assert want["format"] == 1 and want["fingerprint"] == hashlib.sha256(blob.encode()).hexdigest()[:16]

    newer = dataclasses.replace(stage("prepare"), format=stage("prepare").format + 1)
    monkeypatch.setitem(stages._BY_NAME, "prepare", newer)
    monkeypatch.setattr(stages, "STAGES", tuple(newer if s.name == "prepare" else s for s in STAGES))
    calls.clear()
    capsys.readouterr()
    run_pipeline(load_config(None, base))
    assert calls == list(NAMES)  # prepare and everything downstream
    assert (f"items/ was written in format {newer.format - 1}, the stage now writes format {newer.format}"
            in capsys.readouterr().out)

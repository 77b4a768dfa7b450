"""run_pipeline: times every stage into <run_dir>/pipeline.json; a rerun skips and keeps the build time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from semconv.artifacts import ArtifactError, RunDir
from semconv.config import load_config
from semconv.pipeline import RECORD, read_record, run_pipeline, write_record

INTER = [("u1", "i1", 1), ("u1", "i2", 2), ("u1", "i3", 3), ("u2", "i2", 1), ("u2", "i3", 2),
         ("u2", "i1", 3), ("u3", "i3", 1), ("u3", "i1", 2)]
ITEMS = [("i1", "Glove."), ("i2", "Tape."), ("i3", "Pump.")]


@pytest.fixture
def cfg(tmp_path):
    """A config whose prepare stage reads three users from JSONL files (a second or less)."""
    inter, items = tmp_path / "inter.jsonl", tmp_path / "items.jsonl"
    inter.write_text("".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t}) + "\n" for u, i, t in INTER))
    items.write_text("".join(json.dumps({"item_id": i, "title": t}) + "\n" for i, t in ITEMS))
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "prepare.format=generic",
                              f"prepare.interactions={inter}", f"prepare.items={items}"])


def record(cfg) -> dict:
    return json.loads(Path(RunDir(cfg.run_dir).root, RECORD).read_text())


def test_a_run_writes_stage_times_and_the_machine(cfg, capsys):
    run_pipeline(cfg, ["prepare"])
    rec = record(cfg)
    assert rec["ran"] == ["prepare"]
    stage = rec["stages"]["prepare"]
    assert stage["skipped"] is False and "built_seconds" not in stage and "failed" not in stage
    assert 0 < stage["seconds"] <= rec["total_seconds"]
    assert set(rec["machine"]) == {"cpu", "cores", "bf16_native", "torch_threads"}
    out = capsys.readouterr().out
    assert "| stage | seconds | skipped |" in out and f"| prepare | {stage['seconds']:.1f} | no |" in out
    assert f"machine: {rec['machine']['cpu']}" in out


def test_a_rerun_marks_the_stage_skipped_and_carries_its_build_time(cfg, capsys):
    run_pipeline(cfg, ["prepare"])
    built = record(cfg)["stages"]["prepare"]["seconds"]
    run_pipeline(cfg, ["prepare"])
    stage = record(cfg)["stages"]["prepare"]
    assert stage["skipped"] is True and stage["built_seconds"] == built
    assert f"| yes (built in {built:.1f}s) |" in capsys.readouterr().out
    run_pipeline(cfg, ["prepare"])  # skipped twice: still the time of the run that built it
    assert record(cfg)["stages"]["prepare"]["built_seconds"] == built


def test_a_stage_whose_artifacts_were_deleted_is_timed_afresh(cfg):
    run_pipeline(cfg, ["prepare"])
    shutil.rmtree(RunDir(cfg.run_dir).path("splits"))  # one of three artifacts missing: it runs
    run_pipeline(cfg, ["prepare"])
    stage = record(cfg)["stages"]["prepare"]
    assert stage["skipped"] is False and "built_seconds" not in stage


def test_a_failing_stage_is_recorded_and_earlier_entries_kept(cfg, capsys):
    run_pipeline(cfg, ["prepare"])
    prepared = record(cfg)["stages"]["prepare"]
    with pytest.raises(ArtifactError, match="item_codes"):
        run_pipeline(cfg, ["tasks"])  # needs tokenize's item_codes/
    rec = record(cfg)
    assert rec["ran"] == ["tasks"] and rec["stages"]["tasks"]["failed"] is True
    assert rec["stages"]["prepare"] == prepared  # from the earlier command, unchanged
    assert f"| tasks | {rec['stages']['tasks']['seconds']:.1f} | FAILED |" in capsys.readouterr().out


def test_record_round_trips_through_a_pyarrow_filesystem():
    run = RunDir("mock:///run")  # not local: the temp-name-then-move path of any pyarrow.fs store
    assert not run.is_local and read_record(run) == {}
    write_record(run, {"stages": {"prepare": {"seconds": 1.0, "skipped": False}}})
    write_record(run, {"stages": {"prepare": {"seconds": 2.0, "skipped": False}}})
    assert read_record(run)["stages"]["prepare"]["seconds"] == 2.0
    names = [f.base_name for f in run.fs.get_file_info(pafs.FileSelector(run.root))]
    assert names == [RECORD]  # no temp file left behind


def test_an_unreadable_record_is_ignored(cfg):
    run = RunDir(cfg.run_dir)
    Path(run.root, RECORD).write_text("{not json")
    assert read_record(run) == {}
    run_pipeline(cfg, ["prepare"])
    assert record(cfg)["stages"]["prepare"]["skipped"] is False

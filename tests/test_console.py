"""The console: a bar and a result line per stage; Ray's output in <run_dir>/logs/, on screen with --verbose."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from semconv import console
from tests.cluster.test_job_submission import write_tiny_lcrec

REPO = Path(__file__).resolve().parents[1]


def test_logs_go_under_a_local_run_dir_and_to_a_named_local_folder_for_a_remote_one(tmp_path):
    assert console.log_dir(str(tmp_path / "run")) == tmp_path / "run" / "logs"
    remote = console.log_dir("s3://bucket/runs/demo?endpoint_override=localhost:9000")
    assert remote.parent.name == "semconv-logs" and "bucket_runs_demo" in remote.name


def test_a_session_sends_ray_driver_logs_to_the_file_and_gives_the_console_back(tmp_path, capsys):
    ray_logger = logging.getLogger("ray")
    with console.session(str(tmp_path), "pipeline") as path:
        ray_logger.warning("from ray's driver")
        logging.getLogger("semconv.tasks").info("from the package")
    assert path.parent == tmp_path / "logs" and path.name.startswith("pipeline-")
    text = path.read_text()
    assert "from ray's driver" in text and "from the package" in text
    out = capsys.readouterr()
    assert f"logs in {path} (--verbose prints them)" in out.out
    assert "from ray's driver" not in out.out + out.err and "from the package" not in out.out + out.err
    assert console._now.handler not in ray_logger.handlers and ray_logger.handlers  # restored


def test_a_failing_command_names_its_log(tmp_path, capsys):
    with pytest.raises(RuntimeError), console.session(str(tmp_path), "finetune") as path:
        raise RuntimeError("boom")
    assert f"semconv finetune failed; logs in {path}" in capsys.readouterr().err


def test_worker_lines_go_to_the_log_and_markers_draw_a_bar(tmp_path, monkeypatch, capsys):
    printed = []
    sent = io.StringIO()
    monkeypatch.setattr(sys, "__stdout__", sent)
    remote = console.RemoteBar("finetune", 10, "step")
    remote.update(4)  # within a second of the last send: not sent
    remote.set_postfix_str("loss 2.000")
    remote.close()
    markers = sent.getvalue().splitlines()
    assert len(markers) == 2 and all(m.startswith(console.MARK) for m in markers)
    assert json.loads(markers[-1][len(console.MARK):])["n"] == 4

    batch = {"pid": 7, "ip": "10.0.0.1", "actor_name": "RayTrainWorker",
             "lines": ["Reporting training result 1: ...", *markers]}
    with console.session(str(tmp_path), "finetune") as path:
        console._on_worker_output(batch, printed.append)
    assert printed == []  # not verbose: Ray's printer gets nothing
    assert "(RayTrainWorker pid=7, ip=10.0.0.1) Reporting training result 1: ..." in path.read_text()
    err = capsys.readouterr().err
    assert "finetune:" in err and "4/10" in err and "loss 2.000" in err

    with console.session(str(tmp_path), "finetune", verbose=True):
        console._on_worker_output(batch, printed.append)
    assert printed == [{**batch, "lines": ["Reporting training result 1: ..."]}]


@pytest.mark.slow
def test_a_tiny_pipeline_prints_a_bar_and_a_line_per_stage_and_logs_the_rest(tmp_path, tiny_lm_dir):
    """The whole command from an empty run directory, as a person runs it (about 3 minutes on 2 cores)."""
    data = write_tiny_lcrec(tmp_path / "data")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/demo.yaml", f"run_dir={run_dir}",
           f"prepare.dataset={data}", f"embed.text_model={tiny_lm_dir}", "embed.text_max_tokens=16",
           "embed.cf.epochs=2", "embed.cf.dim=8", "tokenize.levels=2", "tokenize.codes_per_level=8",
           "tokenize.epochs=2", "tokenize.kmeans_iters=3", "tasks.query=false",
           f"finetune.base_model={tiny_lm_dir}", "finetune.num_layers=null", "finetune.max_steps=4",
           "finetune.max_minutes=null", "finetune.eval_every=2", "finetune.checkpoint_every=2",
           "finetune.pack_len=64", "finetune.batch_size=2", "precache.num_beams=4", "precache.top_k=3",
           "precache.bf16=false", "precache.max_users=null", "evaluate.baselines=[popularity]",
           "evaluate.ks=[1,3]", "evaluate.plots=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = out.split("\n")  # a bar redraws its line with \r: one line on the screen
    assert len(lines) <= 60, out
    assert "Reporting training result" not in out and "Running Dataset" not in out
    for stage, unit in (("finetune", "step"), ("precache", "user")):
        assert any(line.startswith(f"{stage}:") and "100%|" in line and unit in line for line in lines), stage
    for stage in ("prepare", "embed", "tokenize", "tasks", "finetune", "precache", "evaluate"):
        assert sum(line.startswith(f"{stage}: ") and "%|" not in line for line in lines) >= 1, stage
    log = Path(lines[0].split("logs in ")[1].split(" (")[0])
    assert log.parent == run_dir / "logs" and "Reporting training result" in log.read_text()

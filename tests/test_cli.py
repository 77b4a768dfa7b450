"""The job CLI: config errors exit 2 with the key path; the summary names report and serve."""

from __future__ import annotations

import json

import pyarrow as pa

from semconv import cli
from semconv.artifacts import RunDir
from semconv.config import load_config


def test_bad_override_exits_2_naming_the_key(capsys):
    assert cli.main(["--config", "configs/demo.yaml", "tokenize.levelz=3"], stage="prepare") == 2
    assert "tokenize.levelz: unknown key" in capsys.readouterr().err


def test_summary_prints_the_table_report_path_and_serve_command(tmp_path, capsys):
    run = RunDir(tmp_path)
    metrics = {"split": "test", "users": 3, "items": 5, "ks": [1, 5, 10],
               "systems": {"semconv": {"HR@1": 0.25, "HR@5": 0.5, "HR@10": 0.75,
                                       "NDCG@5": 0.4, "NDCG@10": 0.45}}}
    with run.writing("report") as d:
        (d / "metrics.json").write_text(json.dumps(metrics))
    run.write_table("precache", pa.table({"user_id": [0]}))
    cli.print_summary(load_config(None, [f"run_dir={tmp_path}"]))
    out = capsys.readouterr().out
    assert "| Ours (semconv) | **0.2500** | **0.5000** | **0.7500**" in out
    assert f"{tmp_path}/report/report.md" in out
    assert f"serve_app.app:app_builder run_dir={tmp_path}" in out

"""run_precache picks its dtype from the hardware (precache.bf16=auto), says why, and records it."""

from __future__ import annotations

from semconv.config import PipelineConfig
from semconv.hardware import FORCE_BF16, FORCE_NO_BF16
from semconv.inference.stage import PRECACHE, run_precache

from .test_stage import _make_run_dir


def test_auto_on_a_cpu_without_native_bf16_runs_float32(ray_local, tiny_lm_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(FORCE_BF16, raising=False)
    monkeypatch.setenv(FORCE_NO_BF16, "1")
    run = _make_run_dir(tmp_path / "run", tiny_lm_dir)
    cfg = PipelineConfig(run_dir=str(tmp_path / "run"), finetune={"base_model": str(tiny_lm_dir)},
                         precache={"num_beams": 5, "top_k": 5, "users_per_shard": 120, "batch_size": 16})
    assert cfg.precache.bf16 == "auto"
    run_precache(cfg)
    assert "precache: dtype float32 (auto: this CPU has no native bf16)\n" in capsys.readouterr().out
    manifest = run.manifest(PRECACHE)
    assert manifest["dtype"] == "float32" and manifest["dtype_reason"] == "auto: this CPU has no native bf16"

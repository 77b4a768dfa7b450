"""The Ray Train run configuration shared by the three trainers."""

from __future__ import annotations

from semconv.ray_env import train_run_config


def test_train_run_config_keeps_two_checkpoints_and_restarts(tmp_path):
    rc = train_run_config("finetune", str(tmp_path), max_failures=3)
    assert rc.name == "finetune" and rc.storage_path == str(tmp_path)
    assert rc.failure_config.max_failures == 3
    assert rc.checkpoint_config.num_to_keep == 2

"""Config: defaults run the demo, YAML + key.sub=value overrides, strict validation."""

from pathlib import Path

import pytest

from semconv.config import ConfigError, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_yaml_is_the_default():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.prepare.dataset == str(REPO / "data" / "Scientific")
    assert cfg.tokenize.levels == 4 and cfg.tokenize.codes_per_level == 256


def test_every_config_in_configs_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(None, ["tokenize.levels=3", "tasks.negative=false", "evaluate.ks=[1, 20]",
                             f"run_dir={tmp_path}"])
    assert cfg.tokenize.levels == 3 and cfg.tasks.negative is False
    assert cfg.evaluate.ks == [1, 20] and cfg.run_dir == str(tmp_path)


def test_unknown_key_names_its_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tokenize:\n  levels: 4\n  codebook_size: 256\n")
    with pytest.raises(ConfigError, match=r"tokenize\.codebook_size: unknown key"):
        load_config(p)


def test_a_removed_key_names_its_replacement(tmp_path):
    """One history-exclusion knob: the CF stage's own copy is gone, and a YAML still setting it
    is told where the setting lives now."""
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  cf:\n    exclude_history: false\n")
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*embed\.cf\.exclude_history: removed; use precache\.exclude_history"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"use precache\.exclude_history"):
        load_config(None, ["embed.cf.exclude_history=true"])
    assert load_config(None, ["precache.exclude_history=false"]).precache.exclude_history is False


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"prepare\.max_len: .*integer.*'twenty'"):
        load_config(None, ["prepare.max_len=twenty"])
    with pytest.raises(ConfigError, match=r"tokenize\.levels"):
        load_config(None, ["tokenize.levels=0"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["tokenize.levels"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_config_hash_changes_with_content():
    a, b = PipelineConfig(), load_config(None, ["tokenize.levels=3"])
    assert a.config_hash() == PipelineConfig().config_hash() != b.config_hash()


def test_local_paths_become_absolute_for_ray_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(None, ["run_dir=runs/x", "finetune.deepspeed_config=configs/deepspeed_zero2.json"])
    assert cfg.run_dir == str(REPO / "runs" / "x")
    assert cfg.finetune.deepspeed_config == str(REPO / "configs" / "deepspeed_zero2.json")
    assert cfg.finetune.base_model == "smollm2-135m"  # a bundled name is not a path
    assert load_config(None, ["run_dir=s3://bucket/run"]).run_dir == "s3://bucket/run"

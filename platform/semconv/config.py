"""The pipeline config: one YAML file, one section per stage, validated by pydantic.

Every field has a default that runs the embedded demo, so ``PipelineConfig()`` is the demo.
``load_config(path, ["tokenize.levels=3"])`` applies ``key.sub=value`` overrides (values are
parsed as YAML, so ``true``/``3``/``[1, 5]`` get their types). Unknown keys and wrong types raise
:class:`ConfigError` naming the key path; a removed key (:data:`REMOVED`) names its replacement.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from semconv.data.config import PrepareConfig
from semconv.embed.config import EmbedConfig
from semconv.evaluate.config import EvaluateConfig
from semconv.finetune.config import FinetuneConfig
from semconv.inference.config import PrecacheConfig
from semconv.refresh.config import RefreshConfig
from semconv.schema import Section
from semconv.tasks.config import TasksConfig
from semconv.tokenize.config import TokenizeConfig


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


class RayConfig(Section):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None: all)")


_PATH_FIELDS = [("prepare", "dataset"), ("prepare", "interactions"), ("prepare", "items"),
                ("embed", "item_embeddings"), ("embed", "text_model"),
                ("finetune", "base_model"), ("finetune", "deepspeed_config"),
                ("refresh", "interactions"), ("refresh", "items")]


def _absolute(value: str, must_exist: bool) -> str:
    """``value`` made absolute when it is a local path (not a URI, not a bundled model name)."""
    if "://" in value or os.path.isabs(value):
        return value
    if must_exist and not os.path.exists(value):
        return value  # a model name such as "smollm2-135m", or a path the stage will report
    return os.path.abspath(value)


class PipelineConfig(Section):
    run_dir: str = Field("runs/demo", description="local path or pyarrow.fs URI (s3://, gs://)")
    seed: int = 0
    on_change: Literal["rebuild", "error"] = Field(
        "rebuild", description="a rerun whose config changed what a stage's artifacts depend on: "
        "rebuild that stage and its downstream, or stop with the changed key (semconv.lineage)")
    ray: RayConfig = RayConfig()
    prepare: PrepareConfig = PrepareConfig()
    embed: EmbedConfig = EmbedConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    tasks: TasksConfig = TasksConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    precache: PrecacheConfig = PrecacheConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    refresh: RefreshConfig = RefreshConfig()

    @model_validator(mode="after")
    def _absolute_local_paths(self) -> PipelineConfig:
        """Make local paths absolute: Ray workers run in other directories than the driver."""
        object.__setattr__(self, "run_dir", _absolute(self.run_dir, must_exist=False))
        for section, field in _PATH_FIELDS:
            sec = getattr(self, section)
            value = getattr(sec, field)
            if value is not None:
                object.__setattr__(sec, field, _absolute(value, must_exist=True))
        return self

    def config_hash(self) -> str:
        """A stable short hash of the whole config, recorded in the report (which artifacts are
        current is decided per stage by :mod:`semconv.lineage`, not by this hash)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (a copy); values are parsed as YAML."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return out


REMOVED = {  # a key that no longer exists -> what replaces it (named in the error, not "unknown key")
    "embed.cf.exclude_history": "precache.exclude_history, the one history-exclusion rule of every "
                                "system (semconv.protocol)",
}


def _check_removed(raw: dict[str, Any], source: str) -> None:
    for key, instead in REMOVED.items():
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            raise ConfigError(f"invalid config ({source}):\n  {key}: removed; use {instead}")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    _check_removed(raw, source)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return validate_config(apply_overrides(raw, overrides), source)

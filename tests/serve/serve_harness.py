"""Start the app from ``cluster/serve.yaml`` on a local Ray, the way ``serve deploy`` does."""

from __future__ import annotations

import copy
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVE_YAML = REPO / "cluster" / "serve.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(run_dir: str, cache_dir: str, user_config: dict[str, Any] | None = None,
               replicas: tuple[int, int] = (1, 1), autoscaling: dict[str, Any] | None = None,
               num_cpus: float = 0.25, **args: Any) -> dict:
    """The application from cluster/serve.yaml, pointed at a test run dir, sized for 2 CPUs.

    Every deployment listed there gets ``replicas`` (min, max) and ``autoscaling`` overrides for
    the ingress, ``num_cpus`` each and the same ``user_config``.
    """
    app = copy.deepcopy(yaml.safe_load(SERVE_YAML.read_text())["applications"][0])
    app["args"].update(run_dir=run_dir, cache_dir=cache_dir, **args)
    for i, dep in enumerate(app["deployments"]):
        dep["ray_actor_options"] = {"num_cpus": num_cpus}
        lo, hi = replicas if i == 0 else (1, 1)
        dep["autoscaling_config"].update(min_replicas=lo, initial_replicas=lo, max_replicas=hi,
                                         **((autoscaling or {}) if i == 0 else {}))
        dep["user_config"] = {"run_dir": None, "precache": None, **(user_config or {})}
    return app


@dataclass
class Served:
    url: str
    prefix: str = ""  # the deployed app's route_prefix ("" for "/")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, trust_env=False, **kw)

    def deploy(self, app: dict, wait_version: str | None = None, timeout: float = 60, settled: bool = True) -> None:
        """Apply a config like ``serve deploy`` (the controller's apply_config) and wait until
        the app answers (``wait_version``) and, when ``settled``, every rollout is over."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        from ray import serve

        def deployed_at() -> float | None:
            status = serve.status().applications.get(app["name"])
            return status.last_deployed_time_s if status else None

        before = deployed_at()
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
        deadline = time.monotonic() + timeout
        while deployed_at() == before and time.monotonic() < deadline:  # the controller took the config
            time.sleep(0.2)
        self.prefix = app.get("route_prefix", "/").rstrip("/")
        self.wait_ready(wait_version, timeout)
        if settled:
            settle(timeout)


    def wait_ready(self, version: str | None = None, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        with self.client() as c:
            while time.monotonic() < deadline:
                try:
                    r = c.get(f"{self.prefix}/readyz")
                    last = r.text
                    if r.status_code == 200 and (version is None or r.json()["version"] == version):
                        return r.json()
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.2)
        raise TimeoutError(f"app not ready (version {version}) after {timeout}s: {last}\n{deploy_messages()}")


def settle(timeout: float = 60) -> None:
    """Wait until every deployment is HEALTHY with only RUNNING replicas (a rollout finished), seen
    twice a second apart: /readyz alone can answer from the old replicas while new ones start."""
    from ray import serve

    deadline, calm = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        deps = [d for a in serve.status().applications.values() for d in a.deployments.values()]
        settled = deps and all(d.status == "HEALTHY" and set(d.replica_states) <= {"RUNNING"} for d in deps)
        calm = calm + 1 if settled else 0
        if calm >= 2:
            return
        time.sleep(1)
    raise TimeoutError(f"deployments did not settle in {timeout}s:\n{deploy_messages()}")


def deploy_messages() -> str:
    """What ``serve status`` says about each deployment (why a deploy failed)."""
    from ray import serve

    return "\n".join(f"{app}/{name}: {d.status} {d.message}" for app, a in serve.status().applications.items()
                     for name, d in a.deployments.items())


def start_serve(port: int) -> Served:
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return Served(f"http://127.0.0.1:{port}")


def serve_test_app(root: Path, base_model: Path | None = None) -> Served:
    """Run dirs under ``root`` (``run``: version :data:`V1` with precache v1 plus ``precache_v2``;
    ``run_v2``: version :data:`V2`, another catalogue, codes and codebook) and Serve on a free
    port; with ``base_model``, ``run`` gets a tiny fine-tuned ``model/`` on it.
    ``served.config(user_config, **overrides)`` is its application config (small limits)."""
    from .serve_fixtures import V2, make_run_dir, write_precache

    rd = make_run_dir(root / "run")
    write_precache(rd, "precache_v2", offset=5, version="v2")
    if base_model is not None:
        from .generation_fixtures import write_model

        write_model(rd, base_model)
    s = start_serve(free_port())
    s.run_dir, s.run_v2, s.cache = rd, make_run_dir(root / "run_v2", V2), str(root / "cache")
    s.config = lambda uc=None, **kw: app_config(rd.uri, s.cache, uc, **{"max_batch": 4, "max_body_bytes": 65536, **kw})
    return s

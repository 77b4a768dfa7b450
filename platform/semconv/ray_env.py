"""Starting or joining Ray from a job (the one place that calls ``ray.init``), and the run
configuration every Ray Train trainer here shares, and how a Ray Data task reads a shared argument."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import semconv


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (a cluster, or 'auto' inside ``ray job submit``) or start a local Ray.

    Workers get the package on ``PYTHONPATH`` so a plain checkout works without installing. What
    they print reaches the driver through :func:`semconv.console.capture_worker_output`.
    """
    import ray

    if ray.is_initialized():
        return
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = "auto"
    pkg_root = str(Path(semconv.__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    kwargs = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
    if address is None:
        # "local" always starts a fresh instance: a bare ray.init() would join whatever cluster
        # /tmp/ray/ray_current_cluster names on a shared machine.
        # the dashboard hosts the state API that Ray Train's placement-group cleaner polls
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    from semconv.console import capture_worker_output

    capture_worker_output()


def resolve(x: Any) -> Any:
    """A Ray Data task's keyword argument: put once in the object store by the driver (an
    ``ObjectRef``: shared by every task without a copy per task) or passed as is."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def train_run_config(name: str, storage_path: str, max_failures: int):
    """Ray Train ``RunConfig``: checkpoints in ``storage_path/name`` (the last two kept) and the
    worker group restarted up to ``max_failures`` times, so a re-run resumes where it stopped.

    ``storage_path`` is a local path or a ``pyarrow.fs`` URI; a URI's options (``?endpoint_override=``
    for an S3-compatible store) travel as the filesystem object, which Ray Train uses as given.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from semconv.artifacts import filesystem

    fs, path, local = filesystem(storage_path)
    return RunConfig(name=name, storage_path=path if not local else storage_path,
                     storage_filesystem=None if local else fs,
                     failure_config=FailureConfig(max_failures=max_failures),
                     checkpoint_config=CheckpointConfig(num_to_keep=2))

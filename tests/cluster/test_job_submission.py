"""Jobs for real: `ray job submit` against a local head, and data stages on a 2-node cluster."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from semconv.artifacts import RunDir

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_lcrec(root: Path, users: int = 40, items: int = 24) -> Path:
    """A small LC-Rec dataset: user u walks items u, u+1, ... (mod items), 6 steps."""
    d = root / "Tiny"
    d.mkdir(parents=True)
    inter = {str(u): [(u + j) % items for j in range(6)] for u in range(users)}
    meta = {str(i): {"title": f"Item {i} relay kit.", "description": f"Lab glass {i}.",
                     "brand": "Acme", "categories": "Lab,Glass"} for i in range(items)}
    (d / "Tiny.inter.json").write_text(json.dumps(inter))
    (d / "Tiny.item.json").write_text(json.dumps(meta))
    return d


def kill_cluster(temp_dir: str) -> None:
    """Stop only the Ray processes of this head (never `ray stop`: it kills every Ray here)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port, dash = free_port(), free_port()
    # Ray 2.60 enables token auth on `ray start`: give the head and every client one token.
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
         "--disable-usage-stats",
         # every agent port explicit: the defaults (e.g. 52365) clash with other Rays on the host
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--ray-client-server-port={free_port()}"],
        check=True, env=env, capture_output=True, timeout=180,
    )
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_a_small_pipeline(ray_head, tmp_path):
    address, env = ray_head
    data = write_tiny_lcrec(tmp_path / "data")
    run_dir = tmp_path / "run"
    runtime_env = {"excludes": [".venv", ".git", "runs", "**/__pycache__", "/data"]}
    cmd = [RAY, "job", "submit", f"--address={address}", "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--",
           sys.executable, "jobs/pipeline.py", "--config", "configs/demo.yaml",
           "--stages", "prepare", f"run_dir={run_dir}", f"prepare.dataset={data}",
           "ray.address=auto"]
    deadline = time.monotonic() + 240
    while True:  # the head's job agent comes up a little after `ray start` returns
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert "== prepare done" in proc.stdout  # the driver's output came back through the job
    run = RunDir(run_dir)
    assert run.manifest("sequences")["stats"]["users"] == 40
    assert run.manifest("splits")["rows_per_split"]["test"] == 40
    listed = subprocess.run([RAY, "job", "list", f"--address={address}"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "SUCCEEDED" in listed.stdout

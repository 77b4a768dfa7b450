"""Data stages on a simulated 2-node Ray cluster: the work really spreads over both nodes."""

from __future__ import annotations

import pytest

from semconv.artifacts import RunDir
from semconv.config import load_config

from .test_job_submission import free_port, write_tiny_lcrec  # noqa: F401


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a session Ray from another test module: this test needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_sharded_prepare_spreads_over_two_nodes(two_node_cluster, tmp_path):
    """The sharded path's own tasks run on both nodes and its tables are the in-memory path's (the
    driver writes; workers never need the driver's disk)."""
    from ray.util.state import list_tasks

    from semconv.data.prepare import run_prepare

    for path in ("off", "on"):  # the demo dataset: 8,317 users
        run_prepare(load_config(None, [f"run_dir={tmp_path / path}", f"prepare.ray_data={path}",
                                       "prepare.num_blocks=4"]))
    for name in ("items", "sequences", "splits"):
        assert RunDir(tmp_path / "off").read_table(name).equals(RunDir(tmp_path / "on").read_table(name)), name
    tasks = list_tasks(detail=True, limit=10_000)
    for op in ("MapBatches(_scan)", "MapBatches(_sequences)"):
        assert len({t.node_id for t in tasks if t.name == op and t.state == "FINISHED"}) == 2, op

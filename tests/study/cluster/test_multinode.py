"""A sweep across two Ray nodes on this one machine: each trial runs on its own node, tagged with its node id.

Two ``ray start`` processes (a head and a second node that joins it) make a real two-node cluster. Local
``--storage`` works here only because both nodes share this machine's filesystem; on a real cluster a
trial's checkpoint is written by the node that runs it, so storage must be shared (s3:// or NFS).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from helpers.processes import TINY_SWEEP, cli_env, free_port, run_cli, spawn, stop_group
from mlflow import MlflowClient

pytestmark = pytest.mark.cluster

RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
START_TIMEOUT_S = 120
NODES_SCRIPT = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.WARNING, log_to_driver=False)
print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]))
"""


def _start_node(args: list[str], log_path) -> subprocess.Popen:
    """``ray start ... --block`` in a process group of its own, so teardown can kill exactly this node."""
    with open(log_path, "wb") as log:
        return spawn([*RAY_CLI, "start", *args, "--disable-usage-stats", "--block"], stdout=log,
                     stderr=subprocess.STDOUT)


def _tail(path, n=2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_for_two_nodes(address: str, nodes: list[subprocess.Popen], logs) -> None:
    """Poll ``ray status`` until it counts 2 CPUs and shows the second node's custom resource."""
    deadline = time.monotonic() + START_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        for node, log in zip(nodes, logs, strict=True):
            assert node.poll() is None, f"a Ray node exited early:\n{_tail(log)}"
        status = subprocess.run([*RAY_CLI, "status", f"--address={address}"], env=cli_env(), capture_output=True,
                                text=True, timeout=60)
        if status.returncode == 0 and "/2.0 CPU" in status.stdout and "second_node" in status.stdout:
            return
        time.sleep(1)
    raise AssertionError(f"the two-node cluster did not come up in {START_TIMEOUT_S} s:\n"
                         f"{status.stdout if status else ''}\n{status.stderr[-1000:] if status else ''}\n"
                         + "\n".join(_tail(log) for log in logs))


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head (1 CPU) and a second node (1 CPU, custom resource ``second_node``) as separate processes.

    Teardown SIGKILLs exactly these two process groups (raylet, GCS, workers live in them) and removes their
    temp dir; never ``ray stop``, which would kill every Ray cluster on the machine, other tests' included.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Short, private temp dirs: socket paths under them must stay below ~107 characters, and a private dir
    # keeps /tmp/ray/ray_current_cluster from pointing at this short-lived cluster.
    temp_root = tempfile.mkdtemp(prefix="ray-mn-", dir="/tmp")
    logs = [tmp_path / "head.log", tmp_path / "second.log"]
    nodes: list[subprocess.Popen] = []
    # --dashboard-agent-listen-port=0: two nodes on one machine (and other tests' clusters) would all want 52365
    try:
        nodes.append(_start_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                  "--dashboard-agent-listen-port=0", f"--temp-dir={temp_root}/h"], logs[0]))
        nodes.append(_start_node([f"--address={address}", "--num-cpus=1", '--resources={"second_node": 1}',
                                  "--dashboard-agent-listen-port=0", f"--temp-dir={temp_root}/w"], logs[1]))
        _wait_for_two_nodes(address, nodes, logs)
        yield address
    finally:
        for node in reversed(nodes):
            stop_group(node)
        shutil.rmtree(temp_root, ignore_errors=True)


def _alive_nodes(address: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address], env=cli_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_trials_run_on_two_nodes(two_node_cluster, dsprites_npz, tmp_path):
    """Each node has 1 CPU and each trial asks for 1 CPU, so Ray must place one trial on each node.

    The CPU counts steer the trials; the custom resource ``second_node`` only marks which node joined, so
    the test can tell them apart. Both nodes see the same local ``--storage`` and data folder because they
    share this machine's filesystem.
    """
    address = two_node_cluster
    nodes = _alive_nodes(address)
    assert len(nodes) == 2, nodes
    assert sum("second_node" in n["resources"] for n in nodes) == 1, nodes

    proc = run_cli(["disentangle", "--quick", "--iterations", "10", *TINY_SWEEP, "--set", "eval_every=10",
                    "--set", "checkpoint_every=10", "--data-dir", dsprites_npz, "--address", address,
                    "--storage", tmp_path / "rr", "--name", "multinode"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"joined the Ray cluster at {address}" in proc.stdout
    assert "2 of 2 trials finished" in proc.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multinode")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")
    assert len(runs) == 2
    assert all(run.info.status == "FINISHED" for run in runs)
    node_tags = [run.data.tags.get("node_id") for run in runs]
    assert set(node_tags) == {n["id"] for n in nodes}, (node_tags, nodes)  # two different ids: one per node

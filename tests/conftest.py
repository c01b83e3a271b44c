"""Shared fixtures: tiny official-format data sets, one Ray head for the CLI tests, and the leak check.

The writers live in ``helpers/datasets.py`` and the process helpers in ``helpers/processes.py``; tests import
those modules, never this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from helpers.datasets import (
    DSPRITES_NPZ_NAME,
    tiny_mnist_arrays,
    write_dsprites_npz,
    write_mnist_raw,
    write_mvtec_category,
    write_ucsd_ped1,
)
from helpers.processes import (
    MARKER,
    SESSION_ID,
    TINY_SWEEP,
    cli_env,
    copy_mlflow_store,
    free_port,
    leftover_processes,
    run_cli,
    spawn,
    stop_group,
)

# Every process this suite starts, however it is started, inherits the marker (see helpers/processes.py).
os.environ[MARKER] = SESSION_ID
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as in cli_env: no posts from the tests' own clients
LEAK_GRACE_S = 15  # Ray workers notice their head's death within a few seconds


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite():
    """Set up first, torn down last: after every other fixture has stopped its processes, none may remain."""
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for line in left:
        try:
            os.kill(int(line.split()[0]), 9)
        except ProcessLookupError:
            pass
    assert not left, "processes started by the suite are still running:\n" + "\n".join(left)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty MLflow SQLite store with its tables created and migrated, made once per session.

    CLI tests start from a copy (``mlflow_db``, or ``copy_mlflow_store`` for module fixtures) instead of
    each paying ~3 s for a new store; the ``quick_sweep`` fixture still lets the CLI create its own.
    """
    from mlflow import MlflowClient  # imported here: the data-set fixtures do not need it

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creating the store creates and migrates its tables
    return path


@pytest.fixture
def mlflow_db(mlflow_template, tmp_path):
    """The URI of ``tmp_path/mlflow.db``, a copy of the migrated empty store, where a CLI run in ``tmp_path`` logs."""
    return copy_mlflow_store(mlflow_template, tmp_path)


@pytest.fixture(scope="session")
def dsprites_npz(tmp_path_factory):
    """A directory holding a tiny (384-image) official-format dSprites npz under its official file name."""
    directory = tmp_path_factory.mktemp("dsprites")
    write_dsprites_npz(directory / DSPRITES_NPZ_NAME)
    return directory


@pytest.fixture
def make_dsprites_npz():
    """The writer itself, for tests that need a variant (other grid, missing keys, wrong image size)."""
    return write_dsprites_npz


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray head (2 CPUs, 1 declared GPU, no dashboard, token auth off) for every CLI test.

    The GPU is only declared (this machine has none): Ray packs fractional-GPU trials by it, and the
    trainable falls back to the CPU and tags the run, which is what the packing test checks.
    """
    port = free_port()
    # A private temp dir keeps this head out of /tmp/ray/ray_current_cluster, which would otherwise point
    # later `study.run` invocations on this machine at a cluster that no longer exists. Short: socket paths
    # under it must stay below ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-tests-", dir="/tmp")
    head = spawn([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
                  "--num-gpus=1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                  "--block"])
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        probe = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"],
                               env=cli_env(), capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if head.poll() is not None or time.monotonic() > deadline:
            stop_group(head)
            raise RuntimeError(f"Ray head did not start: {probe.stderr[-500:]}")
        time.sleep(1)
    yield address
    # Every process of this head (gcs_server, raylet, workers) shares its new process group. A graceful
    # SIGTERM takes ~33 s; the cluster holds nothing worth saving by then, so the group is killed.
    stop_group(head)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def quick_sweep(ray_address, dsprites_npz, tmp_path_factory):
    """A finished quick-sized disentangle sweep on the tiny official-format npz, shared by several tests."""
    workdir = tmp_path_factory.mktemp("quick_sweep")
    name = "quick-test"
    proc = run_cli(["disentangle", "--quick", "--iterations", "20", *TINY_SWEEP, "--data-dir", dsprites_npz,
                    "--address", ray_address, "--storage", workdir / "ray_results", "--name", name], cwd=workdir)
    return {"proc": proc, "workdir": workdir, "name": name, "storage": workdir / "ray_results",
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "data_dir": dsprites_npz}


# ----------------------------------------------------------------------------------------------------
# Anomaly-detection data sets: MNIST IDX files, MVTec AD and UCSD Ped1 folders in their official layouts
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mnist_arrays():
    return tiny_mnist_arrays()


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory, mnist_arrays):
    """A root with 30 train + 20 test random 28x28 images as gzipped IDX files in ``MNIST/raw``."""
    return write_mnist_raw(tmp_path_factory.mktemp("mnist"), mnist_arrays, gz=True)


@pytest.fixture
def make_mnist_raw():
    """The IDX writer itself, for plain (ungzipped), partial or malformed variants."""
    return write_mnist_raw


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory):
    """Root with 'bottle' (RGB: 4 train, 2 test good, 2 broken_large) and 'grid' (grayscale, L-mode PNGs).

    ``mvtec_root.files[category]`` maps relative image paths to (pixels, mask) as written.
    """
    root = tmp_path_factory.mktemp("mvtec")
    files = {
        "bottle": write_mvtec_category(root, "bottle", "RGB", seed=1),
        "grid": write_mvtec_category(root, "grid", "L", n_train=2, n_good=1, defects=(("bent", 1),), seed=2),
    }
    return root, files


@pytest.fixture
def make_mvtec_category():
    return write_mvtec_category


@pytest.fixture(scope="session")
def ucsd_root(tmp_path_factory):
    """Root holding Train001 (3 frames), Test001 (3 frames + Test001_gt, 3 masks) and Test002 (2, no gt).

    Returns (root, {relative path: pixels}).
    """
    root = tmp_path_factory.mktemp("ucsd")
    return root, write_ucsd_ped1(root)


@pytest.fixture
def make_ucsd_ped1():
    return write_ucsd_ped1

"""Shared fixtures. Tests never download anything: data sets are tiny files written here."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

DSPRITES_NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
# colour, shape, scale, orientation, posX, posY: 1*3*2*4*4*4 = 384 images (official: 1, 3, 6, 40, 32, 32)
TINY_DSPRITES_SIZES = (1, 3, 2, 4, 4, 4)


def write_dsprites_npz(path, sizes=TINY_DSPRITES_SIZES, seed=0, drop=(), imgs_hw=(64, 64)):
    """Write an official-format dSprites npz (compressed, metadata pickled) on the grid ``sizes``.

    Images are random 0/1 bits (seeded), so any row mix-up in a loader shows as a mismatch. ``drop`` omits
    keys and ``imgs_hw`` changes the image size, for tests of malformed files.
    """
    n = math.prod(sizes)
    # Canonical order: posY varies fastest, colour slowest, exactly as the official file.
    classes = np.stack(np.unravel_index(np.arange(n), sizes), axis=1).astype(np.int64)
    value_axes = [
        np.ones(1), np.arange(1.0, sizes[1] + 1), np.linspace(0.5, 1.0, sizes[2]),
        np.linspace(0.0, 2 * np.pi, sizes[3]), np.linspace(0.0, 1.0, sizes[4]),
        np.linspace(0.0, 1.0, sizes[5]),
    ]
    values = np.stack([axis[classes[:, i]] for i, axis in enumerate(value_axes)], axis=1)
    names = ("color", "shape", "scale", "orientation", "posX", "posY")
    metadata = {
        "date": "April 2017",
        "description": "Disentanglement test Sprites dataset (tiny test copy).",
        "version": 1,
        "latents_names": names,
        "latents_possible_values": dict(zip(names, value_axes, strict=True)),
        "latents_sizes": np.array(sizes, dtype=np.int64),
        "author": "test fixture",
        "title": "dSprites dataset",
    }
    arrays = {
        "imgs": np.random.default_rng(seed).integers(0, 2, size=(n, *imgs_hw), dtype=np.uint8),
        "latents_values": values,
        "latents_classes": classes,
        "metadata": np.array(metadata, dtype=object),  # 0-d object array, pickled inside the npz
    }
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


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


# ----------------------------------------------------------------------------------------------------
# Ray and the study CLI
# ----------------------------------------------------------------------------------------------------

# Test-size overrides: ~20 iterations, 100/50 votes, small discriminator (the update logic is size-free).
TINY_SWEEP = [
    "--set", "report_every=5", "--set", "checkpoint_every=10", "--set", "eval_every=20",
    "--set", "metric_num_train=100", "--set", "metric_num_eval=50", "--set", "metric_num_variance=500",
    "--set", "seed_metric_votes=50", "--set", "seed_metric_batch_size=20", "--set", "figure_images=2",
    "--set", "batch_size=16", "--set", "d_hidden_units=64", "--set", "d_hidden_layers=2",
    "--set", "pairs=random_pair",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}


def run_cli(args, cwd, timeout=300, check=False):
    """``python -m study.run ARGS`` as a real process; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "study.run", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray head (2 CPUs, no dashboard, token auth off) for every CLI test, via --address."""
    port = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        probe = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "status", f"--address={address}"],
                               env=cli_env(), capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            raise RuntimeError(f"Ray head did not start: {probe.stderr[-500:]}")
        time.sleep(1)
    yield address
    # Every process of this head (gcs_server, raylet, workers) shares its new process group. A graceful
    # SIGTERM takes ~33 s; the cluster holds nothing worth saving by then, so the group is killed.
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)


@pytest.fixture(scope="session")
def quick_sweep(ray_address, dsprites_npz, tmp_path_factory):
    """A finished quick-sized disentangle sweep on the tiny official-format npz, shared by several tests."""
    workdir = tmp_path_factory.mktemp("quick_sweep")
    name = "quick-test"
    proc = run_cli(["disentangle", "--quick", "--iterations", "20", *TINY_SWEEP, "--data-dir", dsprites_npz,
                    "--address", ray_address, "--storage", workdir / "ray_results", "--name", name], cwd=workdir)
    return {"proc": proc, "workdir": workdir, "name": name, "storage": workdir / "ray_results",
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "data_dir": dsprites_npz}

"""Shared fixtures. Tests never download anything: data sets are tiny files written here."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def free_port() -> int:
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


POLL_S = 0.02  # fast enough to catch a 66 MB checkpoint copy in progress


def start_cli(args, cwd, log_name="driver"):
    """``python -m study.run ARGS`` in its own session (so its whole group can be killed); output to files."""
    cwd = Path(cwd)
    out = open(cwd / f"{log_name}.out", "a")  # the caller closes proc.logs once the process has ended
    err = open(cwd / f"{log_name}.err", "a")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=out, stderr=err, start_new_session=True)
    proc.logs = (out, err)
    return proc


def kill_when(args, cwd, condition, timeout=180, log_name="driver"):
    """Start the driver, SIGKILL its process group as soon as ``condition()`` is truthy; return that value.

    The trial workers belong to the shared Ray head, not to the driver's group: Ray ends them when their
    driver dies, whatever they were doing (training, or copying a checkpoint into storage).
    """
    proc = start_cli(args, cwd, log_name)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = condition()
            if hit:
                return hit
            if proc.poll() is not None:
                raise AssertionError(f"the driver ended (exit {proc.returncode}) before it could be killed; "
                                     f"see {cwd}/{log_name}.err")
            time.sleep(POLL_S)
        raise AssertionError(f"condition never held within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in proc.logs:
            stream.close()


def kill_after_first_checkpoint(args, cwd, experiment_dir, timeout=240):
    """Start ``study.run ARGS``; SIGKILL its process group once Ray's experiment state lists a checkpoint."""
    def checkpoint_in_state() -> bool:
        return any("checkpoint_0000" in _read(state) for state in Path(experiment_dir).glob("experiment_state-*.json"))

    kill_when(args, cwd, checkpoint_in_state, timeout=timeout)


def _read(path) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # being replaced right now
        return ""


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
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
         "--num-gpus=1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
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

MNIST_TINY_COUNTS = {"train": 30, "t10k": 20}  # images per official split prefix; every digit 3x / 2x


def tiny_mnist_arrays(seed=0):
    """{'train'|'t10k': (images uint8 (N, 28, 28), labels uint8 (N,))}, each digit equally often, shuffled."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in MNIST_TINY_COUNTS.items():
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), labels)
    return arrays


def write_mnist_raw(root, arrays, gz=True, prefixes=("train", "t10k")):
    """Write ``arrays`` as big-endian IDX files (magic 2051 images / 2049 labels) under ``<root>/MNIST/raw``.

    ``gz=True`` writes ``<name>.gz`` as the MNIST mirrors serve them, else the plain files.
    """
    import gzip

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in prefixes:
        images, labels = arrays[prefix]
        for name, magic, arr in ((f"{prefix}-images-idx3-ubyte", 2051, images),
                                 (f"{prefix}-labels-idx1-ubyte", 2049, labels)):
            header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            payload = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload, mtime=0))
            else:
                (raw / name).write_bytes(payload)
    return root


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


MVTEC_TINY_SIDE = 32  # px; real images are 700-1024 px


def write_mvtec_category(root, category, mode="RGB", n_train=4, n_good=2, defects=(("broken_large", 2),),
                         seed=0, side=MVTEC_TINY_SIDE):
    """One category in the official MVTec AD layout: random PNGs, masks ``<name>_mask.png`` of 0/255 blocks.

    Returns {relative image path: (pixels uint8, mask uint8 0/255 or None)} for comparisons. Hidden junk
    (``.DS_Store``, an AppleDouble ``._000.png``) is added as the real archives have it.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    base = root / category
    written = {}

    def image(folder, i):
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        return pixels

    for i in range(n_train):
        written[f"train/good/{i:03d}.png"] = (image(base / "train" / "good", i), None)
    (base / "train" / "good").mkdir(parents=True, exist_ok=True)
    (base / "train" / "good" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    for i in range(n_good):
        written[f"test/good/{i:03d}.png"] = (image(base / "test" / "good", i), None)
    for defect, n in defects:
        masks = base / "ground_truth" / defect
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = image(base / "test" / defect, i)
            mask = np.zeros((side, side), dtype=np.uint8)
            top, left = rng.integers(0, side // 2, size=2)
            mask[top: top + 1 + side // 3, left: left + 1 + side // 4] = 255
            Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")
            written[f"test/{defect}/{i:03d}.png"] = (pixels, mask)
    (base / "test" / ".DS_Store").write_bytes(b"junk")
    return written


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


UCSD_FRAME_WH = (238, 158)  # width, height in px, as the official Ped1 TIFFs


def write_ucsd_ped1(root, train=(("Train001", 3),), test=(("Test001", 3), ("Test002", 2)),
                    gt=(("Test001", 3),), seed=0):
    """UCSD Ped1 in its official layout: ``<root>/UCSD_Anomaly_Dataset.v1p2/UCSDped1/{Train,Test}/...``.

    Frames are random grayscale TIFFs (238 x 158), masks 0/255 BMPs with one bright block. Returns
    {'<split dir>/<clip>/<file>': uint8 array} of everything written. An AppleDouble ``._Test001`` file in
    Test/ and ``._001.tif`` in each clip imitate the junk in the real archive.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = UCSD_FRAME_WH
    base = root / "UCSD_Anomaly_Dataset.v1p2" / "UCSDped1"
    written = {}
    for split_dir, clips, suffix in (("Train", train, ".tif"), ("Test", test, ".tif"), ("Test", gt, ".bmp")):
        for clip, n in clips:
            folder = base / split_dir / (f"{clip}_gt" if suffix == ".bmp" else clip)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(1, n + 1):
                if suffix == ".bmp":
                    arr = np.zeros((height, width), dtype=np.uint8)
                    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
                    arr[top: top + 40, left: left + 25] = 255
                else:
                    arr = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:03d}{suffix}")
                written[f"{split_dir}/{folder.name}/{i:03d}{suffix}"] = arr
            if suffix == ".tif":
                (folder / "._001.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (base / "Test").mkdir(parents=True, exist_ok=True)
    (base / "Test" / "._Test001").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    return written


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

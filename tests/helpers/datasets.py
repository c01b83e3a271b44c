"""Tiny data sets in their official on-disk formats, written by the tests (nothing is ever downloaded).

dSprites npz, MNIST IDX files, MVTec AD and UCSD Ped1 folders: each writer returns what it wrote so a test
can compare a loader's output with the pixels on disk.
"""

from __future__ import annotations

import math

import numpy as np

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


SKLEARN_DIGITS_BOX = 20  # px: the 8 x 8 digits are upscaled into MNIST's 20 x 20 box, centred in 28 x 28


def sklearn_digits_mnist_arrays(n_test_per_digit=40, seed=0):
    """Real handwriting in MNIST's format: scikit-learn's ``load_digits`` (1797 images, 8 x 8, values 0-16).

    Each image is scaled to [0, 1] (÷ 16), upscaled to 20 x 20 by bilinear interpolation
    (``torch.nn.functional.interpolate``, ``align_corners=False``), padded with a 4-px border to 28 x 28 (MNIST's
    20 x 20 box in a 28 x 28 frame) and quantised to uint8 (round(255 · v)). Per digit, ``n_test_per_digit``
    images chosen at random (``seed``) form 't10k', the rest 'train' (each split in the original order).
    Returns {'train'|'t10k': (images uint8 (N, 28, 28), labels uint8 (N,))}, the input of ``write_mnist_raw``.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    box = F.interpolate(small, size=(SKLEARN_DIGITS_BOX, SKLEARN_DIGITS_BOX), mode="bilinear", align_corners=False)
    border = (28 - SKLEARN_DIGITS_BOX) // 2
    images = (F.pad(box, (border,) * 4)[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        test[rng.choice(idx, size=min(n_test_per_digit, len(idx) // 2), replace=False)] = True
    return {"train": (images[~test], labels[~test]), "t10k": (images[test], labels[test])}


def write_sklearn_digits_mnist(root, n_test_per_digit=40, seed=0, gz=True):
    """Write ``sklearn_digits_mnist_arrays`` as the official MNIST IDX files under ``<root>/MNIST/raw``.

    The real loader (``vae_attention.data.mnist``) then reads real handwriting. Returns the arrays written.
    """
    arrays = sklearn_digits_mnist_arrays(n_test_per_digit, seed)
    write_mnist_raw(root, arrays, gz=gz)
    return arrays

"""Shared fixtures. Tests never download anything: data sets are tiny files written here."""

from __future__ import annotations

import math

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

"""Pasted MNIST: inlier test digits with a foreign element pasted in and its pixel mask (MNIST localisation).

MNIST has no pixel masks, so the paper's MNIST localisation claim is judged by eye. This module builds a test
set that has them: every test image of the inlier digit gets one foreign element pasted in, and the mask marks
exactly the pixels the paste changed. Inlier training is unchanged (the model never sees a pasted image).

Construction, for an inlier image x (float in [0, 1], 28 × 28; uint8 input is divided by 255) and a seed:

* Kinds. Of the N images, exactly ``round(stroke_fraction · N)`` (Python's round, half to even) get a *stroke*
  and the rest a *square*; which ones is a uniformly random permutation.
* Stroke (kind 0). Draw an image p uniformly from the outlier pool's images with at least ``min_patch_ink``
  ink pixels, where the *ink* of p is {p > ``ink_threshold``}, and a side s uniformly from ``patch_sizes``
  (inclusive). Draw an ink pixel of p uniformly and cut the s × s window centred on it (shifted inside the
  image where it would cross the border). The patch P keeps the window's ink values and is 0 elsewhere, so
  its footprint F = {P > 0} is exactly the window's ink.
  A window with fewer than ``min_patch_ink`` ink pixels is redrawn (new pool image, side and centre).
* Square (kind 1). P is a ``square_size`` × ``square_size`` block of value ``square_intensity``; F is the block.
* Location. The top-left corner of P is drawn uniformly over all positions inside the 28 × 28 image.
* Composition: x' = max(x, P) (ink over ink, as a pen adds strokes; P is 0 off its footprint).
* Mask: M = F ∩ {P > x} = {x' ≠ x}, the pixels the paste changed. Footprint pixels where the inlier was
  already at least as bright are unchanged and are not marked. Hence x' = x outside M and x' = P > x inside.
  A location where M covers less than ``min_visible`` of F (the element hides in the digit's own strokes) is
  redrawn; after ``max_tries`` draws the location with the largest M is kept.

Every image has its own random stream (``numpy.random.SeedSequence(seed).spawn``; stream 0 draws the kinds),
so the set is a deterministic function of (inliers, pool, seed, parameters) alone. Defaults: strokes and
squares half each, stroke windows 9–13 px, ink threshold 0.5 (of 1), ≥ 12 ink pixels per stroke, 5 × 5 squares
of intensity 1, ``min_visible`` 0.75, ``max_tries`` 50.

Reading pixel metrics on this set: the masked pixels are bright ink on a mostly black image, so pooled pixel
AUROC rewards any map that is high on ink; pixel intensity alone scores ≈ 0.89 on strokes of the scikit-learn
fixture. Restricting the pixels to ink (x' > 0.5) asks the harder question, pasted ink vs the digit's own ink.

Outlier pool. Stroke patches are cut from the MNIST *training* split's images of the outlier digits
(``eval_digits``; the report's choices are ``MNIST_EVAL_DIGITS``: 1 → {7, 4, 9, 2}, 3 → {8, 5}). The test
split's outlier images are the evaluation set's outliers (image AUROC on the clean test set), so cutting
strokes from them would put the same handwriting in two evaluation sets; the training split's outlier
digits are never used for training (one-class training reads the inlier digit only), so they are unseen by
the model and disjoint from every evaluation image. The pool never holds an image of the inlier digit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vae_attention.data.mnist import MNIST_EVAL_DIGITS, SIDE, _check_digit, load_mnist_split
from vae_attention.errors import ConfigError, DataError

STROKE, SQUARE = 0, 1
KINDS = ("stroke", "square")  # KINDS[kind code]

__all__ = ["KINDS", "SQUARE", "STROKE", "Pasted", "PastedMNIST", "paste_elements"]


class Pasted(NamedTuple):
    images: torch.Tensor  # float32 (N, 1, 28, 28) in [0, 1]: max(inlier, patch)
    masks: torch.Tensor  # bool (N, 1, 28, 28): the pixels the paste changed
    kinds: torch.Tensor  # int64 (N,): STROKE or SQUARE
    pool_index: torch.Tensor  # int64 (N,): the pool image a stroke was cut from, -1 for squares
    boxes: torch.Tensor  # int64 (N, 4): (top, left, height, width) of the pasted patch in the image
    crops: torch.Tensor  # int64 (N, 2): (top, left) of a stroke's window in its pool image, -1 for squares


def _as_unit_images(images, name: str) -> np.ndarray:
    """(N, 28, 28) uint8 (÷ 255) or float in [0, 1] → float32; a (N, 1, 28, 28) channel axis is dropped."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise ConfigError(f"{name} must be (N, {SIDE}, {SIDE}) images, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"{name} must be uint8 or float images, got {arr.dtype}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
        raise ConfigError(f"float {name} must lie in [0, 1]")
    return arr.astype(np.float32)


def _check_sizes(sizes, what: str) -> tuple[int, int]:
    lo, hi = (sizes, sizes) if isinstance(sizes, int) else tuple(sizes)
    if not 1 <= lo <= hi <= SIDE:
        raise ConfigError(f"{what}={sizes!r} must be a side or an inclusive (min, max) range within 1..{SIDE}")
    return int(lo), int(hi)


def _stroke_patch(pool: np.ndarray, ink: np.ndarray, ink_counts: np.ndarray, rng: np.random.Generator,
                  sizes: tuple[int, int], min_ink: int, max_tries: int) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(s × s patch: the window's ink values, 0 elsewhere; pool index; window top-left); module docstring."""
    candidates = np.flatnonzero(ink_counts >= min_ink)
    if candidates.size == 0:
        raise DataError(f"no outlier pool image has {min_ink} ink pixels; lower min_patch_ink or ink_threshold")
    for _ in range(max_tries):
        k = int(candidates[rng.integers(candidates.size)])
        side = int(rng.integers(sizes[0], sizes[1] + 1))
        rows, cols = np.nonzero(ink[k])
        j = int(rng.integers(rows.size))
        top = min(max(int(rows[j]) - side // 2, 0), SIDE - side)
        left = min(max(int(cols[j]) - side // 2, 0), SIDE - side)
        window = np.s_[top: top + side, left: left + side]
        patch = np.where(ink[k][window], pool[k][window], 0.0).astype(np.float32)
        if int((patch > 0).sum()) >= min_ink:
            return patch, k, (top, left)
    raise DataError(f"no stroke window with {min_ink} ink pixels in {max_tries} draws; lower min_patch_ink "
                    "or raise patch_sizes")


def _place(image: np.ndarray, patch: np.ndarray, rng: np.random.Generator, min_visible: float,
           max_tries: int) -> tuple[int, int]:
    """Top-left of ``patch`` such that ≥ ``min_visible`` of its footprint changes ``image``, else the best."""
    h, w = patch.shape
    footprint = patch > 0
    best, best_changed = None, -1
    for _ in range(max_tries):
        top, left = int(rng.integers(SIDE - h + 1)), int(rng.integers(SIDE - w + 1))
        changed = int((footprint & (patch > image[top: top + h, left: left + w])).sum())
        if changed >= min_visible * footprint.sum():
            return top, left
        if changed > best_changed:
            best, best_changed = (top, left), changed
    return best


def paste_elements(
    inliers,
    pool,
    seed: int = 0,
    *,
    stroke_fraction: float = 0.5,
    patch_sizes: int | tuple[int, int] = (9, 13),
    ink_threshold: float = 0.5,
    min_patch_ink: int = 12,
    square_size: int = 5,
    square_intensity: float = 1.0,
    min_visible: float = 0.75,
    max_tries: int = 50,
) -> Pasted:
    """The pasted copy of ``inliers`` (N, 28, 28) with stroke patches cut from ``pool`` (M, 28, 28).

    Both take uint8 (0–255) or float images in [0, 1]; ``pool`` must hold outlier digits only (the caller's
    duty; ``PastedMNIST`` selects it by label). Construction, parameters and mask: the module docstring.
    """
    x = _as_unit_images(inliers, "inliers")
    if not 0.0 <= stroke_fraction <= 1.0:
        raise ConfigError(f"stroke_fraction={stroke_fraction} must lie in [0, 1]")
    if not 0.0 < square_intensity <= 1.0:
        raise ConfigError(f"square_intensity={square_intensity} must lie in (0, 1]")
    if not 0.0 <= ink_threshold < 1.0 or not 0.0 <= min_visible <= 1.0 or min_patch_ink < 1 or max_tries < 1:
        raise ConfigError("need 0 <= ink_threshold < 1, 0 <= min_visible <= 1, min_patch_ink >= 1, max_tries >= 1")
    sizes = _check_sizes(patch_sizes, "patch_sizes")
    square_side = _check_sizes(square_size, "square_size")[0]
    n = x.shape[0]
    n_strokes = int(round(stroke_fraction * n))
    if n_strokes:
        p = _as_unit_images(pool, "pool")
        ink = p > ink_threshold
        ink_counts = ink.reshape(len(p), -1).sum(axis=1)

    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n + 1)]
    kinds = np.full(n, SQUARE, dtype=np.int64)
    kinds[streams[0].permutation(n)[:n_strokes]] = STROKE
    out, masks = x.copy(), np.zeros_like(x, dtype=bool)
    pool_index = np.full(n, -1, dtype=np.int64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    crops = np.full((n, 2), -1, dtype=np.int64)
    square = np.full((square_side, square_side), square_intensity, dtype=np.float32)
    for i in range(n):
        rng = streams[i + 1]
        if kinds[i] == STROKE:
            patch, pool_index[i], crops[i] = _stroke_patch(p, ink, ink_counts, rng, sizes, min_patch_ink, max_tries)
        else:
            patch = square
        top, left = _place(x[i], patch, rng, min_visible, max_tries)
        h, w = patch.shape
        window = np.s_[top: top + h, left: left + w]
        masks[i][window] = patch > x[i][window]
        out[i][window] = np.maximum(x[i][window], patch)
        boxes[i] = (top, left, h, w)
    return Pasted(torch.from_numpy(out).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1),
                  torch.from_numpy(kinds), torch.from_numpy(pool_index), torch.from_numpy(boxes),
                  torch.from_numpy(crops))


class PastedMNIST(Dataset):
    """The pasted copy of one-class MNIST's inlier test images (module docstring), from the official files.

    Inliers: the test split's images of ``digit`` in file order (those of ``MNISTOneClass(root, digit,
    "test")`` with label 0). Pool: the training split's images of ``eval_digits`` (``None``: the report's
    ``MNIST_EVAL_DIGITS[digit]``, else every other digit). ``paste`` keywords go to ``paste_elements``.

    Items: ``dict(image=float32 (1, 28, 28) in [0, 1], mask=float32 (1, 28, 28) of {0, 1}, label=1,
    digit=int, kind=int)`` (the mask layout of ``MVTecAD``; every pasted image is anomalous). Attributes:
    ``images``, ``masks`` (bool), ``kinds``, ``pool_index``, ``boxes`` and ``crops`` as ``Pasted``; ``pool_digits``
    (int64, M) the digit of every pool image and ``pool_source`` (int64, M) its index in the training split.
    """

    def __init__(self, root, digit: int, eval_digits: Iterable[int] | None = None, seed: int = 0, **paste):
        test_images, test_digits = load_mnist_split(root, "test")
        train_images, train_digits = load_mnist_split(root, "train")
        self._build(test_images, test_digits, train_images, train_digits, digit, eval_digits, seed, paste)
        self.root = Path(root)

    @classmethod
    def from_arrays(cls, test_images, test_digits, train_images, train_digits, digit: int,
                    eval_digits: Iterable[int] | None = None, seed: int = 0, **paste) -> PastedMNIST:
        """The same set from arrays as ``load_mnist_split`` returns them (test split, then training split)."""
        self = cls.__new__(cls)
        self._build(test_images, test_digits, train_images, train_digits, digit, eval_digits, seed, paste)
        self.root = None
        return self

    def _build(self, test_images, test_digits, train_images, train_digits, digit, eval_digits, seed, paste):
        self.digit = _check_digit(digit, "digit")
        if eval_digits is None:
            eval_digits = MNIST_EVAL_DIGITS.get(self.digit, tuple(d for d in range(10) if d != self.digit))
        self.eval_digits = tuple(dict.fromkeys(_check_digit(d, "eval_digits entry") for d in eval_digits))
        if self.digit in self.eval_digits or not self.eval_digits:
            raise ConfigError(f"eval_digits={self.eval_digits} must be non-empty and exclude the inlier {digit}")
        test_digits, train_digits = np.asarray(test_digits), np.asarray(train_digits)
        inliers = np.asarray(test_images)[test_digits == self.digit]
        self.pool_source = np.flatnonzero(np.isin(train_digits, self.eval_digits)).astype(np.int64)
        self.pool_digits = train_digits[self.pool_source].astype(np.int64)
        if len(inliers) == 0:
            raise DataError(f"no test images of the inlier digit {self.digit}")
        if len(self.pool_source) == 0:
            raise DataError(f"no training images of the outlier digits {self.eval_digits} for the stroke pool")
        self.seed = seed
        pasted = paste_elements(inliers, np.asarray(train_images)[self.pool_source], seed, **paste)
        self.images, self.masks, self.kinds, self.pool_index, self.boxes, self.crops = pasted

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index].to(torch.float32), "label": 1,
                "digit": self.digit, "kind": int(self.kinds[index])}

    def __repr__(self) -> str:
        strokes = int((self.kinds == STROKE).sum())
        return (f"PastedMNIST(digit={self.digit}, eval_digits={self.eval_digits}, seed={self.seed}, n={len(self)}, "
                f"strokes={strokes}, squares={len(self) - strokes}, pool={len(self.pool_source)})")

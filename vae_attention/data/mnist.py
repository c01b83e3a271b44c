"""One-class MNIST (LeCun et al. 1998) for anomaly detection: train on one digit, test against others.

Official layout (torchvision's): ``<root>/MNIST/raw/`` holding the four IDX files ``train-images-idx3-ubyte``
(60000 x 28 x 28), ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` (10000 x 28 x 28) and
``t10k-labels-idx1-ubyte``, each either plain or gzipped with a ``.gz`` suffix (the form the MNIST mirrors
serve). IDX is big-endian: a 4-byte magic (0x00000803 = 2051 for uint8 images of 3 dimensions,
0x00000801 = 2049 for uint8 labels of 1 dimension), one 4-byte size per dimension, then the raw bytes.

torchvision 0.29's ``MNIST(root, download=False)`` reads only the plain files (its reader calls ``open``;
the ``.gz`` files are decompressed by ``download`` alone) and requires all four of them. So when all four
plain files exist, torchvision loads the split; otherwise each of the split's two files is read here,
plain if present, else from its ``.gz`` in memory. Nothing is downloaded or written.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vae_attention.data.image_files import check_split
from vae_attention.errors import ConfigError, DataError

# The seed implementation's evaluation protocol: normal digit -> anomalous digits shown at test time.
MNIST_EVAL_DIGITS: dict[int, tuple[int, ...]] = {1: (7, 4, 9, 2), 3: (8, 5)}

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SIDE = 28  # image side, px


def raw_folder(root) -> Path:
    return Path(root) / "MNIST" / "raw"


def _read_bytes(raw: Path, name: str) -> tuple[bytes, Path]:
    plain, packed = raw / name, raw / f"{name}.gz"
    try:
        if plain.is_file():
            return plain.read_bytes(), plain
        if packed.is_file():
            with gzip.open(packed, "rb") as f:
                return f.read(), packed
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read MNIST file {plain if plain.is_file() else packed}: {err}") from err
    raise DataError(f"MNIST file not found: {plain} (or {packed.name}); expected the official IDX files there")


def parse_idx(data: bytes, magic: int, path: Path) -> np.ndarray:
    """A uint8 IDX payload as an array of the header's shape; the magic must be ``magic``."""
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise DataError(f"{path} is not an IDX file with magic {magic} (found {found})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path} holds {len(data) - header} bytes after its header but its shape is {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _validate(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{image_path} holds images of shape {images.shape[1:]}, expected ({SIDE}, {SIDE})")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{label_path} holds {labels.shape[0]} labels but {image_path} {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{label_path} holds label {int(labels.max())}; MNIST labels are 0-9")


def load_mnist_split(root, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), digits uint8 (N,)) of the official ``split`` ('train' or 't10k' files)."""
    raw = raw_folder(root)
    image_name, label_name = RAW_FILES[check_split(split)]
    image_path, label_path = raw / image_name, raw / label_name
    if all((raw / name).is_file() for pair in RAW_FILES.values() for name in pair):
        import torchvision  # deferred: only this path needs the datasets module

        try:
            tv = torchvision.datasets.MNIST(root, train=split == "train", download=False)
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as err:
            raise DataError(f"torchvision cannot read MNIST under {raw}: {type(err).__name__}: {err}"
                            .replace("\n", " ")) from err
        images, labels = tv.data.numpy(), tv.targets.numpy()
    else:
        data, image_path = _read_bytes(raw, image_name)
        images = parse_idx(data, IMAGE_MAGIC, image_path)
        data, label_path = _read_bytes(raw, label_name)
        labels = parse_idx(data, LABEL_MAGIC, label_path)
    _validate(images, labels, image_path, label_path)
    return images, labels.astype(np.uint8)


def _check_digit(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= 9:
        raise ConfigError(f"{what}={value!r} must be an integer digit 0-9")
    return int(value)


class MNISTOneClass(Dataset):
    """MNIST restricted to one normal ``digit`` (one-class anomaly detection).

    ``split="train"``: the training images of ``digit`` only. ``split="test"``: the test images of ``digit``
    (inliers, label 0) and of ``eval_digits`` (outliers, label 1); ``eval_digits=None`` means every other
    digit (the seed's choices are in ``MNIST_EVAL_DIGITS``). Order is the files' order.

    Items: ``dict(image=float32 (1, 28, 28) in [0, 1] (raw byte / 255), label=int 0/1, digit=int)``.
    ``labels`` (int64, N) and ``digits`` (int64, N) hold every item's label and digit, for image-level AUROC.
    """

    def __init__(self, root, digit: int, split: str = "train", eval_digits: Iterable[int] | None = None):
        self.root = Path(root)
        self.split = check_split(split)
        self.digit = _check_digit(digit, "digit")
        if eval_digits is None:
            chosen = tuple(d for d in range(10) if d != self.digit)
        else:
            if isinstance(eval_digits, int | np.integer):
                raise ConfigError(f"eval_digits={eval_digits!r} must be a collection of digits, e.g. (7, 4)")
            chosen = tuple(dict.fromkeys(_check_digit(d, "eval_digits entry") for d in eval_digits))
            if self.digit in chosen:
                raise ConfigError(f"eval_digits={tuple(eval_digits)!r} must not contain the normal digit {digit}")
        # Outliers exist only at test time; the train split is the normal digit alone.
        self.eval_digits = chosen if self.split == "test" else ()

        images, digits = load_mnist_split(self.root, self.split)
        keep = (digits == self.digit) | np.isin(digits, self.eval_digits)
        if not (digits == self.digit).any():
            raise DataError(f"no images of digit {self.digit} in the {self.split} split under {raw_folder(root)}")
        self.images = torch.from_numpy(np.ascontiguousarray(images[keep]))  # uint8 (N, 28, 28)
        self.digits = digits[keep].astype(np.int64)
        self.labels = (self.digits != self.digit).astype(np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict:
        image = self.images[index].unsqueeze(0).to(torch.float32).div_(255.0)
        return {"image": image, "label": int(self.labels[index]), "digit": int(self.digits[index])}

    def __repr__(self) -> str:
        outliers = int(self.labels.sum())
        return (f"MNISTOneClass(digit={self.digit}, split={self.split!r}, eval_digits={self.eval_digits}, "
                f"n={len(self)}, outliers={outliers})")

"""Image-file helpers of the on-disk data sets (MVTec AD, UCSD Ped1; MNIST for ``check_split``): listing,
decoding, resizing, and the checks of their shared arguments.

The data sets themselves live in ``mnist``, ``mvtec`` and ``ucsd``. Images are decoded with PIL and resized
with ``torchvision.transforms.v2.functional``: pictures bilinearly with antialiasing, masks by nearest
neighbour so they stay binary.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vae_attention.errors import ConfigError, DataError

# Mask files store 0 (normal) / 255 (anomalous); anything above mid-grey counts as anomalous.
MASK_THRESHOLD = 127


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: 'Test2' < 'Test10', '9.tif' < '10.tif'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def visible(directory: Path) -> list[Path]:
    """Entries of ``directory`` in natural order, skipping hidden names.

    Archives packed on macOS carry AppleDouble ``._name`` files and ``.DS_Store`` next to the real data
    (the official UCSD archive does); neither is data, and ``._001.tif`` would not even decode.
    """
    return sorted((p for p in directory.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def files_with_suffix(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Visible regular files of ``directory`` whose suffix (case-insensitive) is in ``suffixes``."""
    return [p for p in visible(directory) if p.is_file() and p.suffix.lower() in suffixes]


def check_image_size(image_size) -> int:
    """The side length in pixels of the square output, validated."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ConfigError(f"image_size={image_size!r} must be a positive integer (side of the square output, px)")
    return int(image_size)


def check_split(split) -> str:
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r} must be 'train' or 'test'")
    return split


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` with PIL and convert to ``mode`` ('RGB' or 'L'); unreadable files raise DataError."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}".replace("\n", " ")) from err


def image_tensor(path: Path, mode: str, image_size: int) -> torch.Tensor:
    """Float (C, S, S) in [0, 1] (C = 3 for 'RGB', 1 for 'L'), resized bilinearly with antialiasing.

    Resizing happens in float32 so no second 8-bit rounding is added; the antialiased bilinear kernel has
    non-negative weights, and the clamp only removes float round-off beyond [0, 1].
    """
    # imported here (and in mask_tensor): torchvision pulls in torch._dynamo (~2 s of start-up), which every
    # sweep driver and dSprites trial imports through this package but only image loading uses
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms.v2 import InterpolationMode

    x = F.to_dtype(F.pil_to_tensor(open_image(path, mode)), torch.float32, scale=True)
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.resize(x, [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return x.clamp_(0.0, 1.0)


def mask_tensor(path: Path, image_size: int) -> torch.Tensor:
    """Float (1, S, S) of {0, 1}: the mask file binarised at ``MASK_THRESHOLD`` then nearest-resized.

    NEAREST_EXACT samples the source pixel under each output pixel centre (as PIL's NEAREST does), so masks
    stay aligned with the bilinear (also centre-aligned) image resize; torchvision's plain NEAREST shifts the
    grid by up to one source pixel when downscaling.
    """
    import torchvision.transforms.v2.functional as F  # imported here: see image_tensor
    from torchvision.transforms.v2 import InterpolationMode

    m = (F.pil_to_tensor(open_image(path, "L")) > MASK_THRESHOLD).to(torch.uint8)
    if tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.resize(m, [image_size, image_size], interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)
    return m.to(torch.float32)

"""MVTec AD (Bergmann et al., CVPR 2019): 15 industrial categories with pixel-level defect masks.

Official layout (as unpacked from ``mvtec_anomaly_detection.tar.xz``)::

    <root>/<category>/train/good/000.png ...                  defect-free training images
    <root>/<category>/test/good/000.png ...                   defect-free test images (no masks)
    <root>/<category>/test/<defect>/000.png ...               defective test images, one folder per defect type
    <root>/<category>/ground_truth/<defect>/000_mask.png ...  their masks, 0 = normal / 255 = defect

Images are square PNGs (700-1024 px), RGB except the grayscale categories (grid, screw, zipper), which are
converted to 3 identical channels here so every category gives (3, H, W). Pixels are scaled to [0, 1] and
not ImageNet-normalised: the VAEs here are trained from scratch with a reconstruction loss on [0, 1]
pixels, so there is no pretrained backbone whose input statistics would need matching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vae_attention.data.image_files import (
    check_image_size,
    check_split,
    files_with_suffix,
    image_tensor,
    mask_tensor,
    visible,
)
from vae_attention.errors import ConfigError, DataError

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
    "tile", "toothbrush", "transistor", "wood", "zipper",
)
GOOD = "good"  # the defect-free folder name, in train/ and test/
IMAGE_SUFFIXES = (".png",)
MASK_SUFFIX = "_mask.png"

# Training augmentation: each flip with probability FLIP_PROBABILITY, then a rotation by an angle drawn
# uniformly from [-ROTATION_DEGREES, +ROTATION_DEGREES] (degrees, counter-clockwise positive) about the
# image centre; corners uncovered by the rotation are filled with 0 (black).
FLIP_PROBABILITY = 0.5
ROTATION_DEGREES = 10.0
# The report's augmentation (FACT-2021 expVAE_pl/MVTEC_Dataset.py: RandomHorizontalFlip(p=0.5), then
# RandomRotation(90): an angle uniform in [-90, 90] degrees, nearest interpolation, uncovered corners 0).
SEED_ROTATION_DEGREES = 90.0
AUGMENT_POLICIES = ("small", "seed")


class MVTecAD(Dataset):
    """One MVTec AD category in the official layout (see the module docstring); ``category`` may also name a
    folder of one's own data in that layout (not one of ``MVTEC_CATEGORIES``).

    ``split="train"``: ``train/good`` images (all label 0). ``split="test"``: every ``test/<defect>`` folder
    in sorted order (``good`` → label 0, any other → label 1); ``include_good=False`` drops ``test/good``
    (a protocol variant that scores defective images only). Images are resized to ``image_size`` square
    (bilinear, antialiased), masks by nearest neighbour so they stay {0, 1}; good images get all-zero masks.

    ``augment=True`` (train split only) applies random horizontal / vertical flips and a rotation of at most
    ``ROTATION_DEGREES`` to image and mask alike (``augment_policy="small"``), or the report's horizontal flip
    and rotation of at most ``SEED_ROTATION_DEGREES`` with nearest sampling (``augment_policy="seed"``).
    torchvision's v2 random transforms draw from the global
    torch RNG, so the parameters are drawn here from ``generator`` (a CPU ``torch.Generator``, required)
    and applied with the deterministic ``torchvision.transforms.v2.functional`` ops: the same generator
    seed and item order give the same augmented images. The generator advances with every item read; a
    DataLoader with workers copies the dataset into each worker, generator state included, so reseed it
    per worker (``worker_init_fn``) if workers must not repeat each other's draws. Note that flips turn
    some objects (e.g. transistor) into shapes that test sets label as defects; choose per category.

    ``channels=1`` reads the images as one grayscale channel; ``normalize=True`` maps pixels to [−1, 1] by
    (x − 0.5) / 0.5 after augmentation (the report's ``Normalize(0.5, 0.5)``; rotated-in corners become −1,
    as there). ``good_only=True`` keeps only ``test/good`` (the report's ``val_set``, its early-stopping set).

    Items: ``dict(image=float32 (3, S, S) in [0, 1], mask=float32 (1, S, S) of {0, 1}, label=int 0/1,
    defect=str, path=str)`` (C and the range as set by ``channels`` and ``normalize``).
    ``labels`` (int64, N) and ``defects`` (list of str) describe all items.
    """

    def __init__(self, root, category: str, split: str = "train", image_size: int = 256, augment: bool = False,
                 include_good: bool = True, generator: torch.Generator | None = None, *, channels: int = 3,
                 normalize: bool = False, augment_policy: str = "small", good_only: bool = False):
        # any folder in the layout is read (a user's own data, as anomalib's Folder data serves it); the study
        # notes once on the driver when the name is not one of MVTEC_CATEGORIES
        if not category or Path(category).name != category or category in (".", ".."):
            raise DataError(f"MVTec AD category {category!r} is not a folder name (e.g. one of: "
                            f"{', '.join(MVTEC_CATEGORIES)})")
        self.root = Path(root)
        self.category = category
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.include_good = bool(include_good)
        self.augment = bool(augment)
        if channels not in (1, 3) or augment_policy not in AUGMENT_POLICIES:
            raise ConfigError(f"MVTecAD needs channels 1 or 3 and augment_policy in {AUGMENT_POLICIES}, "
                              f"got {channels}, {augment_policy!r}")
        if good_only and (self.split != "test" or not include_good):
            raise ConfigError("MVTecAD good_only=True is for split='test' with include_good=True")
        self.channels, self.normalize, self.augment_policy = channels, bool(normalize), augment_policy
        self.good_only = bool(good_only)
        if self.augment:
            if self.split != "train":
                raise ConfigError("MVTecAD augment=True is for split='train'; test images are scored as they are")
            if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
                raise ConfigError(f"MVTecAD augment=True needs generator=torch.Generator() (CPU), got {generator!r}")
        self.generator = generator

        base = self.root / category
        if not base.is_dir():
            known = ", ".join(MVTEC_CATEGORIES)
            typo = "" if category in MVTEC_CATEGORIES else f"; nor is it one of MVTec AD's: {known}"
            raise DataError(f"MVTec AD category folder not found: {base} (expected {base}/train/good/*.png){typo}")
        # (image path, defect name, mask path or None)
        self.samples: list[tuple[Path, str, Path | None]] = []
        if self.split == "train":
            self.samples = [(p, GOOD, None) for p in self._images(base / "train" / GOOD)]
        else:
            self._collect_test(base)
        self.labels = np.array([int(defect != GOOD) for _, defect, _ in self.samples], dtype=np.int64)
        self.defects = [defect for _, defect, _ in self.samples]

    @staticmethod
    def _images(folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise DataError(f"MVTec AD folder not found: {folder}")
        images = files_with_suffix(folder, IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"MVTec AD folder has no images: expected {folder}/*.png")
        return images

    def _collect_test(self, base: Path) -> None:
        test = base / "test"
        if not test.is_dir():
            raise DataError(f"MVTec AD folder not found: {test} (expected {test}/<defect>/*.png)")
        for folder in (p for p in visible(test) if p.is_dir()):
            defect = folder.name
            if self.good_only and defect != GOOD:
                continue
            if defect == GOOD:
                if self.include_good:
                    self.samples += [(p, GOOD, None) for p in self._images(folder)]
                continue
            for image in self._images(folder):
                mask = base / "ground_truth" / defect / f"{image.stem}{MASK_SUFFIX}"
                if not mask.is_file():
                    raise DataError(f"MVTec AD mask not found: {mask} (for defect image {image})")
                self.samples.append((image, defect, mask))
        if not self.samples:
            what = "<defect>" if self.include_good else "<defect other than good>"
            raise DataError(f"MVTec AD test split is empty: expected {test}/{what}/*.png")

    def __len__(self) -> int:
        return len(self.samples)

    def draw_augmentation(self) -> tuple[bool, bool, float]:
        """(horizontal flip, vertical flip, angle in degrees) from uniform draws of ``generator``: three under
        the "small" policy, two (flip, angle; never a vertical flip) under "seed"."""
        if self.augment_policy == "seed":
            u = torch.rand(2, generator=self.generator, dtype=torch.float64).tolist()
            return u[0] < FLIP_PROBABILITY, False, (2.0 * u[1] - 1.0) * SEED_ROTATION_DEGREES
        u = torch.rand(3, generator=self.generator, dtype=torch.float64).tolist()
        return u[0] < FLIP_PROBABILITY, u[1] < FLIP_PROBABILITY, (2.0 * u[2] - 1.0) * ROTATION_DEGREES

    def __getitem__(self, index: int) -> dict:
        path, defect, mask_path = self.samples[index]
        image = image_tensor(path, "RGB" if self.channels == 3 else "L", self.image_size)
        if mask_path is None:
            mask = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask = mask_tensor(mask_path, self.image_size)
        if self.augment:
            # imported here: torchvision pulls in torch._dynamo (~2 s of start-up), which importers of the data
            # package (every sweep driver and trial) need only when they augment MVTec images
            import torchvision.transforms.v2.functional as F
            from torchvision.transforms.v2 import InterpolationMode

            hflip, vflip, angle = self.draw_augmentation()
            if hflip:
                image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
            if vflip:
                image, mask = F.vertical_flip(image), F.vertical_flip(mask)
            mode = InterpolationMode.NEAREST if self.augment_policy == "seed" else InterpolationMode.BILINEAR
            image = F.rotate(image, angle, interpolation=mode, fill=[0.0]).clamp_(0.0, 1.0)
            # Nearest sampling keeps the rotated mask binary; the uncovered corners count as normal (0).
            mask = F.rotate(mask, angle, interpolation=InterpolationMode.NEAREST, fill=[0.0])
        if self.normalize:
            image = (image - 0.5) / 0.5
        return {"image": image, "mask": mask, "label": int(self.labels[index]), "defect": defect, "path": str(path)}

    def __repr__(self) -> str:
        return (f"MVTecAD(category={self.category!r}, split={self.split!r}, image_size={self.image_size}, "
                f"n={len(self)}, defective={int(self.labels.sum())}, augment={self.augment})")

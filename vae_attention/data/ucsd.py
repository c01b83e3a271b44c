"""UCSD Ped1 (Mahadevan et al., CVPR 2010): pedestrian-walkway video; anomalies are non-pedestrians.

Official layout (as unpacked from ``UCSD_Anomaly_Dataset.tar.gz``, version 1.2)::

    <root>/UCSD_Anomaly_Dataset.v1p2/UCSDped1/Train/Train001/001.tif ... 200.tif     Train001 ... Train034
    <root>/UCSD_Anomaly_Dataset.v1p2/UCSDped1/Test/Test001/001.tif ... 200.tif       Test001 ... Test036
    <root>/UCSD_Anomaly_Dataset.v1p2/UCSDped1/Test/Test003_gt/001.bmp ... 200.bmp    pixel masks, some clips

Frames are 8-bit grayscale TIFFs of 238 x 158 px (width x height); masks are BMPs of 0 (normal) / 255
(anomalous), one per frame, for only some test clips (``TestNNN_gt``; 10 of 36 in v1.2; frame-level labels
of all clips exist only in the archive's ``UCSDped1.m``, which is not read here). The archive, packed on
macOS, also carries ``._*`` AppleDouble files and ``.DS_Store``; hidden names are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

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
from vae_attention.errors import DataError

ARCHIVE_DIR = "UCSD_Anomaly_Dataset.v1p2"
PED1_DIR = Path(ARCHIVE_DIR) / "UCSDped1"
FRAME_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIXES = (".bmp",)
_CLIP = {"train": re.compile(r"Train\d+"), "test": re.compile(r"Test\d+")}
_GT_SUFFIX = "_gt"


class UCSDPed1(Dataset):
    """Frames of UCSD Ped1 in the official layout (see the module docstring), one item per frame.

    ``root`` is the folder that contains ``UCSD_Anomaly_Dataset.v1p2``. Frames are resized to
    ``image_size`` square (100 in the paper; bilinear, antialiased, aspect ratio not kept) as float (1, S, S)
    in [0, 1]; masks are binarised (> 127) and nearest-resized to (1, S, S) of {0, 1}.

    ``split="train"``: every ``TrainNNN`` clip (all normal; zero masks, ``has_gt=False``). ``split="test"``:
    by default only the clips with a ``TestNNN_gt`` folder (the seed's choice), frame i paired with mask i
    in sorted order; the mask count must equal the frame count. ``include_no_gt=True`` adds the other test
    clips with all-zero masks (another reproduction's choice). Those clips do contain anomalies in some
    frames, so their zero masks are a protocol choice that labels anomalous pixels as normal; ``has_gt``
    tells the two kinds apart.

    Items: ``dict(image, mask, clip=str e.g. 'Test003', has_gt=bool, frame=int (0-based index in the clip),
    path=str)``. Clips are in natural order (Test2 before Test10), frames in file-name order.
    """

    def __init__(self, root, split: str = "train", image_size: int = 100, include_no_gt: bool = False):
        self.root = Path(root)
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.include_no_gt = bool(include_no_gt)
        folder = self.root / PED1_DIR / ("Train" if self.split == "train" else "Test")
        if not folder.is_dir():
            raise DataError(f"UCSD Ped1 folder not found: {folder} (root must contain {ARCHIVE_DIR})")
        self.folder = folder
        # (frame path, mask path or None, clip name, frame index in clip)
        self.samples: list[tuple[Path, Path | None, str, int]] = []
        entries = [p for p in visible(folder) if p.is_dir()]
        clips = [p for p in entries if _CLIP[self.split].fullmatch(p.name)]
        stem = "Train" if self.split == "train" else "Test"
        if not clips:
            raise DataError(f"UCSD Ped1 has no clips: expected {folder}/{stem}001/*.tif")
        gt_dirs = {p.name[: -len(_GT_SUFFIX)]: p for p in entries
                   if p.name.endswith(_GT_SUFFIX) and _CLIP["test"].fullmatch(p.name[: -len(_GT_SUFFIX)])}
        if self.split == "test":
            clip_names = {c.name for c in clips}
            for name, gt in gt_dirs.items():
                if name not in clip_names:
                    raise DataError(f"UCSD Ped1 mask folder {gt} has no frame folder: expected {folder / name}")
            if not self.include_no_gt:
                clips = [c for c in clips if c.name in gt_dirs]
                if not clips:
                    raise DataError(f"UCSD Ped1 has no ground-truth clips: expected {folder}/TestNNN_gt/*.bmp")
        self.clips = [c.name for c in clips]
        for clip in clips:
            frames = files_with_suffix(clip, FRAME_SUFFIXES)
            if not frames:
                raise DataError(f"UCSD Ped1 clip has no frames: expected {clip}/*.tif")
            gt = gt_dirs.get(clip.name) if self.split == "test" else None
            if gt is None:
                masks: list[Path | None] = [None] * len(frames)
            else:
                masks = list(files_with_suffix(gt, MASK_SUFFIXES))
                if len(masks) != len(frames):
                    raise DataError(f"UCSD Ped1 mask count mismatch: {len(masks)} *.bmp in {gt} "
                                    f"but {len(frames)} *.tif in {clip}")
            self.samples += [(f, m, clip.name, i) for i, (f, m) in enumerate(zip(frames, masks, strict=True))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, mask_path, clip, frame = self.samples[index]
        image = image_tensor(path, "L", self.image_size)
        if mask_path is None:
            mask = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask = mask_tensor(mask_path, self.image_size)
        return {"image": image, "mask": mask, "clip": clip, "has_gt": mask_path is not None, "frame": frame,
                "path": str(path)}

    def __repr__(self) -> str:
        return (f"UCSDPed1(split={self.split!r}, image_size={self.image_size}, clips={len(self.clips)}, "
                f"frames={len(self)}, include_no_gt={self.include_no_gt})")

"""The archive sources of ``download``: UCSD Ped1 (tar.gz) and MVTec AD (one tar.xz per category).

An archive is fetched to ``<to>/<archive>.part`` (resumable, see ``download.fetch``), its member list is
checked against everything the loader reads, then it is renamed, unpacked into a hidden staging folder
``<to>/.<archive>.unpacking`` and its top-level folders are moved into ``<to>``; the downloaded archive
is deleted afterwards. An archive already at ``<to>/<archive>`` (put there by hand, or left by an
interrupted unpack) is validated and unpacked without downloading, and kept.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from vae_attention.data.download import (
    MVTEC_LICENCE,
    MVTEC_URLS,
    UCSD_ARCHIVE,
    UCSD_BASE,
    UCSD_MIN_CLIPS,
    base_url_for,
    fetch,
    say,
)
from vae_attention.data.mvtec import GOOD, MASK_SUFFIX, MVTEC_CATEGORIES
from vae_attention.data.ucsd import ARCHIVE_DIR as UCSD_DIR
from vae_attention.data.ucsd import FRAME_SUFFIXES, MASK_SUFFIXES
from vae_attention.errors import ConfigError, DataError


def member_names(archive: Path) -> set[str]:
    """Names of the regular files in a tar archive (any compression), without a leading ``./``.

    Reading the whole listing also decompresses the whole archive, so a truncated or damaged one fails
    here. Absolute names and names with ``..`` are refused: nothing may land outside the target folder.
    """
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
    except Exception as err:  # ReadError, EOFError, zlib / lzma errors: all mean a bad or cut-off archive
        first_line = (str(err).splitlines() or [""])[0]
        raise DataError(f"{archive} is not a readable tar archive ({type(err).__name__}: {first_line})") from err
    names = set()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise DataError(f"{archive} holds an unsafe member name {member.name!r}; refusing to unpack it")
        if member.isfile():
            names.add(str(path))  # PurePosixPath drops a leading "./"
    return names


def _visible(name: str) -> bool:
    """Not an AppleDouble ``._x`` / ``.DS_Store`` file or inside a hidden folder (the loaders skip them)."""
    return not any(part.startswith(".") for part in PurePosixPath(name).parts)


def validate_ucsd(archive: Path, min_clips: dict[str, int] | None = None) -> None:
    """The Ped1 members the loader reads: Train/TrainNNN/*.tif, Test/TestNNN/*.tif and TestNNN_gt/*.bmp.

    At least ``min_clips`` train, test and ground-truth clips (official v1.2: 34, 36, 10), and every
    ``TestNNN_gt`` as many masks as ``TestNNN`` has frames.
    """
    minimum = {**UCSD_MIN_CLIPS, **(min_clips or {})}
    ped1 = re.escape(f"{UCSD_DIR}/UCSDped1/")
    pattern = re.compile(rf"{ped1}(?:Train/(?P<train>Train\d+)|Test/(?P<test>Test\d+)(?P<gt>_gt)?)/[^/]+")
    counts: Counter[tuple[str, str]] = Counter()
    for name in filter(_visible, member_names(archive)):
        match = pattern.fullmatch(name)
        if not match:
            continue
        suffix = PurePosixPath(name).suffix.lower()
        if match["train"] and suffix in FRAME_SUFFIXES:
            counts["train", match["train"]] += 1
        elif match["test"] and match["gt"] and suffix in MASK_SUFFIXES:
            counts["gt", match["test"]] += 1
        elif match["test"] and not match["gt"] and suffix in FRAME_SUFFIXES:
            counts["test", match["test"]] += 1
    clips = {kind: sorted(clip for k, clip in counts if k == kind) for kind in ("train", "test", "gt")}
    examples = {"train": "Train/Train001/001.tif", "test": "Test/Test001/001.tif", "gt": "Test/Test003_gt/001.bmp"}
    for kind, least in minimum.items():
        if len(clips[kind]) < least:
            raise DataError(f"{archive} holds {len(clips[kind])} UCSD Ped1 {kind} clips, expected at least {least} "
                            f"(members like {UCSD_DIR}/UCSDped1/{examples[kind]})")
    for clip in clips["gt"]:
        if counts["gt", clip] != counts["test", clip]:
            raise DataError(f"{archive}: {clip}_gt holds {counts['gt', clip]} masks but {clip} "
                            f"{counts['test', clip]} frames")


def validate_mvtec(archive: Path, category: str) -> None:
    """The members of one category the loader reads: train/good, test/good, test/<defect> and each mask."""
    names = set(filter(_visible, member_names(archive)))
    pattern = re.compile(rf"{re.escape(category)}/(train|test)/([^/]+)/([^/]+)\.png")
    images = [match.groups() for match in map(pattern.fullmatch, sorted(names)) if match]
    train_good = [stem for split, folder, stem in images if split == "train" and folder == GOOD]
    defects = {folder for split, folder, _ in images if split == "test"}
    needed = {"train/good": bool(train_good), "test/good": GOOD in defects, "test/<defect>": len(defects - {GOOD}) > 0}
    for what, present in needed.items():
        if not present:
            raise DataError(f"{archive} has no {category}/{what}/*.png members; not the MVTec AD {category} archive")
    for split, folder, stem in images:
        mask = f"{category}/ground_truth/{folder}/{stem}{MASK_SUFFIX}"
        if split == "test" and folder != GOOD and mask not in names:
            raise DataError(f"{archive} lacks the mask {mask} of {category}/test/{folder}/{stem}.png")


def unpack(archive: Path, to: Path, delete: bool = True) -> list[Path]:
    """Unpack ``archive`` into ``to`` via a staging folder, move its visible top-level entries, delete it."""
    staging = to / f".{archive.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)  # ours, left by an interrupted unpack
    try:
        staging.mkdir()
        with tarfile.open(archive, "r:*") as tf:
            # The "data" filter (Python >= 3.10.12 / 3.11.4) also refuses links out of the folder and
            # device files; member names were already checked by member_names.
            tf.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        entries = [entry for entry in sorted(staging.iterdir()) if not entry.name.startswith(".")]
        taken = [str(to / entry.name) for entry in entries if entry.is_dir() and (to / entry.name).exists()]
        if taken:
            raise DataError(f"{', '.join(taken)} already exist; move them away to unpack {archive}")
        for entry in entries:  # a rename within one file system: each folder appears whole or not at all
            os.replace(entry, to / entry.name)
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot unpack {archive} into {to}: {type(err).__name__}: {err}") from err
    shutil.rmtree(staging, ignore_errors=True)
    if delete:
        archive.unlink()
    return [to / entry.name for entry in entries]


def _fetch_and_unpack(to, archive_name: str, url: str, validate: Callable[[Path], None], ready: Path,
                      label: str, **fetch_options) -> Path:
    to = Path(to)
    if ready.exists():
        say(f"{label}: {ready} already present (delete it to download again)")
        return ready
    archive = to / archive_name
    by_hand = archive.is_file()  # put there by hand, or downloaded before an interrupted unpack: kept
    if by_hand:
        say(f"{label}: using {archive} (not downloaded again; kept after unpacking)")
        try:
            validate(archive)
        except DataError as err:
            raise DataError(f"{err}; delete {archive} to download it again") from err
    else:
        fetch([url], archive, validate, **fetch_options)
    say(f"{label}: unpacking {archive}")
    unpack(archive, to, delete=not by_hand)
    if not ready.exists():  # the members were checked, so this means another top-level folder name
        raise DataError(f"{archive} unpacked, but {ready} is not there")
    return ready


def download_ucsd(to, *, base_url: str | None = None, min_clips: dict[str, int] | None = None,
                  **fetch_options) -> list[Path]:
    """``UCSD_Anomaly_Dataset.tar.gz`` unpacked to ``<to>/UCSD_Anomaly_Dataset.v1p2`` (Ped1 and Ped2)."""
    url = (base_url_for("ucsd", base_url) or UCSD_BASE) + UCSD_ARCHIVE
    ready = Path(to) / UCSD_DIR
    return [_fetch_and_unpack(to, UCSD_ARCHIVE, url, lambda p: validate_ucsd(p, min_clips), ready, "ucsd",
                              **fetch_options)]


def download_mvtec(to, categories: Iterable[str] | None = None, *, base_url: str | None = None,
                   **fetch_options) -> list[Path]:
    """One ``<category>.tar.xz`` per category (default all 15), each unpacked to ``<to>/<category>``."""
    chosen = list(dict.fromkeys(categories or MVTEC_CATEGORIES))
    unknown = [c for c in chosen if c not in MVTEC_CATEGORIES]
    if unknown:
        raise ConfigError(f"unknown MVTec AD categories {unknown}; choose from {', '.join(MVTEC_CATEGORIES)}")
    say(MVTEC_LICENCE)
    base = base_url_for("mvtec", base_url)
    placed = []
    for category in chosen:
        url = f"{base}{category}.tar.xz" if base else MVTEC_URLS[category]
        placed.append(_fetch_and_unpack(to, f"{category}.tar.xz", url,
                                        lambda p, c=category: validate_mvtec(p, c), Path(to) / category,
                                        f"mvtec {category}", **fetch_options))
    return placed

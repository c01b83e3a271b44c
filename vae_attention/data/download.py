"""Fetch the official data sets into the layouts the loaders read: ``python -m vae_attention.data download``.

One concept: a file is streamed from its official URL into ``<name>.part`` (resumed with an HTTP Range
request when a partial file is there and the server honours it, else restarted from byte 0), validated,
and only then renamed to its final name; a file that fails validation is deleted, so a final path never
holds bad data. Archives (UCSD Ped1, MVTec AD) are validated by their member list (every file the loader
needs), unpacked into a hidden staging folder and moved into place; a downloaded archive is then
deleted. Any failure is one ``DataError`` line naming the URL and where to put the file by hand.

Base URLs are overridable per source, for mirrors and for tests: ``base_url=`` (CLI ``--base-url``) or
the environment variable ``VAE_ATTENTION_<SOURCE>_URL`` (e.g. ``VAE_ATTENTION_MNIST_URL``); the file is
then fetched from ``<base>/<official file name>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import numpy as np

from vae_attention.data.dsprites import NPZ_NAME, read_npz_layout
from vae_attention.data.mnist import raw_folder
from vae_attention.errors import ConfigError, DataError

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per connect / per read, not for the whole transfer
RETRIES = 3  # resumptions of a transfer that broke off within one call
USER_AGENT = "vae-attention-study-downloader (python urllib)"

DSPRITES_BASE = "https://raw.githubusercontent.com/deepmind/dsprites-dataset/master/"  # the repo's raw file
DSPRITES_IMAGES = 737_280  # 1 x 3 x 6 x 40 x 32 x 32

UCSD_BASE = "http://www.svcl.ucsd.edu/projects/anomaly/"
UCSD_ARCHIVE = "UCSD_Anomaly_Dataset.tar.gz"
UCSD_MIN_CLIPS = {"train": 34, "test": 36, "gt": 10}  # Ped1 of v1.2: Train001-034, Test001-036, 10 TestNNN_gt

# MVTec AD per-category archives, as linked from https://www.mvtec.com/company/research/datasets/mvtec-ad
# (downloads page). MVTec hosts them on mydrive.ch: these links may change; if one breaks, take the new one
# from that page (or download by hand and put <category>.tar.xz in the target folder, then run again).
_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
_MVTEC_IDS = {
    "bottle": "420937370-1629951468", "cable": "420937413-1629951498", "capsule": "420937454-1629951595",
    "carpet": "420937484-1629951672", "grid": "420937487-1629951814", "hazelnut": "420937545-1629951845",
    "leather": "420937607-1629951964", "metal_nut": "420937637-1629952063", "screw": "420938130-1629953152",
    "tile": "420938133-1629953189", "toothbrush": "420938134-1629953256", "transistor": "420938166-1629953277",
    "wood": "420938383-1629953354", "zipper": "420938385-1629953449",
}
MVTEC_URLS = {cat: f"{_MYDRIVE}{_MVTEC_IDS[cat]}/{cat}.tar.xz" for cat in _MVTEC_IDS}
MVTEC_URLS["pill"] = ("https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
                      "420938129-1629953099/pill.tar.xz")  # pill sits in another share
MVTEC_LICENCE = (
    "MVTec AD (Bergmann et al., CVPR 2019 / IJCV 2021) is licensed under CC BY-NC-SA 4.0 "
    "(https://creativecommons.org/licenses/by-nc-sa/4.0/): attribution, non-commercial use only, share-alike. "
    "By downloading it you accept these terms (https://www.mvtec.com/company/research/datasets/mvtec-ad)."
)

SOURCES = ("dsprites", "mnist", "ucsd", "mvtec")


def download(source: str, to, **options) -> list[Path]:
    """Fetch ``source`` (one of ``SOURCES``) into the folder ``to``; returns the paths the loaders will read.

    ``options`` go to ``download_<source>``: ``base_url``, ``progress``, ``retries``, ``timeout`` for all,
    plus ``categories`` (MVTec AD) and the test hooks ``expected_images``, ``mirrors``/``resources`` and
    ``min_clips``.
    """
    from vae_attention.data import download_archives

    functions = {"dsprites": download_dsprites, "mnist": download_mnist,
                 "ucsd": download_archives.download_ucsd, "mvtec": download_archives.download_mvtec}
    if source not in functions:
        raise ConfigError(f"unknown data set {source!r}; choose one of {', '.join(SOURCES)}")
    return functions[source](to, **options)


def base_url_for(source: str, base_url: str | None) -> str | None:
    base = base_url or os.environ.get(f"VAE_ATTENTION_{source.upper()}_URL")
    return base.rstrip("/") + "/" if base else None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# One file: transfer with resume, validate, rename
# ----------------------------------------------------------------------------------------------------

class _Unreachable(Exception):
    """No usable response from a URL (refused, DNS, HTTP error): try the next mirror or give up."""


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:  # the partial file is no prefix of this one
            return None
        raise _Unreachable(f"HTTP {err.code} {err.reason}") from err
    except (URLError, OSError, HTTPException, ValueError) as err:  # refused, DNS, TLS, bad URL
        raise _Unreachable(str(getattr(err, "reason", err))) from err


def _transfer(url: str, part: Path, *, progress: bool, retries: int, timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming it; returns once the server's full length is on disk.

    A transfer that breaks off (reset, stall, short body) is resumed up to ``retries`` times; after that
    the ``.part`` stays for the next call. A server that ignores Range gets a clean restart.
    """
    from tqdm import tqdm  # a dependency of optuna; imported here so the loaders never pay for it

    broken = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        response = _open(url, offset, timeout)
        if response is None:
            part.unlink()
            continue
        with response:
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if response.status == 206 and _content_range_start(response.headers.get("Content-Range")) != offset:
                if not offset:
                    raise _Unreachable("the server sent a part of the file that was not asked for")
                part.unlink()  # a range we did not ask for: start again from byte 0
                continue
            if response.status != 206:  # the server ignored the Range (200, the whole file): restart cleanly
                offset = 0
            total = None if length is None else offset + length
            try:
                with open(part, "ab" if offset else "wb") as fh, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=part.name.removesuffix(".part"), disable=not progress, file=sys.stderr,
                        leave=False) as bar:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except (OSError, HTTPException):  # reset, stall, TLS or chunking error: broken off
                            break
                        if not chunk:
                            break
                        fh.write(chunk)
                        bar.update(len(chunk))
            except OSError as err:  # the read errors are caught above: this is the disk
                raise DataError(f"cannot write {part}: {err}") from err
        size = part.stat().st_size
        if total is None or size >= total:
            return
        if broken == retries:
            raise DataError(f"download of {url} broke off at {size} of {total} bytes (kept {part}); "
                            f"run the same command again to resume")
        broken += 1
        say(f"{url}: transfer broke off at {size} of {total} bytes; resuming")


def fetch(urls: Sequence[str], dest: Path, validate: Callable[[Path], None], *, progress: bool = True,
          retries: int = RETRIES, timeout: float = TIMEOUT_S) -> Path:
    """Download ``dest`` from the first of ``urls`` that answers, via ``dest.part``; rename once validated.

    ``validate(path)`` raises DataError with the reason a file is not the expected one; such a download
    is deleted. A partial ``.part`` left by an interrupted call is resumed.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {dest.parent}: {err}") from err
    failures = []
    for url in urls:
        try:
            _transfer(url, part, progress=progress, retries=retries, timeout=timeout)
            break
        except _Unreachable as err:
            failures.append(f"{url} ({err})")
    else:
        raise DataError(f"cannot download {'; '.join(failures)}: download it by hand and put it at {dest}")
    try:
        validate(part)
    except DataError as err:
        part.unlink(missing_ok=True)
        raise DataError(f"{url} served a file that is not the expected one, deleted it, nothing written to "
                        f"{dest}: {err}") from err
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------------
# dSprites
# ----------------------------------------------------------------------------------------------------

def _header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the npz member ``key`` from its .npy header, without reading the array."""
    with zf.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return shape, dtype


def validate_dsprites(path: Path, expected_images: int = DSPRITES_IMAGES) -> None:
    """Official npz: array names, shapes and dtypes, the full factor grid in order, every member's CRC."""
    sizes = read_npz_layout(path)  # names, metadata, imgs (n, 64, 64), latents_classes = the full grid
    n = int(np.prod(sizes))
    if n != expected_images:
        raise DataError(f"{path} holds {n} images, expected {expected_images}")
    with zipfile.ZipFile(path) as zf:
        for key, want in (("imgs", ((n, 64, 64), np.uint8)), ("latents_classes", ((n, 6), np.int64)),
                          ("latents_values", ((n, 6), np.float64))):
            shape, dtype = _header(zf, key)
            if shape != want[0] or dtype != want[1]:
                raise DataError(f"{path}: {key} is {shape} {dtype}, expected {want[0]} {np.dtype(want[1])}")
        try:
            damaged = zf.testzip()  # inflates every member (3 GB of imgs, ~10 s) and checks its CRC
        except Exception as err:  # zlib.error and friends: the bytes are damaged
            raise DataError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
    if damaged is not None:
        raise DataError(f"{path}: member {damaged} fails its CRC check")


def download_dsprites(to, *, base_url: str | None = None, expected_images: int = DSPRITES_IMAGES,
                      progress: bool = True, **fetch_options) -> list[Path]:
    dest = Path(to) / NPZ_NAME
    if dest.is_file():
        say(f"dsprites: {dest} already present (delete it to download again)")
        return [dest]
    url = (base_url_for("dsprites", base_url) or DSPRITES_BASE) + NPZ_NAME
    fetch([url], dest, lambda p: validate_dsprites(p, expected_images), progress=progress, **fetch_options)
    return [dest]


# ----------------------------------------------------------------------------------------------------
# MNIST: torchvision's mirrors and published md5 checksums
# ----------------------------------------------------------------------------------------------------

def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(path: Path, expected: str) -> None:
    found = md5_of(path)
    if found != expected:
        raise DataError(f"{path} has md5 {found}, expected {expected} (torchvision's published checksum)")


def download_mnist(to, *, base_url: str | None = None, mirrors: Sequence[str] | None = None,
                   resources: Iterable[tuple[str, str]] | None = None, progress: bool = True,
                   **fetch_options) -> list[Path]:
    """The four gzipped IDX files into ``<to>/MNIST/raw`` (the loader reads ``.gz`` as it is)."""
    from torchvision.datasets import MNIST

    base = base_url_for("mnist", base_url)
    mirrors = [base] if base else list(mirrors if mirrors is not None else MNIST.mirrors)
    placed = []
    for name, md5 in (resources if resources is not None else MNIST.resources):
        dest = raw_folder(to) / name
        if dest.is_file():
            try:
                _check_md5(dest, md5)
            except DataError as err:
                raise DataError(f"{err}; delete it to download again") from err
            say(f"mnist: {dest} already present")
        else:
            fetch([m.rstrip("/") + "/" + name for m in mirrors], dest, lambda p, md5=md5: _check_md5(p, md5),
                  progress=progress, **fetch_options)
        placed.append(dest)
    return placed

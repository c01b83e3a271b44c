"""A bit-packed image array on disk, built once under a lock and then shared read-only via mmap.

Why: the full dSprites set is 737,280 binary 64x64 images = 3.0 GB as uint8. Packed 8 pixels per byte
it is 737,280 x 512 B = 377 MB, and as an uncompressed ``.npy`` any number of trial processes can
``np.load`` it with ``mmap_mode="r"`` and share the page cache instead of each holding a 3 GB copy.

Concurrency: many trials may start at once on a cold cache. The builder takes an exclusive
``fcntl.flock`` on a sibling ``<name>.lock`` file, re-checks that nobody finished the file while it
waited, writes a temp file in the same directory (same filesystem, so the rename is atomic), fsyncs it
and ``os.replace``s it into place. Readers therefore see either no file or a complete one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vae_attention.errors import DataError

logger = logging.getLogger(__name__)

PIXELS = 64 * 64  # one dSprites image, row-major
PACKED_BYTES = PIXELS // 8  # 512 B per image after np.packbits


def default_cache_dir() -> Path:
    """Per-user fallback when neither ``cache_dir`` nor a writable ``data_dir`` is available."""
    return Path.home() / ".cache" / "vae_attention"


def choose_cache_dir(cache_dir: str | os.PathLike | None, data_dir: Path | None) -> Path:
    """``cache_dir`` if given, else ``data_dir`` if writable, else ``~/.cache/vae_attention``.

    The chosen directory is created if absent.
    """
    if cache_dir is not None:
        chosen = Path(cache_dir).expanduser()
    elif data_dir is not None and os.access(data_dir, os.W_OK | os.X_OK):
        chosen = data_dir
    else:
        chosen = default_cache_dir()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create the dSprites cache directory {chosen} ({err.strerror}); "
            "pass cache_dir= pointing to a writable directory"
        ) from err
    if not os.access(chosen, os.W_OK | os.X_OK):
        raise DataError(
            f"the dSprites cache directory {chosen} is not writable; "
            "pass cache_dir= pointing to a writable directory"
        )
    return chosen


def _try_open(path: Path, num_rows: int) -> np.memmap | None:
    """The cached array opened read-only, or None if it is absent or not (num_rows, 512) uint8."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        logger.warning("packed cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    if not isinstance(arr, np.memmap) or arr.dtype != np.uint8 or arr.shape != (num_rows, PACKED_BYTES):
        logger.warning(
            "packed cache %s has shape %s dtype %s, expected (%d, %d) uint8; rebuilding it",
            path, getattr(arr, "shape", None), getattr(arr, "dtype", None), num_rows, PACKED_BYTES,
        )
        return None
    return arr


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on a directory, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _build(path: Path, num_rows: int, fill: Callable[[np.ndarray], None]) -> None:
    """Write the array to a unique temp file next to ``path``, fsync, then atomically rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(num_rows, PACKED_BYTES))
        fill(out)
        out.flush()
        del out  # closes the mmap before the rename
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise DataError(
            f"cannot write the dSprites cache {path} ({err.strerror or err}); "
            "free disk space or pass cache_dir= pointing to a writable directory"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def open_packed(path: Path, num_rows: int, fill: Callable[[np.ndarray], None]) -> tuple[np.memmap, bool]:
    """Open the packed (num_rows, 512) uint8 cache at ``path``, building it with ``fill(out)`` if needed.

    ``fill`` receives a writable (num_rows, 512) array and must set every row. Returns the read-only
    memmap and whether this call built it. Safe to call from many processes at once: exactly one builds.
    """
    arr = _try_open(path, num_rows)
    if arr is not None:
        return arr, False
    lock_path = path.with_name(path.name + ".lock")
    # The lock file is never deleted: unlinking it would let a late process lock a fresh inode while an
    # earlier one still holds the old one, and both would build.
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            arr = _try_open(path, num_rows)  # someone may have finished it while we waited for the lock
            built = False
            if arr is None:
                # Under the lock no other builder is active: any temp file for this target is a dead leftover.
                for stale in path.parent.glob(f".{path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)
                logger.info("building packed image cache %s (%d images, %.0f MB)",
                            path, num_rows, num_rows * PACKED_BYTES / 1e6)
                _build(path, num_rows, fill)
                built = True
                arr = _try_open(path, num_rows)
                if arr is None:
                    raise DataError(
                        f"the dSprites cache {path} could not be read back after writing it; "
                        "delete it or pass cache_dir= pointing to another directory"
                    )
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return arr, built


def unpack_rows(packed: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of a packed array as uint8 0/1 images of shape (n, 64, 64), in the requested order.

    Reads sorted unique rows: the memmap is then touched front to back once and repeated indices cost nothing.
    """
    unique, inverse = np.unique(indices, return_inverse=True)
    bits = np.unpackbits(packed[unique], axis=-1, count=PIXELS)
    return bits[inverse.reshape(-1)].reshape(-1, 64, 64)

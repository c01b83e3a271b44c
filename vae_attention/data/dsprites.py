"""dSprites (Matthey et al. 2017): the official npz when present, else a procedural stand-in.

Official file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (https://github.com/deepmind/dsprites-dataset):
``imgs`` uint8 (737280, 64, 64) of 0/1; ``latents_classes`` int64 (737280, 6); ``latents_values`` float64
(737280, 6); ``metadata`` a pickled dict whose ``latents_sizes`` is [1, 3, 6, 40, 32, 32] for colour,
shape, scale, orientation, posX, posY. Images are the full Cartesian grid in C order, so image index =
classes @ bases with bases[i] = prod(sizes[i+1:]). Either source is packed once into an mmap-able cache
(see ``_packed``); batches are unpacked from it on demand.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from vae_attention.data._packed import PIXELS, choose_cache_dir, open_packed, unpack_rows
from vae_attention.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
REPO_URL = "https://github.com/deepmind/dsprites-dataset"
OFFICIAL_GRID = (3, 6, 40, 32, 32)  # shape, scale, orientation, posX, posY (colour, size 1, dropped)
REQUIRED_KEYS = ("imgs", "latents_classes", "latents_values", "metadata")
GENERATOR_VERSION = 1  # bump when the rendering changes, so stale generated caches are not reused

# Generator geometry. Each sprite is drawn in a PATCH x PATCH pixel box whose inscribed circle (radius
# 16 px) contains the sprite at every orientation and scale <= 1, so placing the box anywhere on the 64 px
# canvas keeps the sprite fully inside. At scale 1 the square's side is 22 px (~1/3 canvas), the ellipse
# 31 x 16 px and the heart ~25 px across (between 1/3 and 1/2 of the canvas).
PATCH = 32
_SQUARE_HALF_SIDE = 0.69  # of the 16 px patch radius: diagonal 0.976 < 1
_ELLIPSE_AXES = (0.97, 0.5)  # semi-axes in patch radii
_HEART_ZOOM, _HEART_SHIFT = 0.74, 0.1  # heart curve scaled to max radius 0.98 and shifted to centre it


def _bases(sizes: tuple[int, ...]) -> np.ndarray:
    """Strides of a C-ordered grid: index = classes @ bases."""
    return np.array([math.prod(sizes[i + 1:]) for i in range(len(sizes))], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# Procedural stand-in
# ----------------------------------------------------------------------------------------------------

def _validate_grid(grid) -> tuple[int, ...]:
    try:
        sizes = tuple(int(g) for g in grid)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"dSprites grid={grid!r} must be 5 integers (shape, scale, orientation, posX, posY)"
        ) from err
    max_pos = 64 - PATCH + 1  # distinct integer placements of the 32 px box on the 64 px canvas
    if (len(sizes) != 5 or min(sizes) < 1 or sizes[0] > 3 or max(sizes[3:]) > max_pos
            or any(float(s) != float(g) for s, g in zip(sizes, grid, strict=True))):
        raise ConfigError(
            f"dSprites grid={grid!r} invalid: need 5 positive integers, shape <= 3, posX/posY <= {max_pos}, "
            f"e.g. {OFFICIAL_GRID}"
        )
    return sizes


def render_base_sprites(n_shapes: int, n_scales: int, n_orients: int) -> np.ndarray:
    """Binary sprites (n_shapes, n_scales, n_orients, PATCH, PATCH).

    Shapes square/ellipse/heart, scales linspace(0.5, 1), orientations linspace(0, 2 pi) counter-clockwise;
    a pixel is on when its centre lies inside the shape (binary, no anti-aliasing).
    """
    centres = (np.arange(PATCH) + 0.5 - PATCH / 2) / (PATCH / 2)  # pixel centres in patch radii, (-1, 1)
    x, y = np.meshgrid(centres, -centres)  # y points up, so orientation 0 shows an upright heart
    scales = np.linspace(0.5, 1.0, n_scales)[:, None, None, None]
    theta = np.linspace(0.0, 2 * np.pi, n_orients)[None, :, None, None]
    # Rotating the sprite by +theta == sampling it at the pixel rotated by -theta; /scale shrinks it.
    u = (x * np.cos(theta) + y * np.sin(theta)) / scales
    v = (-x * np.sin(theta) + y * np.cos(theta)) / scales
    hx, hy = u / _HEART_ZOOM, v / _HEART_ZOOM + _HEART_SHIFT
    shapes = [
        np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF_SIDE,
        (u / _ELLIPSE_AXES[0]) ** 2 + (v / _ELLIPSE_AXES[1]) ** 2 <= 1.0,
        (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0,  # the classic implicit heart curve
    ]
    return np.stack(shapes[:n_shapes])


def fill_generated(grid: tuple[int, ...], out: np.ndarray) -> None:
    """Write all prod(grid) packed images of the stand-in into ``out`` (N, 512), in canonical C order."""
    n_shapes, n_scales, n_orients, n_x, n_y = grid
    sprites = render_base_sprites(n_shapes, n_scales, n_orients).reshape(n_shapes, -1, PATCH, PATCH)
    # posX/posY in linspace(0, 1) map to the box's left/top edge 0..32 px, i.e. sprite centre 16..48 px.
    off_x = np.rint(np.linspace(0, 64 - PATCH, n_x)).astype(int)
    off_y = np.rint(np.linspace(0, 64 - PATCH, n_y)).astype(int)
    per_shape = sprites.shape[1] * n_x * n_y
    for s in range(n_shapes):  # one shape at a time: a 126 MB buffer for the official grid
        # A PATCH-row strip per (sprite, posX), 64 px wide; one image row packs to 8 bytes, so moving the
        # sprite down by posY rows is writing the packed strip 8 * off_y bytes further into the 512 B image.
        strips = np.zeros((sprites.shape[1], n_x, PATCH, 64), dtype=bool)
        for k, ox in enumerate(off_x):
            strips[:, k, :, ox:ox + PATCH] = sprites[s]
        strips = np.packbits(strips, axis=-1).reshape(sprites.shape[1], n_x, PATCH * 8)
        images = np.zeros((sprites.shape[1], n_x, n_y, 512), dtype=np.uint8)
        for k, oy in enumerate(off_y):
            images[:, :, k, oy * 8:(oy + PATCH) * 8] = strips
        out[s * per_shape:(s + 1) * per_shape] = images.reshape(per_shape, 512)


# ----------------------------------------------------------------------------------------------------
# Official npz
# ----------------------------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bad(path: Path, what: str) -> DataError:
    return DataError(
        f"{path} is not the official dSprites npz ({what}); re-fetch {NPZ_NAME} with git clone {REPO_URL}"
    )


def _open_imgs_member(zf: zipfile.ZipFile):
    """The ``imgs.npy`` member positioned after its header, with its (shape, fortran_order, dtype)."""
    fh = zf.open("imgs.npy")
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return fh, np.lib.format.read_array_header_1_0(fh)
    return fh, np.lib.format.read_array_header_2_0(fh)


def read_npz_layout(path: Path) -> tuple[int, ...]:
    """Validate the npz and return the sizes of its 5 used factors; any defect raises a one-line DataError."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = {name.removesuffix(".npy") for name in zf.namelist()}
            missing = [k for k in REQUIRED_KEYS if k not in names]
            if missing:
                raise _bad(path, f"missing keys {missing}, has {sorted(names)}")
            fh, (shape, fortran, dtype) = _open_imgs_member(zf)
            fh.close()
        with np.load(path, allow_pickle=True, encoding="latin1") as npz:
            meta = npz["metadata"][()]
            sizes = np.asarray(meta["latents_sizes"] if "latents_sizes" in meta else meta[b"latents_sizes"])
            classes = npz["latents_classes"]
    except DataError:
        raise
    except Exception as err:  # zip/zlib/pickle/header errors all mean the same thing to the user
        first_line = (str(err).splitlines() or [""])[0]
        raise _bad(path, f"unreadable: {type(err).__name__}: {first_line}") from err

    if sizes.shape != (6,) or sizes[0] != 1 or sizes.min() < 1:
        raise _bad(path, f"metadata latents_sizes {sizes.tolist()} is not 6 sizes with constant colour")
    n = int(np.prod(sizes))
    if shape != (n, 64, 64) or fortran or dtype.kind not in "biu":
        order = " Fortran-ordered" if fortran else ""
        raise _bad(path, f"imgs is {shape} {dtype}{order}, expected ({n}, 64, 64) integers")
    if classes.shape != (n, 6) or classes.dtype.kind not in "iu":
        raise _bad(path, f"latents_classes is {classes.shape} {classes.dtype}, expected ({n}, 6) integers")
    # The whole index <-> factor mapping rests on the images being the full grid in C order; checking
    # every row costs ~50 ms for the official 737,280 x 6 table.
    if not np.array_equal(classes @ _bases(tuple(int(s) for s in sizes)), np.arange(n)):
        raise _bad(path, "latents_classes rows are not the full factor grid in canonical order")
    return tuple(int(s) for s in sizes[1:])


def fill_from_npz(path: Path, num_images: int, out: np.ndarray, chunk: int = 4096) -> None:
    """Stream ``imgs`` out of the zip ``chunk`` images (16 MB) at a time: the 3 GB array never sits in RAM."""
    try:
        with zipfile.ZipFile(path) as zf:
            fh, (_, _, dtype) = _open_imgs_member(zf)
            with fh:
                for start in range(0, num_images, chunk):
                    rows = min(chunk, num_images - start)
                    raw = fh.read(rows * PIXELS * dtype.itemsize)
                    if len(raw) != rows * PIXELS * dtype.itemsize:
                        raise _bad(path, f"imgs ends after {start} images")
                    pixels = np.frombuffer(raw, dtype=dtype).reshape(rows, PIXELS)
                    out[start:start + rows] = np.packbits(pixels != 0, axis=-1)
                if fh.read(1):  # reading to the end also makes zipfile verify the member's CRC
                    raise _bad(path, f"imgs holds more than {num_images} images")
    except DataError:
        raise
    except Exception as err:  # a CRC or inflate error half-way means a truncated or damaged download
        raise _bad(path, f"imgs unreadable: {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------------------------------
# Public data set
# ----------------------------------------------------------------------------------------------------

class DSprites:
    """dSprites with dlib's ground-truth interface plus ``images(indices)`` for training batches.

    ``data_dir``: directory holding ``NPZ_NAME``; None or a directory without it gives the generated stand-in
    (a warning is logged). ``cache_dir``: where the packed cache goes (default: ``data_dir`` if writable, else
    ``~/.cache/vae_attention``). ``grid``: sizes of the 5 used factors for the generator (default official).
    """

    def __init__(self, data_dir=None, *, cache_dir=None, grid=None):
        self.data_dir = None if data_dir is None else Path(data_dir).expanduser()
        readable = self.data_dir is None or (
            self.data_dir.is_dir() and os.access(self.data_dir, os.R_OK | os.X_OK))
        if not readable:
            raise DataError(
                f"dSprites data_dir {self.data_dir} is not a readable directory; create it and put "
                f"{NPZ_NAME} there (git clone {REPO_URL}), or pass data_dir=None for the generated stand-in"
            )
        npz = None if self.data_dir is None else self.data_dir / NPZ_NAME
        grid = None if grid is None else _validate_grid(grid)
        if npz is not None and npz.is_file():
            self.source, self.path = "npz", npz
            self._sizes = read_npz_layout(npz)
            if grid is not None and grid != self._sizes:
                raise ConfigError(
                    f"grid={grid} given but {npz} holds grid {self._sizes}; drop grid= to use the file")
            self.sha256 = _file_sha256(npz)
            cache_name = f"dsprites_packed_{self.sha256[:16]}.npy"
            num = math.prod(self._sizes)

            def fill(out):
                fill_from_npz(npz, num, out)
        else:
            where = f"{npz} does not exist" if npz is not None else "no data_dir given"
            logger.warning(
                "dSprites: %s; using a procedurally generated stand-in on the same factor grid, NOT the "
                "official images. For the real data: git clone %s and place %s in the data_dir.",
                where, REPO_URL, NPZ_NAME,
            )
            self.source, self.path, self.sha256 = "generated", None, None
            self._sizes = grid if grid is not None else OFFICIAL_GRID
            cache_name = f"dsprites_generated_{'x'.join(map(str, self._sizes))}_v{GENERATOR_VERSION}.npy"
            sizes = self._sizes

            def fill(out):
                fill_generated(sizes, out)

        self._bases = _bases(self._sizes)
        self.cache_path = choose_cache_dir(cache_dir, self.data_dir) / cache_name
        self._packed, self._built = open_packed(self.cache_path, self.num_images, fill)

    # -- pickling: a memmap would otherwise be pickled as its full 377 MB contents -----------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._packed = np.load(self.cache_path, mmap_mode="r")

    # -- ground-truth interface (disentanglement_lib) -----------------------------------------------------
    @property
    def factor_sizes(self) -> list[int]:
        """Values per used factor [shape, scale, orientation, posX, posY]; official [3, 6, 40, 32, 32]."""
        return list(self._sizes)

    @property
    def num_images(self) -> int:
        return math.prod(self._sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 5) int64 factor classes, each column uniform over its size."""
        return rng.integers(0, np.asarray(self._sizes), size=(int(n), len(self._sizes)), dtype=np.int64)

    def index_of(self, factors) -> np.ndarray:
        """(n,) int64 image indices of (n, 5) factor classes."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != len(self._sizes) or factors.dtype.kind not in "iu":
            raise ValueError(
                f"factors must be integer (n, {len(self._sizes)}), got {factors.shape} {factors.dtype}")
        if factors.size and ((factors < 0).any() or (factors >= np.asarray(self._sizes)).any()):
            raise ValueError(f"factor classes out of range for sizes {self._sizes}")
        return factors.astype(np.int64) @ self._bases

    def sample_observations_from_factors(self, factors, rng: np.random.Generator | None = None
                                         ) -> torch.Tensor:
        """Images (n, 1, 64, 64) float32 0/1 of ``factors``; ``rng`` is unused (dSprites is noise-free)."""
        return self.images(self.index_of(factors))

    # -- training batches ---------------------------------------------------------------------------------
    def images(self, indices, device: torch.device | str | None = None) -> torch.Tensor:
        """Images at ``indices`` (any order, repeats allowed) as a float32 (n, 1, 64, 64) tensor of 0/1.

        ``device`` None or CPU: unpacked on the host from the memory map. A CUDA device: gathered and unpacked
        on the device from the packed array held there (``resident``), with no host copy of the images; the
        result is the same tensor for the same indices.
        """
        if device is not None and torch.device(device).type != "cpu":
            return self.resident(device).images(indices)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
            raise IndexError(
                f"image indices must lie in [0, {self.num_images}), got {idx.min()}..{idx.max()}")
        bits = unpack_rows(self._packed, idx)
        return torch.from_numpy(bits.astype(np.float32)).unsqueeze(1)

    def resident(self, device: torch.device | str) -> ResidentImages:
        """The packed images copied to ``device`` once per process and shared by every caller in it (the
        official set is 377 MB packed); later calls for the same cache file and device return the same copy."""
        key = (str(self.cache_path), str(torch.device(device)))
        if key not in _RESIDENT:
            _RESIDENT[key] = ResidentImages(self._packed, device)
        return _RESIDENT[key]

    def describe(self) -> str:
        """One line for logs: source, file, grid and cache."""
        grid, cache = "x".join(map(str, self._sizes)), self.cache_path
        if self.source == "npz":
            return f"dSprites source=npz path={self.path} sha256={self.sha256[:16]} grid={grid} cache={cache}"
        return f"dSprites source=generated (stand-in v{GENERATOR_VERSION}) grid={grid} cache={cache}"

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class ResidentImages:
    """A bit-packed (N, 512) uint8 image array held on a device; batches are gathered and unpacked there.

    Unpacking follows ``np.packbits``'s default (big) bit order: pixel 8·j + k of an image is bit 7 − k of
    its byte j, so row-major 64×64 pixels come back in the order they were packed.
    """

    def __init__(self, packed: np.ndarray, device: torch.device | str):
        self.device = torch.device(device)
        self.num_images = packed.shape[0]
        # a private copy: the memory map is read-only, and torch tensors must own writable memory
        self.packed = torch.from_numpy(np.array(packed, dtype=np.uint8, copy=True)).to(self.device)
        self._shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=self.device)  # MSB = first pixel

    def images(self, indices) -> torch.Tensor:
        """Float32 (n, 1, 64, 64) 0/1 images at ``indices`` (a 1-D integer array or tensor, repeats allowed)."""
        if torch.is_tensor(indices):
            idx = indices.to(self.device)
        else:  # host indices are checked on the host (a check on the device would synchronise every batch)
            host = np.asarray(indices)
            if host.ndim == 1 and host.size and host.dtype.kind in "iu" and (
                    host.min() < 0 or host.max() >= self.num_images):
                raise IndexError(f"image indices must lie in [0, {self.num_images}), got {host.min()}..{host.max()}")
            idx = torch.from_numpy(host.astype(np.int64) if host.dtype.kind in "iu" else host).to(self.device)
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(f"indices must be a 1-D integer array, got shape {tuple(idx.shape)} dtype {idx.dtype}")
        idx = idx.long()
        rows = self.packed[idx]  # (n, 512) bytes
        bits = (rows.unsqueeze(-1) >> self._shifts) & 1  # (n, 512, 8)
        return bits.reshape(-1, 1, 64, 64).to(torch.float32)


# One device copy per (cache file, device) in this process, shared by every DSprites instance and trial in it.
_RESIDENT: dict[tuple[str, str], ResidentImages] = {}

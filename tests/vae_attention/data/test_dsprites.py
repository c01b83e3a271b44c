"""dSprites loader, procedural stand-in and packed cache. Tiny grids only (<= 384 images); no downloads."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import pickle
import shutil

import numpy as np
import pytest
import torch

from vae_attention.data import NPZ_NAME, DSprites
from vae_attention.errors import DataError

GRID = (3, 2, 4, 4, 4)  # shape, scale, orientation, posX, posY: 384 images
LOGGER = "vae_attention.data.dsprites"


@pytest.fixture
def generated(tmp_path):
    return DSprites(cache_dir=tmp_path, grid=GRID)


def _npz_arrays(directory):
    with np.load(directory / NPZ_NAME, allow_pickle=True, encoding="latin1") as npz:
        return npz["imgs"], npz["latents_classes"]


def _assert_one_line_data_error(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message


# --- official npz ---------------------------------------------------------------------------------

def test_npz_source_loads_with_metadata_sizes(dsprites_npz, tmp_path):
    ds = DSprites(dsprites_npz, cache_dir=tmp_path)
    assert ds.source == "npz"
    assert ds.sha256 == hashlib.sha256((dsprites_npz / NPZ_NAME).read_bytes()).hexdigest()
    assert ds.factor_sizes == [3, 2, 4, 4, 4]
    assert ds.num_images == len(ds) == 384
    line = ds.describe()
    assert "\n" not in line and "npz" in line and str(dsprites_npz / NPZ_NAME) in line
    assert ds.cache_path.name == f"dsprites_packed_{ds.sha256[:16]}.npy"


def test_npz_images_equal_file_rows(dsprites_npz, tmp_path):
    ds = DSprites(dsprites_npz, cache_dir=tmp_path)
    imgs, _ = _npz_arrays(dsprites_npz)
    factors = ds.sample_factors(100, np.random.default_rng(3))
    idx = ds.index_of(factors)
    x = ds.sample_observations_from_factors(factors, np.random.default_rng(0))
    assert x.dtype == torch.float32 and x.shape == (100, 1, 64, 64)
    np.testing.assert_array_equal(x[:, 0].numpy(), imgs[idx].astype(np.float32))
    everything = ds.images(np.arange(ds.num_images))
    np.testing.assert_array_equal(everything[:, 0].numpy(), imgs)


def test_index_of_matches_latents_classes(dsprites_npz, tmp_path):
    ds = DSprites(dsprites_npz, cache_dir=tmp_path)
    _, classes = _npz_arrays(dsprites_npz)
    idx = ds.index_of(classes[:, 1:])  # drop the constant colour column
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, np.arange(len(classes)))
    with pytest.raises(ValueError):
        ds.index_of(np.array([[3, 0, 0, 0, 0]]))  # shape class 3 of 3


def test_images_keep_requested_order_and_repeats(generated):
    idx = np.array([7, 2, 7, 383, 0, 2])
    batch = generated.images(idx)
    singles = torch.cat([generated.images(np.array([i])) for i in idx])
    assert torch.equal(batch, singles)
    assert generated.images(np.array([], dtype=np.int64)).shape == (0, 1, 64, 64)
    with pytest.raises(IndexError):
        generated.images(np.array([384]))


def test_sample_factors_ranges_dtype_and_determinism(generated):
    f = generated.sample_factors(5000, np.random.default_rng(7))
    assert f.dtype == np.int64 and f.shape == (5000, 5)
    assert (f.min(axis=0) == 0).all()
    np.testing.assert_array_equal(f.max(axis=0), np.array(GRID) - 1)
    np.testing.assert_array_equal(f, generated.sample_factors(5000, np.random.default_rng(7)))
    assert not np.array_equal(f, generated.sample_factors(5000, np.random.default_rng(8)))


# --- procedural stand-in ------------------------------------------------------------------------

def test_generated_without_data_dir_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = DSprites(None, cache_dir=tmp_path, grid=GRID)
    assert ds.source == "generated" and ds.sha256 is None and ds.factor_sizes == list(GRID)
    assert "stand-in" in caplog.text and "github.com/deepmind/dsprites-dataset" in caplog.text
    x = ds.images(np.random.default_rng(0).integers(0, ds.num_images, 64))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 64, 64)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert "generated" in ds.describe()


def test_generated_when_npz_absent_names_expected_path(tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = DSprites(data_dir, grid=GRID)
    assert ds.source == "generated"
    assert str(data_dir / NPZ_NAME) in caplog.text
    assert ds.cache_path.parent == data_dir  # writable data_dir doubles as the cache dir


def test_default_cache_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ds = DSprites(grid=GRID)
    assert ds.cache_path == tmp_path / ".cache" / "vae_attention" / "dsprites_generated_3x2x4x4x4_v1.npy"


def _image(ds, shape=0, scale=1, orient=0, pos_x=1, pos_y=1):
    return ds.sample_observations_from_factors(np.array([[shape, scale, orient, pos_x, pos_y]]))[0, 0].numpy()


def test_generated_shapes_differ(generated):
    sprites = [_image(generated, shape=s) for s in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.array_equal(sprites[a], sprites[b])


def test_generated_pos_x_moves_centroid_monotonically(generated):
    cols = np.arange(64)
    for shape in range(3):
        centroid = [(_image(generated, shape, pos_x=k) * cols).sum() / _image(generated, shape, pos_x=k).sum()
                    for k in range(GRID[3])]
        assert np.all(np.diff(centroid) > 0)


def test_generated_larger_scale_has_more_pixels_and_stays_inside(generated):
    for shape in range(3):
        small, large = (_image(generated, shape, scale=s).sum() for s in range(2))
        assert large > small > 0
        # No clipping anywhere: the same sprite has the same pixel count at every position.
        counts = {_image(generated, shape, 1, 1, x, y).sum() for x in range(GRID[3]) for y in range(GRID[4])}
        assert len(counts) == 1


# --- packed cache ---------------------------------------------------------------------------------

def test_cache_built_once_and_memory_mapped(dsprites_npz, tmp_path):
    first = DSprites(dsprites_npz, cache_dir=tmp_path)
    assert first._built
    mtime = first.cache_path.stat().st_mtime_ns
    second = DSprites(dsprites_npz, cache_dir=tmp_path)
    assert not second._built
    assert second.cache_path == first.cache_path
    assert second.cache_path.stat().st_mtime_ns == mtime
    assert isinstance(second._packed, np.memmap) and second._packed.shape == (384, 512)
    restored = pickle.loads(pickle.dumps(second))
    assert len(pickle.dumps(second)) < 10_000  # the memmap is reopened, not pickled as 196 kB of data
    assert torch.equal(restored.images(np.arange(10)), second.images(np.arange(10)))


def test_cache_with_wrong_shape_is_rebuilt(tmp_path):
    path = tmp_path / "dsprites_generated_3x2x4x4x4_v1.npy"
    np.save(path, np.zeros((10, 512), dtype=np.uint8))
    ds = DSprites(cache_dir=tmp_path, grid=GRID)
    assert ds._built and ds._packed.shape == (384, 512)
    assert ds.images(np.arange(384)).sum() > 0


def _prepare_in_child(data_dir, cache_dir, barrier, results):
    barrier.wait(timeout=120)  # both children are imported and ready: start preparing at the same moment
    ds = DSprites(data_dir, cache_dir=cache_dir)
    results.put((ds._built, int(ds.images(np.arange(ds.num_images)).sum())))


def test_concurrent_preparation_yields_one_valid_file(dsprites_npz, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(dsprites_npz, tmp_path, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    imgs, _ = _npz_arrays(dsprites_npz)
    assert sorted(built for built, _ in outcomes) == [False, True]
    assert {total for _, total in outcomes} == {int(imgs.sum())}
    expected = DSprites(dsprites_npz, cache_dir=tmp_path).cache_path.name
    assert [p.name for p in tmp_path.glob("*.npy")] == [expected]
    assert not list(tmp_path.glob("*.tmp"))


# --- user errors ----------------------------------------------------------------------------------

def test_random_bytes_npz_raises_one_line_data_error(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / NPZ_NAME).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError) as excinfo:
        DSprites(data_dir, cache_dir=tmp_path)
    _assert_one_line_data_error(excinfo, data_dir / NPZ_NAME)


def test_truncated_npz_raises_data_error(dsprites_npz, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    blob = (dsprites_npz / NPZ_NAME).read_bytes()
    (data_dir / NPZ_NAME).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as excinfo:
        DSprites(data_dir, cache_dir=tmp_path)
    _assert_one_line_data_error(excinfo, data_dir / NPZ_NAME)


def test_damaged_image_data_raises_and_leaves_no_cache(dsprites_npz, tmp_path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    blob = bytearray((dsprites_npz / NPZ_NAME).read_bytes())
    middle = len(blob) // 4  # inside the compressed imgs member: it comes first and is the bulk of the file
    blob[middle:middle + 64] = bytes(64)
    (data_dir / NPZ_NAME).write_bytes(bytes(blob))
    with pytest.raises(DataError) as excinfo:
        DSprites(data_dir, cache_dir=cache_dir)
    _assert_one_line_data_error(excinfo, data_dir / NPZ_NAME)
    assert not list(cache_dir.glob("*.npy")) and not list(cache_dir.glob("*.tmp"))


@pytest.mark.parametrize("variant", [{"drop": ("latents_classes",)}, {"drop": ("metadata",)},
                                     {"imgs_hw": (32, 32)}])
def test_malformed_npz_raises_data_error(make_dsprites_npz, tmp_path, variant):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_dsprites_npz(data_dir / NPZ_NAME, **variant)
    with pytest.raises(DataError) as excinfo:
        DSprites(data_dir, cache_dir=tmp_path)
    _assert_one_line_data_error(excinfo, data_dir / NPZ_NAME)


def test_non_canonical_order_raises_data_error(dsprites_npz, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with np.load(dsprites_npz / NPZ_NAME, allow_pickle=True, encoding="latin1") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["latents_classes"] = arrays["latents_classes"][::-1].copy()
    np.savez(data_dir / NPZ_NAME, **arrays)
    with pytest.raises(DataError, match="canonical order"):
        DSprites(data_dir, cache_dir=tmp_path)


def test_unreadable_data_dir_raises_data_error(tmp_path, dsprites_npz):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as excinfo:
        DSprites(missing)
    _assert_one_line_data_error(excinfo, missing)
    copy = shutil.copy(dsprites_npz / NPZ_NAME, tmp_path / NPZ_NAME)
    with pytest.raises(DataError):
        DSprites(copy)  # the file itself, not its directory

"""UCSD Ped1 loader on a tiny copy of the official layout (238 x 158 TIFF frames, BMP masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vae_attention.data import UCSDPed1
from vae_attention.errors import ConfigError, DataError

PED1 = ("UCSD_Anomaly_Dataset.v1p2", "UCSDped1")


def _key(item):
    """'Train/Train001/001.tif' from the item's path: the key of the fixture's written arrays."""
    return "/".join(item["path"].split("/")[-3:])


def _pil_resized(arr, size, resample):
    return np.asarray(Image.fromarray(arr).resize((size, size), resample), dtype=np.float32)


def test_train_split_frames_resized_to_100(ucsd_root):
    root, files = ucsd_root
    ds = UCSDPed1(root)
    assert len(ds) == 3 and ds.clips == ["Train001"]  # ._001.tif junk skipped
    for i, item in enumerate(ds):
        assert item["image"].shape == (1, 100, 100) and item["image"].dtype == torch.float32
        assert item["clip"] == "Train001" and item["frame"] == i and item["has_gt"] is False
        assert not item["mask"].any() and item["mask"].shape == (1, 100, 100)
        # torchvision's antialiased bilinear matches PIL's BILINEAR resize to within one grey level
        expected = _pil_resized(files[_key(item)], 100, Image.BILINEAR) / 255
        np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1.01 / 255)


def test_apple_double_junk_is_skipped(ucsd_root):
    root, _ = ucsd_root
    test_dir = root.joinpath(*PED1, "Test")
    assert (test_dir / "._Test001").is_file() and (test_dir / "Test001" / "._001.tif").is_file()
    ds = UCSDPed1(root, split="test", include_no_gt=True)
    names = [item["path"].rsplit("/", 1)[-1] for item in ds]
    assert names == ["001.tif", "002.tif", "003.tif", "001.tif", "002.tif"]


def test_default_test_split_is_clips_with_ground_truth(ucsd_root):
    root, files = ucsd_root
    ds = UCSDPed1(root, split="test")
    assert ds.clips == ["Test001"] and len(ds) == 3
    for i, item in enumerate(ds):
        assert item["clip"] == "Test001" and item["has_gt"] is True and item["frame"] == i
        raw_mask = files[f"Test/Test001_gt/{i + 1:03d}.bmp"]
        expected = _pil_resized(raw_mask, 100, Image.NEAREST) > 127
        np.testing.assert_array_equal(item["mask"][0].numpy(), expected.astype(np.float32))
        assert 0 < item["mask"].sum() < 100 * 100
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 1, 100, 100) and batch["has_gt"].all()


def test_include_no_gt_adds_clips_with_zero_masks(ucsd_root):
    root, _ = ucsd_root
    ds = UCSDPed1(root, split="test", include_no_gt=True, image_size=64)
    assert ds.clips == ["Test001", "Test002"] and len(ds) == 5
    extra = [ds[i] for i in range(3, 5)]
    assert all(item["clip"] == "Test002" and item["has_gt"] is False for item in extra)
    assert all(not item["mask"].any() and item["mask"].shape == (1, 64, 64) for item in extra)
    assert ds[0]["has_gt"] is True and ds[0]["image"].shape == (1, 64, 64)


def test_mask_count_mismatch_raises_data_error(tmp_path, make_ucsd_ped1):
    make_ucsd_ped1(tmp_path, gt=(("Test001", 2),))
    with pytest.raises(DataError, match="2 \\*.bmp"):
        UCSDPed1(tmp_path, split="test")


def test_missing_root_is_a_one_line_data_error_naming_the_path(tmp_path):
    with pytest.raises(DataError) as excinfo:
        UCSDPed1(tmp_path, split="test")
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(tmp_path.joinpath(*PED1, "Test")) in message


def test_layout_errors(tmp_path, make_ucsd_ped1):
    make_ucsd_ped1(tmp_path, gt=())
    with pytest.raises(DataError, match="TestNNN_gt"):
        UCSDPed1(tmp_path, split="test")
    assert len(UCSDPed1(tmp_path, split="test", include_no_gt=True)) == 5
    (tmp_path.joinpath(*PED1, "Test", "Test009_gt")).mkdir()
    with pytest.raises(DataError, match="Test009"):
        UCSDPed1(tmp_path, split="test")
    (tmp_path.joinpath(*PED1, "Train", "Train002")).mkdir()
    with pytest.raises(DataError, match="Train002"):
        UCSDPed1(tmp_path)
    with pytest.raises(ConfigError):
        UCSDPed1(tmp_path, image_size=100.0)

"""MVTec AD loader on tiny synthetic categories in the official layout (32 px PNGs); nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vae_attention.data import MVTEC_CATEGORIES, MVTecAD
from vae_attention.data.mvtec import ROTATION_DEGREES
from vae_attention.errors import ConfigError, DataError


def _rel(item, root, category):
    return str(item["path"]).removeprefix(f"{root / category}/")


def test_categories_constant():
    assert len(MVTEC_CATEGORIES) == 15 and {"bottle", "grid", "metal_nut", "zipper"} <= set(MVTEC_CATEGORIES)


def test_train_images_at_native_size_equal_raw_pixels(mvtec_root):
    root, files = mvtec_root
    ds = MVTecAD(root, "bottle", image_size=32)
    assert len(ds) == 4  # the AppleDouble ._000.png next to them is skipped
    for item in ds:
        pixels, _ = files["bottle"][_rel(item, root, "bottle")]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), pixels / 255, atol=1e-6)
        assert item["mask"].shape == (1, 32, 32) and not item["mask"].any()
        assert item["label"] == 0 and item["defect"] == "good"


def test_test_split_labels_and_masks(mvtec_root):
    root, files = mvtec_root
    ds = MVTecAD(root, "bottle", split="test", image_size=32)
    assert ds.defects == ["broken_large", "broken_large", "good", "good"]  # sorted defect folders
    np.testing.assert_array_equal(ds.labels, [1, 1, 0, 0])
    for item in ds:
        _, mask = files["bottle"][_rel(item, root, "bottle")]
        expected = np.zeros((32, 32)) if mask is None else mask / 255
        np.testing.assert_array_equal(item["mask"][0].numpy(), expected)
        assert item["label"] == int(mask is not None)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["defect"][0] == "broken_large"


def test_grayscale_category_becomes_three_equal_channels(mvtec_root):
    root, files = mvtec_root
    ds = MVTecAD(root, "grid", split="test", image_size=32)
    assert len(ds) == 2
    for item in ds:
        pixels, _ = files["grid"][_rel(item, root, "grid")]
        assert item["image"].shape == (3, 32, 32)
        for channel in item["image"]:
            np.testing.assert_allclose(channel.numpy(), pixels / 255, atol=1e-6)


def test_resize_keeps_masks_binary_and_aligned(mvtec_root):
    root, files = mvtec_root
    up = MVTecAD(root, "bottle", split="test", image_size=64)
    down = MVTecAD(root, "bottle", split="test", image_size=20)
    for i in range(len(up)):
        _, mask = files["bottle"][_rel(up[i], root, "bottle")]
        expected = np.zeros((32, 32)) if mask is None else mask / 255
        np.testing.assert_array_equal(up[i]["mask"][0].numpy(), np.kron(expected, np.ones((2, 2))))
        item = down[i]
        assert item["image"].shape == (3, 20, 20) and item["mask"].shape == (1, 20, 20)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        if mask is not None:
            assert 0 < item["mask"].sum() < 400


def test_include_good_false_drops_good_test_images(mvtec_root):
    root, _ = mvtec_root
    ds = MVTecAD(root, "bottle", split="test", image_size=32, include_good=False)
    assert ds.defects == ["broken_large", "broken_large"] and ds.labels.tolist() == [1, 1]


def _augmented(root, seed, passes=3):
    ds = MVTecAD(root, "bottle", image_size=32, augment=True, generator=torch.Generator().manual_seed(seed))
    return torch.stack([ds[i]["image"] for _ in range(passes) for i in range(len(ds))])


def test_augmentation_is_reproducible_from_the_generator(mvtec_root):
    root, _ = mvtec_root
    first, again, other = _augmented(root, 0), _augmented(root, 0), _augmented(root, 1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    plain = torch.stack([item["image"] for item in MVTecAD(root, "bottle", image_size=32)] * 3)
    assert not torch.equal(first, plain) and 0.0 <= first.min() and first.max() <= 1.0
    assert 0 < ROTATION_DEGREES <= 15


def test_augmentation_draws_flips_and_small_angles(mvtec_root):
    root, _ = mvtec_root
    ds = MVTecAD(root, "bottle", image_size=32, augment=True, generator=torch.Generator().manual_seed(0))
    draws = [ds.draw_augmentation() for _ in range(200)]
    assert 50 < sum(h for h, _, _ in draws) < 150 and 50 < sum(v for _, v, _ in draws) < 150
    assert all(abs(a) <= ROTATION_DEGREES for _, _, a in draws) and len({a for _, _, a in draws}) == 200


@pytest.mark.parametrize("kwargs", [{"augment": True}, {"augment": True, "generator": 0},
                                    {"augment": True, "split": "test", "generator": torch.Generator()},
                                    {"image_size": 0}, {"split": "val"}])
def test_invalid_arguments_raise_config_error(mvtec_root, kwargs):
    with pytest.raises(ConfigError):
        MVTecAD(mvtec_root[0], "bottle", **kwargs)


def test_missing_mask_is_a_one_line_data_error_naming_the_path(tmp_path, make_mvtec_category):
    make_mvtec_category(tmp_path, "cable", defects=(("bent_wire", 2),))
    missing = tmp_path / "cable" / "ground_truth" / "bent_wire" / "001_mask.png"
    missing.unlink()
    MVTecAD(tmp_path, "cable")  # the train split needs no masks
    with pytest.raises(DataError) as excinfo:
        MVTecAD(tmp_path, "cable", split="test")
    message = str(excinfo.value)
    assert "\n" not in message and str(missing) in message


def test_unknown_or_missing_category_and_empty_train_raise_data_error(tmp_path, make_mvtec_category):
    with pytest.raises(DataError, match="bottle, cable, capsule"):
        MVTecAD(tmp_path, "bottles")
    with pytest.raises(DataError, match=str(tmp_path / "wood")):
        MVTecAD(tmp_path, "wood")
    make_mvtec_category(tmp_path, "tile", n_train=0)
    with pytest.raises(DataError, match=str(tmp_path / "tile" / "train" / "good")):
        MVTecAD(tmp_path, "tile")

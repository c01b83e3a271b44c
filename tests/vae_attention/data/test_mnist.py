"""One-class MNIST from tiny official-format IDX files (gzipped and plain); nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from vae_attention.data import MNIST_EVAL_DIGITS, MNISTOneClass
from vae_attention.errors import ConfigError, DataError


def _stack(ds):
    return torch.stack([ds[i]["image"] for i in range(len(ds))]).numpy()


def test_train_split_is_the_digit_only_and_equals_raw_pixels(mnist_root, mnist_arrays):
    images, digits = mnist_arrays["train"]
    ds = MNISTOneClass(mnist_root, digit=3)
    expected = images[digits == 3]
    assert len(ds) == len(expected) == 3
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 28, 28)
    assert item["label"] == 0 and item["digit"] == 3
    np.testing.assert_array_equal(_stack(ds)[:, 0], expected.astype(np.float32) / 255)
    assert (ds.labels == 0).all() and (ds.digits == 3).all()


def test_test_split_labels_inliers_and_seed_eval_digits(mnist_root, mnist_arrays):
    images, digits = mnist_arrays["t10k"]
    ds = MNISTOneClass(mnist_root, digit=1, split="test", eval_digits=MNIST_EVAL_DIGITS[1])
    keep = np.isin(digits, (1, 7, 4, 9, 2))
    assert len(ds) == keep.sum() == 10
    np.testing.assert_array_equal(ds.digits, digits[keep])
    np.testing.assert_array_equal(ds.labels, (digits[keep] != 1).astype(np.int64))
    np.testing.assert_array_equal(_stack(ds)[:, 0], images[keep].astype(np.float32) / 255)
    assert [ds[i]["label"] for i in range(len(ds))] == ds.labels.tolist()
    assert MNIST_EVAL_DIGITS == {1: (7, 4, 9, 2), 3: (8, 5)}


def test_default_eval_digits_are_all_other_digits(mnist_root, mnist_arrays):
    _, digits = mnist_arrays["t10k"]
    ds = MNISTOneClass(mnist_root, digit=3, split="test")
    assert ds.eval_digits == (0, 1, 2, 4, 5, 6, 7, 8, 9)
    assert len(ds) == len(digits) and ds.labels.sum() == (digits != 3).sum()
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 28, 28) and batch["label"].dtype == torch.int64


def test_plain_idx_files_load_through_torchvision(tmp_path, make_mnist_raw, mnist_arrays, mnist_root, monkeypatch):
    make_mnist_raw(tmp_path, mnist_arrays, gz=False)
    calls = []
    real = torchvision.datasets.MNIST

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.datasets, "MNIST", spy)
    plain = MNISTOneClass(tmp_path, digit=1, split="test", eval_digits=(7, 4))
    assert calls and calls[0]["download"] is False
    gz = MNISTOneClass(mnist_root, digit=1, split="test", eval_digits=(7, 4))
    assert len(calls) == 1  # the gzipped files are read here, not by torchvision
    np.testing.assert_array_equal(_stack(plain), _stack(gz))
    np.testing.assert_array_equal(plain.labels, gz.labels)


def test_partial_plain_files_are_read_without_torchvision(tmp_path, make_mnist_raw, mnist_arrays):
    make_mnist_raw(tmp_path, mnist_arrays, gz=False, prefixes=("train",))  # torchvision wants all four
    ds = MNISTOneClass(tmp_path, digit=5)
    images, digits = mnist_arrays["train"]
    np.testing.assert_array_equal(_stack(ds)[:, 0], images[digits == 5].astype(np.float32) / 255)


def test_missing_file_is_a_one_line_data_error_naming_the_path(tmp_path, make_mnist_raw, mnist_arrays):
    with pytest.raises(DataError) as excinfo:
        MNISTOneClass(tmp_path, digit=1)
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    make_mnist_raw(tmp_path, mnist_arrays, prefixes=("train",))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        MNISTOneClass(tmp_path, digit=1, split="test")


def test_malformed_files_raise_data_error(tmp_path, make_mnist_raw, mnist_arrays):
    make_mnist_raw(tmp_path, mnist_arrays, gz=False, prefixes=("train",))
    raw = tmp_path / "MNIST" / "raw"
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DataError, match="bytes after its header"):
        MNISTOneClass(tmp_path, digit=1)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="magic 2051"):
        MNISTOneClass(tmp_path, digit=1)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        MNISTOneClass(tmp_path, digit=1)


@pytest.mark.parametrize("kwargs", [
    {"digit": 10}, {"digit": True}, {"digit": 1, "split": "val"}, {"digit": 1, "split": "test", "eval_digits": (1, 7)},
    {"digit": 1, "split": "test", "eval_digits": 7}, {"digit": 1, "split": "test", "eval_digits": (11,)},
])
def test_invalid_arguments_raise_config_error(mnist_root, kwargs):
    with pytest.raises(ConfigError):
        MNISTOneClass(mnist_root, **kwargs)

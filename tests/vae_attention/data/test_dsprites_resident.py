"""Device-resident dSprites batches: the packed array held on the device, gathered and unpacked there.

Oracles: numpy's ``unpackbits`` on the same packed rows (an independent unpack), and the host path
``DSprites.images`` for the indices a ``DisentangleState`` draws from its seed (same indices as the host path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vae_attention.data import DSprites
from vae_attention.data.dsprites import ResidentImages
from vae_attention.training import DisentangleConfig, DisentangleState


@pytest.fixture(scope="module")
def small_dsprites(tmp_path_factory):
    return DSprites(grid=(3, 2, 4, 8, 8), cache_dir=tmp_path_factory.mktemp("dsprites_cache"))


def test_unpack_matches_numpy_unpackbits_in_pixel_order():
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, size=(5, 512), dtype=np.uint8)
    images = ResidentImages(packed, "cpu").images([4, 0, 4, 2])
    expected = np.unpackbits(packed[[4, 0, 4, 2]], axis=-1).reshape(4, 1, 64, 64)
    assert images.dtype == torch.float32 and images.shape == (4, 1, 64, 64)
    np.testing.assert_array_equal(images.numpy(), expected.astype(np.float32))
    # pixel 0 is the most significant bit of byte 0 (np.packbits' default order)
    one = np.zeros((1, 512), dtype=np.uint8)
    one[0, 0] = 0b1000_0000
    assert ResidentImages(one, "cpu").images([0])[0, 0, 0, 0] == 1.0


def test_same_indices_and_images_as_the_host_path_for_a_seed(small_dsprites):
    config = DisentangleConfig(batch_size=16, eval_size=32, d_hidden_units=8, d_hidden_layers=1, seed=5)
    state = DisentangleState(config, small_dsprites, device="cpu")
    rng = np.random.default_rng(config.seed)  # the state's own draw, replayed
    for _ in range(3):
        picks = state.train_indices[rng.integers(0, len(state.train_indices), config.batch_size)]
        host_batch = state._batch()
        assert torch.equal(small_dsprites.resident("cpu").images(picks), host_batch)
        assert torch.equal(small_dsprites.resident("cpu").images(torch.from_numpy(picks)), host_batch)


def test_one_copy_per_device_and_errors(small_dsprites):
    assert small_dsprites.resident("cpu") is small_dsprites.resident(torch.device("cpu"))
    with pytest.raises(IndexError, match="must lie in"):
        small_dsprites.resident("cpu").images([small_dsprites.num_images])
    with pytest.raises(ValueError, match="1-D integer"):
        small_dsprites.resident("cpu").images(np.zeros((2, 2), dtype=np.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_equal_host_batches(small_dsprites):
    picks = np.random.default_rng(1).integers(0, small_dsprites.num_images, 64)
    batch = small_dsprites.images(picks, device="cuda")
    assert batch.is_cuda and torch.equal(batch.cpu(), small_dsprites.images(picks))

"""The device checks of benchmarks/cuda_checks.py (gpu_check.sh Part A) pass on CPU, and on CUDA where present.

Each check compares against an independent route (loop vs vmapped gradients, a fresh encode vs the training
forward, numpy's unpackbits vs the device unpack, fp32 vs bf16) and raises on a miss; a tiny stand-in data set
and short runs keep this file to seconds of work.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import cuda_checks
from vae_attention.data import DSprites


@pytest.fixture(scope="module")
def small_dsprites(tmp_path_factory):
    return DSprites(grid=cuda_checks.SMALL_GRID, cache_dir=tmp_path_factory.mktemp("dsprites_cache"))


def test_gradient_and_map_checks_pass_on_cpu():
    assert "second order" in cuda_checks.check_per_dim_gradients("cpu")
    assert "max rel err" in cuda_checks.check_maps_from_forward("cpu")


def test_resident_sampling_check_passes_on_cpu(small_dsprites):
    assert "equal" in cuda_checks.check_resident_sampling("cpu", small_dsprites)


def test_bf16_stays_within_tolerances_of_fp32_on_cpu(small_dsprites):
    # recon within 1 %, L_AD within 0.05, KL within 0.5 nats, the metric within 0.15 (see cuda_checks)
    assert "metric" in cuda_checks.check_bf16("cpu", small_dsprites, steps=4)


def test_a_broken_route_fails_the_check():
    with pytest.raises(AssertionError, match="first order"):
        cuda_checks._close("first order", torch.ones(3) * 1.01, torch.ones(3), 1e-4, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_every_check_passes_on_cuda(small_dsprites):
    results = cuda_checks.run_checks("cuda", steps=10, dataset=small_dsprites)
    assert all(summary is not None for summary in results.values()), results

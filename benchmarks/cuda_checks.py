"""Correctness checks of the device paths, runnable on any device with only torch and numpy installed.

    python -m benchmarks.cuda_checks [--device cuda|cpu] [--steps 30]

Used by ``benchmarks/gpu_check.sh`` (Part A) on a CUDA node, where pytest may be absent, and by
``tests/benchmarks/test_cuda_checks.py`` on CPU. Each check raises AssertionError with the measured error; the
CLI prints one PASS/FAIL line per check and exits 1 if any failed. Tolerances (why):

- per-dimension gradients, batched (vmap) vs loop, first and second order: rtol 1e-4, atol 1e-5 × max|value|
  (the same fp32 math in a different kernel order; cuDNN's TF32 is switched off for the check so the
  comparison is of fp32).
- maps from the training forward vs a fresh encode: rtol 1e-5, atol 1e-6 × max (same graph, same kernels).
- device-resident dSprites batches: exactly equal to the host-unpacked ones for the same seed's indices.
- bf16 autocast vs fp32 over a short run from the same seed: mean recon within 1 %, mean L_AD within 0.05,
  mean |KL − KL_fp32| within 0.5 nats, the FactorVAE metric (small sizes) within 0.15.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from vae_attention import losses
from vae_attention.attention import capture_activation, encode_with_activation, per_dim_gradients
from vae_attention.data import DSprites
from vae_attention.metrics import factor_vae_metric
from vae_attention.models import DSpritesVAE
from vae_attention.training import DisentangleConfig, DisentangleState
from vae_attention.training.disentangle import ad_attention_maps, ad_maps_from_activation

SMALL_GRID = (3, 2, 4, 8, 8)  # 1,536 stand-in images
SMALL = dict(d_hidden_units=128, d_hidden_layers=2, batch_size=16, eval_size=64)


@contextlib.contextmanager
def fp32_convolutions():
    """cuDNN convolutions in true fp32 for the block (torch's default lets them use TF32 on Ampere and later)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, scale_atol: float) -> float:
    """Assert ``got`` ≈ ``want`` (rtol, atol = scale_atol × max|want|); return the max abs error."""
    got, want = got.detach(), want.detach()
    scale = float(want.abs().max())
    assert scale > 0, f"{name}: the reference is all zero (the check would be vacuous)"
    torch.testing.assert_close(got, want, rtol=rtol, atol=scale_atol * scale, msg=lambda m: f"{name}: {m}")
    return float((got - want).abs().max()) / scale


def _images(n: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) < 0.3).float().to(device)


def check_per_dim_gradients(device: str) -> str:
    """Batched (``is_grads_batched``) and looped per-dimension gradients agree, and so do L_AD's gradients."""
    with fp32_convolutions():
        vae = DSpritesVAE(10, generator=torch.Generator().manual_seed(0)).to(device)
        mu, feats = encode_with_activation(vae, _images(8, device), "encoder.0")
        index = torch.arange(10, device=device).expand(8, 10)
        loop = per_dim_gradients(mu, feats, index, create_graph=True, method="loop")
        batched = per_dim_gradients(mu, feats, index, create_graph=True, method="batched")
        first = _close("first order", batched, loop, 1e-4, 1e-5)
        weight = vae.encoder[0].weight

        def l_ad(grads):  # maps and L_AD from the gradients, as attention_maps and losses compute them
            maps = torch.relu((grads.mean(dim=(-2, -1), keepdim=True) * feats).sum(dim=-3)).transpose(0, 1)
            return losses.attention_disentanglement(maps, "consecutive_dims")

        (g_loop,) = torch.autograd.grad(l_ad(loop), weight, retain_graph=True)
        (g_batched,) = torch.autograd.grad(l_ad(batched), weight)
        second = _close("second order", g_batched, g_loop, 1e-4, 1e-5)
    return f"max rel err first order {first:.1e}, second order (∂L_AD/∂W) {second:.1e}"


def check_maps_from_forward(device: str) -> str:
    """Maps taken from the training forward's activation equal maps from a fresh encode (the old route)."""
    config = DisentangleConfig(model="ad_factorvae", **SMALL)
    vae = DSpritesVAE(10, generator=torch.Generator().manual_seed(1)).to(device)
    x = _images(8, device, seed=1)
    with capture_activation(vae, config.attention_layer) as captured:
        out = vae(x, generator=torch.Generator(device=device).manual_seed(0))
    got = ad_maps_from_activation(out.mu, captured.tensor, config, None, size=(64, 64))
    want = ad_attention_maps(vae, x, config, None)
    return f"max rel err {_close('maps', got, want, 1e-5, 1e-6):.1e}"


def check_resident_sampling(device: str, dataset: DSprites) -> str:
    """Batches gathered and unpacked on the device equal the host's for the indices a seed draws."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        picks = rng.integers(0, dataset.num_images, 64)
        host = dataset.images(picks)
        resident = dataset.resident(device).images(picks)
        assert resident.device.type == torch.device(device).type, f"resident batch on {resident.device}"
        assert torch.equal(resident.cpu(), host), "resident batch differs from the host batch"
    return f"5 batches of 64 equal; packed copy {dataset.resident(device).packed.numel() / 2**20:.1f} MiB on {device}"


def _short_run(config: DisentangleConfig, dataset: DSprites, device: str, steps: int):
    state = DisentangleState(config, dataset, device=device)
    history = [state.step() for _ in range(steps)]
    metric = factor_vae_metric(state.representation, dataset, np.random.default_rng(0), batch_size=8,
                               num_train=100, num_eval=50, num_variance_estimate=300, prune_threshold=0.0)
    tail = history[steps // 2:]  # the second half: past the first updates, where the two runs start together
    means = {key: float(np.mean([float(h[key]) for h in tail])) for key in ("recon_loss", "kld", "ad_loss")}
    return means, float(metric["eval_accuracy"])


def check_bf16(device: str, dataset: DSprites, steps: int) -> str:
    """bf16 autocast stays within the stated tolerances of fp32 over a short run from the same seed."""
    config = DisentangleConfig(model="ad_factorvae", seed=3, **{**SMALL, "batch_size": 8})
    fp32, metric32 = _short_run(config, dataset, device, steps)
    bf16, metric16 = _short_run(config.replace(precision="bf16"), dataset, device, steps)
    recon_rel = abs(bf16["recon_loss"] - fp32["recon_loss"]) / fp32["recon_loss"]
    ad_abs = abs(bf16["ad_loss"] - fp32["ad_loss"])
    kld_abs = abs(bf16["kld"] - fp32["kld"])
    summary = (f"recon {fp32['recon_loss']:.1f} vs {bf16['recon_loss']:.1f} ({100 * recon_rel:.2f} %), "
               f"L_AD Δ {ad_abs:.3f}, KL Δ {kld_abs:.3f}, metric {metric32:.2f} vs {metric16:.2f}")
    assert recon_rel <= 0.01, f"bf16 recon off by {100 * recon_rel:.2f} %: {summary}"
    assert ad_abs <= 0.05 and kld_abs <= 0.5, summary
    assert abs(metric16 - metric32) <= 0.15, summary
    return summary


def run_checks(device: str, steps: int = 30, dataset: DSprites | None = None) -> dict[str, str | None]:
    """Run every check on ``device``; {name: summary, or None after printing the failure}."""
    with tempfile.TemporaryDirectory() as scratch:
        dataset = dataset or DSprites(grid=SMALL_GRID, cache_dir=scratch)
        checks: dict[str, Callable[[], str]] = {
            "per-dim gradients batched = loop": lambda: check_per_dim_gradients(device),
            "maps from the training forward": lambda: check_maps_from_forward(device),
            "device-resident dSprites batches": lambda: check_resident_sampling(device, dataset),
            "bf16 within tolerances of fp32": lambda: check_bf16(device, dataset, steps),
        }
        results: dict[str, str | None] = {}
        for name, check in checks.items():
            start = time.perf_counter()
            try:
                results[name] = check()
                print(f"PASS {name}: {results[name]} ({time.perf_counter() - start:.1f} s)", flush=True)
            except AssertionError as err:
                results[name] = None
                print(f"FAIL {name}: {str(err).splitlines()[0]}", flush=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30, help="iterations of each short bf16/fp32 run")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here")
    print(f"cuda_checks on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device != "cpu" else ""))
    results = run_checks(args.device, args.steps)
    sys.exit(0 if all(v is not None for v in results.values()) else 1)


if __name__ == "__main__":
    main()

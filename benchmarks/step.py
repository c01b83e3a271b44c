"""Throughput of the disentanglement training step, against a naive reference at identical math.

    python -m benchmarks.step [--steps 20] [--device cpu|cuda] [--data-dir DIR] [--metric]

Ours: batches drawn by random index from the bit-packed, memory-mapped dSprites cache and unpacked per batch;
per-dimension attention gradients by the per-device default (``grad_method="auto"``).
Naive: a ``DataLoader`` (shuffle, batch 64) over a ``TensorDataset`` of float images (a 50k-image subset:
the full set as float32 is 12 GB) and a Python loop of ``autograd.grad`` per latent dimension; for
``random_pair`` the naive step computes all 10 maps and then picks the pair.
Each row prints iterations per second (median of 3 timed blocks after warm-up) and ours/naive.
``--metric`` also times one full disentanglement_lib FactorVAE metric (≈ 1 M images drawn) on the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from vae_attention import losses
from vae_attention.data import DSprites
from vae_attention.metrics import factor_vae_metric
from vae_attention.training import DisentangleConfig, DisentangleState, build_models, build_optimizers, train_step
from vae_attention.training.disentangle import ad_attention_maps

NAIVE_SUBSET = 50_000


def _rate(step, steps: int, device: torch.device) -> float:
    for _ in range(3):
        step()
    rates = []
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def ours(config: DisentangleConfig, dataset, device):
    state = DisentangleState(config, dataset, device=device)
    return state.step


def naive(config: DisentangleConfig, images: torch.Tensor, device):
    """The textbook loop: DataLoader batches, per-dim autograd.grad loop, all maps for any pair policy."""
    config = config.replace(grad_method="loop")
    models = build_models(config, device)
    optimizers = build_optimizers(config, models)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    loader = DataLoader(TensorDataset(images), batch_size=config.batch_size, shuffle=True, drop_last=True)
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)[0].to(device)
        except StopIteration:
            batches = iter(loader)
            return next(batches)[0].to(device)

    all_maps_config = config.replace(pairs="consecutive_dims")

    def step():
        x, x2 = next_batch(), next_batch()
        if config.pairs == "random_pair":
            # identical math, naive cost: every dim's map, then the pair the policy draws
            maps = ad_attention_maps(models.vae, x, all_maps_config, generator)
            losses.attention_disentanglement(maps, "random_pair", generator)
        train_step(models, optimizers, x, x2, config, generator)

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="iterations per timed block (3 blocks)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=None, help="folder with the official dSprites npz (else stand-in)")
    parser.add_argument("--metric", action="store_true", help="also time one full dlib FactorVAE metric")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    dataset = DSprites(args.data_dir)
    print(f"device={device} torch_threads={torch.get_num_threads()} torch={torch.__version__}")
    print(dataset.describe())
    subset = np.random.default_rng(0).choice(dataset.num_images, NAIVE_SUBSET, replace=False)
    images = dataset.images(np.sort(subset))  # 50k × 4096 float32 = 0.8 GB, as the naive loop would hold
    rng = np.random.default_rng(1)
    packed_mb = dataset.cache_path.stat().st_size / 2**20
    print(f"memory: packed mmap {packed_mb:.0f} MiB for all {dataset.num_images} images (shared by every trial "
          f"on a node); naive float subset {images.numel() * 4 / 2**20:.0f} MiB for {NAIVE_SUBSET}, "
          f"{dataset.num_images * 4096 * 4 / 2**30:.1f} GiB for all")

    rows = [
        ("factorvae", DisentangleConfig(model="factorvae")),
        ("ad_factorvae consecutive_dims", DisentangleConfig(model="ad_factorvae")),
        ("ad_factorvae random_pair", DisentangleConfig(model="ad_factorvae", pairs="random_pair")),
    ]
    print(f"{'step (batch 64)':32s} {'ours it/s':>10s} {'naive it/s':>11s} {'ratio':>7s}")
    fetch = _rate(lambda: dataset.images(rng.integers(0, dataset.num_images, 64)), 200, device)
    loader = iter(DataLoader(TensorDataset(images), batch_size=64, shuffle=True, drop_last=True))
    fetch_naive = _rate(lambda: next(loader), 200, device)
    print(f"{'data only (batches/s)':32s} {fetch:10.0f} {fetch_naive:11.0f} {fetch / fetch_naive:6.2f}x")
    for name, config in rows:
        fast = _rate(ours(config, dataset, device), args.steps, device)
        slow = _rate(naive(config, images, device), args.steps, device)
        print(f"{name:32s} {fast:10.2f} {slow:11.2f} {fast / slow:6.2f}x")

    config = DisentangleConfig(model="ad_factorvae")
    loop = _rate(ours(config.replace(grad_method="loop"), dataset, device), args.steps, device)
    batched = _rate(ours(config.replace(grad_method="batched"), dataset, device), args.steps, device)
    print(f"per-dim gradients, whole AD step: loop {loop:.2f} it/s, batched (vmap) {batched:.2f} it/s "
          f"-> auto uses {'batched' if device.type == 'cuda' else 'loop'} on {device.type}")

    if args.metric:
        # An untrained encoder has no dim above the 0.05 std threshold and would exit early; threshold 0
        # keeps every dim active so the timing covers the full vote encode.
        state = DisentangleState(DisentangleConfig(), dataset, device=device)
        result = factor_vae_metric(state.representation, dataset, np.random.default_rng(0), prune_threshold=0.0)
        print(f"dlib FactorVAE metric (prune_threshold=0): {result['elapsed_s']:.1f} s, "
              f"{result['num_encoded']} images encoded of {result['num_drawn']} drawn")


if __name__ == "__main__":
    main()

"""Throughput and memory of the streaming pixel AUROC / best-IoU accumulator at MVTec AD test-set scale.

    python -m benchmarks.pixel_metrics [--pixels 1e8] [--batch 16] [--size 256] [--bins 65536] [--device cpu|cuda]

MVTec AD's test set is 1725 images; at 256 x 256 that is 1.13e8 pixels. Batches of random maps (uniform noise
plus 0.5 on anomalous pixels) and masks (5 % positive) are generated one at a time, so nothing but the
accumulator's fixed state outlives a batch. Printed: update time alone (generation excluded), pixels/s, the
compute() time, and peak memory: process max RSS before/after (``ru_maxrss``; torch allocations are invisible
to tracemalloc) and, on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from vae_attention.metrics import PixelScoreAccumulator


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=float, default=1e8, help="total pixels streamed (MVTec test: 1.13e8)")
    parser.add_argument("--batch", type=int, default=16, help="images per update() call")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--bins", type=int, default=65_536)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    per_batch = args.batch * args.size * args.size
    num_batches = max(1, math.ceil(args.pixels / per_batch))
    print(f"device={device} torch_threads={torch.get_num_threads()} torch={torch.__version__} bins={args.bins}")
    print(f"{num_batches} batches of {args.batch}x{args.size}x{args.size} = {num_batches * per_batch:.3g} pixels")

    generator = torch.Generator(device=device).manual_seed(0)
    acc = PixelScoreAccumulator(num_bins=args.bins, score_range=(0.0, 1.5), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mib()
    update_s = 0.0
    for _ in range(num_batches):
        shape = (args.batch, args.size, args.size)
        masks = torch.rand(shape, generator=generator, device=device) < 0.05
        maps = torch.rand(shape, generator=generator, device=device) + 0.5 * masks
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        acc.update(maps, masks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        update_s += time.perf_counter() - start
    start = time.perf_counter()
    result = acc.compute()
    compute_s = time.perf_counter() - start
    rss_after = _rss_mib()

    pixels = result["num_pixels"]
    print(f"update total {update_s:.2f} s, {pixels / update_s:.3g} pixels/s ({update_s / num_batches * 1e3:.1f} ms "
          f"per batch); compute() {compute_s * 1e3:.1f} ms")
    print(f"max RSS {rss_before:.0f} MiB before -> {rss_after:.0f} MiB after (one batch of maps as float32 is "
          f"{per_batch * 4 / 2**20:.0f} MiB; holding all pixels would be {pixels * 4 / 2**30:.1f} GiB)")
    if device.type == "cuda":
        print(f"cuda max_memory_allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    print(f"pixel_auroc {result['pixel_auroc']:.4f}  best_iou {result['best_iou']:.4f} at "
          f"{result['best_threshold']:.4f}  best_iou_per_batch {result['best_iou_per_batch']:.4f}  "
          f"positives {result['num_positive']}")
    # U(0,1) negatives vs U(0.5,1.5) positives: P(pos > neg) = 1 - 0.5^3; t = 1 keeps half the positives, no FP.
    print("expected: pixel_auroc 0.875, best_iou 0.5 at 1.0")


if __name__ == "__main__":
    main()

"""Throughput of the project's disentanglement step against an independent textbook step, with FLOPs and GEMM rate.

    python -m benchmarks.step [--threads 2] [--batch 64] [--device cpu|cuda] [--layer first|last] [--steps 30]
                              [--data-dir DIR] [--variants] [--quick]

Ours: ``DisentangleState.step`` (batches by random index from the bit-packed dSprites cache, the project's
``train_step``, per-dimension gradients by ``grad_method="auto"``). Reference: ``benchmarks.textbook.TextbookStep``,
written independently from the papers (its own models, a ``DataLoader``, one ``autograd.grad`` per latent dim,
activations kept from the VAE's own forward, the same L_AD); nothing on that side calls the project. Both use
the same attention layer: ``--layer first`` = the project's default ``encoder.0`` (32×32 maps), ``last`` =
``encoder.6``. Each side runs in a process of its own (``benchmarks.step_process``): ours as a Ray trial runs it
(freed host memory held, ``vae_attention.training.host_memory``), the textbook as a plain PyTorch script, each
on ``--threads`` intra-op threads.

Rows: FactorVAE, AD-FactorVAE with 10 maps (``consecutive_dims``) and with a random pair (2 maps). Each row
prints it/s (ours and the textbook timed in 5 alternating blocks after warm-up, median block), FLOPs per step
(torch's FLOP counter: matmuls and convs of forward, backward and double backward), the achieved GFLOP/s, and
its fraction of the fp32 GEMM rate measured in the same run on the same threads; then ours/textbook.
``--variants`` (default on CUDA) adds the project's step with ``grad_method`` loop/batched, bf16 and
``compile="default"`` (``"reduce-overhead"`` too on CUDA; the first steps, untimed, include the compile).

On a machine shared with other jobs, ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts: OpenMP reads it
when torch loads) keeps spinning OpenMP threads from waiting on descheduled peers, which can make a 2-thread
step several times slower; on a quiet machine it costs ~20 % (threads sleep between the step's many small ops).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from collections.abc import Sequence

import torch

from benchmarks.flops import HEADER, format_row, gemm_gflops, torch_threads
from benchmarks.step_process import StepProcess
from vae_attention.data import DSprites
from vae_attention.training import DisentangleConfig, DisentangleState

LAYER_NAMES = {"first": "encoder.0", "last": "encoder.6"}  # textbook layer → the project's module name
ROWS = (("factorvae", "consecutive_dims"), ("ad_factorvae", "consecutive_dims"), ("ad_factorvae", "random_pair"))
TEXTBOOK_PAIRS = {"consecutive_dims": "consecutive", "random_pair": "random"}
WIDTH = 50  # the row label column
QUICK_GRID = (3, 2, 4, 8, 8)  # 1,536 images: a stand-in small enough to build in well under a second


def dsprites(data_dir: str | None = None, quick_cache: str | None = None) -> DSprites:
    """The official npz in ``data_dir``, the generated stand-in, or (``quick_cache``) a small stand-in cached there."""
    return DSprites(grid=QUICK_GRID, cache_dir=quick_cache) if quick_cache else DSprites(data_dir)


def project_step(model: str, pairs: str, batch: int, layer: str, device: str, data_dir: str | None = None,
                 quick_cache: str | None = None, **overrides):
    """The project's step as a zero-argument callable (one optimiser iteration per call), on ``dsprites(…)``."""
    dataset = dsprites(data_dir, quick_cache)
    fields = {f.name for f in dataclasses.fields(DisentangleConfig)}
    overrides = {k: v for k, v in overrides.items() if k in fields}
    config = DisentangleConfig(model=model, pairs=pairs, batch_size=batch, attention_layer=LAYER_NAMES[layer],
                               eval_size=min(5000, dataset.num_images // 5), **overrides)
    return DisentangleState(config, dataset, device=device).step


def paired_results(sides: Sequence[tuple[StepProcess, str]], steps: int, threads: int, *, warmup: int,
                   gemm_size: int, gemm_seconds: float, device: str, blocks: int = 5) -> list[dict[str, float]]:
    """``fraction_of_gemm`` for steps built in their own processes (``(process, key)``), timed in alternating
    blocks (A B A B …, the order flipped every block) so that a neighbour's burst of load on a shared machine
    hits both sides alike; the median block rate of each, and the larger of the GEMM rates (measured in this
    process) before and after all blocks."""
    flops = [process.flops(key) for process, key in sides]
    for process, key in sides:
        process.run(key, max(warmup - 1, 0))
    with torch_threads(threads):
        gemm_before = gemm_gflops(None, gemm_size, gemm_seconds / 2, device)
    per_block = max(1, steps // blocks)
    rates: list[list[float]] = [[] for _ in sides]
    for block in range(blocks):
        order = range(len(sides)) if block % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            process, key = sides[i]
            rates[i].append(per_block / process.run(key, per_block))
    with torch_threads(threads):
        gemm = max(gemm_before, gemm_gflops(None, gemm_size, gemm_seconds / 2, device))
    results = []
    for step_rates, step_flop in zip(rates, flops, strict=True):
        rate = statistics.median(step_rates)
        gflop = step_flop / 1e9
        results.append({"iterations_per_s": rate, "gflop_per_step": gflop, "gflops": rate * gflop,
                        "gemm_gflops": gemm, "fraction": rate * gflop / gemm})
    return results


def variants(device: str) -> list[tuple[str, dict]]:
    """Project-side options timed with ``--variants``: those the config knows (others are skipped)."""
    fields = {f.name for f in dataclasses.fields(DisentangleConfig)}
    options = [("grad loop", dict(grad_method="loop")), ("grad batched", dict(grad_method="batched")),
               ("bf16", dict(precision="bf16")), ("compiled", dict(compile="default"))]
    if device == "cuda":  # CUDA graphs of the compiled parts; on CPU the mode is the same as "default"
        options.append(("compiled reduce-overhead", dict(compile="reduce-overhead")))
    return [(name, opts) for name, opts in options if set(opts) <= fields]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (steps and GEMM)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layer", choices=tuple(LAYER_NAMES), default="first",
                        help="attention layer, both sides: first = encoder.0 (the default), last = encoder.6")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row (3 blocks, median rate)")
    parser.add_argument("--data-dir", default=None, help="folder with the official dSprites npz (else the stand-in)")
    parser.add_argument("--variants", action="store_true", help="also time grad_method loop/batched and bf16 "
                        "(always on with --device cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: a small stand-in data set, 3 timed steps, a short GEMM")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    cuda = args.device == "cuda"
    # CPU: 1024³ reaches oneDNN's steady rate on a few cores; a GPU needs 4096³ to fill its SMs
    gemm_size = 4096 if cuda else (512 if args.quick else 1024)
    steps, warmup, gemm_seconds = (3, 1, 0.2) if args.quick else (args.steps, 3, 1.0)

    blocks = 3 if args.quick else 5
    with tempfile.TemporaryDirectory() as scratch, \
            StepProcess("benchmarks.step:project_step", args.threads, args.device, hold_memory=True) as ours_side, \
            StepProcess("benchmarks.textbook:TextbookStep", args.threads, args.device) as textbook_side:
        data = {"quick_cache": scratch} if args.quick and args.data_dir is None else {"data_dir": args.data_dir}
        dataset = dsprites(**data)  # built here first: the side processes then read its cache
        load = os.getloadavg()[0]
        print(f"benchmarks.step: device={args.device} threads={args.threads} batch={args.batch} layer={args.layer} "
              f"({LAYER_NAMES[args.layer]}) torch={torch.__version__} OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} load={load:.1f}/{os.cpu_count()} cores"
              f"{' (quick: a smoke test, not a measurement)' if args.quick else ''}")
        if cuda:
            print(f"gpu: {torch.cuda.get_device_name()}")
        print(dataset.describe())
        print("each side runs in its own process: ours as a trial runs (freed host memory held), the textbook "
              "as a plain PyTorch script")
        ours_side.wait_ready()  # their start-up (imports) must not overlap the GEMM measured here
        textbook_side.wait_ready()
        with torch_threads(args.threads):
            gemm = gemm_gflops(None, gemm_size, gemm_seconds, args.device)
        print(f"fp32 GEMM {gemm_size}³ on {args.device}: {gemm:.1f} GFLOP/s (each row re-measures it)")
        print(f"{'step':{WIDTH}s}{HEADER[len('step'.ljust(38)):]} {'ours/textbook':>14s}")

        def measure(sides):
            return paired_results(sides, steps, args.threads, warmup=warmup, gemm_size=gemm_size,
                                  gemm_seconds=gemm_seconds, device=args.device, blocks=blocks)

        for model, pairs in ROWS:
            label = model if model == "factorvae" else f"{model} {pairs}"
            ours_side.build(label, model=model, pairs=pairs, batch=args.batch, layer=args.layer, device=args.device,
                            **data)
            textbook_side.build(label, model=model, batch=args.batch, pairs=TEXTBOOK_PAIRS[pairs],
                                layer=args.layer, device=args.device)
            ours, reference = measure([(ours_side, label), (textbook_side, label)])
            ratio = ours["iterations_per_s"] / reference["iterations_per_s"]
            print(format_row(f"{label} [ours]", ours, WIDTH), f"{ratio:13.2f}x")
            print(format_row(f"{label} [textbook]", reference, WIDTH), flush=True)
            textbook_side.drop(label)
            if args.variants or cuda:
                for name, options in variants(args.device):
                    if model == "factorvae" and "grad_method" in options:
                        continue  # no attention maps in FactorVAE
                    key = f"{label} {name}"
                    ours_side.build(key, model=model, pairs=pairs, batch=args.batch, layer=args.layer,
                                    device=args.device, **data, **options)
                    (result,) = measure([(ours_side, key)])
                    ours_side.drop(key)
                    ratio = result["iterations_per_s"] / reference["iterations_per_s"]
                    print(format_row(f"{label} [ours, {name}]", result, WIDTH), f"{ratio:13.2f}x", flush=True)
            ours_side.drop(label)


if __name__ == "__main__":
    main()

"""Measuring instruments for a training step: FLOPs per step, the machine's fp32 GEMM rate, and the fraction.

    step_flops(step_fn)                       -> FLOPs of one call (forward + backward + double backward)
    flops_by_op(step_fn)                      -> the same total split by aten op (where the FLOPs go)
    gemm_gflops(threads, size, seconds)       -> GFLOP/s of a square fp32 matmul loop on `threads` threads
    fraction_of_gemm(step_fn, steps, threads) -> it/s, GFLOP/step, GFLOP/s, GEMM GFLOP/s, fraction

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which sees every aten op dispatched while a
step runs, so it counts the backward and the double backward of a differentiable L_AD (the backward of
``convolution_backward`` is itself dispatched as convolutions) without any bookkeeping in the step. It counts
matmuls and convolutions only (2 FLOPs per multiply-add); elementwise ops, reductions and optimiser updates
count zero, so "fraction of GEMM" is the share of the machine's dense-matmul rate that the step's dense work
achieves: the gap is launch/dispatch overhead, memory-bound elementwise work, data loading and Python.

Nothing here imports the project: the step is any zero-argument callable.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

StepFn = Callable[[], object]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads, then restore the previous count (it is process-global)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def step_flops(step_fn: StepFn) -> int:
    """FLOPs of one call of ``step_fn``, as torch's FLOP counter sees them (the call really runs and updates)."""
    with FlopCounterMode(display=False) as counter:
        step_fn()
    return int(counter.get_total_flops())


def flops_by_op(step_fn: StepFn) -> dict[str, int]:
    """FLOPs of one call split by aten op (e.g. ``convolution``, ``convolution_backward``, ``addmm``, ``mm``)."""
    with FlopCounterMode(display=False) as counter:
        step_fn()
    totals: dict[str, int] = {}
    # get_flop_counts() is keyed by module name; "Global" holds every op of the call once.
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1] if str(op).startswith("aten.") else str(op)
        totals[name] = totals.get(name, 0) + int(flops)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA kernels, so a timed block ends when its work does (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_rate(step_fn: StepFn, steps: int, warmup: int = 3, blocks: int = 3,
                 device: str | torch.device = "cpu") -> float:
    """Calls per second: ``warmup`` untimed calls, then ``steps`` calls in ``blocks`` timed blocks; the median
    block rate, so that one block disturbed by a neighbour on a shared machine does not set the figure.
    On CUDA each block starts and ends with a synchronize (kernels run asynchronously)."""
    for _ in range(warmup):
        step_fn()
    blocks = max(1, min(blocks, steps))
    per_block = max(1, steps // blocks)
    rates = []
    for _ in range(blocks):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(per_block):
            step_fn()
        _synchronize(device)
        rates.append(per_block / (time.perf_counter() - start))
    return statistics.median(rates)


def gemm_gflops(threads: int | None, size: int = 1024, seconds: float = 1.0,
                device: str | torch.device = "cpu") -> float:
    """The machine's fp32 dense matmul rate in GFLOP/s on ``threads`` threads (None: the current count).

    A ``size``³ ``torch.mm`` into a preallocated output, repeated for about ``seconds`` s split into 5 blocks;
    the median block rate (2·size³ FLOPs per matmul). 1024³ is large enough for oneDNN/MKL to reach its
    steady rate on a few cores (≈ 0.1 s per matmul at 20 GFLOP/s) and small enough to fit in a short budget.
    On CUDA (``device``) the same loop runs on the GPU with a synchronize per matmul (TF32 as torch's
    current ``allow_tf32`` setting says; off by default, so this is the plain fp32 rate); use size ≥ 4096 there.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    out = torch.empty(size, size, device=device)
    flops_per_mm = 2.0 * size**3
    with torch_threads(threads):
        torch.mm(a, b, out=out)  # warm-up: thread pool start, kernel selection
        block_s = max(seconds / 5, 1e-3)
        rates = []
        for _ in range(5):
            count, start = 0, time.perf_counter()
            while True:
                torch.mm(a, b, out=out)
                _synchronize(device)
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= block_s:
                    break
            rates.append(count * flops_per_mm / elapsed / 1e9)
    return statistics.median(rates)


def fraction_of_gemm(
    step_fn: StepFn,
    steps: int,
    threads: int | None,
    *,
    warmup: int = 3,
    gemm_size: int = 1024,
    gemm_seconds: float = 1.0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Throughput of ``step_fn`` against the GEMM rate measured in the same call, on the same thread count.

    Returns ``iterations_per_s``, ``gflop_per_step`` (GFLOP, forward + backward + double backward),
    ``gflops`` (achieved GFLOP/s = it/s × GFLOP/step), ``gemm_gflops`` and ``fraction`` (gflops / gemm_gflops).
    The GEMM is measured before and after the timed steps and the larger is kept: on a shared machine the
    quieter moment is the better estimate of what the cores can do, so the fraction errs low, not high.
    The FLOP-counting call runs outside the timing (the counter's dispatch hook slows the step).
    """
    with torch_threads(threads):
        flops = step_flops(step_fn)
        gemm_before = gemm_gflops(None, gemm_size, gemm_seconds / 2, device)
        rate = measure_rate(step_fn, steps, warmup=warmup, device=device)
        gemm_after = gemm_gflops(None, gemm_size, gemm_seconds / 2, device)
    gemm = max(gemm_before, gemm_after)
    gflop_per_step = flops / 1e9
    achieved = rate * gflop_per_step
    return {
        "iterations_per_s": rate,
        "gflop_per_step": gflop_per_step,
        "gflops": achieved,
        "gemm_gflops": gemm,
        "fraction": achieved / gemm,
    }


def format_row(name: str, result: dict[str, float], width: int = 38) -> str:
    """One table row: name, it/s, GFLOP/step, GFLOP/s, % of GEMM (the header is ``HEADER``)."""
    return (f"{name:{width}s} {result['iterations_per_s']:8.2f} {result['gflop_per_step']:11.3f} "
            f"{result['gflops']:9.2f} {100 * result['fraction']:8.1f}%")


HEADER = f"{'step':38s} {'it/s':>8s} {'GFLOP/step':>11s} {'GFLOP/s':>9s} {'of GEMM':>9s}"

"""Trials packed on one device: K concurrent trial processes, summed and per-trial iterations/s, Table 1 projection.

    python -m benchmarks.packing [--device cpu|cuda] [--trials 1 2 4 8 16] [--seconds 30] [--threads 1] [--quick]

Each trial is a plain process (no Ray: this runs on a bare node with torch and numpy) running
``DisentangleState.step`` with the study's defaults (batch 64, attention layer ``encoder.0``,
``consecutive_dims``) on a small stand-in data set; all K processes set up, then start timing together and
step for ``--seconds``.
A pack of K ≥ 2 mixes the models as Table 1 does, n_F = max(1, round(K · 10/50)) FactorVAE trials and the rest
AD-FactorVAE; K = 1 runs each model alone, one after the other.

Projection: Table 1 is 50 runs of 150,000 iterations (``search_spaces/disentangle.py``: exp1 = 5 γ × 2 models
× 2 seeds, so 10 FactorVAE + 10 AD-FactorVAE; exp2 = 10 AD-FactorVAE; exp3 = 5 γ × 2 λ × 2 seeds = 20
AD-FactorVAE): 1.5 M FactorVAE and 6 M AD-FactorVAE iterations. With K trial slots running at the pack's
per-trial rates r_F and r_A, the wall time is (1.5 M / r_F + 6 M / r_A) / K. Training steps only: the
periodic evaluations (``eval_every``) and checkpoints are not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

TABLE1_RUNS = {"factorvae": 10, "ad_factorvae": 40}  # exp1 10 + 10, exp2 10, exp3 20 (search_spaces/disentangle.py)
ITERATIONS_PER_RUN = 150_000
# The stand-in on a small grid (1,536 images): a step draws random indices, so its cost does not depend on the
# data set's size, and a bare node need not generate or download the 737,280-image set for this measurement.
SMALL_GRID = (3, 2, 4, 8, 8)


def pack_models(k: int) -> list[str]:
    """The models of a pack of K ≥ 2 trials in Table 1's proportion (at least one FactorVAE)."""
    share = TABLE1_RUNS["factorvae"] / sum(TABLE1_RUNS.values())
    n_f = max(1, round(k * share))
    return ["factorvae"] * n_f + ["ad_factorvae"] * (k - n_f)


def projected_hours(rates: dict[str, float], k: int) -> float:
    """Table 1's wall time in hours on K slots at per-trial rates ``rates`` (it/s per model)."""
    seconds = sum(TABLE1_RUNS[m] * ITERATIONS_PER_RUN / rates[m] for m in TABLE1_RUNS) / k
    return seconds / 3600


def worker(args) -> None:
    """One trial: set up, say ready, wait for the go line on stdin, step for ``seconds``, print a JSON result."""
    from vae_attention.data import DSprites
    from vae_attention.training import DisentangleConfig, DisentangleState
    from vae_attention.training.host_memory import hold_freed_host_memory

    hold_freed_host_memory()  # as a Ray trial's process does
    torch.set_num_threads(args.threads)
    dataset = DSprites(grid=SMALL_GRID, cache_dir=args.cache_dir)
    state = DisentangleState(DisentangleConfig(model=args.model, eval_size=min(5000, dataset.num_images // 5)),
                             dataset, device=args.device)
    for _ in range(2):  # warm-up: allocator, kernel selection
        state.step()
    print("ready", flush=True)
    sys.stdin.readline()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        state.step()  # metrics stay on the device: CUDA kernels may still be queued here
        steps += 1
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize()  # so the seconds below cover every counted step's work
    print(json.dumps({"model": args.model, "iterations": steps, "seconds": time.perf_counter() - start}), flush=True)


def run_pack(models: list[str], device: str, seconds: float, threads: int, cache_dir: str) -> list[dict]:
    """Start one process per model, release them together once all are ready, collect their results."""
    command = [sys.executable, "-m", "benchmarks.packing", "--worker", "--device", device, "--seconds", str(seconds),
               "--threads", str(threads), "--cache-dir", cache_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    procs = [subprocess.Popen([*command, "--model", m], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env, start_new_session=True) for m in models]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a trial process failed to start (exit {proc.wait()})")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for proc in procs]
        for proc in procs:
            proc.wait(timeout=60)
        return results
    finally:
        for proc in procs:  # only the processes this call started
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="pack sizes K")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per pack")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial process")
    parser.add_argument("--quick", action="store_true", help="smoke test: K = 2 (1 + 1) for 2 s")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="factorvae", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    trials, seconds = ([2], 2.0) if args.quick else (sorted(set(args.trials)), args.seconds)

    with tempfile.TemporaryDirectory() as scratch:
        from vae_attention.data import DSprites

        # build the packed cache once here, so K processes do not wait on each other's build
        cache_dir = scratch
        DSprites(grid=SMALL_GRID, cache_dir=scratch)
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
        print(f"benchmarks.packing: device={args.device} ({where}) threads/trial={args.threads} "
              f"seconds/pack={seconds:g} torch={torch.__version__}"
              f"{' (quick: a smoke test, not a measurement)' if args.quick else ''}")
        print(f"{'K':>3s} {'mix (F+AD)':>10s} {'summed it/s':>12s} {'FactorVAE it/s/trial':>21s} "
              f"{'AD it/s/trial':>14s} {'Table 1 wall h':>15s}")
        best = None
        for k in trials:
            if k == 1:
                results = [r for m in TABLE1_RUNS for r in run_pack([m], args.device, seconds, args.threads,
                                                                      cache_dir)]
            else:
                results = run_pack(pack_models(k), args.device, seconds, args.threads, cache_dir)
            rates = {m: [r["iterations"] / r["seconds"] for r in results if r["model"] == m] for m in TABLE1_RUNS}
            per_trial = {m: sum(v) / len(v) for m, v in rates.items()}
            summed = sum(per_trial.values()) / 2 if k == 1 else sum(sum(v) for v in rates.values())
            hours = projected_hours(per_trial, k)
            mix = f"{len(rates['factorvae'])}+{len(rates['ad_factorvae'])}" if k > 1 else "1 each"
            print(f"{k:3d} {mix:>10s} {summed:12.2f} {per_trial['factorvae']:21.2f} {per_trial['ad_factorvae']:14.2f} "
                  f"{hours:15.1f}", flush=True)
            if best is None or hours < best[1]:
                best = (k, hours, summed)
        print(f"best packing: K={best[0]} trials per device, projected Table 1 wall time {best[1]:.1f} h "
              f"(training steps only; K=1 'summed' is the mean of the two solo rates)")


if __name__ == "__main__":
    main()

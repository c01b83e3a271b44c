"""``python -m benchmarks.bench_history``: how long a report's history fetch takes on a SQLite store.

Builds a throwaway store of RUNS runs × METRICS metrics × POINTS steps (100 × 10 × 300 by default, the size
the report must handle in seconds), then times ``Histories.prefetch`` with 1 worker and with the pool, and
checks every history came back whole. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from analysis.store import Histories, load_sweep, open_store
from analysis.synthetic import TrialRun, log_trial


def build_store(root: Path, runs: int, metrics: int, points: int) -> tuple[str, list[str]]:
    uri = f"sqlite:///{root / 'bench.db'}"
    client = MlflowClient(uri)
    client.create_experiment("bench", artifact_location=str(root / "artifacts"))
    keys = [f"metric_{i}" for i in range(metrics)]
    for r in range(runs):
        histories = {k: [(10 * (s + 1), float(r + s)) for s in range(points)] for k in keys}
        log_trial(client, "bench", TrialRun(params={"model": "factorvae", "gamma": r % 5, "seed": r},
                                            histories=histories))
    return uri, keys


def measure(uri: str, keys: list[str], workers: int, points: int) -> tuple[float, int]:
    client = open_store(uri)
    run_ids = list(load_sweep(client, "bench").runs["run_id"])
    histories = Histories(client, workers=workers)
    start = time.perf_counter()
    histories.prefetch(run_ids, keys)
    elapsed = time.perf_counter() - start
    assert all(len(histories.get(r, k)) == points for r in run_ids for k in keys), "a history came back short"
    return elapsed, histories.calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_history", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as scratch:
        start = time.perf_counter()
        uri, keys = build_store(Path(scratch), args.runs, args.metrics, args.points)
        print(f"store: {args.runs} runs × {args.metrics} metrics × {args.points} points written in "
              f"{time.perf_counter() - start:.1f} s")
        for workers in (1, args.workers):
            elapsed, calls = measure(uri, keys, workers, args.points)
            print(f"fetch with {workers} worker(s): {calls} get_metric_history calls, "
                  f"{args.runs * args.metrics * args.points:,} points in {elapsed:.2f} s "
                  f"({1000 * elapsed / calls:.1f} ms per call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

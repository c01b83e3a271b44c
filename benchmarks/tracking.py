"""Driver-side MLflow logging overhead per report, with 8 concurrent trials.

    python -m benchmarks.tracking [--trials 8] [--reports 50] [--tracking-uri sqlite:///...]

Feeds ``MLflowTrialLogger`` what Tune would: interleaved results of 8 trials, each with the ~14 numbers of
a disentanglement report, and prints the time per report (one ``log_batch`` call each) and per trial
start (run lookup, params, config artifact). All of it runs on the driver, between Tune's own events.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from search_spaces.common import PARAMS_KEY
from search_spaces.disentangle import get_study, resolved_params
from study.disentangle import trial_tags
from study.tracking import MLflowTrialLogger

METRICS = ("recon_loss", "kld", "tc", "ad_loss", "d_loss", "vae_loss", "d_accuracy", "zero_map_fraction",
           "iterations_per_s")


class FakeTrial:
    def __init__(self, trial_id: str, params: dict):
        self.trial_id = trial_id
        self.config = {PARAMS_KEY: params}
        self.error_file = None

    def __str__(self) -> str:
        return f"bench_{self.trial_id}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--reports", type=int, default=50, help="reports per trial")
    parser.add_argument("--tracking-uri", help="default: a fresh SQLite file in a temp dir")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'bench.db'}"
        logger = MLflowTrialLogger(uri, f"bench-{time.time_ns()}", {"sweep": "bench", "study": "bench"},
                                   trial_tags, resolved_params, "iteration")
        logger.setup()
        params = get_study("exp1").trials()
        trials = [FakeTrial(f"t{i:05d}", params[i % len(params)]) for i in range(args.trials)]
        starts = []
        for trial in trials:
            tick = time.perf_counter()
            logger.on_trial_start(0, trials, trial)
            starts.append(time.perf_counter() - tick)
        per_report = []
        for report in range(1, args.reports + 1):
            for trial in trials:  # interleaved, as concurrent trials report
                result = {m: float(report) / (1 + i) for i, m in enumerate(METRICS)}
                result.update(iteration=report * 500, device="cpu", data_source="generated", node_id="n0")
                tick = time.perf_counter()
                logger.on_trial_result(0, trials, trial, result)
                per_report.append(time.perf_counter() - tick)
        print(f"tracking store: {uri.split(':')[0]}; {args.trials} concurrent trials x {args.reports} reports, "
              f"{len(METRICS)} metrics each")
        print(f"per report: median {statistics.median(per_report) * 1e3:.1f} ms, p95 "
              f"{sorted(per_report)[int(0.95 * len(per_report))] * 1e3:.1f} ms, total "
              f"{sum(per_report):.2f} s for {len(per_report)} reports")
        print(f"per trial start (lookup + params + config.json): median {statistics.median(starts) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()

"""``python -m analysis report``: figures, tables, report.md/html and claims.md from the runs of sweeps.

A user error (unknown sweep, nothing finished, a quick-only sweep beside full ones, mixed data, a missing store)
prints one line and exits 2; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis import AnalysisError

# as study.run: MLflow's own environment variable, else a SQLite file in the working directory
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXAMPLE = ("python -m analysis report --tracking-uri sqlite:///mlflow.db --sweep disentangle-exp1 "
           "--out reports/exp1")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis",
                           description="Reports on finished sweeps, read from MLflow only.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser(
        "report", help="figures, tables, report.md/html and claims.md for one or more sweeps",
        description="Turn the finished trial runs of one or more sweeps into figures, CSV/Markdown tables, "
                    "report.md, report.html and claims.md in --out, and log them as an MLflow run tagged "
                    f"run_kind=report in the first sweep's experiment. Example: {EXAMPLE}",
    )
    report.add_argument("--tracking-uri", default=None,
                        help=f"the MLflow store the sweeps logged to (default ${TRACKING_URI_ENV} if set, else "
                             f"{DEFAULT_TRACKING_URI})")
    report.add_argument("--sweep", action="append", required=True, metavar="NAME",
                        help="a sweep (= MLflow experiment) name; repeat to combine sweeps")
    report.add_argument("--out", required=True, type=Path,
                        help="output directory: new, empty, or an earlier report's (whose outputs are replaced)")
    report.add_argument("--format", choices=["png", "pdf"], default="png", help="figure format (default png)")
    report.add_argument("--include-quick", action="store_true",
                        help="also use quick-preset (smoke) runs beside full ones; left out by default, except "
                             "when the sweeps hold nothing else (then reported with a note)")
    report.add_argument("--allow-mixed-data", action="store_true",
                        help="put runs of different data sources in one table (each source stays its own "
                             "configuration); refused by default")
    report.add_argument("--no-log", action="store_true", help="write the files only; log no MLflow report run")
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(args: argparse.Namespace) -> int:
    from analysis.report import build, summary_lines

    tracking_uri = args.tracking_uri or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI
    result = build(tracking_uri, args.sweep, args.out, fmt=args.format, include_quick=args.include_quick,
                   allow_mixed_data=args.allow_mixed_data, log_run=not args.no_log)
    for line in summary_lines(result):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow draws a progress bar per downloaded figure; the report prints its own summary instead
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return run(args)
    except AnalysisError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

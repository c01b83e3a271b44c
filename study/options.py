"""Command-line options shared by every study, and their validation before Ray starts.

Every option defaults to None in argparse so that we can tell what the user typed: ``--resume`` accepts only
``--name``, ``--storage``, ``--address`` and ``--debug`` (Ray's ``Tuner.restore`` reapplies the pickled run
configuration, so anything else would be silently ignored), and explicit options override a preset.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sqlite3
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from search_spaces.protocols import DEFAULT_PROTOCOL, PROTOCOL_NAMES
from vae_attention.errors import ConfigError, StudyError

DEFAULTS: dict[str, Any] = {
    "storage": "./ray_results",
    "tracking_uri": "sqlite:///mlflow.db",
    "cpus_per_trial": 1.0,
    "gpus_per_trial": 0.0,
    "max_concurrent": 0,
    "max_failures": 2,
}
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # the default of --tracking-uri when set
RESUME_OPTIONS = {"name", "storage", "address", "debug", "resume"}
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql")
SERVER_TIMEOUT_S = 5.0


def add_common_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds (a grid axis); default: the study's")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="typed override of any trial config field, e.g. --set lr=3e-4 (repeatable)")
    g.add_argument("--data-dir", help="folder with the official data files (see README 'Data')")
    g.add_argument("--quick", action="store_true", default=None, help="small smoke preset (minutes on a laptop)")
    g.add_argument("--protocol", choices=PROTOCOL_NAMES,
                   help=f"bundle of settings reproducing one source (default {DEFAULT_PROTOCOL}): paper = Liu et al. "
                        "as written, authors = liuem607/expVAE, seed = the report's code (FACT-2021); "
                        "explicit flags and --set override it (logged as <name>+custom); --dry-run prints it")
    g.add_argument("--dry-run", action="store_true", default=None,
                   help="list the trials and estimated disk/metric cost, then exit without starting Ray")

    g = parser.add_argument_group("storage and tracking")
    g.add_argument("--name", help="sweep name = Ray experiment folder = MLflow experiment (default: <study>-<exp>)")
    g.add_argument("--storage", help=f"Ray storage path, local, NFS or s3:// (default {DEFAULTS['storage']})")
    g.add_argument("--tracking-uri", help=f"MLflow tracking URI (default ${TRACKING_URI_ENV} if set, else "
                                          f"{DEFAULTS['tracking_uri']} in the working directory; http://HOST:PORT "
                                          "for a tracking server)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="resume the interrupted sweep --name (only --name, --storage, --address, --debug apply)")

    g = parser.add_argument_group("scheduling (see study/search.py)")
    g.add_argument("--scheduler", choices=("fifo", "asha", "optuna"),
                   help="fifo (default): the study's exact grid, every trial to the end; asha: the grid under "
                        "ASHA, which STOPS TRIALS EARLY at rungs by --metric (Ray 2.60 does not restore ASHA's "
                        "rung state on --resume: resumed trials continue from their checkpoints with empty rungs, "
                        "so rungs already passed are not re-judged); optuna: sample --num-samples trials from "
                        "the study's ranges (log-uniform γ, λ, lr; seeds as a choice)")
    g.add_argument("--metric", help="what ASHA/Optuna optimise (default: asha recon_loss or loss, reported at "
                                    "every rung; optuna disentanglement or pixel_auroc/image_auroc)")
    g.add_argument("--mode", choices=("min", "max"), help="minimise or maximise --metric (default: the metric's)")
    g.add_argument("--grace-period", type=int, help="ASHA: units (iterations/epochs) before the first rung "
                                                    "(default 1)")
    g.add_argument("--reduction-factor", type=int, help="ASHA: keep 1/N at each rung (default 3)")
    g.add_argument("--num-samples", type=int, help="optuna: trials to sample (default 10)")
    g.add_argument("--objective", choices=("single", "pareto"),
                   help="optuna: pareto = multi-objective, disentanglement up and eval_recon_loss down")
    g.add_argument("--search-seed", type=int, help="seed of the Optuna sampler (default 0)")

    g = parser.add_argument_group("resources")
    g.add_argument("--cpus-per-trial", type=float, help=f"CPUs per trial = torch threads (default "
                                                          f"{DEFAULTS['cpus_per_trial']:g})")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials on one GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, help="most trials running at once (default 0: as resources allow)")
    g.add_argument("--max-failures", type=int, help="retries of a failed trial from its last checkpoint "
                                                    f"(default {DEFAULTS['max_failures']})")
    g.add_argument("--address", help="Ray cluster to join (default: the running cluster if any, else start a "
                                     "local one)")
    parser.add_argument("--debug", action="store_true", default=None, help="show tracebacks")


def given_options(args: argparse.Namespace) -> set[str]:
    return {k for k, v in vars(args).items() if v is not None and k not in {"study", "handler"}}


def check_resume_options(args: argparse.Namespace) -> None:
    extra = sorted(given_options(args) - RESUME_OPTIONS)
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ConfigError(f"--resume takes only --name, --storage, --address, --debug; drop {flags} "
                          "(a resumed sweep keeps the settings it was started with)")


def default_tracking_uri() -> str:
    """MLflow's own environment variable when set (as ``mlflow`` itself honours it), else ``DEFAULTS``."""
    return os.environ.get(TRACKING_URI_ENV) or DEFAULTS["tracking_uri"]


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    merged = argparse.Namespace(**vars(args))
    for key, value in DEFAULTS.items():
        if getattr(merged, key, None) is None:
            setattr(merged, key, default_tracking_uri() if key == "tracking_uri" else value)
    return merged


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        overrides[key.strip()] = value.strip()
    return overrides


def check_resources(cpus: float, gpus: float, max_concurrent: int, max_failures: int) -> None:
    if cpus <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {cpus:g}")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {gpus:g}")
    if gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(f"--gpus-per-trial above 1 must be a whole number, got {gpus:g}")
    if max_concurrent < 0:
        raise ConfigError(f"--max-concurrent must be >= 0, got {max_concurrent}")
    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {max_failures}")


def resolve_data_dir(data_dir: str | None) -> str | None:
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise StudyError(f"--data-dir {path} is not a readable directory")
    return str(path)


def resolve_storage(storage: str) -> str:
    """Absolute local path (Ray changes trials' working directories) or a URI such as s3://bucket/path."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", storage):
        return storage
    path = Path(storage).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    # as root, os.access says yes to anything; what cannot hold folders is a file on the way
    if not existing.is_dir():
        raise StudyError(f"--storage {path}: {existing} is a file, not a folder")
    if existing != path and existing != path.parent:
        raise StudyError(f"--storage {path}: parent folder {path.parent} does not exist")
    if not os.access(existing, os.W_OK):
        raise StudyError(f"--storage {path} is not writable")
    return str(path)


def resolve_tracking_uri(uri: str) -> str:
    """Check the URI's form (and reach a server) before Ray starts; make SQLite/file paths absolute."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in TRACKING_SCHEMES:
        raise StudyError(f"--tracking-uri {uri!r}: scheme must be one of {', '.join(TRACKING_SCHEMES)}")
    if parsed.scheme == "sqlite":
        match = re.fullmatch(r"sqlite:///(.+)", uri)
        if not match:
            raise StudyError(f"--tracking-uri {uri!r} is malformed; use sqlite:///relative.db or sqlite:////abs.db")
        path = Path(match.group(1)).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise StudyError(f"--tracking-uri: folder {path.parent} of the SQLite file is missing or not writable")
        if path.exists():
            try:
                sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("select 1").close()
            except sqlite3.DatabaseError as err:
                raise StudyError(f"--tracking-uri: {path} is not a readable SQLite database ({err})") from None
        return f"sqlite:///{path.resolve()}"
    if parsed.scheme == "file":
        return f"file://{Path(parsed.path).expanduser().resolve()}"
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise StudyError(f"--tracking-uri {uri!r} has no host")
        health = urllib.parse.urljoin(uri.rstrip("/") + "/", "health")
        try:
            with urllib.request.urlopen(health, timeout=SERVER_TIMEOUT_S) as response:
                response.read(64)
        except Exception as err:  # any failure to reach it is the same user-facing problem
            raise StudyError(f"--tracking-uri {uri}: MLflow server unreachable ({type(err).__name__}); "
                             "start it with `mlflow server --host 127.0.0.1 --port PORT`") from None
    return uri


def run_command(run, args: argparse.Namespace, interrupted_hint: str) -> int:
    """The CLIs' shared ending: ``run(args)``'s exit code; a user error as one line (exit 2, traceback only
    with ``--debug``); Ctrl-C as ``interrupted_hint`` (exit 130)."""
    # MLflow announces creating/migrating its SQLite tables at INFO; keep the CLI's output to our lines
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run(args)
    except StudyError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted_hint}", file=sys.stderr)
        return 130


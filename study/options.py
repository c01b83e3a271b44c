"""Command-line options shared by every study, and their validation before Ray starts.

Every option defaults to None in argparse so that we can tell what the user typed: ``--resume`` accepts only
``--name``, ``--storage``, ``--address`` and ``--debug`` (Ray's ``Tuner.restore`` reapplies the pickled run
configuration, so anything else would be silently ignored) and the options that name the sweep (``--experiment``,
``--quick``, …), and explicit options override a preset.
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
from typing import Any, NoReturn

from search_spaces.ablations import parse_grid
from search_spaces.protocols import DEFAULT_PROTOCOL, PROTOCOL_NAMES
from vae_attention import errors
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
# MLflow's store URIs that have no scheme: Databricks' workspaces (any other scheme-less URI is a local folder)
NAMED_TRACKING_URIS = ("databricks", "databricks-uc", "uc")
SERVER_TIMEOUT_S = 5.0


def add_common_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds (a grid axis); default: the study's")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="typed override of any trial config field, e.g. --set lr=3e-4 (repeatable)")
    g.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="a grid axis over any trial config field, values typed like --set; replaces the "
                        "experiment's axis of that key (repeatable; the grid is the product; --dry-run lists it)")
    g.add_argument("--data-dir", help="folder with the official data files (see README 'Data')")
    g.add_argument("--quick", action="store_true", default=None,
                   help="shrink the experiment to a smoke run (minutes on a laptop): its models, the first value of "
                        "each grid axis, one seed, a short loop")
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
                                          "for a tracking server; any URI MLflow accepts, e.g. postgresql://…)")
    g.add_argument("--register", metavar="NAME",
                   help="at the end, register the best trial's MLflow model as a new version of the registered "
                        "model NAME (MLflow's model registry in the tracking store)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="resume the interrupted sweep --name (default: the name a fresh start would use, e.g. from "
                        "--experiment and --quick; only these, --storage, --address, --debug apply)")

    g = parser.add_argument_group("search and scheduling (see study/search.py)")
    g.add_argument("--search", choices=("grid", "optuna"),
                   help="grid (default): the study's exact grid, seeds a grid axis; optuna: sample --num-samples "
                        "configurations from the study's ranges (log-uniform γ, λ, lr), each run once per seed "
                        "(seeds are replicates; Optuna is told the seed mean), the study kept in "
                        "<storage>/<name>/optuna.db (optuna-dashboard opens it; --resume continues it)")
    # no argparse choices: a --scheduler optuna of old habit gets one line naming --search optuna
    g.add_argument("--scheduler", metavar="{fifo,asha}",
                   help="fifo (default): every trial to the end; asha: STOPS TRIALS EARLY at rungs by --metric "
                        "(under --search optuna by the study's ASHA metric, and only with one seed: ASHA would "
                        "stop a configuration's seeds separately; a stopped trial is PRUNED for Optuna). Ray 2.60 "
                        "does not restore ASHA's rung state on --resume: resumed trials continue from their "
                        "checkpoints with empty rungs, so rungs already passed are not re-judged")
    g.add_argument("--metric", help="what Optuna optimises under --search optuna (default disentanglement or "
                                    "pixel_auroc/image_auroc), else what ASHA judges (default recon_loss or loss, "
                                    "reported at every rung)")
    g.add_argument("--mode", choices=("min", "max"), help="minimise or maximise --metric (default: the metric's)")
    g.add_argument("--grace-period", type=int, help="ASHA: units (iterations/epochs) before the first rung "
                                                    "(default 1)")
    g.add_argument("--reduction-factor", type=int, help="ASHA: keep 1/N at each rung (default 3)")
    g.add_argument("--num-samples", type=int, help="--search optuna: configurations to sample, each run once per "
                                                   "seed (default 10)")
    g.add_argument("--objective", choices=("single", "pareto"),
                   help="--search optuna: pareto = multi-objective, disentanglement up and eval_recon_loss down")
    g.add_argument("--search-seed", type=int, help="--search optuna: seed of the Optuna sampler (default 0)")

    g = parser.add_argument_group("resources")
    g.add_argument("--cpus-per-trial", type=float, help=f"CPUs per trial = torch threads (default "
                                                          f"{DEFAULTS['cpus_per_trial']:g})")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials on one GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, help="most trials running at once (default 0: as resources allow)")
    g.add_argument("--max-failures", type=int, help="retries of a failed trial from its last checkpoint "
                                                    f"(default {DEFAULTS['max_failures']})")
    g.add_argument("--address", help="Ray cluster to join (default: the running cluster if any, else start a "
                                     "local one)")
    parser.add_argument("--debug", action="store_true", default=None,
                        help="show tracebacks, and stream the trials' output to the console")


def given_options(args: argparse.Namespace) -> set[str]:
    return {k for k, v in vars(args).items() if v is not None and k not in {"study", "handler"}}


def check_resume_options(args: argparse.Namespace, naming: tuple[str, ...] = ()) -> None:
    """``--resume`` takes RESUME_OPTIONS and the study's ``naming`` options (e.g. ``experiment``, ``quick``), which
    only choose the default sweep name, as on a fresh start."""
    extra = sorted(given_options(args) - RESUME_OPTIONS - set(naming))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        naming_flags = "".join(f", --{k.replace('_', '-')}" for k in naming)
        raise ConfigError(f"--resume takes only --name, --storage, --address, --debug{naming_flags}; drop {flags} "
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


def grid_options(args: argparse.Namespace, flags: dict[str, str], overrides: dict[str, Any]) -> dict[str, tuple]:
    """The grid axes the user gave: ``--grid KEY=V1,V2`` (values stay strings; the study's config types them)
    and the study's axis flags (``flags``: argparse dest → config key, e.g. ``lambda_ad`` → ``lambda_ad``). A key
    given twice, or also fixed by ``--set`` or a flag (``overrides``), fails in one line."""
    grid = parse_grid(getattr(args, "grid", None))
    for dest, key in flags.items():
        values = getattr(args, dest, None)
        if not values:
            continue
        flag = "--" + dest.replace("_", "-")
        if key in grid:
            raise ConfigError(f"{flag} and --grid {key} both give {key}; list its values in one of them")
        grid[key] = tuple(dict.fromkeys(values))
    fixed = sorted(set(grid) & set(overrides))
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: given as a grid axis and as one value (--set or a flag); use one")
    return grid


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


def check_mlflow_store_uri(uri: str) -> None:
    """One line unless MLflow has a tracking store for the URI's scheme (its store registry decides; nothing is
    connected): ``postgresql+psycopg2://…``, ``mysql://…``, ``databricks``, ``uc:…``, a plugin's scheme."""
    try:  # imported here: mlflow takes seconds to import, and the common sqlite/file/http forms never need it
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:  # MLflow moved its registry: leave the check to MLflow's own first call
        return
    try:
        registry.get_store_builder(uri)
    except Exception:  # MLflow raises its own exception types for a scheme it has no store for
        schemes = ", ".join(sorted(k for k in getattr(registry, "_registry", {}) if k))
        raise StudyError(f"--tracking-uri {uri!r}: scheme must be one of {schemes} (MLflow's tracking stores; a "
                         "database URI may name its driver, e.g. postgresql+psycopg2://)") from None


def _file_store(uri: str, path: Path) -> str:
    """``file://`` and the absolute folder of an MLflow file store; an existing file is no store folder."""
    path = path.expanduser().resolve()
    if path.is_file():
        raise StudyError(f"--tracking-uri {uri!r}: {path} is a file, not a store folder (a SQLite store is "
                         f"sqlite:///{path})")
    return f"file://{path}"


def resolve_tracking_uri(uri: str) -> str:
    """Check the URI before Ray starts: SQLite and file stores get absolute paths (the SQLite file's folder and
    contents are checked), a server's ``/health`` must answer; any other URI MLflow accepts passes its form check
    (``check_mlflow_store_uri``) without connecting. A scheme-less path is a file store (MLflow reads it so too)."""
    parsed = urllib.parse.urlparse(uri)
    if not parsed.scheme and uri not in NAMED_TRACKING_URIS:
        return _file_store(uri, Path(uri))
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
    if parsed.scheme == "file":  # file:///abs, file:relative, file:./relative; file://HOST/… is no local path
        if parsed.netloc not in ("", "localhost"):
            raise StudyError(f"--tracking-uri {uri!r}: a file store is file:///abs/path or file:relative/path")
        return _file_store(uri, Path(parsed.path))
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
    check_mlflow_store_uri(uri)
    return uri


def run_command(run, args: argparse.Namespace, interrupted_hint: str) -> int:
    """The study CLIs' ending: ``vae_attention.errors.run_command`` (a user error as one line, exit 2; Ctrl-C as
    ``interrupted_hint``, exit 130) with MLflow's INFO chatter silenced."""
    # MLflow announces creating/migrating its SQLite tables at INFO; keep the CLI's output to our lines
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return errors.run_command(run, args, interrupted_hint)


def exit_process(code: int) -> NoReturn:
    """End a CLI process with ``code`` as ``sys.exit`` does (non-daemon threads joined, ``atexit`` handlers run:
    Ray's disconnect, logging's flush), minus the interpreter's teardown of its modules, which after a sweep
    (torch, Ray's core worker, MLflow) takes 2–3 s on an idle 2-core machine and ~10 s on a loaded one."""
    import atexit
    import threading

    # CPython's own exit, step by step: threading's exit hooks (which tell idle pool workers to stop) and the
    # join of non-daemon threads, then the atexit handlers; after these nothing is left to save
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""Start, resume and summarise a sweep: the Ray and MLflow wiring shared by every study.

A ``SweepPlan`` is everything resolved and validated before Ray starts. It is saved as ``sweep.json``
beside Ray's experiment state, so ``--resume`` can rebuild the trainable with the same resources (Ray's
``Tuner.restore`` needs the trainable again; the run config and callbacks come back from Ray's snapshot).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs

from vae_attention.errors import StudyError

SWEEP_FILE = "sweep.json"
RANGE_KINDS = ("loguniform", "uniform", "choice")  # the first item of a search-space range spec
CHECKPOINTS_TO_KEEP = 2  # a FactorVAE checkpoint with Adam state is ~66 MB; 50 trials × all would fill a disk


@dataclass
class SweepPlan:
    kind: str  # "disentangle" | "anomaly"
    study: str
    name: str
    preset: str
    storage: str
    tracking_uri: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    max_failures: int
    data_source: str
    trials: list[dict[str, Any]]  # the grid (fifo/asha); for optuna, the corners of the space, for checks
    search: dict[str, Any] = field(default_factory=dict)  # SearchSettings fields
    space: dict[str, Any] | None = None  # optuna: fixed values and ("loguniform", lo, hi)/("choice", [..])
    address: str | None = None

    @property
    def settings(self):
        from study.search import SearchSettings

        return SearchSettings(**self.search)

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def make_plan(args, *, kind: str, study: str, name: str, trials: list[dict[str, Any]],
              space: dict[str, Any] | None = None) -> SweepPlan:
    """A plan from parsed options (defaults applied); storage, tracking URI and resources are checked here."""
    from study.options import check_resources, resolve_storage, resolve_tracking_uri

    check_resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.max_failures)
    return SweepPlan(
        kind=kind, study=study, name=name, preset="quick" if args.quick else "full",
        storage=resolve_storage(args.storage), tracking_uri=resolve_tracking_uri(args.tracking_uri),
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        data_source="unresolved", trials=trials, search=dataclasses.asdict(search_settings(args)), space=space,
        address=args.address,
    )


def search_settings(args):
    from study.search import SearchSettings

    given = {k: getattr(args, a) for k, a in (("scheduler", "scheduler"), ("metric", "metric"), ("mode", "mode"),
                                              ("grace_period", "grace_period"),
                                              ("reduction_factor", "reduction_factor"),
                                              ("num_samples", "num_samples"), ("objective", "objective"),
                                              ("seed", "search_seed")) if getattr(args, a, None) is not None}
    return SearchSettings(**given)


def trial_table(plan: SweepPlan, keys: list[str], key_of: Callable[[dict], str],
                resolve: Callable[[dict], dict] = dict) -> list[str]:
    """Dry-run lines: a header, then one row per trial with the given (resolved) params and its config_key."""
    def cell(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = [[cell(resolve(t).get(k, "")) for k in keys] for t in plan.trials]
    widths = [max([len(k)] + [len(r[i]) for r in rows]) for i, k in enumerate(keys)]
    lines = [f"sweep {plan.name!r} ({plan.study}, preset {plan.preset}): {len(plan.trials)} trials",
             "  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)) + "  config_key"]
    for trial, row in zip(plan.trials, rows, strict=True):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + "  " + key_of(trial))
    lines.append(f"resources: {plan.cpus_per_trial:g} CPU, {plan.gpus_per_trial:g} GPU per trial; "
                 f"max concurrent {plan.max_concurrent or 'unlimited'}")
    return lines


def checkpoint_gigabytes(parameters: int, trials: int) -> float:
    """Disk for the kept checkpoints: weights + Adam's two moments in float32, CHECKPOINTS_TO_KEEP per trial."""
    return parameters * 4 * 3 * CHECKPOINTS_TO_KEEP * trials / 1e9


def _fs(path: str):
    return pyarrow.fs.FileSystem.from_uri(path)


def save_plan(plan: SweepPlan) -> None:
    fs, root = _fs(plan.path)
    fs.create_dir(root, recursive=True)
    data = dataclasses.asdict(plan)
    data.pop("address")
    tmp = f"{root}/{SWEEP_FILE}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(data, indent=1, sort_keys=True).encode())
    fs.move(tmp, f"{root}/{SWEEP_FILE}")


def load_plan(storage: str, name: str) -> SweepPlan:
    path = f"{storage.rstrip('/')}/{name}"
    fs, root = _fs(path)
    try:
        with fs.open_input_stream(f"{root}/{SWEEP_FILE}") as stream:
            data = json.loads(stream.read())
    except (FileNotFoundError, OSError):
        raise StudyError(f"nothing to resume: {path} has no {SWEEP_FILE} (was the sweep started here?)") from None
    if data.get("space"):  # JSON turned the ("loguniform", lo, hi) range specs into lists
        data["space"] = {k: tuple(v) if isinstance(v, list) and v and v[0] in RANGE_KINDS else v
                         for k, v in data["space"].items()}
    return SweepPlan(**data)


def ray_state_saved(path: str) -> bool:
    """Whether Ray has written the sweep's experiment state (it does so at start, then every ~10 s)."""
    fs, root = _fs(path)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return False
    return any(Path(e.path).name.startswith("experiment_state-") for e in entries)


def sweep_exists(plan: SweepPlan) -> str | None:
    """Why ``plan.name`` is taken (Ray state in storage, or trial runs in MLflow), or None."""
    from study.tracking import find_trial_runs

    if ray_state_saved(plan.path):
        return f"{plan.path} holds its Ray state"
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.name)
    if experiment is not None and find_trial_runs(client, experiment.experiment_id):
        return f"MLflow experiment {plan.name!r} at {plan.tracking_uri} has trial runs"
    return None


def discard_orphan_runs(plan: SweepPlan) -> None:
    """Delete trial runs of a start that Ray never recorded: their trials run again under new ids."""
    from mlflow import MlflowClient

    from study.tracking import find_trial_runs

    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.name)
    for run in find_trial_runs(client, experiment.experiment_id) if experiment else []:
        client.delete_run(run.info.run_id)  # soft delete: still visible under MLflow's deleted runs


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    import mlflow
    import numpy
    import ray
    import torch

    return {"torch_version": torch.__version__, "ray_version": ray.__version__, "mlflow_version": mlflow.__version__,
            "numpy_version": numpy.__version__, "python_version": sys.version.split()[0]}


def running_cluster_address(timeout_s: float = 2.0) -> str | None:
    """RAY_ADDRESS, else the address ``ray start`` last recorded on this machine, if its GCS answers.

    ``ray.init(address="auto")`` would also read that record, but it keeps retrying a cluster that has
    since stopped (the record outlives it) instead of failing fast; a TCP probe tells live from stale.
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            address = record.read_text().strip() or None
        except OSError:
            return None
    if address is None or "://" in address:  # ray:// client addresses are joined as given
        return address
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return address
    except (OSError, ValueError):
        print(f"ignoring the Ray cluster recorded at {address}: it does not answer")
        return None


def connect_ray(address: str | None) -> None:
    """Join ``address``, else the running cluster (e.g. after ``ray up``), else start a local instance."""
    import logging

    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    address = address or running_cluster_address()
    if address:
        ray.init(address=address, **quiet)
        print(f"joined the Ray cluster at {address}")
        return
    ray.init(address="local", include_dashboard=False, **quiet)
    print(f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")


@dataclass(frozen=True)
class StudyHooks:
    """What a study contributes to the shared sweep machinery (module-level callables: Tune pickles them)."""

    trainable: Callable
    trial_name: Callable[[Any], str]
    trial_tags: Callable[[dict], dict]
    resolved_params: Callable[[dict], dict]
    columns: list
    total_key: str  # "iterations" | "epochs": the trial param that says when it is done
    step_key: str  # "iteration" | "epoch": the progress field of every report = the MLflow step
    metric_defaults: dict  # {"asha": (metric, mode), "optuna": (metric, mode), "pareto": ((m1, m2), (mode1, mode2))}


def launch(plan: SweepPlan, hooks: StudyHooks, *, resume: bool, sweep_tags: dict[str, str]) -> int:
    """Run (or resume) the sweep; returns the exit code: 0 only if every trial finished."""
    from ray import tune

    from study.progress import ProgressTable
    from study.search import resolve_metric, tune_setup
    from study.tracking import MLflowTrialLogger
    from trainables.common import PARAMS_KEY

    if plan.search.get("scheduler") == "optuna":
        # Optuna's objective (an evaluation metric) is reported at evaluations only, not in every report;
        # the searcher reads the trial's final result, so Tune's per-report presence check must be off.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    connect_ray(plan.address)
    trainable = tune.with_resources(hooks.trainable, plan.resources)
    if resume:
        print(f"resuming sweep {plan.name!r} from {plan.path}")
        tuner = tune.Tuner.restore(plan.path, trainable=trainable, resume_errored=True)
    else:
        save_plan(plan)
        callbacks = [
            MLflowTrialLogger(plan.tracking_uri, plan.name, sweep_tags, hooks.trial_tags, hooks.resolved_params,
                              hooks.step_key),
            ProgressTable(hooks.columns, hooks.total_key, hooks.step_key),
        ]
        settings = plan.settings
        metric, mode = resolve_metric(settings, hooks.metric_defaults)
        param_space, tune_kwargs = tune_setup(
            settings, metric, mode, trials=plan.trials, space=plan.space, total=plan.trials[0][hooks.total_key],
            time_attr=hooks.step_key, max_concurrent=plan.max_concurrent, params_key=PARAMS_KEY)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                trial_name_creator=hooks.trial_name,
                trial_dirname_creator=hooks.trial_name,
                **tune_kwargs,
            ),
            run_config=tune.RunConfig(
                name=plan.name,
                storage_path=plan.storage,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
                failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                callbacks=callbacks,
                verbose=0,
            ),
        )
    count = plan.search.get("num_samples") if plan.search.get("scheduler") == "optuna" else len(plan.trials)
    print(f"sweep {plan.name!r}: {count} trials ({plan.search.get('scheduler', 'fifo')}); MLflow: "
          f"{plan.tracking_uri}; Ray state: {plan.path}")
    try:
        results = tuner.fit()
    except (OSError, EOFError) as err:  # e.g. a full disk under --storage while Ray saves its state
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(f"the sweep stopped: {type(err).__name__}: {reason}{_free_space_note(plan.path)}; "
                         f"finished trials and checkpoints are kept under {plan.path}: fix the cause, then "
                         "--resume") from None
    return summarise(results, hooks.total_key, hooks.step_key, stopped_early_ok=plan.settings.scheduler == "asha")


def _free_space_note(path: str) -> str:
    """For a local storage path, the free space left there (a full disk is the usual cause of I/O errors)."""
    if "://" in path:
        return ""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
    if existing is None:
        return ""
    free = shutil.disk_usage(existing).free
    return f" (free space under --storage: {free / 2**20:.1f} MiB)"


def summarise(results, total_key: str, step_key: str, stopped_early_ok: bool = False) -> int:
    """Print what happened; 0 only if every trial finished (or, under ASHA, was stopped early on purpose)."""
    from study.tracking import error_reason
    from trainables.common import PARAMS_KEY

    failed, unfinished, finished, stopped = [], [], 0, 0
    for result in results:
        params = (result.config or {}).get(PARAMS_KEY, {})
        reached = (result.metrics or {}).get(step_key)
        # the trial's folder name (model, γ/λ/β, seed, trial id) names it; trial_id alone does not
        label = Path(result.path).name if result.path else (result.metrics or {}).get("trial_id", "?")
        if result.error is not None:  # Ray's error is a traceback; print the one-line reason
            failed.append(f"{label}: {error_reason(result.error)}")
        elif reached != params.get(total_key) and stopped_early_ok and reached is not None:
            stopped += 1
        elif reached != params.get(total_key):
            unfinished.append(f"{label}: {step_key} {reached} of {params.get(total_key)}")
        else:
            finished += 1
    print(f"{finished} of {len(results)} trials finished" + (f", {stopped} stopped early by ASHA" if stopped else ""))
    for line in failed:
        print(f"FAILED {line}")
    for line in unfinished:
        print(f"UNFINISHED {line}")
    return 0 if finished + stopped == len(results) else 1

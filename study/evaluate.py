"""``python -m study.evaluate``: re-score finished trials under changed evaluation settings, without retraining.

For every FINISHED trial run of ``--sweep`` (or the ``--run-id`` ones) and every combination of the grid
(``--grid KEY=V1,V2``, repeatable; ``--ablation report`` adds the report's grid, ``search_spaces.ablations``),
a Ray task loads the trial's logged weights (artifact ``model/vae.pt``) and resolved config (``config.json``),
rebuilds the study's state without training, and runs the study's own evaluation with the changed settings
(``trainables.evaluate``). The driver logs each result as a child run of the trial's run: tags
``run_kind=evaluation``, ``mlflow.parentRunId`` = the trial's run, ``evaluation_key`` (hash of the changed
settings, typed) and ``evaluation_settings`` (their JSON); params = the full evaluated config; metrics = the
training-time evaluation's names, at the step the weights were saved; the figure; ``config.json``.

Grid keys must be evaluation-time config fields of the study; anything else, and bad values, fail in one line
before Ray starts. Setting ``attention`` without ``score``/``activation``/``upsample_first`` lets those follow
the new mode ("auto"), since the logged config holds the values the old mode resolved to.

Idempotent: a (trial, settings) pair whose child run is FINISHED is skipped; a child run left unfinished by an
interrupted driver is deleted and evaluated again, so re-running the same command completes the rest with no
duplicates (one driver per sweep at a time: a second one would take the first one's open runs for leftovers).
A trial without weights, or with weights that do not fit its config, is named in one line and the others go on.
Exit code 0 only if every combination of every trial is evaluated; 2 for a user error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import ablations
from study.options import (
    DEFAULTS,
    TRACKING_URI_ENV,
    check_resources,
    default_tracking_uri,
    exit_process,
    resolve_tracking_uri,
    run_command,
)
from vae_attention.errors import ConfigError, StudyError

STEP_KEYS = {"anomaly": "epoch", "disentangle": "iteration"}
# Fields whose logged (resolved) values follow the attention mode: reset to "auto" when only the mode changes.
MODE_FOLLOWERS = ("score", "activation", "upsample_first")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m study.evaluate",
                      description="Re-score finished trials of a sweep under changed evaluation-time settings; "
                                  "each combination becomes a child run (run_kind=evaluation) of its trial's run.")
    p.add_argument("--sweep", required=True, help="the sweep (= MLflow experiment) whose FINISHED trials to re-score")
    p.add_argument("--run-id", nargs="+", metavar="ID", help="only these trial runs (default: every finished one)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="an evaluation-time config field and its values (repeatable; the grid is their product; "
                        "a tuple value joins its elements with +, e.g. eval_digits=7+4,9)")
    p.add_argument("--ablation", choices=ablations.ABLATIONS,
                   help="report: activation × gradient normalisation × layer × score per data set (explicit "
                        "--grid axes replace its axes)")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default ${TRACKING_URI_ENV} if set, else "
                                          f"{DEFAULTS['tracking_uri']})")
    p.add_argument("--dry-run", action="store_true", help="print the combinations and the run count, then exit")
    g = p.add_argument_group("resources (as study.run; one re-score = one trial's resources)")
    g.add_argument("--cpus-per-trial", type=float, default=DEFAULTS["cpus_per_trial"],
                   help="CPUs per re-score = torch threads (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=DEFAULTS["gpus_per_trial"],
                   help="GPUs per re-score; fractions pack several on one GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, default=DEFAULTS["max_concurrent"],
                   help="most re-scores running at once (default 0: as resources allow)")
    g.add_argument("--max-failures", type=int, default=DEFAULTS["max_failures"],
                   help="retries of a re-score whose worker died (default 2)")
    g.add_argument("--address", help="Ray cluster to join (default: the running one, else a local one)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@dataclass
class Trial:
    run: Any  # mlflow Run
    kind: str  # "anomaly" | "disentangle"
    config: dict[str, Any]  # the resolved config it trained with (config.json)
    step: int = 0
    weights_path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.run.info.run_name} ({self.run.info.run_id})"


@dataclass
class Job:
    trial: Trial
    settings: dict[str, Any]  # the changed settings, typed as the config resolves them
    params: dict[str, Any]  # the full resolved config evaluated
    key: str


def _study_of(params: dict[str, Any]) -> str:
    return "anomaly" if "dataset" in params else "disentangle"


def _space(kind: str):
    if kind == "anomaly":
        from search_spaces import anomaly as space
    else:
        from search_spaces import disentangle as space
    return space


def _config_fields(kind: str) -> set[str]:
    if kind == "anomaly":
        from vae_attention.training.anomaly import AnomalyConfig as cls
    else:
        from vae_attention.training.disentangle import DisentangleConfig as cls
    return {f.name for f in dataclasses.fields(cls)}


def find_trials(client, sweep: str, run_ids: list[str] | None) -> tuple[str, list[Any]]:
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise StudyError(f"no sweep {sweep!r} in the tracking store (see --tracking-uri)")
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial' and attributes.status = 'FINISHED'",
                              max_results=50_000)
    if run_ids:
        by_id = {r.info.run_id: r for r in runs}
        missing = [i for i in run_ids if i not in by_id]
        if missing:
            raise StudyError(f"--run-id {', '.join(missing)}: not a finished trial run of sweep {sweep!r}")
        runs = [by_id[i] for i in run_ids]
    if not runs:
        raise StudyError(f"sweep {sweep!r} has no finished trial runs to re-score")
    return experiment.experiment_id, sorted(runs, key=lambda r: r.info.start_time)


def load_config(client, run, scratch: str) -> dict[str, Any]:
    """The trial's resolved config: ``config.json``, else its params (strings; the config types them)."""
    try:
        return json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", scratch)).read_text())
    except Exception:  # no artifact (older runs): the params hold the same resolved values as strings
        return dict(run.data.params)


def grid_for(kind: str, config: dict[str, Any], explicit: dict[str, tuple], ablation: str | None) -> dict[str, tuple]:
    grid = dict(ablations.report_grid(config.get("dataset", "")) if ablation == "report" else {})
    if ablation == "report" and kind != "anomaly":
        raise ConfigError("--ablation report is the anomaly study's ablation; this sweep is a disentangle one")
    grid.update(explicit)
    return grid


def make_jobs(trial: Trial, grid: dict[str, tuple]) -> list[Job]:
    """One job per grid point, typed and validated through the study's own config (ConfigError for bad values)."""
    space = _space(trial.kind)
    jobs, seen = [], set()
    for point in ablations.combinations(grid):
        params = dict(trial.config)
        if "attention" in point:
            params.update({k: "auto" for k in MODE_FOLLOWERS if k in params and k not in point})
        params.update(point)
        resolved = space.resolved_params(params)  # raises ConfigError for bad values
        settings = {k: resolved[k] for k in point}
        key = ablations.settings_key(settings)
        if key not in seen:  # e.g. score=auto and score=sum under the authors' mode are one evaluation
            seen.add(key)
            jobs.append(Job(trial, settings, resolved, key))
    return jobs


def check_layers(jobs: list[Job]) -> None:
    """A layer that is not a conv of the model fails here, in one line, before Ray starts."""
    from search_spaces.anomaly import trial_config
    from vae_attention.training.anomaly import check_model

    seen = set()
    for job in jobs:
        if job.trial.kind != "anomaly" or "attention_layer" not in job.settings:
            continue
        config = trial_config(job.params).replace(seed=0)
        marker = (config.dataset, config.resolved_image_size, config.resolved_layer, config.architecture)
        if marker not in seen:
            seen.add(marker)
            check_model(config)


def existing_evaluations(client, experiment_id: str, parent_id: str, clean_up: bool) -> dict[str, Any]:
    """evaluation_key → the FINISHED child run. With ``clean_up``, unfinished children (an interrupted driver)
    and repeats of a key are deleted — so two drivers must not re-score the same sweep at the same time."""
    query = f"tags.run_kind = 'evaluation' and tags.`mlflow.parentRunId` = '{parent_id}'"
    done = {}
    for run in client.search_runs([experiment_id], query, max_results=50_000):
        key = run.data.tags.get("evaluation_key")
        if run.info.status == "FINISHED" and key and key not in done:
            done[key] = run
        elif clean_up:
            client.delete_run(run.info.run_id)  # soft delete: MLflow keeps it under deleted runs
    return done


def final_step(client, trial: Trial) -> int:
    from vae_attention.training.loop import rate_metric

    step_key = STEP_KEYS[trial.kind]
    history = client.get_metric_history(trial.run.info.run_id, rate_metric(step_key))
    default = trial.config.get("epochs" if trial.kind == "anomaly" else "iterations", 0)
    return max((m.step for m in history), default=int(default))


def log_child(client, experiment_id: str, job: Job, result: dict[str, Any]) -> str:
    from mlflow.entities import Metric, Param

    from study.tracking import git_commit, mlflow_standard_tags

    parent = job.trial.run
    inherited = {k: v for k, v in parent.data.tags.items()
                 if k in ("sweep", "study", "preset", "data_source", "config_key", "trial_id")}
    tags = {**inherited, "run_kind": "evaluation", "mlflow.parentRunId": parent.info.run_id,
            "evaluation_key": job.key, "evaluation_settings": json.dumps(job.settings, sort_keys=True, default=list),
            "git_commit": git_commit(), "device": result.get("device", ""),
            **mlflow_standard_tags(git_commit(), "study/evaluate.py")}
    name = f"{parent.info.run_name}-eval-" + ("-".join(f"{k}={v}" for k, v in job.settings.items()) or "as_trained")
    run_id = client.create_run(experiment_id, tags=tags, run_name=name[:250]).info.run_id
    params = [Param(k, str(v)) for k, v in sorted(job.params.items())]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start: start + 100])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, job.trial.step) for k, v in sorted(result["metrics"].items())])
    client.log_dict(run_id, job.params, "config.json")
    if result.get("figure_png"):
        with tempfile.TemporaryDirectory() as scratch:
            figure = Path(scratch) / result["figure_name"]
            figure.write_bytes(result["figure_png"])
            client.log_artifact(run_id, str(figure), "figures")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def describe(jobs_by_trial: list[tuple[Trial, list[Job], int]], grid_text: str) -> str:
    lines = [grid_text]
    total = pending = 0
    for trial, jobs, done in jobs_by_trial:
        lines.append(f"  {trial.label}: {len(jobs)} combinations, {done} already evaluated")
        total += len(jobs)
        pending += len(jobs) - done
    lines.append(f"{total} evaluation runs for {len(jobs_by_trial)} trial runs; {pending} to evaluate")
    return "\n".join(lines)


def combination_lines(grid: dict[str, tuple]) -> str:
    points = ablations.combinations(grid)
    axes = " × ".join(f"{k} ({len(v)})" for k, v in grid.items()) or "no changes"
    head = f"grid: {axes} = {len(points)} combinations"
    return "\n".join([head] + [f"  {i + 1:3d}. " + (", ".join(f"{k}={v}" for k, v in p.items()) or "(as trained)")
                               for i, p in enumerate(points)])


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    check_resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.max_failures)
    explicit = ablations.parse_grid(args.grid)
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri or default_tracking_uri()))
    experiment_id, runs = find_trials(client, args.sweep, args.run_id)
    failures: list[str] = []
    plans: list[tuple[Trial, list[Job], int]] = []
    grids = {}
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        for run in runs:
            config = load_config(client, run, scratch)
            kind = _study_of(config)
            grid = grid_for(kind, config, explicit, args.ablation)
            ablations.check_grid_keys(kind, grid, _config_fields(kind))
            trial = Trial(run, kind, config)
            jobs = make_jobs(trial, grid)
            check_layers(jobs)
            grids[combination_lines(grid)] = None
            plans.append((trial, jobs, 0))
        # every user error above is raised before any state changes or Ray starts
        pending: list[Job] = []
        for index, (trial, jobs, _) in enumerate(plans):
            done = existing_evaluations(client, experiment_id, trial.run.info.run_id, clean_up=not args.dry_run)
            todo = [j for j in jobs if j.key not in done]
            plans[index] = (trial, jobs, len(jobs) - len(todo))
            if todo and not args.dry_run:
                artifacts = {a.path for a in client.list_artifacts(trial.run.info.run_id, "model")}
                if "model/vae.pt" not in artifacts:
                    failures.append(f"{trial.label}: no weights (artifact model/vae.pt is missing)")
                    continue
                trial.step = final_step(client, trial)
                pending.extend(todo)
        if args.dry_run:
            print("\n".join(grids))
            print(describe(plans, f"sweep {args.sweep!r}, dry run (nothing evaluated)"))
            return 0
        for line in failures:
            print(f"failed: {line}", file=sys.stderr)
        evaluated = 0
        if pending:
            evaluated, failed = fan_out(client, experiment_id, pending, args, scratch)
            failures += failed
    print(f"re-scored {evaluated} combinations; {sum(d for _, _, d in plans)} were already logged; "
          f"{len(failures)} failed" + ("" if failures else "; nothing left to evaluate"))
    return 1 if failures else 0


def fan_out(client, experiment_id: str, jobs: list[Job], args, scratch: str) -> tuple[int, list[str]]:
    """Run the jobs as Ray tasks (weights once per trial in the object store); log each result as it lands.

    Returns (combinations logged, failure lines)."""
    import ray

    from study.cluster import connect_ray
    from study.tracking import error_reason
    from trainables.evaluate import evaluate_task

    connect_ray(args.address)
    task = ray.remote(evaluate_task).options(num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial,
                                             max_retries=args.max_failures)
    weights: dict[str, Any] = {}
    failures: list[str] = []
    failed_trials: set[str] = set()
    evaluated = 0
    queue = list(jobs)
    running: dict[Any, Job] = {}
    limit = args.max_concurrent or len(queue)
    threads = max(1, int(args.cpus_per_trial))
    while queue or running:
        while queue and len(running) < limit:
            job = queue.pop(0)
            run_id = job.trial.run.info.run_id
            if run_id not in weights:
                path = client.download_artifacts(run_id, "model/vae.pt", str(Path(scratch) / run_id))
                weights[run_id] = ray.put(Path(path).read_bytes())
            ref = task.remote({"kind": job.trial.kind, "params": job.params, "step": job.trial.step,
                               "threads": threads}, weights[run_id])
            running[ref] = job
        ready, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as err:  # the task crashed (a bug, or its worker died max_failures + 1 times)
            result = {"error": error_reason(err)}
        settings = ", ".join(f"{k}={v}" for k, v in job.settings.items()) or "as trained"
        if "error" in result:
            if job.trial.run.info.run_id not in failed_trials:  # one line per run, not per combination
                print(f"failed: {job.trial.label}: {result['error']}", file=sys.stderr)
            failed_trials.add(job.trial.run.info.run_id)
            failures.append(f"{job.trial.label} [{settings}]: {result['error']}")
            continue
        log_child(client, experiment_id, job, result)
        evaluated += 1
        print(f"evaluated {job.trial.run.info.run_name} [{settings}]", flush=True)
    return evaluated, failures


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per event, no bars
    return run_command(run, build_parser().parse_args(argv), "run the same command again to evaluate the rest")


if __name__ == "__main__":
    exit_process(main())

"""Start or resume a sweep on Ray Tune: what a study contributes (``StudyHooks``) and ``launch``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from search_spaces.common import PARAMS_KEY
from study import interrupt
from study.cluster import connect_ray
from study.plan import CHECKPOINTS_TO_KEEP, SweepPlan, save_plan
from study.progress import ProgressTable
from study.search import planned_trials, tune_setup
from study.summary import free_space_note, print_top_trials, report_interruption, summarise
from vae_attention.errors import StudyError


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


def trial_label(trial, label: Callable[[dict], str]) -> str:
    """A trial's display and folder name: ``label(params)`` plus Ray's trial id (the id keeps names unique).

    A trial object whose config holds no params (Ray builds some from partial state) is named ``trial_<id>``
    instead of raising: naming it must not stop a sweep. (A params dict without a label's key is a bug, and
    raises.)
    """
    params = trial.config.get(PARAMS_KEY)
    if not isinstance(params, dict):
        return f"trial_{trial.trial_id}"
    return f"{label(params)}_{trial.trial_id}"


def launch(plan: SweepPlan, hooks: StudyHooks, *, resume: bool, sweep_tags: dict[str, str],
           debug: bool = False) -> int:
    """Run (or resume) the sweep; returns the exit code: 0 only if every trial finished, 130 after Ctrl-C.

    ``debug`` streams the trials' output (stdout, stderr, warnings) to the console.
    """
    # imported here: study.tracking imports mlflow (seconds), which a dry run or a usage error never needs
    from study.sweep_run import finish_sweep_run, objective, register_best_model, start_sweep_run
    from study.tracking import MLflowTrialLogger
    from study.tracking import sweep_tags as plan_tags

    settings = plan.search
    if settings.algorithm == "optuna":
        # Optuna's objective (an evaluation metric) is reported at evaluations only, not in every report;
        # the searcher reads the trial's final result, so Tune's per-report presence check must be off.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    connect_ray(plan.address, log_to_driver=debug)
    # before Tune starts: the trial runs nest under it (a resume finds it again; an older sweep gets one now)
    parent_id = start_sweep_run(plan, sweep_tags or plan_tags(plan))
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
            interrupt.StopAtCheckpoint(),  # one Ctrl-C: stop at the next checkpoints (pickled: resumes keep it)
        ]
        param_space, tune_kwargs = tune_setup(
            settings, hooks.metric_defaults, trials=plan.trials, space=plan.space,
            total=plan.trials[0][hooks.total_key], time_attr=hooks.step_key, max_concurrent=plan.max_concurrent,
            params_key=PARAMS_KEY, study_name=plan.name)
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
    count = planned_trials(settings, plan.trials, plan.space)
    print(f"sweep {plan.name!r}: {count} trials ({settings.algorithm}, {settings.scheduler}); MLflow: "
          f"{plan.tracking_uri}; Ray state: {plan.path}")
    interrupt.reset()
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # a further Ctrl-C skipped Ray's last save: it resumes from the one before
        return report_interruption(count, plan.tracking_uri, plan.name, parent_id, interrupt.resume_command(plan))
    except (OSError, EOFError) as err:  # e.g. a full disk under --storage while Ray saves its state
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(f"the sweep stopped: {type(err).__name__}: {reason}{free_space_note(plan.path)}; "
                         f"finished trials and checkpoints are kept under {plan.path}: fix the cause, then "
                         "--resume") from None
    if interrupt.interrupted():
        return report_interruption(count, plan.tracking_uri, plan.name, parent_id, interrupt.resume_command(plan))
    code = summarise(results, hooks.total_key, hooks.step_key, stopped_early_ok=settings.scheduler == "asha",
                     experiment_path=plan.path)
    finish_sweep_run(plan, parent_id, hooks.metric_defaults, code)
    print_top_trials(plan.tracking_uri, plan.name, *objective(plan, hooks.metric_defaults))
    register_best_model(plan.tracking_uri, parent_id, plan.register_model)  # --register NAME; None: no-op
    return code

"""``python -m study.run disentangle``: the disentanglement study's options, plan, dry run and hooks."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from search_spaces.disentangle import STUDIES, config_key, get_study, split_trial
from study.options import add_common_options, parse_overrides, resolve_data_dir
from study.progress import Column
from study.search import describe, resolve_metric
from study.sweep import CHECKPOINTS_TO_KEEP, StudyHooks, SweepPlan, checkpoint_gigabytes, make_plan, trial_table
from vae_attention.errors import StudyError

KIND = "disentangle"
DEFAULT_NAME = f"{KIND}-exp1"  # what --resume continues without --name
# ASHA compares trials at every rung, so its metric must be in every report; evaluations are rarer.
METRIC_DEFAULTS = {
    "asha": ("recon_loss", "min"),
    "optuna": ("disentanglement", "max"),
    "pareto": (("disentanglement", "eval_recon_loss"), ("max", "min")),
}
# Optuna's ranges: log-uniform around Table 1's grids (γ 5–50), the λ scan (≤ 80) and Kim & Mnih's β grid.
RANGES = {
    "gamma": ("loguniform", 5.0, 100.0),
    "lambda_ad": ("loguniform", 0.1, 100.0),
    "beta": ("loguniform", 1.0, 16.0),
    "lr": ("loguniform", 1e-5, 1e-3),
}
# MLflow param names per the naming contract; the full resolved config is in config.json as well.
COLUMNS = [
    Column("model", "model", "param", "{}", 12),
    Column("γ", "gamma", "param", "{:g}", 5),
    Column("λ", "lambda_ad", "param", "{:g}", 5),
    Column("β", "beta", "param", "{:g}", 4),
    Column("seed", "seed", "param", "{}", 4),
    Column("iteration", "iteration", "metric", "{}", 15),
    Column("recon", "recon_loss", "metric", "{:.1f}", 8),
    Column("tc", "tc", "metric", "{:.3f}", 8),
    Column("metric", "disentanglement", "metric", "{:.3f}", 6),
    Column("it/s", "iterations_per_s", "metric", "{:.2f}", 6),
]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        KIND,
        help="FactorVAE / AD-FactorVAE / β-VAE on dSprites (Table 1 of the reproducibility report)",
        description="Sweep FactorVAE, AD-FactorVAE and β-VAE on dSprites with Ray Tune; one MLflow run per trial.",
    )
    parser.add_argument("--experiment", choices=list(STUDIES),
                        help="exp1/exp2/exp3 (Table 1), lambda_scan, betavae, or all (default exp1)")
    parser.add_argument("--iterations", type=int, help="optimiser iterations per trial (Table 1: 150,000)")
    parser.add_argument("--eval-every", type=int, help="iterations between metric evaluations (default 10,000)")
    parser.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default 5,000)")
    add_common_options(parser)
    parser.set_defaults(handler=KIND)


def build_plan(args: argparse.Namespace) -> SweepPlan:
    """Resolve and validate everything that can be checked without Ray."""
    experiment = args.experiment or "exp1"
    study = get_study(experiment, quick=bool(args.quick))
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for flag, key in (("iterations", "iterations"), ("eval_every", "eval_every"),
                      ("checkpoint_every", "checkpoint_every")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir"))
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    trials = study.trials(tuple(args.seeds) if args.seeds else None, overrides)
    for trial in trials:
        trial.update(_typed(trial))  # raises ConfigError for unknown keys and bad values
    from vae_attention.training.disentangle import check_model

    for science in {split_trial(t)[0].replace(seed=0) for t in trials}:
        check_model(science)
    name = args.name or f"{KIND}-{experiment}" + ("-quick" if args.quick else "")
    space = None
    if args.scheduler == "optuna":
        space, trials = optuna_space(trials, overrides, tuple(args.seeds or study.seeds))
    return make_plan(args, kind=KIND, study=study.name, name=name, trials=trials, space=space)


def optuna_space(trials: list[dict[str, Any]], overrides: dict[str, Any], seeds: tuple[int, ...]):
    """The study's models and seeds as choices, RANGES for what the user did not fix with --set.

    Returns the space and its low and high corners as trials, which are validated like grid trials.
    """
    models = sorted({t["model"] for t in trials})
    first = trials[0]  # typed; carries the loop settings and every --set override
    space: dict[str, Any] = {k: v for k, v in first.items() if k not in ("model", "gamma", "lambda_ad", "beta", "seed")}
    space.update(model=("choice", models), seed=("choice", list(seeds)))
    applies = {"gamma": True, "lr": True, "lambda_ad": "ad_factorvae" in models, "beta": "betavae" in models}
    for key, spec in RANGES.items():
        if key in overrides:
            space[key] = first[key]
        elif applies[key]:
            space[key] = spec
        else:
            space[key] = {"lambda_ad": 0.0, "beta": 1.0}[key]
    corners = []
    for end in (1, 2):
        corner = {k: (v[end] if isinstance(v, tuple) and v[0] != "choice" else v) for k, v in space.items()}
        corner.update(model=models[-1], seed=seeds[0])
        corners.append(_typed(corner))
    return space, corners


def resolved_params(trial: dict[str, Any]) -> dict[str, Any]:
    """Every field of the typed science and loop configs: what a trial really ran with."""
    science, loop = split_trial(trial)
    typed = {**dataclasses.asdict(science), **dataclasses.asdict(loop)}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in typed.items()}


def _typed(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial with values coerced to their fields' types (so params log as 40.0, not '40')."""
    return {k: v for k, v in resolved_params(trial).items() if k in trial}


def resolve_data_source(plan: SweepPlan) -> str:
    """Prepare the packed dSprites cache once on the driver (not in N trials at once) and name the source."""
    from trainables.disentangle import data_source_of
    from vae_attention.data import NPZ_NAME, DSprites

    data_dirs = {t.get("data_dir") for t in plan.trials}
    if len(data_dirs) != 1:
        raise StudyError("all trials of one sweep must use the same data_dir")
    data_dir = data_dirs.pop()
    dataset = DSprites(data_dir)
    if data_dir is not None and dataset.source != "npz":
        raise StudyError(f"--data-dir {data_dir} has no {NPZ_NAME}; put the official file there, or drop "
                         "--data-dir for the generated stand-in")
    print(dataset.describe())
    return data_source_of(dataset)


def parameter_count(trial: dict[str, Any]) -> int:
    """Parameters of the VAE and (for FactorVAE models) the discriminator of a trial."""
    from vae_attention.training import build_models

    science, _ = split_trial(trial)
    return sum(p.numel() for model in build_models(science) if model is not None for p in model.parameters())


def metric_images(trial: dict[str, Any]) -> int:
    """Images drawn by the evaluations of one trial (both metric variants, every eval and the final one)."""
    _, loop = split_trial(trial)
    evals = loop.iterations // loop.eval_every + (loop.iterations % loop.eval_every != 0)
    dlib = loop.metric_num_variance + (loop.metric_num_train + loop.metric_num_eval) * loop.metric_batch_size
    seed = loop.seed_metric_votes * loop.seed_metric_batch_size
    return evals * (dlib + seed)


def dry_run(plan: SweepPlan) -> str:
    keys = ["model", "gamma", "lambda_ad", "beta", "seed", "iterations", "eval_every", "checkpoint_every"]
    settings = plan.settings
    if settings.scheduler == "optuna":
        metric, mode = resolve_metric(settings, METRIC_DEFAULTS)
        return "\n".join([f"sweep {plan.name!r} ({plan.study}, preset {plan.preset})",
                           *describe(settings, metric, mode, plan.space, plan.trials[0]["iterations"], "iteration")])
    lines = trial_table(plan, keys, config_key)
    if settings.scheduler == "asha":
        metric, mode = resolve_metric(settings, METRIC_DEFAULTS)
        lines += describe(settings, metric, mode, None, plan.trials[0]["iterations"], "iteration")
    disk = sum(checkpoint_gigabytes(parameter_count(t), 1) for t in plan.trials)
    images = sum(metric_images(t) for t in plan.trials)
    lines.append(f"checkpoint disk ≈ {disk:.2f} GB ({CHECKPOINTS_TO_KEEP} kept per trial) at {plan.storage}")
    lines.append(f"metric cost ≈ {images / 1e6:.1f} M images drawn in evaluations (≈ half encoded after caching)")
    return "\n".join(lines)


def trial_name(trial) -> str:
    p = trial.config["params"]
    if p["model"] == "betavae":
        label = f"betavae_b{p['beta']:g}"
    elif p["model"] == "ad_factorvae":
        label = f"adfvae_g{p['gamma']:g}_l{p['lambda_ad']:g}"
    else:
        label = f"fvae_g{p['gamma']:g}"
    return f"{label}_s{p['seed']}_{trial.trial_id}"


def trial_tags(params: dict) -> dict[str, str]:
    return {"config_key": config_key(params)}


def hooks() -> StudyHooks:
    from trainables.disentangle import disentangle_trainable

    return StudyHooks(trainable=disentangle_trainable, trial_name=trial_name, trial_tags=trial_tags,
                      resolved_params=resolved_params, columns=COLUMNS, total_key="iterations",
                      step_key="iteration", metric_defaults=METRIC_DEFAULTS)

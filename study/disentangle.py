"""``python -m study.run disentangle``: the disentanglement study's flags, console columns and hooks.

The study itself (Table 1's grids, Optuna ranges, trial parsing) is ``search_spaces.disentangle``; its dry
run is ``study.dry_run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from search_spaces import protocols
from search_spaces.common import drop_repeats
from search_spaces.disentangle import (
    METRIC_DEFAULTS,
    QUICK_LOOP,
    STUDIES,
    config_key,
    get_study,
    optuna_space,
    resolved_params,
    trial_configs,
    typed_trial,
    with_grid,
)
from study.definition import StudyDefinition
from study.dry_run import disentangle_dry_run
from study.launch import StudyHooks, trial_label
from study.options import add_common_options, grid_options, parse_overrides, resolve_data_dir
from study.plan import SweepPlan, make_plan
from study.progress import Column
from trainables.disentangle import data_source_of, disentangle_trainable
from vae_attention.data import NPZ_NAME, DSprites
from vae_attention.errors import ConfigError, StudyError
from vae_attention.training.disentangle import check_model

KIND = "disentangle"
GRID_FLAGS = {"gamma": "gamma", "lambda_ad": "lambda_ad", "beta": "beta", "lr": "lr"}  # argparse dest → config key
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
    parser.add_argument("--gamma", type=float, nargs="+", metavar="G",
                        help="γ values of the FactorVAE and AD-FactorVAE arms (replace the experiment's)")
    parser.add_argument("--lambda-ad", type=float, nargs="+", metavar="L",
                        help="λ values of the AD-FactorVAE arms (replace the experiment's)")
    parser.add_argument("--beta", type=float, nargs="+", metavar="B", help="β values of the β-VAE arm")
    parser.add_argument("--lr", type=float, nargs="+", metavar="X", help="learning rates (a grid axis over every "
                                                                         "trial)")
    parser.add_argument("--iterations", type=int, help="optimiser iterations per trial (Table 1: 150,000)")
    parser.add_argument("--eval-every", type=int, help="iterations between metric evaluations (default 10,000)")
    parser.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default 5,000)")
    parser.add_argument("--allow-generated-data", action="store_true", default=None,
                        help="let a full (not --quick) sweep train on the generated dSprites stand-in; its numbers "
                             "are not comparable with published ones")
    add_common_options(parser)
    parser.set_defaults(handler=KIND)


def build_plan(args: argparse.Namespace) -> SweepPlan:
    """Resolve and validate everything that can be checked without Ray."""
    experiment = args.experiment or "exp1"
    protocol_name = args.protocol or protocols.DEFAULT_PROTOCOL
    protocol = protocols.bundle(KIND, protocol_name)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for flag, key in (("iterations", "iterations"), ("eval_every", "eval_every"),
                      ("checkpoint_every", "checkpoint_every")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    grid = grid_options(args, GRID_FLAGS, overrides)
    # --quick shrinks the experiment first, so the axes given on the command line keep all their values
    study = with_grid(get_study(experiment, quick=bool(args.quick)), grid)
    data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir"))
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    # study defaults (its grid and loop) < protocol < --quick < explicit flags and --set
    layered = protocols.layer_values(protocol, dict(QUICK_LOOP) if args.quick else {}, overrides)
    trials = study.trials(tuple(args.seeds) if args.seeds else None, layered)
    for trial in trials:
        trial.update(typed_trial(trial))  # raises ConfigError for unknown keys and bad values
        trial[protocols.PROTOCOL_KEY] = protocols.label(protocol_name, protocol, trial)
    trials = drop_repeats(trials)
    for science in {trial_configs(t)[0].replace(seed=0) for t in trials}:
        check_model(science)
    name = args.name or sweep_name(args)
    space = None
    if args.search == "optuna":
        if grid:
            raise ConfigError(f"grid axes ({', '.join(grid)}) are for a grid; Optuna samples the study's ranges "
                              "(fix a value with --set)")
        space, trials = optuna_space(trials, overrides, tuple(args.seeds or study.seeds))
    plan = make_plan(args, kind=KIND, study=study.name, name=name, trials=trials, space=space)
    if not (args.quick or args.allow_generated_data or args.dry_run):  # last: every other user error first
        refuse_generated_data(data_dir)
    return plan


def sweep_name(args: argparse.Namespace) -> str:
    """``disentangle-<experiment>``, ``-quick`` appended for the preset (a fresh start and ``--resume`` alike)."""
    return f"{KIND}-{args.experiment or 'exp1'}" + ("-quick" if args.quick else "")


def refuse_generated_data(data_dir: str | None) -> None:
    """A full sweep trains on the official dSprites file, or says in one line where to put it and how to get it."""
    expected = Path(data_dir) / NPZ_NAME if data_dir is not None else Path("DIR") / NPZ_NAME
    if data_dir is not None and expected.is_file():
        return
    where = f"expected {expected}" if data_dir is not None else f"no --data-dir given (expected DIR/{NPZ_NAME})"
    raise StudyError(f"a full sweep refuses the generated dSprites stand-in: {where}; fetch it with `python -m "
                     "vae_attention.data download dsprites --to DIR` and pass --data-dir DIR, or pass "
                     "--allow-generated-data (or --quick) to run on the stand-in")


def resolve_data_source(plan: SweepPlan) -> str:
    """Prepare the packed dSprites cache once on the driver (not in N trials at once) and name the source."""
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


def trial_name(trial) -> str:
    return trial_label(trial, _label)


def _label(p: dict) -> str:
    if p["model"] == "betavae":
        label = f"betavae_b{p['beta']:g}"
    elif p["model"] == "ad_factorvae":
        label = f"adfvae_g{p['gamma']:g}_l{p['lambda_ad']:g}"
    else:
        label = f"fvae_g{p['gamma']:g}"
    return f"{label}_s{p['seed']}"


def trial_tags(params: dict) -> dict[str, str]:
    return {"config_key": config_key(params)}


DEFINITION = StudyDefinition(
    name=KIND,
    sweep_name=sweep_name,
    naming_options=("experiment", "quick"),
    add_parser=add_parser,
    build_plan=build_plan,
    dry_run=disentangle_dry_run,
    resolve_data_source=resolve_data_source,
    hooks=StudyHooks(trainable=disentangle_trainable, trial_name=trial_name, trial_tags=trial_tags,
                     resolved_params=resolved_params, columns=COLUMNS, total_key="iterations",
                     step_key="iteration", metric_defaults=METRIC_DEFAULTS),
)

"""``python -m study.run anomaly``: the anomaly-localisation study's flags, console columns and hooks.

The study itself (the grids per data set, the Optuna range, trial parsing) is ``search_spaces.anomaly``;
its dry run is ``study.dry_run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

import torch

from search_spaces import protocols
from search_spaces.anomaly import (
    METRIC_DEFAULTS,
    STUDIES,
    config_key,
    custom_categories,
    get_study,
    grid_axes,
    optuna_space,
    resolved_params,
    trial_config,
    typed_trial,
)
from search_spaces.common import drop_repeats
from study.definition import StudyDefinition
from study.dry_run import anomaly_dry_run
from study.launch import StudyHooks, trial_label
from study.options import add_common_options, grid_options, parse_overrides, resolve_data_dir
from study.plan import SweepPlan, make_plan
from study.progress import Column
from trainables.anomaly import anomaly_trainable, data_source_of
from vae_attention.data import MVTEC_CATEGORIES
from vae_attention.errors import ConfigError, StudyError
from vae_attention.training.anomaly import build_datasets, check_model
from vae_attention.training.anomaly.config import AttentionMode

KIND = "anomaly"
GRID_FLAGS = {"category": "category", "digit": "digit", "lr": "lr"}  # argparse dest → config key (grid axes)
COLUMNS = [
    Column("data", "dataset", "param", "{}", 5),
    Column("category", "category", "param", "{}", 10),
    Column("digit", "digit", "param", "{}", 5),
    Column("lr", "lr", "param", "{:.0e}", 6),
    Column("seed", "seed", "param", "{}", 4),
    Column("epoch", "epoch", "metric", "{}", 9),
    Column("loss", "loss", "metric", "{:.1f}", 9),
    Column("AUROC", "pixel_auroc", "metric", "{:.3f}", 6),
    Column("IoU", "best_iou", "metric", "{:.3f}", 6),
    Column("img AUROC", "image_auroc", "metric", "{:.3f}", 9),
]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        KIND, help="one-class VAE anomaly localisation with latent attention (MNIST, UCSD Ped1, MVTec-AD)",
        description="Sweep one-class VAEs for anomaly localisation with Ray Tune; one MLflow run per trial. "
                    "Pixel AUROC and best IoU (threshold chosen on the test set, as the paper) per epoch step.",
    )
    parser.add_argument("--dataset", choices=list(STUDIES), help="mnist, ucsd or mvtec (default mnist)")
    parser.add_argument("--category", nargs="+", metavar="NAME",
                        help="MVTec-AD categories, or 'all' (default all); another name is a folder of --data-dir in "
                             "the MVTec layout (your own data)")
    parser.add_argument("--digit", type=int, nargs="+", metavar="D", help="MNIST inlier digits (default 1 3)")
    parser.add_argument("--lr", type=float, nargs="+", metavar="X", help="learning rates (a grid axis)")
    parser.add_argument("--layer", help="attention layer by module name (default: encoder.2 MNIST, encoder.4 UCSD, "
                                        "encoder.layer3.1.conv2 MVTec)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (MNIST 200, UCSD and MVTec 300)")
    parser.add_argument("--image-size", type=int, help="square input size (UCSD 100, MVTec 256)")
    parser.add_argument("--attention", choices=get_args(AttentionMode),
                        help="authors: |grad-weighted map of Σμ| (the report's numbers; --protocol authors/seed); "
                             "paper: mean of per-dimension ReLU maps (--protocol paper, the default)")
    add_common_options(parser)
    parser.set_defaults(handler=KIND)


def build_plan(args: argparse.Namespace) -> SweepPlan:
    dataset = args.dataset or "mnist"
    study = get_study(dataset)
    protocol_name = args.protocol or protocols.DEFAULT_PROTOCOL
    protocol = protocols.bundle(KIND, protocol_name, dataset)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for flag, key in (("layer", "attention_layer"), ("epochs", "epochs"), ("image_size", "image_size"),
                      ("attention", "attention")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir"))
    if data_dir is None:
        raise StudyError(f"--data-dir is required for --dataset {dataset} (see README 'Data' for the layout)")
    overrides["data_dir"] = data_dir
    axes = grid_axes(dataset, grid_options(args, GRID_FLAGS, overrides))
    check_custom_categories(custom_categories(axes), data_dir)
    # study defaults (its grid and fixed values) < protocol < --quick < explicit flags and --set
    layered = protocols.layer_values(protocol, dict(study.quick) if args.quick else {}, overrides)
    trials = study.trials(tuple(args.seeds) if args.seeds else None, layered, axes, quick=bool(args.quick))
    for trial in trials:
        trial.update(typed_trial(trial))  # raises ConfigError for unknown keys and bad values
        trial[protocols.PROTOCOL_KEY] = protocols.label(protocol_name, protocol, trial)
    trials = drop_repeats(trials)
    for config in {trial_config(t).replace(seed=0, lr=1.0) for t in trials}:
        check_model(config)
    name = args.name or sweep_name(args)
    space = None
    if args.search == "optuna":
        space, trials = optuna_space(trials, tuple(args.seeds or study.seeds), fixed_lr="lr" in overrides)
        if dataset == "mnist" and args.metric is None:
            args.metric = "image_auroc"  # MNIST has no masks, so no pixel metrics
    if args.objective == "pareto":
        raise ConfigError("--objective pareto is for the disentangle study (disentanglement vs reconstruction)")
    return make_plan(args, kind=KIND, study=dataset, name=name, trials=trials, space=space)


def sweep_name(args: argparse.Namespace) -> str:
    """``anomaly-<dataset>``, ``-quick`` appended for the preset (a fresh start and ``--resume`` alike)."""
    return f"{KIND}-{args.dataset or 'mnist'}" + ("-quick" if args.quick else "")


def check_custom_categories(names: tuple[str, ...], data_dir: str) -> None:
    """A category outside MVTec AD's 15 is a user's folder in the MVTec layout: accepted with a one-line note
    (printed once, here on the driver) if ``<data_dir>/<name>/train/good`` exists, else refused in one line (a
    typo of a category name lands here too)."""
    for name in names:
        folder = Path(data_dir) / name
        if Path(name).name != name or name in (".", ".."):
            raise ConfigError(f"--category {name!r}: a category is one folder name inside --data-dir")
        if not (folder / "train" / "good").is_dir():
            raise ConfigError(f"unknown MVTec-AD categories [{name!r}]: not one of the 15 "
                              f"({', '.join(MVTEC_CATEGORIES)}) and no folder {folder}/train/good in the MVTec layout")
        print(f"note: category {name!r} is not one of MVTec AD's 15; reading {folder} as your own data in the MVTec "
              "layout (train/good, test/<defect>, ground_truth/<defect>)")


def resolve_data_source(plan: SweepPlan) -> str:
    """Open every trial's data set once on the driver, so missing files fail before Ray starts."""
    seen = set()
    for trial in plan.trials:
        config = trial_config(trial)
        key = (config.dataset, config.category, config.digit, config.gt_policy, config.resolved_image_size)
        if key not in seen:
            seen.add(key)
            train, test = build_datasets(config, torch.Generator())
            print(f"{config.dataset} {config.category if config.dataset == 'mvtec' else ''}: "
                  f"{len(train)} train, {len(test)} test images")
    sources = {data_source_of(trial_config(t)) for t in plan.trials}
    return sources.pop() if len(sources) == 1 else "mixed"


def trial_name(trial) -> str:
    return trial_label(trial, _label)


def _label(p: dict) -> str:
    if p["dataset"] == "mvtec":
        label = f"mvtec_{p['category']}"
    elif p["dataset"] == "mnist":
        label = f"mnist_d{p['digit']}"
    else:
        label = "ucsd"
    return f"{label}_lr{p['lr']:g}_s{p['seed']}"


def trial_tags(params: dict) -> dict[str, str]:
    # derived from the attention mode, recorded because it changes the maps: the authors' code takes |·|
    # of the upsampled map, the paper's formulation activates at the layer's resolution
    order = "after_upsampling" if trial_config(params).resolved_upsample_first else "before_upsampling"
    return {"config_key": config_key(params), "activation_order": order}


DEFINITION = StudyDefinition(
    name=KIND,
    sweep_name=sweep_name,
    naming_options=("dataset", "quick"),
    add_parser=add_parser,
    build_plan=build_plan,
    dry_run=anomaly_dry_run,
    resolve_data_source=resolve_data_source,
    hooks=StudyHooks(trainable=anomaly_trainable, trial_name=trial_name, trial_tags=trial_tags,
                     resolved_params=resolved_params, columns=COLUMNS, total_key="epochs", step_key="epoch",
                     metric_defaults=METRIC_DEFAULTS),
)

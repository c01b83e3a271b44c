"""``python -m study.run anomaly``: the anomaly-localisation study's options, plan, dry run and hooks."""

from __future__ import annotations

import argparse
from typing import Any

from search_spaces.anomaly import MVTEC_CATEGORIES, STUDIES, config_key, get_study, resolved_params, split_trial
from study.options import add_common_options, parse_overrides, resolve_data_dir
from study.progress import Column
from study.search import describe, resolve_metric
from study.sweep import CHECKPOINTS_TO_KEEP, StudyHooks, SweepPlan, checkpoint_gigabytes, make_plan, trial_table
from vae_attention.errors import ConfigError, StudyError

KIND = "anomaly"
DEFAULT_NAME = f"{KIND}-mnist"  # what --resume continues without --name
# ASHA needs a metric in every report (the training loss); Optuna can use the final evaluation.
METRIC_DEFAULTS = {"asha": ("loss", "min"), "optuna": ("pixel_auroc", "max")}
LR_RANGE = ("loguniform", 1e-5, 1e-2)
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
    parser.add_argument("--category", nargs="+", metavar="NAME", help="MVTec-AD categories, or 'all' (default all)")
    parser.add_argument("--digit", type=int, nargs="+", metavar="D", help="MNIST inlier digits (default 1 3)")
    parser.add_argument("--lr", type=float, nargs="+", metavar="X", help="learning rates (a grid axis)")
    parser.add_argument("--layer", help="attention layer by module name (default: encoder.2 MNIST, encoder.4 UCSD, "
                                        "encoder.layer3.1.conv2 MVTec)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (MNIST 200, UCSD and MVTec 300)")
    parser.add_argument("--image-size", type=int, help="square input size (UCSD 100, MVTec 256)")
    parser.add_argument("--attention", choices=("authors", "paper"),
                        help="authors: |grad-weighted map of Σμ| (default; the report's numbers); paper: mean of "
                             "per-dimension ReLU maps")
    add_common_options(parser)
    parser.set_defaults(handler=KIND)


def _axes(args: argparse.Namespace, dataset: str) -> dict[str, tuple]:
    axes: dict[str, tuple] = {}
    if args.category:
        if dataset != "mvtec":
            raise ConfigError("--category applies to --dataset mvtec only")
        categories = MVTEC_CATEGORIES if args.category == ["all"] else tuple(args.category)
        unknown = sorted(set(categories) - set(MVTEC_CATEGORIES))
        if unknown:
            raise ConfigError(f"unknown MVTec-AD categories {unknown}; choose from {', '.join(MVTEC_CATEGORIES)}")
        axes["category"] = categories
    if args.digit:
        if dataset != "mnist":
            raise ConfigError("--digit applies to --dataset mnist only")
        axes["digit"] = tuple(args.digit)
    if args.lr:
        axes["lr"] = tuple(args.lr)
    return axes


def build_plan(args: argparse.Namespace) -> SweepPlan:
    dataset = args.dataset or "mnist"
    study = get_study(dataset)
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for flag, key in (("layer", "attention_layer"), ("epochs", "epochs"), ("image_size", "image_size"),
                      ("attention", "attention")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir"))
    if data_dir is None:
        raise StudyError(f"--data-dir is required for --dataset {dataset} (see README 'Data' for the layout)")
    overrides["data_dir"] = data_dir
    trials = study.trials(tuple(args.seeds) if args.seeds else None, overrides, _axes(args, dataset),
                          quick=bool(args.quick))
    for trial in trials:
        trial.update({k: v for k, v in resolved_params(trial).items() if k in trial})  # typed; raises ConfigError
    from vae_attention.training.anomaly_state import check_model

    for config in {split_trial(t).replace(seed=0, lr=1.0) for t in trials}:
        check_model(config)
    name = args.name or f"{KIND}-{dataset}" + ("-quick" if args.quick else "")
    space = None
    if args.scheduler == "optuna":
        space, trials = optuna_space(trials, tuple(args.seeds or study.seeds), fixed_lr="lr" in overrides)
        if dataset == "mnist" and args.metric is None:
            args.metric = "image_auroc"  # MNIST has no masks, so no pixel metrics
    if args.objective == "pareto":
        raise ConfigError("--objective pareto is for the disentangle study (disentanglement vs reconstruction)")
    return make_plan(args, kind=KIND, study=dataset, name=name, trials=trials, space=space)


def optuna_space(trials: list[dict[str, Any]], seeds: tuple[int, ...], fixed_lr: bool):
    """Optuna searches the learning rate (log-uniform) and the seed for ONE category/digit at a time."""
    varying = sorted(k for k in trials[0] if k not in ("lr", "seed") and len({str(t[k]) for t in trials}) > 1)
    if varying:
        raise ConfigError(f"--scheduler optuna searches one configuration at a time, but {varying} vary; "
                          "pass a single --category/--digit")
    space = {k: v for k, v in trials[0].items() if k != "seed"}
    space["seed"] = ("choice", list(seeds))
    if not fixed_lr:
        space["lr"] = LR_RANGE
    corners = [{**trials[0], "lr": space["lr"][end] if not fixed_lr else trials[0]["lr"]} for end in (1, 2)]
    return space, corners


def resolve_data_source(plan: SweepPlan) -> str:
    """Open every trial's data set once on the driver, so missing files fail before Ray starts."""
    import torch

    from trainables.anomaly import data_source_of
    from vae_attention.training.anomaly_state import build_datasets

    seen = set()
    for trial in plan.trials:
        config = split_trial(trial)
        key = (config.dataset, config.category, config.digit, config.gt_policy, config.resolved_image_size)
        if key not in seen:
            seen.add(key)
            train, test = build_datasets(config, torch.Generator())
            print(f"{config.dataset} {config.category if config.dataset == 'mvtec' else ''}: "
                  f"{len(train)} train, {len(test)} test images")
    sources = {data_source_of(split_trial(t)) for t in plan.trials}
    return sources.pop() if len(sources) == 1 else "mixed"


def dry_run(plan: SweepPlan) -> str:
    import torch

    from vae_attention.training.anomaly_state import build_model

    settings = plan.settings
    metric, mode = resolve_metric(settings, METRIC_DEFAULTS)
    if settings.scheduler == "optuna":
        return "\n".join([f"sweep {plan.name!r} ({plan.study}, preset {plan.preset})",
                           *describe(settings, metric, mode, plan.space, plan.trials[0]["epochs"], "epoch")])
    keys = ["dataset", "category", "digit", "lr", "epochs", "batch_size", "image_size", "attention", "seed"]
    lines = trial_table(plan, keys, config_key, resolved_params)
    if settings.scheduler == "asha":
        lines += describe(settings, metric, mode, None, plan.trials[0]["epochs"], "epoch")
    params = sum(sum(p.numel() for p in build_model(split_trial(t), torch.Generator()).parameters())
                 for t in plan.trials)
    lines.append(f"checkpoint disk ≈ {checkpoint_gigabytes(params, 1):.2f} GB ({CHECKPOINTS_TO_KEEP} kept per "
                 f"trial) at {plan.storage}")
    return "\n".join(lines)


def trial_name(trial) -> str:
    p = trial.config["params"]
    if p["dataset"] == "mvtec":
        label = f"mvtec_{p['category']}"
    elif p["dataset"] == "mnist":
        label = f"mnist_d{p['digit']}"
    else:
        label = "ucsd"
    return f"{label}_lr{p['lr']:g}_s{p['seed']}_{trial.trial_id}"


def trial_tags(params: dict) -> dict[str, str]:
    # derived from the attention mode, recorded because it changes the maps: the authors' code takes |·|
    # of the upsampled map, the paper's formulation activates at the layer's resolution
    order = "after_upsampling" if split_trial(params).upsample_first else "before_upsampling"
    return {"config_key": config_key(params), "activation_order": order}


def hooks() -> StudyHooks:
    from trainables.anomaly import anomaly_trainable

    return StudyHooks(trainable=anomaly_trainable, trial_name=trial_name, trial_tags=trial_tags,
                      resolved_params=resolved_params, columns=COLUMNS, total_key="epochs", step_key="epoch",
                      metric_defaults=METRIC_DEFAULTS)

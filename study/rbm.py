"""``python -m study.run rbm``: the RBM study's flags, dry run, console columns and hooks.

The study itself (protocols, grids, the quick preset, trial parsing) is ``search_spaces.rbm``; the science is
``vae_attention.training.rbm``. The generic ``--protocol`` option (``study.options``) chooses ``paper`` (our
Grad-CAM construction, the default) or ``seed`` (the report's construction and sizes); ``authors`` is refused
in one line, since the authors' code has no RBM.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from search_spaces import rbm as rbm_space
from search_spaces.common import drop_repeats
from study.definition import StudyDefinition
from study.dry_run import checkpoint_gigabytes, trial_table, varying_keys
from study.launch import StudyHooks, trial_label
from study.options import add_common_options, grid_options, parse_overrides, resolve_data_dir
from study.plan import CHECKPOINTS_TO_KEEP, SweepPlan, make_plan
from study.progress import Column
from trainables.rbm import data_source_of, rbm_trainable
from vae_attention.errors import ConfigError, StudyError
from vae_attention.training.anomaly import build_model
from vae_attention.training.rbm import build_data, build_stack, vae_config

KIND = rbm_space.KIND
COLUMNS = [
    Column("digit", "digit", "param", "{}", 5),
    Column("sizes", "sizes", "param", "{}", 12),
    Column("k", "k", "param", "{}", 2),
    Column("lr", "lr", "param", "{:.0e}", 6),
    Column("τ", "temperature", "param", "{:g}", 4),
    Column("seed", "seed", "param", "{}", 4),
    Column("epoch", "epoch", "metric", "{}", 9),
    Column("layer", "layer", "metric", "{:.0f}", 5),
    Column("recon", "recon_error", "metric", "{:.4f}", 7),
    Column("AUROC", "pixel_auroc", "metric", "{:.3f}", 6),
    Column("AUROC vae", "pixel_auroc/vae", "metric", "{:.3f}", 9),
]
# Grid only: ASHA needs one metric in every report, but the stack's epochs report CD numbers and the VAE's
# epochs ELBO numbers; Optuna would tune an evaluation-only comparison. Both are refused in one line.
METRIC_DEFAULTS: dict[str, Any] = {}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        KIND, help="stacked RBMs with Gumbel-relaxed attention on one-class MNIST, against the MNIST VAE "
                   "(the report's extension)",
        description="Train a stack of RBMs greedily (CD-k/PCD) and the anomaly study's MNIST VAE on one digit per "
                    "trial; evaluate both RBM attention constructions (gradcam: ours; seed: the report's) and the "
                    "VAE's map on MNIST test images with a pasted foreign element (pixel AUROC, every best IoU, "
                    "image AUROC). One MLflow run per trial. --protocol paper (default) or seed.",
    )
    parser.add_argument("--digit", type=int, nargs="+", metavar="D", help="inlier digits (a grid axis; default 1 3)")
    parser.add_argument("--lr", type=float, nargs="+", metavar="X", help="SGD learning rates of the CD updates "
                                                                         "(a grid axis)")
    parser.add_argument("--epochs-per-layer", type=int, help="epochs of each RBM layer (default 40)")
    parser.add_argument("--vae-epochs", type=int, help="epochs of the VAE trained after the stack (default 200)")
    parser.add_argument("--rbm-map", choices=("gradcam", "seed"),
                        help="the construction logged unsuffixed (both are always logged as <metric>/gradcam and "
                             "<metric>/seed); default: the protocol's")
    add_common_options(parser)
    parser.set_defaults(handler=KIND)


def build_plan(args: argparse.Namespace) -> SweepPlan:
    protocol = rbm_space.check_protocol(args.protocol or "paper")
    if args.scheduler not in (None, "fifo") or args.search not in (None, "grid"):
        flag = f"--search {args.search}" if args.search not in (None, "grid") else f"--scheduler {args.scheduler}"
        raise ConfigError(f"{flag}: the rbm study runs its grid only (fifo); its reports "
                          "carry CD numbers during the stack and ELBO numbers during the VAE, no common metric")
    overrides: dict[str, Any] = parse_overrides(args.overrides)
    for flag, key in (("epochs_per_layer", "epochs_per_layer"), ("vae_epochs", "vae_epochs"), ("rbm_map", "rbm_map")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    data_dir = resolve_data_dir(args.data_dir or overrides.get("data_dir"))
    if data_dir is None:
        raise StudyError("--data-dir is required for the rbm study (MNIST IDX files; see README 'Data')")
    overrides["data_dir"] = data_dir
    axes = grid_options(args, {"digit": "digit", "lr": "lr"}, overrides)
    rbm_space.check_grid(axes)
    trials = drop_repeats(rbm_space.trials(protocol, tuple(args.seeds) if args.seeds else None, overrides, axes,
                                           quick=bool(args.quick)))
    name = args.name or sweep_name(args)
    return make_plan(args, kind=KIND, study=protocol, name=name, trials=trials)


def sweep_name(args: argparse.Namespace) -> str:
    """``rbm-<protocol>``, ``-quick`` appended for the preset (a fresh start and ``--resume`` alike)."""
    return f"{KIND}-{args.protocol or 'paper'}" + ("-quick" if args.quick else "")


def dry_run(plan: SweepPlan) -> str:
    keys = ["protocol", "digit", "sizes", "hidden", "k", "lr", "temperature", "rbm_map", "rbm_layer", "epochs",
            "seed"]
    keys[-1:-1] = varying_keys(plan, keys)  # e.g. a --grid axis
    cell = {"sizes": lambda v: "-".join(map(str, v))}
    lines = trial_table(plan, keys, rbm_space.config_key,
                        lambda t: {k: cell.get(k, lambda v: v)(v) for k, v in rbm_space.resolved_params(t).items()})
    for name in sorted({t["protocol"].removesuffix("+custom") for t in plan.trials}):
        values = rbm_space.RBM_PROTOCOLS[name]
        width = max(map(len, values))
        lines += [f"protocol {name}:"] + [f"  {k.ljust(width)} = {v}" for k, v in values.items()]
    params = 0
    for trial in plan.trials:
        config = rbm_space.trial_config(trial)
        params += sum(p.numel() for p in build_stack(config).parameters())
        params += sum(p.numel() for p in build_model(vae_config(config), torch.Generator()).parameters())
    lines.append(f"checkpoint disk ≤ {checkpoint_gigabytes(params, 1):.2f} GB (stack and VAE, {CHECKPOINTS_TO_KEEP} "
                 f"kept per trial) at {plan.storage}")
    return "\n".join(lines)


def resolve_data_source(plan: SweepPlan) -> str:
    """Open each digit's data once on the driver (MNIST files, pasted set), so missing files fail before Ray."""
    seen = set()
    for trial in plan.trials:
        config = rbm_space.trial_config(trial)
        key = (config.digit, config.eval_digits, config.paste_seed, config.max_train_images, config.max_test_images)
        if key not in seen:
            seen.add(key)
            data = build_data(config)
            print(f"mnist digit {config.digit}: {len(data.train)} train, {len(data.test)} test, "
                  f"{len(data.pasted)} pasted test images")
    sources = {data_source_of(rbm_space.trial_config(t)) for t in plan.trials}
    return sources.pop() if len(sources) == 1 else "mixed"


def trial_name(trial) -> str:
    return trial_label(trial, _label)


def _label(p: dict) -> str:
    sizes = "-".join(map(str, p["sizes"]))
    return (f"rbm_{p['protocol']}_d{p['digit']}_{sizes}_k{p['k']}_lr{p['lr']:g}_t{p['temperature']:g}_"
            f"s{p['seed']}").replace("+", "-")


def trial_tags(params: dict) -> dict[str, str]:
    return {"config_key": rbm_space.config_key(params)}


def resolved_params(trial: dict) -> dict:
    return rbm_space.resolved_params(trial)


DEFINITION = StudyDefinition(
    name=KIND,
    sweep_name=sweep_name,
    naming_options=("protocol", "quick"),
    add_parser=add_parser,
    build_plan=build_plan,
    dry_run=dry_run,
    resolve_data_source=resolve_data_source,
    hooks=StudyHooks(trainable=rbm_trainable, trial_name=trial_name, trial_tags=trial_tags,
                     resolved_params=resolved_params, columns=COLUMNS, total_key=rbm_space.TOTAL_KEY,
                     step_key="epoch", metric_defaults=METRIC_DEFAULTS),
)

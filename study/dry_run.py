"""``--dry-run``: each study's trials as a table with their config_key, and the disk and metric cost ahead.

Nothing here starts Ray or touches MLflow; models are built only to count their parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from search_spaces import anomaly as anomaly_space
from search_spaces import disentangle as disentangle_space
from search_spaces import protocols
from study.plan import CHECKPOINTS_TO_KEEP, SweepPlan
from study.search import describe
from vae_attention.training.anomaly import build_model
from vae_attention.training.disentangle import build_models


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


def varying_keys(plan: SweepPlan, shown: list[str]) -> list[str]:
    """Trial keys not in ``shown`` whose value differs between trials (grid axes of the experiment or ``--grid``)."""
    keys = dict.fromkeys(k for t in plan.trials for k in t if k not in shown and k != protocols.PROTOCOL_KEY)
    return [k for k in keys if len({str(t.get(k)) for t in plan.trials}) > 1]


def protocol_lines(plan: SweepPlan) -> list[str]:
    """The protocol bundle(s) the trials run under, each value, and which of them flags or --set overrode."""
    dataset = plan.study if plan.kind == "anomaly" else None
    lines = []
    for label in sorted({t[protocols.PROTOCOL_KEY] for t in plan.trials if protocols.PROTOCOL_KEY in t}):
        lines += protocols.describe(plan.kind, label, dataset)
        bundle = protocols.bundle(plan.kind, protocols.base_name(label), dataset)
        changed = sorted({k for t in plan.trials if t.get(protocols.PROTOCOL_KEY) == label
                          for k in protocols.overridden_fields(bundle, t)})
        if changed:
            lines.append("  overridden by flags or --set: " + ", ".join(
                f"{k} = {next(t[k] for t in plan.trials if t.get(protocols.PROTOCOL_KEY) == label)}"
                for k in changed))
    return lines


def checkpoint_gigabytes(parameters: int, trials: int) -> float:
    """Disk for the kept checkpoints: weights + Adam's two moments in float32, CHECKPOINTS_TO_KEEP per trial."""
    return parameters * 4 * 3 * CHECKPOINTS_TO_KEEP * trials / 1e9


# -- disentanglement -------------------------------------------------------------------------------------------
def parameter_count(trial: dict[str, Any]) -> int:
    """Parameters of the VAE and (for FactorVAE models) the discriminator of a trial."""
    config, _ = disentangle_space.trial_configs(trial)
    return _parameter_count(config.replace(seed=0))  # a seed changes initial values, not shapes


@functools.cache
def _parameter_count(config) -> int:
    return sum(p.numel() for model in build_models(config) if model is not None for p in model.parameters())


def metric_images(trial: dict[str, Any]) -> int:
    """Images drawn by the evaluations of one trial (both metric variants, every eval and the final one)."""
    config, _ = disentangle_space.trial_configs(trial)
    evals = config.iterations // config.eval_every + (config.iterations % config.eval_every != 0)
    dlib = (config.metric_num_variance
            + (config.metric_num_train + config.metric_num_eval) * config.metric_batch_size)
    seed = config.seed_metric_votes * config.seed_metric_batch_size
    return evals * (dlib + seed)


def disentangle_dry_run(plan: SweepPlan) -> str:
    keys = ["model", "gamma", "lambda_ad", "beta", "seed", "iterations", "eval_every", "checkpoint_every"]
    # columns for further settings when they vary across trials (e.g. --experiment adlayer, --lr, --grid)
    keys[4:4] = varying_keys(plan, keys)
    settings, defaults = plan.search, disentangle_space.METRIC_DEFAULTS
    if settings.algorithm == "optuna":
        return "\n".join([f"sweep {plan.name!r} ({plan.study}, preset {plan.preset})", *protocol_lines(plan),
                           *describe(settings, defaults, plan.space, plan.trials[0]["iterations"], "iteration")])
    lines = trial_table(plan, keys, disentangle_space.config_key) + protocol_lines(plan)
    if settings.scheduler == "asha":
        lines += describe(settings, defaults, None, plan.trials[0]["iterations"], "iteration")
    disk = sum(checkpoint_gigabytes(parameter_count(t), 1) for t in plan.trials)
    images = sum(metric_images(t) for t in plan.trials)
    lines.append(f"checkpoint disk ≈ {disk:.2f} GB ({CHECKPOINTS_TO_KEEP} kept per trial) at {plan.storage}")
    lines.append(f"metric cost ≈ {images / 1e6:.1f} M images drawn in evaluations (≈ half encoded after caching)")
    return "\n".join(lines)


# -- anomaly localisation --------------------------------------------------------------------------------------
def anomaly_dry_run(plan: SweepPlan) -> str:
    settings, defaults = plan.search, anomaly_space.METRIC_DEFAULTS
    if settings.algorithm == "optuna":
        return "\n".join([f"sweep {plan.name!r} ({plan.study}, preset {plan.preset})", *protocol_lines(plan),
                           *describe(settings, defaults, plan.space, plan.trials[0]["epochs"], "epoch")])
    keys = ["dataset", "category", "digit", "lr", "epochs", "batch_size", "image_size", "attention", "seed"]
    keys[-1:-1] = varying_keys(plan, keys)  # e.g. a --grid axis
    lines = trial_table(plan, keys, anomaly_space.config_key, anomaly_space.resolved_params) + protocol_lines(plan)
    if settings.scheduler == "asha":
        lines += describe(settings, defaults, None, plan.trials[0]["epochs"], "epoch")
    params = sum(sum(p.numel() for p in build_model(anomaly_space.trial_config(t), torch.Generator()).parameters())
                 for t in plan.trials)
    lines.append(f"checkpoint disk ≈ {checkpoint_gigabytes(params, 1):.2f} GB ({CHECKPOINTS_TO_KEEP} kept per "
                 f"trial) at {plan.storage}")
    return "\n".join(lines)

"""What every sweep gets: a parallel-coordinates plot of its varying params against its objective, and, where
two objectives are logged (disentanglement up, reconstruction down), the Pareto front of its configurations.

Seeds are replicates, not hyperparameters, so they get no axis; neither do paths and other identifiers.
"""

from __future__ import annotations

import pandas as pd

from analysis import plotting
from analysis.disentangle import configurations
from analysis.document import FigureItem, Section, TableItem
from analysis.selection import describe
from analysis.stats import fmt
from analysis.store import CONTRACT_TAGS, INFO_COLUMNS, METRIC

NOT_AXES = {*INFO_COLUMNS, *CONTRACT_TAGS, "kind", "group", "seed", "data_dir", "run_ids"}
OBJECTIVES = {"disentangle": ("disentanglement", "final disentanglement (dlib)"),
              "mvtec": ("pixel_auroc", "final pixel AUROC"), "ucsd": ("pixel_auroc", "final pixel AUROC"),
              "mnist": ("image_auroc", "final image AUROC")}


def param_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c not in NOT_AXES and not c.startswith(METRIC)]


def objective_of(group: str) -> tuple[str, str] | None:
    return OBJECTIVES.get(group.split(":", 1)[-1])


def parallel_item(runs: pd.DataFrame, group: str, out, fmt_ext: str) -> FigureItem | None:
    objective = objective_of(group)
    if objective is None or METRIC + objective[0] not in runs or runs[METRIC + objective[0]].isna().all():
        return None
    params = plotting.varying_params(runs, param_columns(runs))
    if not params:
        return None
    frame = runs.rename(columns={METRIC + objective[0]: objective[1]})
    title = f"{group}: params vs {objective[1]} (one line per run)"
    fig = plotting.parallel_coordinates(frame, params, objective[1], objective[1], title)
    stem = f"parallel_{group.replace(':', '_')}"
    return FigureItem(plotting.save(fig, out, stem, fmt_ext), f"Parallel coordinates: {group}",
                      f"Every param that varies across the runs ({', '.join(params)}) on its own axis (log scale "
                      f"for wide positive ranges), each run a line coloured by its {objective[1]}. "
                      f"Runs: {describe(runs)}")


def pareto_items(runs: pd.DataFrame, out, fmt_ext: str) -> list:
    needed = [METRIC + "disentanglement", METRIC + "eval_recon_loss"]
    if not all(c in runs and runs[c].notna().any() for c in needed):
        return []
    configs = configurations(runs)
    configs = configs[configs["disentanglement_mean"].notna() & configs["eval_recon_loss_mean"].notna()]
    fig, front = plotting.pareto_figure(configs, "disentanglement", "eval_recon_loss",
                                        "final disentanglement (dlib score, 0–1) ↑",
                                        "final eval reconstruction loss (nats per image) ↓",
                                        "Pareto front: disentanglement vs reconstruction (configuration means)")
    on_front = configs[front].sort_values("disentanglement_mean", ascending=False)
    display = pd.DataFrame({
        "model": [plotting.model_style(m)["label"] for m in on_front["model"]],
        "configuration": on_front["label"],
        "disentanglement (dlib)": [fmt(r["disentanglement_mean"], r["disentanglement_sd"],
                                       int(r["disentanglement_n"])) for _, r in on_front.iterrows()],
        "eval recon (nats)": [fmt(r["eval_recon_loss_mean"], r["eval_recon_loss_sd"], int(r["eval_recon_loss_n"]))
                              for _, r in on_front.iterrows()],
    })
    data = on_front[["model", "gamma", "lambda_ad", "beta", "config_key", "n", "disentanglement_mean",
                     "disentanglement_sd", "eval_recon_loss_mean", "eval_recon_loss_sd"]]
    text = (f"{len(on_front)} of {len(configs)} configurations are not dominated (no other has a higher mean "
            "metric at a lower or equal mean reconstruction loss, or vice versa). Means over seeds; a front of "
            "means ignores the seed spread shown in the trade-off figure.")
    return [FigureItem(plotting.save(fig, out, "pareto_disentangle", fmt_ext), "Pareto front (disentangle)",
                       f"Configuration means; the front is joined and labelled. Runs: {describe(runs)}"),
            TableItem("pareto_disentangle", display, data, "Configurations on the Pareto front", text)]


def section(runs: pd.DataFrame, out, fmt_ext: str) -> Section | None:
    items: list = []
    for group, part in runs.groupby("group", sort=True):
        item = parallel_item(part, group, out, fmt_ext)
        if item is not None:
            items.append(item)
        if group == "disentangle":
            items += pareto_items(part, out, fmt_ext)
    if not items:
        return None
    return Section("Every sweep: params vs objective", "Parallel coordinates per table group; the Pareto front "
                   "where a sweep logs both disentanglement and reconstruction.", items)

"""The anomaly-localisation sections (seed Table 2, Figures 1–3): MVTec-AD per category beside the paper and
the seed report, UCSD Ped1 per attention layer against the reconstruction-error baseline, MNIST image AUROC.

Like for like: a published number sits beside our runs of its protocol only (``--protocol paper`` for the
paper's, ``seed`` for the report's; never ``<name>+custom``), and beside our metric of its definition
(``reference.DEFINITIONS``, named in the column header): the paper's pixel AUROC and pooled foreground IoU on all
test images, the report's AUROC on defective images (``pixel_auroc_no_good``) and its macro bg/fg IoU per batch
(``best_iou_seed``). Numbers are mean ± sd [interval over seeds] (n); Δ = our mean − the reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plotting, reference
from analysis.document import FigureItem, Section, TableItem
from analysis.selection import describe
from analysis.stats import (
    aggregate,
    count,
    fmt,
    fmt_interval,
    mean_curve,
    mean_sd,
    metric_stat,
    number,
    paired_differences,
    seed_interval,
)
from analysis.store import METRIC, latest_figure

KEEP = ["dataset", "category", "digit", "lr", "epochs", "attention", "attention_layer", "protocol", "sweep"]
OBJECTIVE = {"mvtec": "pixel_auroc", "ucsd": "pixel_auroc", "mnist": "image_auroc"}
NAMES = {"mvtec": "MVTec-AD", "ucsd": "UCSD Ped1", "mnist": "MNIST (one-class)"}
MVTEC_METRICS = {"pixel_auroc": "pixel AUROC", "best_iou": "best IoU"}
EXPECTED = ["pixel_auroc", "best_iou", "pixel_auroc_no_good", "best_iou_no_good", "best_iou_seed",
            "baseline_pixel_auroc", "baseline_best_iou", "image_auroc", "baseline_image_auroc"]


def _delta(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.3f}"


def _setting(row) -> str:
    """What tells configurations of one category/digit apart: lr and the attention variant."""
    return f"lr {row['lr']:g}, {row['attention']}" if pd.notna(row.get("attention")) else f"lr {row['lr']:g}"


SOURCES = {"paper": "paper (Table 2 'Orig.')", "seed": "seed report (Table 2 'Ours')"}


def run_values(runs: pd.DataFrame, run_ids: list[str], metric: str) -> list[float]:
    """The final values of ``metric`` of the given runs (one per seed), for intervals over seeds."""
    column = METRIC + metric
    if column not in runs:
        return []
    return runs.set_index("run_id").loc[run_ids, column].dropna().tolist()


def _protocol(row) -> str:
    value = row.get("protocol")
    return value if isinstance(value, str) and value else "not logged"


def mvtec_table(configs: pd.DataFrame, runs: pd.DataFrame, metric: str) -> TableItem:
    """Our numbers under each source's metric definition, its published number beside them only for runs of
    that source's protocol (never ``+custom``), Δ = our mean − the published number, interval over seeds."""
    data = configs[["category", "lr", "attention", "protocol", "n", "seeds"]].copy()
    display = pd.DataFrame({
        "category": [reference.category_name(c) for c in configs["category"]],
        "setting": [_setting(r) for _, r in configs.iterrows()],
        "protocol": [_protocol(r) for _, r in configs.iterrows()]})
    for source in ("paper", "seed"):
        ours, definition = reference.DEFINITIONS[("mvtec", source, metric)]
        refs = reference.mvtec(metric)[source]
        values = [run_values(runs, ids, ours) for ids in configs["run_ids"]]
        data[f"ours_{source}_mean"], data[f"ours_{source}_sd"], data[f"ours_{source}_n"] = zip(
            *(mean_sd(v) for v in values), strict=True)
        data[f"ours_{source}_low"], data[f"ours_{source}_high"], data[f"ours_{source}_interval"] = zip(
            *(seed_interval(v) for v in values), strict=True)
        data[source] = [refs.get(c, np.nan) if reference.comparable(p, source) else np.nan
                        for c, p in zip(configs["category"], configs["protocol"], strict=True)]
        data[f"delta_{source}"] = data[f"ours_{source}_mean"] - data[source]
        display[f"ours: {definition}"] = [fmt_interval(v) for v in values]
        display[f"{SOURCES[source]}, protocol {source}"] = data[source].map(lambda v: number(v, 2))
        display[f"Δ {source}"] = data[f"delta_{source}"].map(_delta)
    order = data.sort_values(["category", "protocol", "lr"], na_position="last").index
    data, display = data.loc[order].reset_index(drop=True), display.loc[order].reset_index(drop=True)
    if data["category"].is_unique and len(data) > 1:
        # Mean over the categories we ran (the references over the same categories), not over all fifteen
        mean = {"category": f"mean ({len(data)} categories)", "n": int(data["n"].sum())}
        for source in ("paper", "seed"):
            for column in (f"ours_{source}_mean", source):
                mean[column] = float(np.mean(data[column])) if data[column].notna().all() else np.nan
            mean[f"delta_{source}"] = mean[f"ours_{source}_mean"] - mean[source]
        data = pd.concat([data, pd.DataFrame([mean])], ignore_index=True)
        shown = {"category": mean["category"], "setting": "", "protocol": ""}
        for source in ("paper", "seed"):
            shown[f"ours: {reference.DEFINITIONS[('mvtec', source, metric)][1]}"] = number(
                mean[f"ours_{source}_mean"], 3)
            shown[f"{SOURCES[source]}, protocol {source}"] = number(mean[source], 2)
            shown[f"Δ {source}"] = _delta(mean[f"delta_{source}"])
        display = pd.concat([display, pd.DataFrame([shown])], ignore_index=True)
    name = MVTEC_METRICS[metric]
    text = (f"Our {name} per category under each source's definition (named in the column), mean ± sd "
            "[interval over seeds: 95% percentile bootstrap for n ≥ 3, min–max for n = 2] (n = seeds). A published "
            "number appears only on rows run under its protocol (never '<name>+custom'); Δ = our mean − it. "
            f"References: {reference.citations('mvtec')['paper']}; {reference.citations('mvtec')['seed']}.")
    return TableItem(f"mvtec_{metric}", display, data, f"MVTec-AD {name} vs paper and seed report", text)


def mvtec_figure(configs: pd.DataFrame, runs: pd.DataFrame):
    fig, axes = plotting.grid(2, 1, max(7.0, 0.75 * len(configs) + 3), 3.4)
    x = np.arange(len(configs))
    names = [reference.category_name(c) for c in configs["category"]]
    for ax, (metric, label) in zip(axes[:, 0], MVTEC_METRICS.items(), strict=True):
        refs = reference.mvtec(metric)
        bars = [("ours (all)", metric, "tab:blue"), ("ours (defective)", f"{metric}_no_good", "tab:cyan"),
                ("paper", "paper", "tab:gray"), ("seed report", "seed", "tab:orange")]
        width = 0.8 / len(bars)
        for i, (name, key, color) in enumerate(bars):
            offset = x - 0.4 + width * (i + 0.5)
            if key in refs:  # a published number only beside runs of its protocol
                shown = configs["category"].map(refs[key]).where(
                    configs["protocol"].map(lambda p, source=key: reference.comparable(p, source)))
                ax.bar(offset, shown, width, color=color, label=f"{name} (protocol {key} runs only)")
                continue
            ax.bar(offset, configs[f"{key}_mean"], width, yerr=configs[f"{key}_sd"].fillna(0), color=color,
                   label=name, capsize=2)
            for position, run_ids in zip(offset, configs["run_ids"], strict=True):
                points = runs.set_index("run_id").loc[run_ids, METRIC + key].dropna() if METRIC + key in runs else []
                ax.scatter([position] * len(points), points, color="black", s=8, zorder=3, alpha=0.6)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(f"{label} (0–1)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"MVTec-AD {label} per category")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def ucsd_table(configs: pd.DataFrame, runs: pd.DataFrame, layers: list[str]) -> TableItem:
    refs = reference.ucsd_pixel_auroc()
    data = configs[["lr", "attention", "n", "seeds"]].copy()
    display = pd.DataFrame({"setting": [_setting(r) for _, r in configs.iterrows()]})
    columns = {f"pixel_auroc/{layer}": f"AUROC @ {layer}" for layer in layers}
    columns.update(pixel_auroc="AUROC (main layer)", baseline_pixel_auroc="baseline AUROC", best_iou="best IoU",
                   baseline_best_iou="baseline best IoU")
    for metric, title in columns.items():
        for stat in ("mean", "sd", "n"):
            data[f"{metric}_{stat}"] = configs[f"{metric}_{stat}"]
        display[title] = [fmt(*metric_stat(r, metric)) for _, r in configs.iterrows()]
    diffs = [mean_sd(paired_differences(runs[runs["run_id"].isin(ids)], "pixel_auroc", "baseline_pixel_auroc"))
             for ids in configs["run_ids"]]
    data["delta_baseline_mean"], data["delta_baseline_sd"], data["delta_baseline_n"] = zip(*diffs, strict=True)
    display["Δ attention − baseline (paired)"] = [fmt(*d) for d in diffs]
    display.insert(1, "protocol", [_protocol(r) for _, r in configs.iterrows()])
    data["protocol"] = configs["protocol"]
    values = [run_values(runs, ids, "pixel_auroc") for ids in configs["run_ids"]]
    data["pixel_auroc_low"], data["pixel_auroc_high"], data["pixel_auroc_interval"] = zip(
        *(seed_interval(v) for v in values), strict=True)
    display["AUROC (main layer)"] = [fmt_interval(v) for v in values]
    definition = reference.DEFINITIONS[("ucsd", "paper", "pixel_auroc")][1]
    for source, title, digits in (("paper", "paper (§4.1.1)", 2), ("seed", "seed report (§4.1.1)", 4)):
        data[source] = [refs.get(source, np.nan) if reference.comparable(p, source) else np.nan
                        for p in configs["protocol"]]
        data[f"delta_{source}"] = data["pixel_auroc_mean"] - data[source]
        display[f"{title}: {definition}, protocol {source}"] = data[source].map(lambda v, d=digits: number(v, d))
        display[f"Δ {source}"] = data[f"delta_{source}"].map(_delta)
    text = ("Pixel AUROC of the attention maps at each conv layer (the main layer is the trial's attention_layer) "
            "against the reconstruction-error baseline, mean ± sd over seeds (n), the main layer with its interval "
            "over seeds (95% percentile bootstrap for n ≥ 3, min–max for n = 2); the paired Δ is per run. The "
            "paper reports 0.92, the seed report 0.8731 at every layer: each is shown only beside runs of its "
            "protocol (never '<name>+custom').")
    return TableItem("ucsd_layers", display, data, "UCSD Ped1: AUROC per attention layer vs baseline", text)


def ucsd_figure(configs: pd.DataFrame, runs: pd.DataFrame, layers: list[str]):
    metrics = [*(f"pixel_auroc/{layer}" for layer in layers), "baseline_pixel_auroc"]
    fig, ax = plotting.grid(1, 1, max(6.0, 1.6 * len(configs) + 3), 4.0)
    ax = ax[0, 0]
    x = np.arange(len(configs))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        offset = x - 0.4 + width * (i + 0.5)
        label = "reconstruction baseline" if metric.startswith("baseline") else metric.replace("pixel_auroc/", "")
        ax.bar(offset, configs[f"{metric}_mean"], width, yerr=configs[f"{metric}_sd"].fillna(0), capsize=2,
               label=label, color="tab:gray" if metric.startswith("baseline") else f"C{i}")
        for position, run_ids in zip(offset, configs["run_ids"], strict=True):
            points = runs.set_index("run_id").loc[run_ids, METRIC + metric].dropna()
            ax.scatter([position] * len(points), points, color="black", s=8, zorder=3, alpha=0.6)
    refs = reference.ucsd_pixel_auroc()
    for source, style in (("paper", "--"), ("seed", ":")):
        if source in refs and any(reference.comparable(p, source) for p in configs["protocol"]):
            ax.axhline(refs[source], color="black", ls=style, lw=1, label=f"{reference.SOURCES[source]}: "
                                                                          f"{refs[source]:g}")
    ax.set_xticks(x, [_setting(r) for _, r in configs.iterrows()])
    ax.set_ylabel("pixel AUROC (0–1)")
    ax.set_ylim(0, 1.05)
    ax.set_title("UCSD Ped1: attention AUROC per layer vs reconstruction baseline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return fig


def mnist_table(configs: pd.DataFrame, runs: pd.DataFrame) -> TableItem:
    diffs = [mean_sd(paired_differences(runs[runs["run_id"].isin(ids)], "image_auroc", "baseline_image_auroc"))
             for ids in configs["run_ids"]]
    data = configs[["digit", "lr", "n", "seeds", "image_auroc_mean", "image_auroc_sd", "image_auroc_n",
                    "baseline_image_auroc_mean", "baseline_image_auroc_sd", "baseline_image_auroc_n"]].copy()
    data["delta_mean"], data["delta_sd"], data["delta_n"] = zip(*diffs, strict=True)
    display = pd.DataFrame({
        "inlier digit": configs["digit"].map(count), "setting": [_setting(r) for _, r in configs.iterrows()],
        "image AUROC (attention)": [fmt(*metric_stat(r, "image_auroc")) for _, r in configs.iterrows()],
        "image AUROC (recon baseline)": [fmt(*metric_stat(r, "baseline_image_auroc")) for _, r in configs.iterrows()],
        "Δ attention − baseline (paired)": [fmt(*d) for d in diffs]})
    text = ("Inlier vs outlier digits scored by mean attention (and by mean reconstruction error), mean ± sd "
            "over seeds (n). The paper and the seed report show MNIST only qualitatively (seed Figure 1).")
    return TableItem("mnist_image_auroc", display, data, "MNIST: image AUROC vs reconstruction baseline", text)


def _grids(client, configs, runs, out, dataset: str) -> list[FigureItem]:
    items = []
    for _, row in configs.iterrows():
        run = runs.set_index("run_id").loc[row["run_ids"][0]]
        what = {"mvtec": reference.category_name(str(row["category"])), "mnist": f"digit {count(row['digit'])}"}
        name = f"{NAMES[dataset]} {what.get(dataset, '')}".strip()
        slug = {"mvtec": str(row["category"]), "mnist": f"digit{count(row['digit'])}"}.get(dataset, dataset)
        target = out / "figures" / "artifacts" / f"anomaly_{slug}_lr{row['lr']:g}_s{int(run['seed'])}.png"
        found = latest_figure(client, run.name, "anomaly_", target)
        if found is not None:
            items.append(FigureItem(found[0], f"{name} ({_setting(row)}): anomaly maps",
                                    f"Latest figure ({found[1]}) of run {run['run_name']} (seed {int(run['seed'])}, "
                                    f"{count(row['epochs'])} epochs): input, ground truth (where there is one), "
                                    "attention overlay and the map above the best threshold."))
    return items


def curves_figure(runs, configs, histories, dataset: str):
    objective = OBJECTIVE[dataset]
    fig, axes = plotting.grid(1, 2, 5.0, 3.2)
    colors = plotting.palette(len(configs))
    for ax, metric, label in ((axes[0, 0], "loss", "training loss (nats per image)"),
                              (axes[0, 1], objective, objective.replace("_", " ") + " (0–1)")):
        for color, (_, row) in zip(colors, configs.iterrows(), strict=True):
            seeds = [histories.get(r, metric) for r in row["run_ids"]]
            tag = reference.category_name(str(row["category"])) if dataset == "mvtec" else _setting(row)
            plotting.band(ax, mean_curve(seeds), f"{tag} (n={row['n']})", color, seeds)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{NAMES[dataset]}: {metric}")
    plotting.outside_legend(axes[0, 1], len(configs))
    return fig


def section(runs: pd.DataFrame, histories, client, out, fmt_ext: str) -> Section:
    dataset = str(runs["dataset"].iloc[0])
    metrics = sorted({c[len(METRIC):] for c in runs.columns if c.startswith(METRIC)})
    # every metric a table reads, logged or not: an absent one shows as "–" rather than failing
    configs = aggregate(runs, sorted(set(metrics) | set(EXPECTED)), KEEP)
    for column in ("category", "digit", "attention", "lr", "epochs", "protocol"):
        if column not in configs:
            configs[column] = np.nan
    configs = configs.sort_values(["category", "digit", "lr"], na_position="first").reset_index(drop=True)
    what = describe(runs, "epochs")
    items: list = []
    if dataset == "mvtec":
        items += [mvtec_table(configs, runs, "pixel_auroc"), mvtec_table(configs, runs, "best_iou")]
        items.append(FigureItem(plotting.save(mvtec_figure(configs, runs), out, "mvtec_categories", fmt_ext),
                                "MVTec-AD per category vs paper and seed report (seed Table 2)",
                                "Bars: our mean (±1 sd, seeds as dots) under both protocols, the paper's and the seed "
                                f"report's values. Runs: {what}"))
    elif dataset == "ucsd":
        layers = sorted(m.split("/", 1)[1] for m in metrics if m.startswith("pixel_auroc/"))
        items.append(ucsd_table(configs, runs, layers))
        items.append(FigureItem(plotting.save(ucsd_figure(configs, runs, layers), out, "ucsd_layers", fmt_ext),
                                "UCSD Ped1: AUROC per attention layer (seed §4.1.1, Figure 2)",
                                "Bars: mean pixel AUROC (±1 sd, seeds as dots) at each conv layer and of the "
                                f"reconstruction-error baseline; lines: the paper and the seed report. Runs: {what}"))
    elif dataset == "mnist":
        items.append(mnist_table(configs, runs))
    if OBJECTIVE.get(dataset) in metrics:
        histories.prefetch(runs["run_id"], ["loss", OBJECTIVE[dataset]])
        items.append(FigureItem(plotting.save(curves_figure(runs, configs, histories, dataset), out,
                                              f"{dataset}_curves", fmt_ext),
                                f"{NAMES.get(dataset, dataset)}: curves over epochs",
                                f"Training loss and {OBJECTIVE[dataset]} at each evaluation, mean ± 1 sd over seeds. "
                                f"Runs: {what}"))
    items += _grids(client, configs, runs, out, dataset)
    return Section(f"Anomaly localisation: {NAMES.get(dataset, dataset)}", f"What was run: {what}", items)

"""The disentanglement section (seed §4.1.2, §4.2.1, Figures 4–7): configuration table, the trade-off between
the disentanglement metric and reconstruction, training curves per model, and the attention figures of the
best configurations.

A configuration is one ``config_key`` (model, γ, λ, β and every other setting but the seed); its numbers are
the mean ± sd over its seeds of each run's final value. "Best" is the highest mean dlib metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plotting, reference
from analysis.document import FigureItem, Section, TableItem
from analysis.selection import GROUP, describe
from analysis.stats import aggregate, count, fmt, fmt_interval, mean_curve, mean_sd, metric_stat, seed_interval
from analysis.store import METRIC, latest_figure

MODEL_ORDER = ["factorvae", "ad_factorvae", "betavae"]
VARIANTS = {
    "disentanglement": "disentanglement (dlib FactorVAE score)",
    "disentanglement_seed": "disentanglement (seed report's variant)",
}
TABLE_METRICS = ["disentanglement", "disentanglement_seed", "eval_recon_loss", "recon_loss", "tc", "ad_loss"]
CURVES = {  # metric: (panel title, y axis label)
    "recon_loss": ("reconstruction loss", "reconstruction loss (nats per image)"),
    "tc": ("discriminator TC estimate", "TC estimate (nats; can be < 0)"),
    "disentanglement": ("disentanglement (dlib)", "dlib FactorVAE score (0–1)"),
    "disentanglement_seed": ("disentanglement (seed variant)", "seed-variant score (0–1)"),
}
HISTORY_METRICS = [*CURVES, "ad_loss"]  # ad_loss histories serve claim (v)
KEEP = ["model", "gamma", "lambda_ad", "beta", "iterations", "protocol", "sweep"]
RECON_LABEL = "final eval reconstruction loss (nats per image)"


def config_label(row) -> str:
    if row["model"] == "betavae":
        return f"β={row['beta']:g}"
    if row["model"] == "ad_factorvae":
        return f"γ={row['gamma']:g}, λ={row['lambda_ad']:g}"
    return f"γ={row['gamma']:g}"


def _slug(row) -> str:
    """An ASCII file-name part for a configuration (labels carry γ/λ/β)."""
    if row["model"] == "betavae":
        return f"betavae_b{row['beta']:g}"
    if row["model"] == "ad_factorvae":
        return f"ad_factorvae_g{row['gamma']:g}_l{row['lambda_ad']:g}"
    return f"{row['model']}_g{row['gamma']:g}"


def configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration with mean/sd/n of the final metrics, a label and the best marks."""
    configs = aggregate(runs, TABLE_METRICS, KEEP)
    for column in KEEP:
        if column not in configs:  # a run logged without it (older study versions): sortable, shown blank
            configs[column] = np.nan
    configs["order"] = configs["model"].map({m: i for i, m in enumerate(MODEL_ORDER)}).fillna(len(MODEL_ORDER))
    configs = configs.sort_values(["order", "lambda_ad", "gamma", "beta", "iterations"]).reset_index(drop=True)
    configs["label"] = configs.apply(config_label, axis=1)
    repeated = configs.duplicated(["model", "label"], keep=False)
    # the same γ twice within a model (other iterations, preset or data): name the difference
    for index in configs.index[repeated]:
        row = configs.loc[index]
        protocol = row["protocol"] if isinstance(row["protocol"], str) else "no protocol"
        configs.loc[index, "label"] += f" [{protocol}, {row['preset']}, {count(row['iterations'])} it]"
    configs["best"] = ""
    scores = configs["disentanglement_mean"]
    for model, part in configs.groupby("model"):
        if part["disentanglement_mean"].notna().any():
            configs.loc[part["disentanglement_mean"].idxmax(), "best"] = f"best {plotting.model_style(model)['label']}"
    if scores.notna().any():
        configs.loc[scores.idxmax(), "best"] = "best overall"
    return configs


def config_table(configs: pd.DataFrame) -> TableItem:
    display = pd.DataFrame({
        "model": [plotting.model_style(m)["label"] for m in configs["model"]],
        "configuration": configs["label"],
        "iterations": configs["iterations"].map(count),
        "protocol": configs["protocol"].map(lambda p: p if isinstance(p, str) and p else "not logged"),
        "preset": configs["preset"],
        "seeds": configs["seeds"],
        "disentanglement (dlib)": [fmt(*metric_stat(r, "disentanglement")) for _, r in configs.iterrows()],
        "disentanglement (seed variant)": [fmt(*metric_stat(r, "disentanglement_seed")) for _, r in configs.iterrows()],
        "eval recon (nats)": [fmt(*metric_stat(r, "eval_recon_loss")) for _, r in configs.iterrows()],
        "train recon (nats)": [fmt(*metric_stat(r, "recon_loss")) for _, r in configs.iterrows()],
        "TC estimate (nats)": [fmt(*metric_stat(r, "tc"), digits=3) for _, r in configs.iterrows()],
        "L_AD": [fmt(*metric_stat(r, "ad_loss"), digits=3) for _, r in configs.iterrows()],
        "best": configs["best"],
    })
    columns = ["model", "gamma", "lambda_ad", "beta", "iterations", "protocol", *GROUP, "n", "seeds"]
    columns += [f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "sd", "n")] + ["best"]
    data = configs[[c for c in dict.fromkeys(columns) if c in configs]]
    text = ("Final values (last evaluation for the metrics and eval recon, last report for the training "
            "losses) as mean ± sd over seeds (ddof = 1), n = seeds. 'best overall' is the highest mean dlib "
            "metric; 'best <model>' the highest within a model.")
    return TableItem("disentangle_configs", display, data, "Configurations: final metrics", text)


def _paired(runs: pd.DataFrame, run_ids: list[str], x: str, y: str) -> tuple[list[float], list[float]]:
    part = runs.set_index("run_id").loc[run_ids]
    if METRIC + x not in part or METRIC + y not in part:
        return [], []
    both = part[[METRIC + x, METRIC + y]].dropna()
    return both[METRIC + x].tolist(), both[METRIC + y].tolist()


def tradeoff_figure(runs, configs, variant: str, title: str):
    fig, ax = plotting.grid(1, 1, 6.6, 4.8)
    ax = ax[0, 0]
    for _, row in configs.iterrows():
        style = plotting.model_style(row["model"])
        xs, ys = _paired(runs, row["run_ids"], variant, "eval_recon_loss")
        plotting.config_point(ax, (row[f"{variant}_mean"], row[f"{variant}_sd"]),
                              (row["eval_recon_loss_mean"], row["eval_recon_loss_sd"]), xs, ys, style,
                              style["label"], row["label"])
    if variant == "disentanglement_seed":
        for _, ref in reference.dsprites().iterrows():
            name = plotting.model_style(ref["model"])["label"]
            setting = f"γ={ref['gamma']:g}" if pd.notna(ref["gamma"]) else f"λ={ref['lambda_ad']:g}"
            ax.axvline(ref["value"], color=plotting.model_style(ref["model"])["color"], ls=":", lw=1,
                       label=f"public reproduction {name} {setting}: {ref['value']:.3f} ± {ref['sd']:.3f} "
                             "(6 factors, L=100, 800 votes)")
    ax.margins(x=0.12, y=0.08)  # room for the γ/λ labels of the outermost points
    ax.set_xlabel(f"final {VARIANTS[variant]} (accuracy, 0–1)")
    ax.set_ylabel(RECON_LABEL)
    ax.set_title(title)
    # below the axes: inside, the legend would hide configurations wherever they happen to fall
    plotting.dedupe_legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return fig


def curves_figure(runs, configs, histories, title: str):
    metrics = [m for m in CURVES if any(len(histories.get(r, m)) for r in runs["run_id"])]
    models = [m for m in MODEL_ORDER if m in set(configs["model"])] + \
        sorted(set(configs["model"]) - set(MODEL_ORDER))
    widest = max((int((configs["model"] == m).sum()) for m in models), default=1)
    fig, axes = plotting.grid(len(metrics), len(models), 5.0 + 1.3 * (1 + widest // 14), 3.0)
    for col, model in enumerate(models):
        part = configs[configs["model"] == model]
        colors = plotting.palette(len(part))
        for row_index, metric in enumerate(metrics):
            ax = axes[row_index, col]
            for color, (_, row) in zip(colors, part.iterrows(), strict=True):
                seeds = [histories.get(r, metric) for r in row["run_ids"]]
                plotting.band(ax, mean_curve(seeds), f"{row['label']} (n={row['n']})", color, seeds)
            ax.set_title(f"{plotting.model_style(model)['label']}: {CURVES[metric][0]}")
            ax.set_xlabel("iteration")
            ax.set_ylabel(CURVES[metric][1])
            plotting.thousands(ax)
            if metric == "tc":
                ax.axhline(0.0, color="black", lw=0.6)
            if row_index == 0:
                plotting.outside_legend(ax, len(part))
    fig.suptitle(title)
    return fig


def attention_items(client, runs, configs, out, max_seeds: int = 2) -> list[FigureItem]:
    items = []
    for _, row in configs[configs["best"] != ""].iterrows():
        name = plotting.model_style(row["model"])["label"]
        part = runs.set_index("run_id").loc[row["run_ids"][:max_seeds]]
        for run_id, run in part.iterrows():
            target = out / "figures" / "artifacts" / f"attention_{_slug(row)}_s{int(run['seed'])}.png"
            found = latest_figure(client, run_id, "attention_", target)
            if found is None:
                continue
            items.append(FigureItem(found[0], f"Attention maps: {name} {row['label']} ({row['best']}), seed "
                                              f"{int(run['seed'])}",
                                    f"The latest attention figure ({found[1]}) logged by run {run['run_name']} "
                                    f"of the {row['best']} configuration ({name} {row['label']}, "
                                    f"{count(row['iterations'])} iterations; mean dlib metric "
                                    f"{fmt(*metric_stat(row, 'disentanglement'))}). Compare where the maps of "
                                    "different latent dimensions respond (claim v)."))
    return items


def section(runs: pd.DataFrame, histories, client, out, fmt_ext: str) -> tuple[Section, pd.DataFrame]:
    """The section, and the configuration table for the claims."""
    histories.prefetch(runs["run_id"], HISTORY_METRICS)
    configs = configurations(runs)
    what = describe(runs, "iterations")
    items: list = [config_table(configs)]
    for table in (seed_report_table(configs, runs), public_reproduction_table(configs)):
        if table is not None:
            items.append(table)
    for variant, label in VARIANTS.items():
        if configs[f"{variant}_n"].sum() == 0:
            continue
        fig = tradeoff_figure(runs, configs, variant, f"Trade-off: {label} vs reconstruction")
        items.append(FigureItem(plotting.save(fig, out, f"tradeoff_{variant}", fmt_ext),
                                f"Trade-off: {label} vs reconstruction (seed Figure 4)",
                                f"One point per configuration: mean over seeds with ±1 sd bars, each seed as a "
                                f"faint point; labels give γ (and λ). Up-left is worse, down-right better. Runs: "
                                f"{what}"))
    fig = curves_figure(runs, configs, histories, "Training curves per model (mean ± 1 sd over seeds)")
    items.append(FigureItem(plotting.save(fig, out, "curves", fmt_ext), "Curves over iterations (seed Figures 5–7)",
                            "Per model (columns): training reconstruction loss, the discriminator's TC estimate "
                            "(log-odds of D; it can be negative) and the metric at each evaluation; mean ± 1 sd band "
                            f"over seeds, seeds faint. Runs: {what}"))
    items += attention_items(client, runs, configs, out)
    text = (f"What was run: {what} Numbers are final values per run; configurations group seeds by "
            "config_key (never by run name).")
    return Section("Disentanglement (dSprites)", text, items), configs


def seed_report_table(configs: pd.DataFrame, runs: pd.DataFrame) -> TableItem | None:
    """The report's stored results (FACT-2021 results/disent) beside our ``--protocol seed`` configurations of
    the same model, γ, λ and iterations, on the same metric definition; Δ = our mean − theirs."""
    ours_metric, definition = reference.DEFINITIONS[("dsprites", "seed", "disentanglement_seed")]
    rows, data = [], []
    for _, ref in reference.seed_dsprites().iterrows():
        match = (configs["model"] == ref["model"]) & configs["protocol"].map(
            lambda p: reference.comparable(p, "seed"))
        for key in ("gamma", "lambda_ad", "iterations"):
            match &= np.isclose(configs[key].astype(float), float(ref[key]))
        for _, ours in configs[match].iterrows():
            column = METRIC + ours_metric
            values = runs.set_index("run_id").loc[ours["run_ids"], column].dropna().tolist() if column in runs else []
            mean, sd, n = mean_sd(values)
            low, high, kind = seed_interval(values)
            data.append({"model": ref["model"], "gamma": ref["gamma"], "lambda_ad": ref["lambda_ad"],
                         "iterations": ref["iterations"], "ours_mean": mean, "ours_sd": sd, "ours_n": n,
                         "ours_low": low, "ours_high": high, "ours_interval": kind, "seed": ref["value"],
                         "seed_sd": ref["sd"], "seed_n": ref["n"], "delta_seed": mean - ref["value"]})
            rows.append({"model": plotting.model_style(ref["model"])["label"], "our configuration": ours["label"],
                         "iterations": count(ref["iterations"]), "protocol": ours["protocol"],
                         f"ours: {definition}": fmt_interval(values),
                         f"seed report (stored results), protocol seed: {definition}":
                             f"{ref['value']:.3f} ± {ref['sd']:.3f} (n={int(ref['n'])})",
                         "Δ seed": "–" if not np.isfinite(mean) else f"{mean - ref['value']:+.3f}"})
    if not rows:
        return None
    citation = reference.citations("dsprites")["seed"]
    return TableItem("dsprites_seed_report", pd.DataFrame(rows), pd.DataFrame(data),
                     "Beside the seed report's stored results (like for like)",
                     f"Source: {citation}. Only our runs under --protocol seed (never 'seed+custom') at the same "
                     "model, γ, λ and iterations; ours as mean ± sd [interval over seeds: 95% percentile bootstrap for "
                     "n ≥ 3, min–max for n = 2] (n). The report's AD-FactorVAE computed L_AD without gradient.")


def public_reproduction_table(configs: pd.DataFrame) -> TableItem | None:
    """The public reproduction's FactorVAE γ=40 and AD-FactorVAE λ=40 beside our matching configurations."""
    rows = []
    for _, ref in reference.dsprites().iterrows():
        match = configs["model"] == ref["model"]
        for key in ("gamma", "lambda_ad"):
            if pd.notna(ref[key]):
                match &= np.isclose(configs[key].astype(float), float(ref[key]))
        for _, ours in configs[match].iterrows():
            rows.append({"model": plotting.model_style(ref["model"])["label"], "our configuration": ours["label"],
                         "ours: disentanglement (seed variant)": fmt(*metric_stat(ours, "disentanglement_seed")),
                         "ours: disentanglement (dlib)": fmt(*metric_stat(ours, "disentanglement")),
                         "public reproduction": f"{ref['value']:.3f} ± {ref['sd']:.3f}",
                         "its metric": ref["note"]})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    citation = reference.citations()["public_reproduction"]
    return TableItem("dsprites_public_reproduction", frame, frame, "Beside a public reproduction",
                     f"Source: {citation}. Its metric variant differs from both of ours, so the numbers are shown "
                     "side by side, not subtracted.")

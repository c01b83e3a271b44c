"""The "RBM" section: the report's extension (stacked RBMs with Gumbel-relaxed attention on MNIST, its §3.4.2,
§4.2.2, Fig. 12) measured against the VAE on the same pasted test images, with a numeric verdict.

Every RBM trial logs, on the same pasted MNIST test images, the maps of both RBM constructions and of the VAE
trained in the same trial: ``<metric>/gradcam`` (ours), ``<metric>/seed`` (the report's), ``<metric>/vae`` and
``<metric>/input`` (the image itself as the map: the reference any localisation should beat, since the pasted
pixels are bright ink). Per configuration (seeds of one ``config_key``): mean, sd (ddof = 1) and the 95 %
interval of the mean over seeds, mean ± t_{0.975, n−1} · sd / √n (Student's t; none below two seeds).

Verdict on the report's claim, "the stacked RBM maps do not show meaningful information regarding anomalous
regions, as the VAE maps do" — per configuration and construction c, the number is the paired difference
Δ_c = pixel AUROC_c − pixel AUROC_vae of each run (same trial, same images), its mean and 95 % interval over
seeds. Rule: the claim holds for c when the interval lies entirely below 0 (the RBM map localises worse than
the VAE's), fails when it lies entirely above 0, and is undecided when it contains 0 or n < 2.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis import plotting
from analysis.document import FigureItem, Section, TableItem
from analysis.selection import describe
from analysis.stats import aggregate, mean_curve, number
from analysis.store import METRIC, latest_figure

KEEP = ["protocol", "digit", "sizes", "hidden", "k", "persistent", "lr", "temperature", "rbm_map", "rbm_layer",
        "epochs_per_layer", "vae_epochs", "epochs"]
MAPS = ("gradcam", "seed", "vae", "input")
MAP_NAMES = {"gradcam": "RBM gradcam (ours)", "seed": "RBM seed (report's)", "vae": "VAE", "input": "input image"}
METRICS = ("pixel_auroc", "best_iou", "best_iou_seed", "image_auroc")
METRIC_NAMES = {"pixel_auroc": "pixel AUROC", "best_iou": "best IoU (pooled)",
                "best_iou_seed": "best IoU (report's macro, per batch)", "image_auroc": "image AUROC"}
CURVES = (("recon_error", "reconstruction error (MSE per pixel)"), ("free_energy_gap", "F(held-out) − F(train) (nats)"),
          ("cd_loss", "CD surrogate F(data) − F(model) (nats)"))
HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
CONFIDENCE = 0.95


def interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the 95 % t-interval of the mean of the finite values; NaN bounds below n = 2."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(array)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(array.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def verdict(low: float, high: float) -> str:
    """The rule of the module docstring on the interval of Δ = AUROC_rbm − AUROC_vae."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDECIDED
    return HOLDS if high < 0 else FAILS if low > 0 else UNDECIDED


def _interval_text(mean: float, low: float, high: float, n: int) -> str:
    if n == 0:
        return "–"
    if not np.isfinite(low):
        return f"{number(mean, 3)} (n={n})"
    return f"{number(mean, 3)} [{number(low, 3)}, {number(high, 3)}] (n={n})"


def _sizes(value) -> str:
    text = str(value).strip("[]() ").replace(" ", "")
    return "-".join(text.split(","))


def label(row) -> str:
    return (f"{row.get('protocol', '?')}, digit {row['digit']:.0f}, {_sizes(row['sizes'])}, {row['hidden']}, "
            f"k={row['k']:.0f}, lr={row['lr']:g}, τ={row['temperature']:g}")


def configurations(runs: pd.DataFrame) -> pd.DataFrame:
    metrics = [f"{m}/{kind}" for m in METRICS for kind in MAPS]
    configs = aggregate(runs, metrics, KEEP)
    for column in KEEP:
        if column not in configs:
            configs[column] = np.nan
    configs = configs.sort_values(["protocol", "digit", "sizes", "k", "lr", "temperature"]).reset_index(drop=True)
    configs["label"] = [label(r) for _, r in configs.iterrows()]
    return configs


def _values(runs: pd.DataFrame, run_ids, metric: str) -> list[float]:
    column = METRIC + metric
    if column not in runs:
        return []
    return runs.set_index("run_id").loc[list(run_ids), column].dropna().tolist()


def _paired(runs: pd.DataFrame, run_ids, a: str, b: str) -> list[float]:
    ca, cb = METRIC + a, METRIC + b
    if ca not in runs or cb not in runs:
        return []
    both = runs.set_index("run_id").loc[list(run_ids), [ca, cb]].dropna()
    return (both[ca] - both[cb]).tolist()


def metric_table(configs: pd.DataFrame, runs: pd.DataFrame, metric: str) -> TableItem:
    rows, display = [], []
    for _, row in configs.iterrows():
        data = {"label": row["label"], "config_key": row["config_key"], "n": row["n"], "seeds": row.get("seeds")}
        shown = {"configuration": row["label"]}
        for kind in MAPS:
            mean, low, high, n = interval(_values(runs, row["run_ids"], f"{metric}/{kind}"))
            data.update({f"{kind}_mean": mean, f"{kind}_low": low, f"{kind}_high": high, f"{kind}_n": n,
                         f"{kind}_sd": row[f"{metric}/{kind}_sd"]})
            shown[MAP_NAMES[kind]] = _interval_text(mean, low, high, n)
        rows.append(data)
        display.append(shown)
    text = (f"{METRIC_NAMES[metric]} of each map on the same test images, mean [95 % t-interval] over seeds (n). "
            + ("Pixel metrics are on the pasted test set (inlier test images with one foreign element and its mask); "
               "image AUROC ranks outlier-digit test images above inlier ones by mean map. The input image is the "
               "reference: pasted pixels are bright, so a map that is high on ink scores well without explaining "
               "anything." if metric != "image_auroc" else "Inlier vs outlier digits by the mean of each map."))
    return TableItem(f"rbm_{metric}", pd.DataFrame(display), pd.DataFrame(rows),
                     f"RBM vs VAE: {METRIC_NAMES[metric]}", text)


def verdict_table(configs: pd.DataFrame, runs: pd.DataFrame) -> tuple[TableItem, dict[str, list[str]]]:
    rows, display, outcomes = [], [], {"gradcam": [], "seed": []}
    for _, row in configs.iterrows():
        for kind in ("gradcam", "seed"):
            mean, low, high, n = interval(_paired(runs, row["run_ids"], f"pixel_auroc/{kind}", "pixel_auroc/vae"))
            outcome = verdict(low, high)
            outcomes[kind].append(outcome)
            rows.append({"label": row["label"], "config_key": row["config_key"], "construction": kind,
                         "delta_mean": mean, "delta_low": low, "delta_high": high, "n": n, "verdict": outcome})
            display.append({"configuration": row["label"], "construction": MAP_NAMES[kind],
                            "Δ pixel AUROC (RBM − VAE), paired": _interval_text(mean, low, high, n),
                            "claim 'not meaningful'": outcome})
    text = ("Δ = pixel AUROC of the RBM map − pixel AUROC of the VAE map, per run (both from the same trial and "
            "test images), mean [95 % t-interval] over seeds. Rule: the report's claim holds when the interval lies "
            "below 0, fails when it lies above 0, and is undecided when it contains 0 or there are fewer than two "
            "seeds.")
    return TableItem("rbm_verdict", pd.DataFrame(display), pd.DataFrame(rows),
                     "Verdict on 'the RBM maps are not meaningful' (vs the VAE)", text), outcomes


def auroc_figure(configs: pd.DataFrame, runs: pd.DataFrame):
    fig, axes = plotting.grid(1, 1, max(6.0, 2.2 * len(configs) + 3), 3.8)
    ax = axes[0, 0]
    x = np.arange(len(configs))
    width = 0.8 / len(MAPS)
    colors = {"gradcam": "tab:blue", "seed": "tab:orange", "vae": "tab:green", "input": "tab:gray"}
    for i, kind in enumerate(MAPS):
        offset = x - 0.4 + width * (i + 0.5)
        bounds = [interval(_values(runs, ids, f"pixel_auroc/{kind}")) for ids in configs["run_ids"]]
        means = np.array([b[0] for b in bounds])
        errors = np.array([[b[0] - b[1], b[2] - b[0]] if np.isfinite(b[1]) else [0, 0] for b in bounds]).T
        ax.bar(offset, means, width, yerr=errors, capsize=2, color=colors[kind], label=MAP_NAMES[kind])
        for position, ids in zip(offset, configs["run_ids"], strict=True):
            points = _values(runs, ids, f"pixel_auroc/{kind}")
            ax.scatter([position] * len(points), points, color="black", s=8, zorder=3, alpha=plotting.SEED_ALPHA)
    ax.axhline(0.5, color="black", ls=":", lw=1, label="chance (0.5)")
    ax.set_xticks(x, [textwrap.fill(c, 26) for c in configs["label"]], fontsize=7)
    ax.set_ylabel("pixel AUROC (0–1)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Pasted MNIST: pixel AUROC of each map (bars: mean, whiskers: 95 % interval, dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return fig


def curves_figure(configs: pd.DataFrame, histories, curves: list[tuple[str, str]]):
    fig, axes = plotting.grid(1, len(curves), 4.2, 3.2)
    colors = plotting.palette(len(configs))
    for ax, (metric, title) in zip(axes[0], curves, strict=True):
        for color, (_, row) in zip(colors, configs.iterrows(), strict=True):
            seeds = [histories.get(r, metric) for r in row["run_ids"]]
            plotting.band(ax, mean_curve(seeds), f"{row['label']} (n={row['n']})", color, seeds)
        ax.set_xlabel("epoch (layer after layer)")
        ax.set_ylabel(title, fontsize=8)
        ax.set_title(metric)
    plotting.outside_legend(axes[0, -1], len(configs))
    return fig


def _grids(client, configs: pd.DataFrame, runs: pd.DataFrame, out) -> list[FigureItem]:
    items = []
    for i, row in configs.iterrows():
        run = runs.set_index("run_id").loc[row["run_ids"][0]]
        target = out / "figures" / "artifacts" / f"rbm_{i:02d}_{row['config_key']}_s{int(run['seed'])}.png"
        found = latest_figure(client, run.name, "rbm_", target)
        if found is not None:
            items.append(FigureItem(found[0], f"RBM maps: {row['label']}",
                                    f"Latest figure ({found[1]}) of run {run['run_name']} (seed {int(run['seed'])}): "
                                    "per pasted test image, the input, its mask, the gradcam and seed RBM maps and "
                                    "the VAE map over the input (one colour scale per row, its range in the label)."))
    return items


def headline(outcomes: dict[str, list[str]]) -> str:
    parts = []
    for kind, found in outcomes.items():
        counts = {v: found.count(v) for v in (HOLDS, FAILS, UNDECIDED)}
        parts.append(f"{MAP_NAMES[kind]}: holds in {counts[HOLDS]}, fails in {counts[FAILS]}, undecided in "
                     f"{counts[UNDECIDED]} of {len(found)} configuration(s)")
    return ("Verdict on the report's claim that the RBM maps are not meaningful (rule: 95 % interval over seeds of "
            "the paired Δ pixel AUROC (RBM − VAE) below 0): " + "; ".join(parts) + ".")


def section(runs: pd.DataFrame, histories, client, out, fmt_ext: str) -> Section:
    configs = configurations(runs)
    what = describe(runs, "epochs")
    items: list = [metric_table(configs, runs, metric) for metric in METRICS]
    verdicts, outcomes = verdict_table(configs, runs)
    items.insert(0, verdicts)
    items.append(FigureItem(plotting.save(auroc_figure(configs, runs), out, "rbm_pixel_auroc", fmt_ext),
                            "RBM vs VAE: pixel AUROC per configuration",
                            f"Both RBM constructions, the VAE and the input-image reference on the same pasted test "
                            f"images. Runs: {what}"))
    present = [(m, title) for m, title in CURVES if METRIC + m in runs]
    if present:
        histories.prefetch(runs["run_id"], [m for m, _ in present])
        items.append(FigureItem(plotting.save(curves_figure(configs, histories, present), out, "rbm_curves", fmt_ext),
                                "RBM training curves",
                                "Reconstruction error, free-energy gap between held-out and training images, and the "
                                "CD surrogate of the layer being trained, per epoch (the layer changes every "
                                "epochs_per_layer epochs), mean ± 1 sd over seeds."))
    items += _grids(client, configs, runs, out)
    return Section("RBM", f"What was run: {what}\n\n{headline(outcomes)}", items)


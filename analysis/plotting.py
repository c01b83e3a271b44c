"""Figure helpers shared by every section: styles per model, saving, mean ± sd bands, configuration points
with their seed points, parallel coordinates and Pareto fronts.

Agg only: reports are made on servers and in tests without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import pareto_front  # noqa: E402

MODELS = {
    "factorvae": dict(label="FactorVAE", marker="o", color="tab:blue"),
    "ad_factorvae": dict(label="AD-FactorVAE", marker="s", color="tab:red"),
    "betavae": dict(label="β-VAE", marker="^", color="tab:green"),
}
SEED_ALPHA = 0.35  # seed points and seed curves: visible, but the mean reads first
# Applied around a report's figures only (``style()``), so importing analysis leaves matplotlib's globals alone.
# No offset notation: "+2.839e3" above an axis is easy to miss on a loss in nats.
STYLE = {"figure.dpi": 110, "axes.formatter.useoffset": False, "axes.grid": True, "grid.alpha": 0.3,
         "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8}


def style():
    return plt.rc_context(STYLE)


def model_style(model: str) -> dict:
    return MODELS.get(model, dict(label=str(model), marker="D", color="tab:gray"))


def grid(nrows: int, ncols: int, width: float = 4.8, height: float = 3.4):
    # constrained layout makes room for legends placed outside the axes, which tight_layout does not
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes


def palette(count: int) -> list:
    """Distinct colours for up to 20 curves; beyond that a gradient (configurations come sorted by γ)."""
    if count <= 10:
        return [f"C{i}" for i in range(count)]
    if count <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(count)]
    return [plt.get_cmap("viridis")(v) for v in np.linspace(0.0, 0.92, count)]


def outside_legend(ax, entries: int) -> None:
    """Right of the axes, in columns of at most 14 entries, so many configurations never cover the curves."""
    if entries:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=max(1, -(-entries // 14)), fontsize=7)


def thousands(ax) -> None:
    """Iterations as 20k, 150k: six-digit tick labels run into each other."""
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))


def save(fig, out: Path, stem: str, fmt: str) -> Path:
    path = out / "figures" / f"{stem}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def band(ax, curve: pd.DataFrame, label: str, color, seeds: list[pd.Series] = ()) -> None:
    """The mean curve with a ±1 sd band where at least two seeds logged, and each seed's curve faintly."""
    if curve.empty:
        return
    for series in seeds:
        ax.plot(series.index, series.values, color=color, alpha=SEED_ALPHA, lw=0.7)
    ax.plot(curve["step"], curve["mean"], color=color, lw=1.6, label=label,
            marker="o" if len(curve) < 4 else None, ms=3)
    spread = curve[curve["n"] >= 2]
    if not spread.empty:
        ax.fill_between(spread["step"], spread["mean"] - spread["sd"], spread["mean"] + spread["sd"], color=color,
                        alpha=0.18, lw=0)


def config_point(ax, x: tuple, y: tuple, seeds_x: list[float], seeds_y: list[float], style: dict, label: str | None,
                 annotate: str | None) -> None:
    """One configuration: mean with sd error bars (x and y), its seeds as faint points, a γ/λ annotation."""
    (mx, sx), (my, sy) = x, y
    if len(seeds_x) == len(seeds_y) and seeds_x:
        ax.scatter(seeds_x, seeds_y, marker=style["marker"], color=style["color"], alpha=SEED_ALPHA, s=18, lw=0)
    ax.errorbar(mx, my, xerr=None if not np.isfinite(sx) else sx, yerr=None if not np.isfinite(sy) else sy,
                marker=style["marker"], color=style["color"], ms=7, capsize=3, ls="none", label=label,
                mec="black", mew=0.5)
    if annotate and np.isfinite(mx) and np.isfinite(my):
        ax.annotate(annotate, (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=7)


def dedupe_legend(ax, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), **kwargs)


def _axis_values(column: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """A column mapped onto [0, 1] and its tick labels; categories are spread evenly, a wide positive range
    (learning rates) goes on a log scale."""
    if pd.api.types.is_numeric_dtype(column):
        values = column.astype(float).to_numpy()
        lo, hi = np.nanmin(values), np.nanmax(values)
        logged = lo > 0 and hi / lo >= 20
        t = np.log10(values) if logged else values
        tlo, thi = (np.log10(lo), np.log10(hi)) if logged else (lo, hi)
        scaled = (t - tlo) / (thi - tlo) if thi > tlo else np.full(len(t), 0.5)
        ticks = sorted(set(values[np.isfinite(values)].tolist()))
        if len(ticks) > 6:
            ticks = [lo, hi]
        positions = [((np.log10(v) if logged else v) - tlo) / (thi - tlo) if thi > tlo else 0.5 for v in ticks]
        return scaled, [(p, f"{v:g}") for p, v in zip(positions, ticks, strict=True)]
    levels = sorted(column.astype(str).unique())
    spot = {level: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, level in enumerate(levels)}
    return column.astype(str).map(spot).to_numpy(dtype=float), [(spot[lv], lv) for lv in levels]


def varying_params(runs: pd.DataFrame, params: list[str], max_levels: int = 12) -> list[str]:
    """Params that take more than one value; text params only when they have few levels."""
    chosen = []
    for name in params:
        if name not in runs:
            continue
        column = runs[name].dropna()
        levels = column.nunique()
        if levels > 1 and (pd.api.types.is_numeric_dtype(column) or levels <= max_levels):
            chosen.append(name)
    return chosen


def parallel_coordinates(runs: pd.DataFrame, params: list[str], objective: str, objective_label: str, title: str):
    """One line per run across the params' axes, ending on the objective's axis, coloured by the objective."""
    columns = [*params, objective]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.7 * len(columns) + 1.5), 4.2))
    scaled = {c: _axis_values(runs[c]) for c in columns}
    objective_values = runs[objective].astype(float).to_numpy()
    finite = objective_values[np.isfinite(objective_values)]
    lo, hi = finite.min(), finite.max()
    if hi <= lo:  # one value: a small symmetric range keeps the colour bar readable
        lo, hi = lo - 0.01, hi + 0.01
    norm = plt.Normalize(lo, hi)
    cmap = plt.get_cmap("viridis")
    xs = np.arange(len(columns))
    for i in range(len(runs)):
        ys = [scaled[c][0][i] for c in columns]
        value = objective_values[i]
        color = cmap(norm(value)) if np.isfinite(value) else "lightgray"
        ax.plot(xs, ys, color=color, alpha=0.75, lw=1.2, marker="o", ms=3)
    for x, column in zip(xs, columns, strict=True):
        ax.axvline(x, color="black", lw=0.8)
        for position, text in scaled[column][1]:
            ax.text(x + 0.04, position, text, fontsize=7, va="center")
    ax.set_xticks(xs, [*params, objective_label], rotation=0)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=objective_label, pad=0.02)
    return fig


def pareto_figure(configs: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, title: str):
    """Configurations (mean of seeds) with the non-dominated ones (``x`` up, ``y`` down) joined and named."""
    front = pareto_front(configs[f"{x}_mean"], configs[f"{y}_mean"])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for (_, row), on_front in zip(configs.iterrows(), front, strict=True):
        style = model_style(row.get("model", ""))
        ax.scatter(row[f"{x}_mean"], row[f"{y}_mean"], marker=style["marker"], color=style["color"],
                   alpha=1.0 if on_front else 0.35, s=45 if on_front else 25, label=style["label"],
                   edgecolors="black" if on_front else "none")
        if on_front:
            ax.annotate(row["label"], (row[f"{x}_mean"], row[f"{y}_mean"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7)
    points = configs[front].sort_values(f"{x}_mean")
    ax.step(points[f"{x}_mean"], points[f"{y}_mean"], where="post", color="black", lw=1, ls="--",
            label="Pareto front")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    dedupe_legend(ax, loc="best")
    return fig, front

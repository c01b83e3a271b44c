"""Numbers of a report: per-configuration mean ± sd over seeds, seed-aligned curves, Pareto fronts.

Spread is the sample standard deviation (ddof = 1) and every summary carries its n: with the two seeds of
Table 1 an sd is a rough guide at best, and a reader must be able to see that. With n = 1 there is no sd.
An interval over seeds (``seed_interval``): for n ≥ 3 the 95 % percentile bootstrap of the mean
(``scipy.stats.bootstrap``, 10,000 resamples, generator seeded with ``BOOTSTRAP_SEED`` so a report is
reproducible); for n = 2 the labelled min–max (a bootstrap of two values only ever returns them); none for n = 1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.selection import GROUP
from analysis.store import METRIC


def mean_sd(values) -> tuple[float, float, int]:
    """(mean, sd with ddof=1, n) of the finite values; sd is NaN below two values, mean NaN for none."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(array)
    if n == 0:
        return math.nan, math.nan, 0
    return float(np.mean(array)), (float(np.std(array, ddof=1)) if n > 1 else math.nan), n


BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


def seed_interval(values) -> tuple[float, float, str]:
    """(low, high, kind) of an interval over seeds of the finite values; kind is ``95% bootstrap`` (n ≥ 3),
    ``min–max`` (n = 2), ``n = 1`` or ``n = 0`` (then low and high are NaN)."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(array) >= 3:
        if np.all(array == array[0]):  # every resample has the same mean; scipy warns on a degenerate sample
            return float(array[0]), float(array[0]), f"{CONFIDENCE:.0%} bootstrap"
        result = scipy_stats.bootstrap((array,), np.mean, method="percentile", n_resamples=BOOTSTRAP_RESAMPLES,
                                       confidence_level=CONFIDENCE, random_state=np.random.default_rng(BOOTSTRAP_SEED))
        return float(result.confidence_interval.low), float(result.confidence_interval.high), \
            f"{CONFIDENCE:.0%} bootstrap"
    if len(array) == 2:
        return float(array.min()), float(array.max()), "min–max"
    return math.nan, math.nan, f"n = {len(array)}"


def fmt_interval(values, digits: int | None = 3) -> str:
    """``0.805 ± 0.059 [0.751, 0.860] (95% bootstrap, n=3)``; ``0.805 ± 0.010 [min–max 0.798, 0.812] (n=2)``;
    ``0.805 (n = 1)``; ``–`` for nothing."""
    mean, sd, n = mean_sd(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{number(mean, digits)} (n = 1)"
    low, high, kind = seed_interval(values)
    spread = f"{number(mean, digits)} ± {number(sd, digits)}"
    if n == 2:
        return f"{spread} [min–max {number(low, digits)}, {number(high, digits)}] (n=2)"
    return f"{spread} [{number(low, digits)}, {number(high, digits)}] ({kind}, n={n})"


def number(value: float, digits: int | None = None) -> str:
    """A readable number: losses in nats get one decimal, scores in [0, 1] three."""
    if value is None or not np.isfinite(value):
        return "–"
    if digits is not None:
        return f"{value:.{digits}f}"
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10 else f"{value:.3f}"


def count(value) -> str:
    """An integer-valued param (iterations, epochs) with thousands separators; ``–`` when missing."""
    return f"{int(value):,}" if value is not None and np.isfinite(float(value)) else "–"


def fmt(mean: float, sd: float, n: int, digits: int | None = None) -> str:
    """``0.805 ± 0.059 (n=2)``; ``0.805 (n=1)`` without a spread; ``–`` when nothing was logged."""
    if n == 0:
        return "–"
    if not np.isfinite(sd):
        return f"{number(mean, digits)} (n={n})"
    return f"{number(mean, digits)} ± {number(sd, digits if digits is not None else _digits_of(mean))} (n={n})"


def _digits_of(mean: float) -> int:
    """The sd is printed with the mean's number of decimals, so the two line up."""
    text = number(mean)
    return len(text.split(".")[1]) if "." in text else 0


def aggregate(runs: pd.DataFrame, metrics: list[str], keep: list[str], by: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration: ``keep`` params (first value), n, seeds, run ids, and for each metric
    ``<metric>_mean``, ``<metric>_sd``, ``<metric>_n`` over the final values of its runs."""
    by = by or GROUP
    rows = []
    for key, part in runs.groupby(by, dropna=False, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({k: part[k].iloc[0] for k in keep if k in part and k not in row})
        row["n"] = len(part)
        if "seed" in part:
            row["seeds"] = ", ".join(str(int(s)) for s in sorted(part["seed"].dropna()))
        row["run_ids"] = list(part.sort_values("seed")["run_id"] if "seed" in part else part["run_id"])
        for metric in metrics:
            column = METRIC + metric
            values = part[column].tolist() if column in part else []
            row[f"{metric}_mean"], row[f"{metric}_sd"], row[f"{metric}_n"] = mean_sd(values)
        rows.append(row)
    return pd.DataFrame(rows)


def metric_stat(row, metric: str) -> tuple[float, float, int]:
    """(mean, sd, n) of ``metric`` in an :func:`aggregate` row, ready for :func:`fmt`."""
    return row[f"{metric}_mean"], row[f"{metric}_sd"], int(row[f"{metric}_n"])


def mean_curve(series: list[pd.Series]) -> pd.DataFrame:
    """Mean and sd (ddof=1) across seeds at each step, with the n that contributed.

    Steps where only some seeds logged (a trial cut short, a different cadence) still show, with their
    smaller n; the band is drawn only where n ≥ 2.
    """
    series = [s for s in series if len(s)]
    if not series:
        return pd.DataFrame(columns=["step", "mean", "sd", "n"])
    table = pd.concat(series, axis=1, keys=range(len(series)))
    out = pd.DataFrame({"step": table.index.to_numpy(), "mean": table.mean(axis=1).to_numpy(),
                        "sd": table.std(axis=1, ddof=1).to_numpy(), "n": table.count(axis=1).to_numpy()})
    return out.sort_values("step").reset_index(drop=True)


def pareto_front(x, y) -> np.ndarray:
    """Mask of points not dominated when ``x`` is maximised and ``y`` minimised (NaNs are never on it)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    valid = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (np.arange(len(x)) != i)
        dominated = others & (x >= x[i]) & (y <= y[i]) & ((x > x[i]) | (y < y[i]))
        front[i] = not dominated.any()
    return front


def paired_differences(runs: pd.DataFrame, a: str, b: str) -> list[float]:
    """Per-run ``a − b`` of final values, for runs that logged both (e.g. attention vs baseline AUROC)."""
    ca, cb = METRIC + a, METRIC + b
    if ca not in runs or cb not in runs:
        return []
    both = runs[[ca, cb]].dropna()
    return (both[ca] - both[cb]).tolist()

"""Summaries, formatting and Pareto fronts of the report."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from analysis.stats import fmt, mean_curve, mean_sd, pareto_front


def test_mean_sd_uses_ddof_1_and_skips_missing():
    mean, sd, n = mean_sd([0.5, 0.75, float("nan"), None])
    assert (mean, sd, n) == (statistics.mean([0.5, 0.75]), statistics.stdev([0.5, 0.75]), 2)
    mean, sd, n = mean_sd([0.5])
    assert mean == 0.5 and math.isnan(sd) and n == 1
    assert mean_sd([])[2] == 0


def test_fmt_states_n_and_drops_sd_for_one_value():
    assert fmt(0.805, 0.059, 2) == "0.805 ± 0.059 (n=2)"
    assert fmt(0.805, float("nan"), 1) == "0.805 (n=1)"
    assert fmt(42.25, 1.5, 3) == "42.2 ± 1.5 (n=3)"
    assert fmt(float("nan"), float("nan"), 0) == "–"


def test_mean_curve_aligns_seeds_by_step():
    a = pd.Series({10: 1.0, 20: 2.0, 30: 3.0})
    b = pd.Series({10: 3.0, 20: 4.0})  # cut short
    curve = mean_curve([a, b])
    assert curve["step"].tolist() == [10, 20, 30]
    assert curve["mean"].tolist() == [2.0, 3.0, 3.0]
    assert curve["n"].tolist() == [2, 2, 1]
    assert curve["sd"].iloc[0] == statistics.stdev([1.0, 3.0]) and math.isnan(curve["sd"].iloc[2])


def test_pareto_front_maximises_x_and_minimises_y():
    x = [0.5, 0.6, 0.4, 0.6, np.nan]
    y = [40.0, 45.0, 39.0, 50.0, 10.0]
    assert pareto_front(x, y).tolist() == [True, True, True, False, False]
